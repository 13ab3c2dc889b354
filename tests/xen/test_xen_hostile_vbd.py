"""Issue 10 under real Xen (dom0 loopback, as reported): ``ringkit block serve`` in dom0, the
toolstack's ``online`` = 1, and a raw frontend in dom0 on the real gntalloc / evtchn devices
that flaps its state after connecting and then publishes a ring-ref never granted.  The
serving process must stay up, refuse both in xenstore (error node, Closed), and serve the next
well-behaved frontend each time."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from _harness import kernel_backends_off
from _hostile_vbd import start_block_serve, survive_a_hostile_guest

from ringkit.device import DeviceAddress
from ringkit.xen import open_domain

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.xen,
    pytest.mark.anyio,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen"),
]

DEVID = 51728  # xvdb: clear of anything else a test in the same boot serves


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_block_serve_in_dom0_survives_a_hostile_frontend(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4 << 20))
    address = DeviceAddress("vbd", 0, 0, DEVID)
    with kernel_backends_off(), anyio.fail_after(240):
        server = await start_block_serve(
            [str(image), "--frontend", "0", "--devid", str(DEVID)]
        )
        async with server, open_domain() as dom:
            try:
                await survive_a_hostile_guest(server, dom, address, "gntdev")
            finally:
                server.terminate()
                await server.wait()
                for path in (address.frontend_path, address.backend_path):
                    if await dom.store.exists(path):
                        await dom.store.rm(path)
