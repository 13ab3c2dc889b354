"""ringkit's pytest plugin from a driver project outside ringkit's tree: loaded by its entry
point alone, on pytest-asyncio (strict) and anyio (asyncio and trio); failures (a hang bounded
by the ringkit timeout, a leak) come with messages that say what happened."""

from __future__ import annotations

import pytest

from .out_of_tree import write_project

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    write_project(pytester.path)
    return pytester


def test_the_project_passes_on_asyncio_strict_and_trio(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-v", "tests")
    result.assert_outcomes(passed=17, skipped=2)
    for line in [
        "*test_ping_asyncio.py::test_device_pair PASSED*",
        "*test_ping_asyncio.py::test_backend_killed PASSED*",
        "*test_ping_anyio.py::test_device_pair?trio? PASSED*",
        "*test_on_each_transport?asyncio-sim? PASSED*",
        "*test_on_each_transport?trio-xen? SKIPPED*",
        "*TestPingConformance::test_conformance?trio-hostile-backend/duplicate-responses-sim? "
        "PASSED*",
    ]:
        result.stdout.fnmatch_lines([line])


def test_failures_name_the_hang_and_the_leak(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "failing")
    result.assert_outcomes(failed=2, passed=2, errors=2)
    for line in ("*ping: the exchange: not done within 0.5 s*",
                 "*leaked: guest (domain *): grants=1*"):
        result.stdout.fnmatch_lines([line])


def test_the_timeout_comes_from_the_command_line_and_the_ini_file(
        project: pytest.Pytester) -> None:
    (project.path / "failing" / "test_ping_failing.py").write_text(
        (project.path / "failing" / "test_ping_failing.py").read_text()
        .replace("@pytest.mark.ringkit_timeout(0.5)\n", ""))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--ringkit-timeout", "0.3",
                                          "failing", "-k", "silent")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*not done within 0.3 s*"])
    ini = project.path / "pytest.ini"
    ini.write_text(ini.read_text() + "ringkit_timeout = 0.4\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "failing", "-k", "silent")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*not done within 0.4 s*"])
