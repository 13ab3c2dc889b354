"""One end of a device in a process of its own, so that kill -9 is real: `spawn` starts
``python -m ringkit.testing._child_main ...`` (`CHILD_MODULE`, whose docstring says what a child
prints) and `Child` talks to it; some hostile peers wait to be told when to go on (a line on
their stdin, `Child.tell`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc

from ._driver import DriverUnderTest
from ._world import World, within

CHILD_MODULE = "ringkit.testing._child_main"
"""The module a child runs (``python -m``); nothing imports it (its docstring says why)."""


class Child:
    """A running child end (see `spawn`)."""

    def __init__(self, process: anyio.abc.Process, role: str, timeout: float) -> None:
        self.process = process
        self.role = role
        self.timeout = timeout
        self._pending = b""

    async def expect(self, word: str) -> None:
        """Wait for the child to print `word` on a line of its own.

        Raises:
            AssertionError: it printed something else, exited first, or took too long.
        """
        line = await self.read_line(f"saying {word!r}")
        assert line == word, f"the {self.role} child process said {line!r}, expected {word!r}"

    async def read_line(self, what: str = "printing a line") -> str:
        """The next line the child prints (stripped); `what` names the wait in errors.

        Raises:
            WaitTimeout: nothing within the timeout.
            AssertionError: the child exited first.
        """
        assert self.process.stdout is not None
        with within(self.timeout, f"the {self.role} child process {what}"):
            while b"\n" not in self._pending:
                try:
                    self._pending += await self.process.stdout.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    code = await self.process.wait()
                    raise AssertionError(
                        f"the {self.role} child process exited ({code}) before {what} "
                        "(its stderr is in the captured output)") from None
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    async def tell(self, word: str) -> None:
        """Write `word` as a line to the child's stdin (a hostile peer waiting to go on)."""
        assert self.process.stdin is not None
        await self.process.stdin.send(f"{word}\n".encode())

    async def kill(self) -> None:
        """kill -9, and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()


def spawn(world: World, role: str, driver: DriverUnderTest, *, mode: str = "-",
          ) -> AbstractAsyncContextManager[Child]:
    """Run one end of `driver` in a child process (see the module docstring); killed with -9
    on the way out.  Backends act in dom0, frontends in the world's guest."""
    backend_side = role.endswith("backend")
    domid = world.dom0.domid if backend_side else world.guest_id
    peer = world.guest_id if backend_side else world.dom0.domid
    return _spawn(world, role, domid, peer, mode, driver)


@asynccontextmanager
async def _spawn(world: World, role: str, domid: int, peer: int, mode: str,
                 driver: DriverUnderTest) -> AsyncIterator[Child]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    command = [sys.executable, "-m", CHILD_MODULE, role, world.target,
               str(domid), str(peer), mode, driver.encode()]
    process = await anyio.open_process(command, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=None, env=env)
    child = Child(process, role, world.timeout)
    try:
        yield child
    finally:
        await child.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()

