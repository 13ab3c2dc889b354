"""Issue 10 under real Xen (dom0 loopback, as reported): ``ringkit block serve`` in dom0, the
toolstack's ``online`` = 1, and a raw frontend in dom0 on the real gntalloc / evtchn devices
that flaps its state after connecting and then publishes a ring-ref never granted.  The
serving process must stay up, refuse both in xenstore (error node, Closed), and serve the next
well-behaved frontend each time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from _harness import kernel_backends_off
from _hostile_vbd import connect_and_flap, publish_bad_ring_ref, use_disk

from ringkit.device import DeviceAddress, error_node
from ringkit.xen import open_domain

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.xen,
    pytest.mark.anyio,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen"),
]

RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]
DEVID = 51728  # xvdb: clear of anything else a test in the same boot serves


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_block_serve_in_dom0_survives_a_hostile_frontend(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4 << 20))
    address = DeviceAddress("vbd", 0, 0, DEVID)
    report_node = error_node(address.backend_path)
    with kernel_backends_off(), anyio.fail_after(240):
        async with await anyio.open_process(
            [*RINGKIT, "block", "serve", str(image), "--frontend", "0", "--devid", str(DEVID)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        ) as server, open_domain() as dom:
            try:
                assert server.stdout is not None
                ready = b""
                while b"\n" not in ready:
                    ready += await server.stdout.receive()
                assert ready.startswith(b"ready: serving")
                await use_disk(dom, address)
                await connect_and_flap(dom, address)
                report = await dom.store.read(report_node)
                assert report.startswith("22 ") and "to XenbusStateConnected" in report, report
                assert server.returncode is None, "ringkit block serve exited"
                await use_disk(dom, address)
                await publish_bad_ring_ref(dom, address)
                report = await dom.store.read(report_node)
                assert report.split(" ", 1)[0].isdigit() and "gntdev" in report, report
                await use_disk(dom, address)
                assert server.returncode is None, "ringkit block serve exited"
                assert not dom.leaks(), dom.leaks()
            finally:
                server.terminate()
                await server.wait()
                for path in (address.frontend_path, address.backend_path):
                    if await dom.store.exists(path):
                        await dom.store.rm(path)
