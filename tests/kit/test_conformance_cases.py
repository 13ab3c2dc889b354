"""Which conformance tests a `DriverConformance` class makes, and how their skips count under
``RINGKIT_REQUIRE_XEN=1`` (inside the real-Xen harness a skip of a ``xen`` test is a failure):

- a check registered for the simulated Xen only (``domain-destroyed``, the xenbus state
  matrix) makes no test on Xen at all -- in a full real-Xen run they used to be collected,
  skipped, and so failed;
- a check that does not apply to the driver (ring-index attacks on a driver without an
  io/ring.h layout) skips, and that skip stands even when Xen is required, while any other
  skip of a ``xen`` test still fails (tests/test_require_xen.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

KIT = Path(__file__).resolve().parent

CONFORMANCE = f"""
import sys
from typing import ClassVar

import pytest

sys.path.insert(0, {str(KIT.parent)!r})
from kit.drivers_under_test import console_driver
from ringkit.testing.pytest_plugin import DriverConformance

pytestmark = pytest.mark.xen  # as if on the real devices: every skip is judged


@pytest.fixture
def anyio_backend():
    return "asyncio"


class TestConsole(DriverConformance):
    transports = ("sim", "xen")
    checks: ClassVar[tuple[str, ...]] = (
        "handshake", "domain-destroyed", "xenbus-state-matrix/backend",
        "hostile-frontend/req-prod-huge")

    @pytest.fixture
    def ringkit_driver(self, tmp_path):
        return console_driver(tmp_path)
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_mode = strict\n"
                     "asyncio_default_fixture_loop_scope = function\n"
                     "markers =\n    xen: needs real Xen\n")
    pytester.makepyfile(test_console_kit=CONFORMANCE)
    return pytester


def test_sim_only_checks_make_no_xen_tests(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    ids = {line.split("[", 1)[1].rstrip("]") for line in result.outlines
           if "test_conformance[" in line}
    assert ids == {
        "handshake-sim", "domain-destroyed-sim", "xenbus-state-matrix/backend-sim",
        "hostile-frontend/req-prod-huge-sim",
        "handshake-xen", "hostile-frontend/req-prod-huge-xen",
    }, sorted(ids)


def test_a_check_that_does_not_apply_skips_even_when_xen_is_required(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGKIT_REQUIRE_XEN", "1")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rfs",
                                          "-k", "sim and (req-prod-huge or handshake)")
    # console has no io/ring.h layout: the ring attack does not apply, which is no fault of
    # the harness; the handshake still runs and passes
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*does not apply to console on sim*"])
