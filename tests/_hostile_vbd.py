"""A hostile guest against a block backend, as a raw frontend: real grants and ports, then bad
state moves or nodes.  Shared by the simulated-Xen test of ``ringkit block serve`` and its
real-Xen twin (tests/xen/test_xen_hostile_vbd.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
from anyio.abc import Process
from ringkit.frontends.block.device import BlockFrontend

from ringkit.abc import Domain
from ringkit.device import DeviceAddress, XenbusState, error_node

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


RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]


async def start_block_serve(args: list[str]) -> Process:
    """``ringkit block serve ARGS...``, once it said it is ready."""
    server = await anyio.open_process(
        [*RINGKIT, "block", "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert server.stdout is not None
        ready = b""
        while b"\n" not in ready:
            ready += await server.stdout.receive()
        assert ready.startswith(b"ready: serving"), ready
    except BaseException:
        server.kill()
        with anyio.CancelScope(shield=True):
            await server.aclose()
        raise
    return server


async def survive_a_hostile_guest(
    server: Process, dom: Domain, address: DeviceAddress, mapping_error: str
) -> None:
    """Against a running ``ringkit block serve``: an orderly frontend, the flap, an orderly
    frontend, a never-granted ring-ref (refused with `mapping_error` in the report), an
    orderly frontend -- the server up and nothing held by `dom` at the end."""
    report_node = error_node(address.backend_path)
    await use_disk(dom, address)
    await connect_and_flap(dom, address)
    report = await dom.store.read(report_node)
    assert report.startswith("22 ") and "to XenbusStateConnected" in report, report
    assert server.returncode is None, "ringkit block serve exited"
    await use_disk(dom, address)
    await publish_bad_ring_ref(dom, address)
    report = await dom.store.read(report_node)
    assert report.split(" ", 1)[0].isdigit() and mapping_error in report, report
    await use_disk(dom, address)
    assert server.returncode is None, "ringkit block serve exited"
    assert not dom.leaks(), dom.leaks()
