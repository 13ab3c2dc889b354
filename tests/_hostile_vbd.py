"""A hostile guest against a block backend, as a raw frontend: real grants and ports, then bad
state moves or nodes.  Shared by the simulated-Xen test of ``ringkit block serve`` and its
real-Xen twin (tests/xen/test_xen_hostile_vbd.py)."""

from __future__ import annotations

import os

import anyio
from ringkit.frontends.block.device import BlockFrontend

from ringkit.abc import Domain
from ringkit.device import DeviceAddress, XenbusState

S = XenbusState
NEVER_GRANTED = 0x7FFF_FFF0
"""A grant reference far beyond any grant table in use."""


async def wait_state(dom: Domain, path: str, want: XenbusState, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while await dom.store.read(f"{path}/state") != want.to_wire():
            await anyio.sleep(0.01)


async def use_disk(dom: Domain, address: DeviceAddress) -> None:
    """A well-behaved frontend writes and reads back through the backend."""
    async with BlockFrontend(dom, address.backend_id, address.devid) as disk:
        data = os.urandom(8192)
        await disk.write(4096, data)
        assert await disk.read(4096, 8192) == data


async def connect_and_flap(dom: Domain, address: DeviceAddress) -> None:
    """Connect with a real ring, then flap the frontend's state: Closing, Connected, Closing,
    Connected (issue 10's report); wait for the backend to settle at Closed."""
    fe, be = address.frontend_path, address.backend_path
    await dom.store.write(f"{fe}/state", S.INITIALISING.to_wire())
    await wait_state(dom, be, S.INIT_WAIT)
    async with (
        await dom.grants.share(address.backend_id, 1) as ring,
        await dom.events.alloc_unbound(address.backend_id) as port,
    ):
        await dom.store.write(f"{fe}/ring-ref", str(ring.refs[0]))
        await dom.store.write(f"{fe}/event-channel", str(port.port))
        await dom.store.write(f"{fe}/state", S.INITIALISED.to_wire())
        await wait_state(dom, be, S.CONNECTED)
        for value in (S.CLOSING, S.CONNECTED, S.CLOSING, S.CONNECTED):
            await dom.store.write(f"{fe}/state", value.to_wire())
            await anyio.sleep(0.05)
        await wait_state(dom, be, S.CLOSED)


async def publish_bad_ring_ref(dom: Domain, address: DeviceAddress) -> None:
    """Publish a ring-ref that was never granted (with a real port); the backend must refuse
    it -- Closed and an error node -- well within the wait here."""
    fe, be = address.frontend_path, address.backend_path
    await dom.store.write(f"{fe}/state", S.INITIALISING.to_wire())
    await wait_state(dom, be, S.INIT_WAIT)
    async with await dom.events.alloc_unbound(address.backend_id) as port:
        await dom.store.write(f"{fe}/ring-ref", str(NEVER_GRANTED))
        await dom.store.write(f"{fe}/event-channel", str(port.port))
        await dom.store.write(f"{fe}/state", S.INITIALISED.to_wire())
        await wait_state(dom, be, S.CLOSED, timeout=5)
