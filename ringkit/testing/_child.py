"""One end of a device in a process of its own, so that kill -9 is real.

    python -m ringkit.testing._child ROLE TARGET DOMID PEER MODE DRIVER

ROLE is ``backend``, ``frontend``, ``hostile-frontend`` or ``hostile-backend``; TARGET is
``sim:DIR`` (a simulated Xen's directory) or ``xen`` (the real devices); DOMID the domain to act
in (ignored on real Xen), PEER the other end's domid, MODE the hostile mode ("-" for none) and
DRIVER a `DriverUnderTest` as `DriverUnderTest.encode` writes it.

A backend prints ``ready`` once it waits for a frontend and then serves until killed; a
frontend prints ``connected`` after its first successful exchange; hostile peers print what
`ringkit.testing._hostile` says, and some wait to be told when to go on (a line on stdin,
`Child.tell`).  `spawn` runs one from a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc

from ..abc import Domain
from ._driver import DriverUnderTest
from ._hostile import hostile_backend, hostile_frontend
from ._peer import say
from ._world import World, within


def _open(target: str, domid: int) -> AbstractAsyncContextManager[Domain]:
    if target.startswith("sim:"):
        from ..sim import connect

        return connect(target[4:], domid)
    from ..xen import open_domain

    return open_domain()


async def main(role: str, target: str, domid: int, peer: int, mode: str,
               driver: DriverUnderTest) -> None:
    async with _open(target, domid) as dom:
        if role == "backend":
            async with driver.make_backend(dom, peer) as backend:
                say("ready")
                await backend.run()
        elif role == "frontend":
            async with driver.make_frontend(dom, peer) as frontend:
                await driver.exchange(frontend)
                say("connected")
                await frontend.wait_finished()
        elif role == "hostile-frontend":
            await hostile_frontend(dom, peer, driver, mode)
        elif role == "hostile-backend":
            await hostile_backend(dom, peer, driver, mode)
        else:
            raise SystemExit(f"unknown role {role!r}")


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
    command = [sys.executable, "-m", "ringkit.testing._child", role, world.target,
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


if __name__ == "__main__":
    _role, _target, _domid, _peer, _mode, _driver = sys.argv[1:7]
    anyio.run(main, _role, _target, int(_domid), int(_peer), _mode,
              DriverUnderTest.decode(_driver))
