"""The block driver pair on the simulated Xen, both ends in this process.

A model of the disk checks every read under random read/write/discard/flush sequences over
every ring shape (single page, multi-page, multi-queue) and with or without persistent grants
and indirect requests; read-only disks, the xenstore nodes, hostile frontends writing raw
requests into a real shared ring, and the leak accounting are checked too.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from ringkit.backends.block.device import BlockBackend
from ringkit.backends.block.service import ServiceConfig
from ringkit.frontends.block.device import BlockFrontend
from ringkit.frontends.block.errors import BlockIOError

from ringkit import ConfigError
from ringkit.abc import Domain
from ringkit.device import DeviceAddress, create_device
from ringkit.sim import SimXen

pytestmark = pytest.mark.anyio

DISK = 4 << 20


@dataclass
class World:
    xen: SimXen
    guest: int
    dom0: Domain
    domu: Domain
    address: DeviceAddress
    image: Path


@asynccontextmanager
async def world(tmp_path: Path, *, mode: str = "w", fill: bytes = b"\0"
                ) -> AsyncIterator[World]:
    image = tmp_path / "disk.img"
    image.write_bytes(fill * DISK)
    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            address = DeviceAddress("vbd", frontend_id=guest, backend_id=0, devid=51712)
            await create_device(dom0.store, address,
                                backend_nodes={"params": str(image), "mode": mode,
                                               "type": "raw"},
                                frontend_nodes={"virtual-device": 51712, "device-type": "disk"})
            yield World(xen, guest, dom0, domu, address, image)
            assert not domu.leaks(), domu.leaks()
            assert not dom0.leaks(), dom0.leaks()
        leaks = await xen.settled_leaks()
        assert not leaks, leaks


@asynccontextmanager
async def backend(w: World, config: ServiceConfig | None = None
                  ) -> AsyncIterator[BlockBackend]:
    async with anyio.create_task_group() as tg, BlockBackend(
            w.dom0, w.guest, w.address.devid, image=w.image, config=config) as be:
        tg.start_soon(lambda: be.run(once=True))
        yield be


@pytest.mark.parametrize(
    ("order", "queues", "persistent", "indirect"),
    [(0, 1, True, True), (2, 2, True, True), (0, 1, False, False), (4, 1, False, True)],
)
async def test_random_io_against_a_model(tmp_path: Path, order: int, queues: int,
                                         persistent: bool, indirect: bool) -> None:
    rng = random.Random(order * 10 + queues)
    model = bytearray(DISK)
    with anyio.fail_after(120):
        async with world(tmp_path) as w, backend(w, ServiceConfig(persistent=persistent)) as be:
            async with BlockFrontend(w.domu, 0, w.address.devid, ring_page_order=order,
                                     queues=queues, persistent=persistent,
                                     indirect=indirect, pool_pages=300) as disk:
                assert disk.info is not None and disk.info.persistent == persistent
                assert len(disk.queues) == queues
                for _ in range(40):
                    kind = rng.choice(["read", "write", "write", "discard", "flush"])
                    sectors = rng.choice([1, 8, 88, 89, 300, 2048])
                    offset = rng.randrange(0, DISK // 512 - sectors) * 512
                    length = sectors * 512
                    if kind == "write":
                        data = rng.randbytes(length)
                        await disk.write(offset, data)
                        model[offset:offset + length] = data
                    elif kind == "read":
                        assert await disk.read(offset, length) == model[offset:offset + length]
                    elif kind == "discard":
                        await disk.discard(offset, length)
                        model[offset:offset + length] = bytes(length)
                    else:
                        await disk.flush()
                # concurrent writers on disjoint ranges, then one big read
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        data = bytes([i + 1]) * 65536
                        model[i * 65536:(i + 1) * 65536] = data
                        tg.start_soon(disk.write, i * 65536, data)
                assert await disk.read(0, DISK) == model
                assert sum(s.stats.errors for s in be.services.values()) == 0
            await be.wait_finished()
            assert be.totals.requests > 40 and be.totals.errors == 0
            assert be.totals.sectors_written > 0 and be.totals.sectors_read > 0
        assert w.image.read_bytes() == model


async def test_xenstore_nodes_like_blkback(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with world(tmp_path) as w, backend(w) as be:
            async with BlockFrontend(w.domu, 0, w.address.devid) as disk:
                store, be_dir, fe_dir = w.dom0.store, w.address.backend_path, \
                    w.address.frontend_path
                expect = {
                    "sectors": str(DISK // 512), "info": "0", "sector-size": "512",
                    "feature-persistent": "1", "feature-flush-cache": "1",
                    "feature-barrier": "1", "feature-discard": "1",
                    "discard-granularity": "4096", "discard-alignment": "0",
                    "feature-max-indirect-segments": "256", "max-ring-page-order": "4",
                    "multi-queue-max-queues": "4", "state": "4",
                }
                for name, value in expect.items():
                    assert await store.read(f"{be_dir}/{name}") == value, name
                assert await store.read(f"{fe_dir}/protocol") == "x86_64-abi"
                assert await store.read(f"{fe_dir}/feature-persistent") == "1"
                assert disk.size == DISK
            await be.wait_finished()


async def test_read_only_disk(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with world(tmp_path, mode="r", fill=b"\x33") as w, backend(w) as be:
            async with BlockFrontend(w.domu, 0, w.address.devid) as disk:
                assert disk.info is not None and disk.info.readonly
                assert not disk.info.discard and not disk.info.flush
                assert await w.dom0.store.read(f"{w.address.backend_path}/info") == "4"
                assert await disk.read(4096, 8192) == b"\x33" * 8192
                with pytest.raises(ConfigError, match="read-only"):
                    await disk.write(0, bytes(512))
                # a frontend ignoring VDISK_READONLY gets BLKIF_RSP_ERROR, not a write
                client = disk.client
                client.info = dataclasses.replace(client.info, readonly=False)
                with pytest.raises(BlockIOError):
                    await disk.write(0, bytes(4096))
            await be.wait_finished()
        assert w.image.read_bytes() == b"\x33" * DISK


async def test_backend_without_optional_features(tmp_path: Path) -> None:
    config = ServiceConfig(max_indirect_segments=0, discard=False, flush=True, barrier=False,
                           persistent=False)
    with anyio.fail_after(30):
        async with world(tmp_path) as w, backend(w, config) as be:
            async with BlockFrontend(w.domu, 0, w.address.devid) as disk:
                assert disk.info is not None
                assert (disk.info.max_indirect_segments, disk.info.discard,
                        disk.info.persistent) == (0, False, False)
                await disk.write(8192, b"\x11" * 300_000 + bytes(512 - 300_000 % 512))
                await disk.flush()
                assert (await disk.read(8192, 4096)) == b"\x11" * 4096
            await be.wait_finished()
