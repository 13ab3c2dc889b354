"""The blkfront interop test's connections (test_interop_blkfront.py's `CONNECTIONS`, `serve`,
`detach`), on the simulated Xen with ringkit's own block frontend in Linux's place: the same
construction code, without a domU.

The first connection's backend serves its rings at depth behind the reordering disk and
answers out of ring order (`ServiceStats.reordered` > 0), every byte read back right; the
second (the negative control: in ring order, the backend's own engine) counts none.  Both end
by the toolstack's detach, as under real Xen.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from _slow_device import SlowDevice
from ringkit.frontends.block import ReadOp, WriteOp
from ringkit.frontends.block.device import BlockFrontend
from test_interop_blkfront import CONNECTIONS, DEVID, ObservedBackend, Reasons, detach, serve

from ringkit.device import DeviceAddress
from ringkit.sim import SimXen

pytestmark = pytest.mark.anyio

DISK = 4 << 20
SLOT = 256 << 10


@pytest.mark.parametrize(("connection", "negotiated"), [(0, (2, 2, True)), (1, (1, 0, False))],
                         ids=["first", "second"])
async def test_the_connections_serve_as_under_real_xen(
        tmp_path: Path, connection: int, negotiated: tuple[int, int, bool]) -> None:
    """What the real test asserts of each connection's negotiation (queues, ring order,
    persistent grants) from the frontend's same ask: 2 queues, 4 ring pages, persistent."""
    _, config, reorder = CONNECTIONS[connection]
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK)
    rng = random.Random(connection)
    with anyio.fail_after(120):
        async with SimXen.start(in_process=True) as xen:
            guest = await xen.create_domain("guest")
            async with xen.connect(0) as dom0, xen.connect(guest) as domu:
                address = DeviceAddress("vbd", guest, dom0.domid, DEVID)
                async with anyio.create_task_group() as tg:
                    backend: ObservedBackend = await tg.start(serve, dom0, address, image,
                                                              config, reorder, Reasons())
                    async with BlockFrontend(domu, dom0.domid, DEVID, ring_page_order=2,
                                             queues=2, persistent=True, indirect=True,
                                             pool_pages=600) as disk:
                        engines = [s.engine for s in backend.services.values()]
                        assert all(isinstance(e, SlowDevice) for e in engines) == bool(reorder)
                        # 16 writes of 4 KiB .. 256 KiB (indirect) at once, then read
                        # back at once
                        spans = [(i * SLOT, rng.randbytes(rng.choice([4096, 65536, SLOT])))
                                 for i in range(DISK // SLOT)]
                        with anyio.fail_after(60):
                            assert await disk.submit([WriteOp(o, d) for o, d in spans]) \
                                == [None] * len(spans)
                            await disk.flush()
                            buffers = [bytearray(len(d)) for _, d in spans]
                            assert await disk.submit([ReadOp(o, b) for (o, _), b
                                                      in zip(spans, buffers, strict=True)]) \
                                == [None] * len(spans)
                        assert buffers == [d for _, d in spans]
                        await detach(dom0.store, address)
            assert not domu.leaks(), domu.leaks()
            assert not dom0.leaks(), dom0.leaks()
    record = backend.connections[0]
    assert (record.queues, record.ring_page_order, record.persistent) == negotiated, record
    assert not record.refused, record.summary()
    totals = backend.totals
    assert totals.errors == totals.unsupported == 0, totals
    if reorder is not None:
        assert config.io_depth > 1
        assert totals.reordered > 0, totals
        assert record.fast_at_depth > 0, record.summary()
    else:
        assert config.io_depth == 1
        assert totals.reordered == 0, totals
        assert record.fast_at_depth == 0, record.summary()

