"""Issue 10's report, on the simulated Xen: a guest that connects its vbd and then flaps the
frontend's ``state`` (Closing, Connected, Closing, Connected) used to make ``ringkit block
serve`` exit with status 1, and a ring-ref it could not map left the guest waiting in silence.
Now the process keeps serving: it answers each with an error node and Closed, and the guest's
next, well-behaved frontend reads and writes the disk."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from _hostile_vbd import start_block_serve, survive_a_hostile_guest

from ringkit.device import DeviceAddress
from ringkit.sim import SimXen

DEVID = 51712
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_block_serve_survives_a_hostile_guest_and_serves_the_next_frontend(
    tmp_path: Path,
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with anyio.fail_after(60):
        async with SimXen.start() as xen:
            guest = await xen.create_domain("guest")
            address = DeviceAddress("vbd", guest, 0, DEVID)
            server = await start_block_serve(
                [str(image), "--dir", str(xen.directory), "--frontend", str(guest)]
            )
            async with server, xen.connect(guest) as domu:
                try:
                    await survive_a_hostile_guest(server, domu, address, "grant ref")
                finally:
                    server.terminate()
                    await server.wait()
            assert not await xen.settled_leaks()
