"""Issue 10's report, on the simulated Xen: a guest that connects its vbd and then flaps the
frontend's ``state`` (Closing, Connected, Closing, Connected) used to make ``ringkit block
serve`` exit with status 1, and a ring-ref it could not map left the guest waiting in silence.
Now the process keeps serving: it answers each with an error node and Closed, and the guest's
next, well-behaved frontend reads and writes the disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from _hostile_vbd import connect_and_flap, publish_bad_ring_ref, use_disk

from ringkit.device import DeviceAddress, error_node
from ringkit.sim import SimXen

RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]
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
            report_node = error_node(address.backend_path)
            async with await anyio.open_process(
                [*RINGKIT, "block", "serve", str(image), "--dir", str(xen.directory),
                 "--frontend", str(guest)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            ) as server, xen.connect(guest) as domu:
                try:
                    assert server.stdout is not None
                    ready = b""
                    while b"\n" not in ready:
                        ready += await server.stdout.receive()
                    assert ready.startswith(b"ready: serving")
                    await use_disk(domu, address)  # a first, orderly connection
                    await connect_and_flap(domu, address)
                    report = await domu.store.read(report_node)
                    assert report.startswith("22 ") and "to XenbusStateConnected" in report
                    assert server.returncode is None, "ringkit block serve exited"
                    await use_disk(domu, address)  # the next frontend is served
                    await publish_bad_ring_ref(domu, address)
                    report = await domu.store.read(report_node)
                    assert report.startswith("22 ") and "grant ref" in report, report
                    await use_disk(domu, address)
                    assert server.returncode is None, "ringkit block serve exited"
                    assert not domu.leaks(), domu.leaks()
                finally:
                    server.terminate()
                    await server.wait()
            assert not await xen.settled_leaks()
