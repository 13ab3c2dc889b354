"""The suite's own guard (tests/conftest.py): with RINGKIT_REQUIRE_XEN=1, as `make test-xen` sets
it in the harness's dom0, a real-Xen test that skips is a failure; elsewhere it stays a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

@pytest.mark.xen
def test_xen_but_skipped():
    pytest.skip("no /dev/xen here")

@pytest.mark.skip(reason="not a real-Xen test")
def test_other_skip():
    pass

@pytest.mark.xen
@pytest.mark.xfail(reason="a known real-Xen anomaly")
def test_xen_expected_failure():
    raise AssertionError

@pytest.mark.xen
def test_xen_passing():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nasyncio_mode = strict\n"
                     "asyncio_default_fixture_loop_scope = function\n"
                     "markers =\n    xen: needs real Xen\n")
    pytester.makepyfile(test_guard=TESTS)
    return pytester


def test_a_skipped_real_xen_test_fails_when_xen_is_required(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGKIT_REQUIRE_XEN", "1")
    result = project.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*RINGKIT_REQUIRE_XEN=1*this real-Xen test skipped*"
                                 "no /dev/xen here*"])


def test_without_the_requirement_a_skip_stays_a_skip(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGKIT_REQUIRE_XEN", raising=False)
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
