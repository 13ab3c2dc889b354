"""ringkit's pytest plugin from a driver project outside ringkit's tree: loaded by its entry
point alone, on pytest-asyncio (strict) and anyio (asyncio and trio); failures (a hang bounded
by the ringkit timeout, a leak) come with messages that say what happened; a project that
leaves pytest-asyncio's settings alone runs without a warning."""

from __future__ import annotations

import pytest

from .out_of_tree import BARE_INI, write_project

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


UNSET_LOOP_SCOPE = 'The configuration option "asyncio_default_fixture_loop_scope" is unset'


def assert_no_warning(result: pytest.RunResult) -> None:
    """The run printed no warning: none at configure time (under ``-W error::Deprecation
    Warning`` one there ends the run with an INTERNALERROR) and no warnings summary."""
    output = "\n".join(result.outlines + result.errlines)
    for sign in (UNSET_LOOP_SCOPE, "DeprecationWarning", "warnings summary", "INTERNALERROR"):
        assert sign not in output, output


def test_a_project_without_pytest_asyncio_settings_runs_without_a_warning(
        project: pytest.Pytester) -> None:
    # No asyncio_mode, no loop scopes: the plugin defaults pytest-asyncio's fixture loop scope
    # (pytest-asyncio warns when it is unset), and its fixtures in a pytest-asyncio test are
    # pytest-asyncio's own (in strict mode it warns about any other async fixture).
    # (Not -W error: anyio memory streams of the device layer are left to the garbage
    # collector, and their ResourceWarnings would fail the tests -- another matter.)
    (project.path / "pytest.ini").write_text(BARE_INI)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                          "error::DeprecationWarning", "-v", "tests", "-k",
                                          "device_pair or domains")
    assert_no_warning(result)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["asyncio: *asyncio_default_fixture_loop_scope=function*"])
    # The project's own setting wins over the plugin's default.
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                          "error::DeprecationWarning", "tests", "-k",
                                          "test_domains", "-o",
                                          "asyncio_default_fixture_loop_scope=module")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["asyncio: *asyncio_default_fixture_loop_scope=module*"])


def test_negative_control_without_the_plugin_the_same_project_warns(
        project: pytest.Pytester) -> None:
    # The same project with ringkit's plugin left out (collecting only: its fixtures are
    # missing) gets pytest-asyncio's warning, and the check above sees it.
    (project.path / "pytest.ini").write_text(BARE_INI)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:ringkit",
                                          "--collect-only", "-q", "tests")
    assert UNSET_LOOP_SCOPE in "\n".join(result.outlines + result.errlines)
    with pytest.raises(AssertionError, match="is unset"):
        assert_no_warning(result)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:ringkit", "-W",
                                          "error::DeprecationWarning", "--collect-only", "-q",
                                          "tests")
    with pytest.raises(AssertionError, match=r"INTERNALERROR|is unset"):
        assert_no_warning(result)
