"""A kit child process (`ringkit.testing._child.spawn`) starts without a word on stderr: it used
to print runpy's ``RuntimeWarning: 'ringkit.testing._child' found in sys.modules ...`` every
time, because the package ``ringkit.testing`` imports the module it ran as ``__main__``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ringkit.testing import World
from ringkit.testing._child import CHILD_MODULE, spawn

from .drivers_under_test import echo_driver

pytestmark = pytest.mark.anyio

RUNPY_WARNING = "found in sys.modules after import of package"


def runpy_warnings(stderr: str) -> list[str]:
    """The lines of `stderr` that are runpy's warning about a module imported twice."""
    return [line for line in stderr.splitlines()
            if "RuntimeWarning" in line or RUNPY_WARNING in line]


async def test_a_kit_child_says_nothing_on_stderr_when_it_starts(
        world: World, capfd: pytest.CaptureFixture[str]) -> None:
    driver = echo_driver()
    await driver.create(world.dom0, world.guest_id)
    async with spawn(world, "backend", driver) as child:  # its stderr is the test's fd 2
        await child.expect("ready")
    stderr = capfd.readouterr().err
    assert not runpy_warnings(stderr), stderr


def test_the_child_module_runs_with_runtime_warnings_as_errors() -> None:
    # Nothing imports the child's module, so runpy has nothing to warn about; with -W error a
    # warning would end the run before the usage message.
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", CHILD_MODULE],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "usage: python -m ringkit.testing._child_main" in run.stderr, (
        run.stderr)
    assert not runpy_warnings(run.stderr), run.stderr


def test_negative_control_the_old_way_of_starting_a_child_is_caught() -> None:
    # The module the kit ran before is imported by the package, so runpy still warns about it:
    # the scan above sees that warning, and -W error turns it into a failed start.
    run = subprocess.run([sys.executable, "-m", "ringkit.testing._child"],
                         capture_output=True, text=True, timeout=60)
    found = runpy_warnings(run.stderr)
    assert len(found) == 1 and "'ringkit.testing._child' found in sys.modules" in found[0], (
        run.stderr)
    strict = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m",
                             "ringkit.testing._child"], capture_output=True, text=True, timeout=60)
    assert strict.returncode != 0 and "RuntimeWarning" in strict.stderr, strict.stderr
