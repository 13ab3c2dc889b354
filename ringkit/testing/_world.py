"""Where a driver test runs: a dom0 handle, a guest handle and (on the sim) the simulated Xen.

`sim_world` and `xen_world` hand out a `World`; leaving one checks, in order, that both domain
handles hold nothing, closes them, destroys the guest domain, and (on the sim) that the
simulator itself has released every grant, mapping, port, watch and transaction.  A leak fails
with an ``AssertionError`` that names what leaked and where.  `within` bounds a wait so a broken
driver fails with a message instead of hanging.  Nothing here imports pytest.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, fields
from typing import Literal

import anyio

from ..abc import Domain, Leaks
from ..sim import SimLeaks, SimXen

Transport = Literal["sim", "xen"]

DEFAULT_TIMEOUT = 10.0
"""Seconds any single wait of the kit may take before the test fails (see `within`)."""

_guests = itertools.count(1)


class WaitTimeout(AssertionError):
    """A wait the test kit bounds ran out: something hung."""


@contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Fail with `WaitTimeout` naming `what` if the block takes longer than `seconds`."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        raise WaitTimeout(
            f"{what}: not done within {seconds:g} s (a hang?  The limit is the ringkit "
            "timeout: the ringkit_timeout marker or --ringkit-timeout)"
        ) from exc


def describe(leaks: Leaks | SimLeaks) -> str:
    """The non-zero counters of `leaks`, e.g. ``grants=1, ports=2``."""
    skip = {"clients"}  # a connection still open is not a leak by itself
    return ", ".join(
        f"{f.name}={getattr(leaks, f.name)}"
        for f in fields(leaks)
        if f.name not in skip and getattr(leaks, f.name)
    )


def check_leaks(**handles: Domain) -> None:
    """Every named handle holds nothing; otherwise an AssertionError naming what leaked."""
    found = [f"{name} (domain {dom.domid}): {describe(dom.leaks())}"
             for name, dom in handles.items() if dom.leaks()]
    if found:
        raise AssertionError("leaked: " + "; ".join(found))


async def check_sim_leaks(xen: SimXen, timeout: float = DEFAULT_TIMEOUT) -> None:
    """The simulator holds nothing any more (once it processed every disconnect)."""
    leaks = await xen.settled_leaks(timeout)
    if leaks:
        raise AssertionError(f"leaked in the simulated Xen: {describe(leaks)}")


@dataclass
class World:
    """Two domain handles to run a device between, on one transport."""

    transport: Transport
    dom0: Domain
    """The backend's domain (dom0)."""
    guest: Domain
    """The frontend's domain: a fresh guest on the sim, dom0 itself (loopback) on real Xen."""
    xen: SimXen | None
    """The simulated Xen (None on real Xen)."""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def guest_id(self) -> int:
        """The guest domain's id."""
        return self.guest.domid

    @property
    def target(self) -> str:
        """How a child process reaches this world (see `ringkit.testing._child`)."""
        return "xen" if self.xen is None else f"sim:{self.xen.directory}"

    def within(self, what: str, seconds: float | None = None) -> AbstractContextManager[None]:
        """The module-level `within`, bounded by this world's timeout unless `seconds` is given."""
        return within(self.timeout if seconds is None else seconds, what)

    def check_leaks(self) -> None:
        """Both domain handles hold nothing; otherwise an AssertionError naming what leaked."""
        check_leaks(dom0=self.dom0, guest=self.guest)


@asynccontextmanager
async def sim_world(xen: SimXen, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[World]:
    """dom0 and a fresh guest domain on `xen`; the guest is destroyed on the way out."""
    guest_id = await xen.create_domain(f"guest{os.getpid()}-{next(_guests)}")
    try:
        async with xen.connect(0) as dom0, xen.connect(guest_id) as guest:
            world = World("sim", dom0, guest, xen, timeout)
            yield world
            world.check_leaks()
    finally:
        with anyio.CancelScope(shield=True):
            if any(d.domid == guest_id for d in await xen.list_domains()):
                await xen.destroy_domain(guest_id)
    await check_sim_leaks(xen, timeout)


@asynccontextmanager
async def xen_world(timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[World]:
    """Two handles on the real Xen this process runs in: the device loops back in that domain
    (frontend and backend both in it, as the real-Xen dom0 tests run drivers)."""
    from ..xen import open_domain

    async with open_domain() as dom0, open_domain() as guest:
        world = World("xen", dom0, guest, None, timeout)
        yield world
        world.check_leaks()


WorldMaker = Callable[[], AbstractAsyncContextManager[World]]
"""Makes a fresh `World` (and checks it for leaks on the way out): ``lambda: sim_world(xen)``."""


def xen_available() -> bool:
    """Whether this machine has the real Xen devices (gntalloc, gntdev, evtchn)."""
    return all(os.path.exists(f"/dev/xen/{d}") for d in ("gntalloc", "gntdev", "evtchn"))
