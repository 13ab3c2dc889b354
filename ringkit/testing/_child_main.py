"""The program a kit child process runs: one end of a device in a process of its own.

    python -m ringkit.testing._child_main ROLE TARGET DOMID PEER MODE DRIVER

ROLE is ``backend``, ``frontend``, ``hostile-frontend`` or ``hostile-backend``; TARGET is
``sim:DIR`` (a simulated Xen's directory) or ``xen`` (the real devices); DOMID the domain to act
in (ignored on real Xen), PEER the other end's domid, MODE the hostile mode ("-" for none) and
DRIVER a `DriverUnderTest` as `DriverUnderTest.encode` writes it.

A backend prints ``ready`` once it waits for a frontend and then serves until killed; a
frontend prints ``connected`` after its first successful exchange; hostile peers print what
`ringkit.testing._hostile` says.  `ringkit.testing._child.spawn` runs one from a test.

Nothing imports this module, and nothing may: ``python -m`` first imports the package
``ringkit.testing``, and runpy warns (a ``RuntimeWarning`` on every child's stderr) when that
import already brought in the module it is about to run as ``__main__``.
"""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager

import anyio

from ..abc import Domain
from ._driver import DriverUnderTest
from ._hostile import hostile_backend, hostile_frontend
from ._peer import say

ROLES = ("backend", "frontend", "hostile-frontend", "hostile-backend")


def _open(target: str, domid: int) -> AbstractAsyncContextManager[Domain]:
    if target.startswith("sim:"):
        from ..sim import connect

        return connect(target[4:], domid)
    from ..xen import open_domain

    return open_domain()


async def main(role: str, target: str, domid: int, peer: int, mode: str,
               driver: DriverUnderTest) -> None:
    """Play `role` for `driver` in domain `domid` of `target` (see the module docstring)."""
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


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] not in ROLES:
        raise SystemExit(f"usage: python -m ringkit.testing._child_main {{{','.join(ROLES)}}} "
                         "TARGET DOMID PEER MODE DRIVER")
    _role, _target, _domid, _peer, _mode, _driver = sys.argv[1:7]
    anyio.run(main, _role, _target, int(_domid), int(_peer), _mode,
              DriverUnderTest.decode(_driver))
