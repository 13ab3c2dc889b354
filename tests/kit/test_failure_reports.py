"""How a failed conformance test reads in pytest's report: one line naming the check and the
cause first (the line pytest's short summary shows), then -- for a crash -- the cause's own
traceback; never the ExceptionGroups of the task groups between the check and the driver.
tests/kit/test_negative_controls.py holds the checks' exceptions to the same form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

KIT = Path(__file__).resolve().parent

PROJECT = f"""
import sys

import pytest

sys.path.insert(0, {str(KIT.parent)!r})
from kit.broken_drivers import CrashingFrontend, LeakyBackend, broken
from ringkit.sim import SimXen
from ringkit.testing import sim_world
from ringkit.testing.conformance import check_handshake
from ringkit.testing.pytest_plugin import DriverConformance

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class TestLeaky(DriverConformance):
    checks = ("handshake",)

    @pytest.fixture
    def ringkit_driver(self):
        yield broken(LeakyBackend)
        LeakyBackend.kept.clear()


class TestCrashing(DriverConformance):
    checks = ("handshake",)

    @pytest.fixture
    def ringkit_driver(self):
        return broken(frontend=CrashingFrontend)


async def test_bare_check_function():
    # The control: the check function itself, not through the suite, lets the crash out as
    # the task groups deliver it -- the form a conformance test used to report.
    async with SimXen.start(in_process=True) as xen:
        await check_handshake(broken(frontend=CrashingFrontend), lambda: sim_world(xen, 2))
"""

HEADER = re.compile(r"^_{3,} (\S+) _{3,}$")


def failure_sections(lines: list[str]) -> dict[str, list[str]]:
    """pytest's FAILURES sections by test name, each up to its captured output."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        header = HEADER.match(line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif line.startswith(("----", "====")):
            current = None
        elif current is not None:
            current.append(line)
    return sections


def reads_as_one_line(section: list[str], first: str) -> bool:
    """The section opens with `first` and holds no ExceptionGroup."""
    return bool(section) and section[0] == first and not any(
        "ExceptionGroup" in line for line in section)


def test_a_failed_check_reads_as_one_line_naming_the_check_and_the_cause(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the short summary's lines in full
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_broken=PROJECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rf",
                                           "--ringkit-timeout", "2")
    result.assert_outcomes(failed=3)
    sections = failure_sections(result.outlines)
    leaky = sections["TestLeaky.test_conformance[handshake-sim]"]
    assert reads_as_one_line(leaky, "handshake: leaked: dom0 (domain 0): grants=1"), leaky
    assert len(leaky) == 1, leaky  # the kit's verdict says it all: no traceback under it
    crashing = sections["TestCrashing.test_conformance[handshake-sim]"]
    assert reads_as_one_line(crashing, "handshake: RuntimeError: publish: out of cheese"), (
        crashing)
    # a crash comes with where in the driver it happened
    assert "The cause, RuntimeError:" in crashing, crashing
    assert any("broken_drivers.py" in line and "in publish" in line for line in crashing), (
        crashing)
    result.stdout.fnmatch_lines([
        "FAILED *TestLeaky::test_conformance?handshake-sim? - Failed: handshake: leaked: "
        "dom0 (domain 0): grants=1",
        "FAILED *TestCrashing::test_conformance?handshake-sim? - Failed: handshake: "
        "RuntimeError: publish: out of cheese",
    ])
    # Negative control: the same scan of the bare check's crash, which went through the task
    # groups, finds them.
    bare = sections["test_bare_check_function"]
    assert not reads_as_one_line(bare, "handshake: RuntimeError: publish: out of cheese")
    assert any("ExceptionGroup" in line for line in bare), bare
