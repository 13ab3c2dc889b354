"""The block drivers' ring plumbing on a real io/ring.h ring in a bytearray.

The backend's `serve_ring` and the frontend's `BlockClient` (its request queue) talk through
`FrontRing`/`BackRing` halves over one shared buffer (single and multi-page) and in-process
event channels; grants are pages the frontend shares through `ringkit.testing.memory`.  Hostile
peers write raw bytes into the ring.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from ringkit.backends.block.image import Image
from ringkit.backends.block.queue import serve_ring
from ringkit.backends.block.service import BlockService, ServiceConfig
from ringkit.frontends.block.client import BlockClient, DiskInfo

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.layout import SRING_HEADER_SIZE, SRING_REQ_PROD
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantMapper, GrantPool
from ringkit.testing.memory import (
    MemoryEventChannel,
    MemoryGrantTable,
    memory_event_pair,
    memory_grants,
)

DISK = 2 << 20
FRONT, BACK = 1, 0


@dataclass
class Rig:
    client: BlockClient
    service: BlockService
    grants: MemoryGrantTable
    """The backend's grant table (the service maps the client's pool through it)."""
    page: bytearray
    front_event: MemoryEventChannel
    back_event: MemoryEventChannel


@asynccontextmanager
async def rig(tmp_path: Path, order: int = 0, *, serve: bool = True) -> AsyncIterator[Rig]:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(DISK))
    page = bytearray(4096 << order)
    front = FrontRing.init(page, blkif.RING_LAYOUT)
    back = BackRing.attach(page, blkif.RING_LAYOUT)
    fe_ev, be_ev = memory_event_pair(FRONT, BACK)
    front_ch, back_ch = FrontRingChannel(front, fe_ev), BackRingChannel(back, be_ev)
    front_grants, grants = memory_grants(FRONT, BACK)
    pool = await front_grants.share(BACK, 256)
    with Image(path) as image:
        mapper = GrantMapper(grants, FRONT, persistent=True)
        service = BlockService(image, mapper, ServiceConfig())
        info = DiskInfo(sectors=image.sectors, max_indirect_segments=256, flush=True,
                        discard=True, barrier=True, persistent=True)
        client = BlockClient([front_ch], GrantPool(pool.buffer, pool.refs), info)

        async def receive() -> None:
            # what the device layer does: the loop's typed error means "disconnect"
            try:
                await client.run()
            except (RemoteProtocolError, PeerGoneError) as exc:
                errors.append(exc)

        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            if serve:
                tg.start_soon(serve_ring, back_ch, service)
            tg.start_soon(receive)
            yield Rig(client, service, grants, page, fe_ev, be_ev)
            tg.cancel_scope.cancel()
        await mapper.aclose()
    assert grants.live == (256, 0)
    await pool.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("order", [0, 2])
async def test_concurrent_random_io_over_the_ring(tmp_path: Path, order: int) -> None:
    rng = random.Random(order)
    model = bytearray(DISK)
    async with rig(tmp_path, order) as r:

        async def worker(index: int, seed: int) -> None:
            local = random.Random(seed)
            region = index * (DISK // 8)  # disjoint regions: concurrent writers never overlap
            for _ in range(15):
                sectors = local.choice([1, 8, 11 * 8, 100, 256])
                offset = region + local.randrange(0, DISK // 8 // 512 - sectors) * 512
                if local.random() < 0.6:
                    data = local.randbytes(sectors * 512)
                    await r.client.write(offset, data)
                    model[offset:offset + len(data)] = data
                else:
                    got = await r.client.read(offset, sectors * 512)
                    assert got == model[offset:offset + sectors * 512]

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for index in range(8):
                    tg.start_soon(worker, index, rng.randrange(1 << 30))
            await r.client.flush()
            assert await r.client.read(0, DISK) == model
    assert (tmp_path / "disk.img").read_bytes() == model


def _push_raw_request(page: bytearray, index: int, raw: bytes) -> None:
    """Play a hostile frontend: write a slot and bump req_prod by hand."""
    off = SRING_HEADER_SIZE + (index % blkif.RING_LAYOUT.entries(len(page))) * 112
    page[off:off + 112] = raw
    struct.pack_into("<I", page, SRING_REQ_PROD, index + 1)


@pytest.mark.anyio
async def test_hostile_frontend_bad_requests_get_errors_then_bad_index_disconnects(
        tmp_path: Path) -> None:
    page = bytearray(4096)
    FrontRing.init(page, blkif.RING_LAYOUT)
    back = BackRing.attach(page, blkif.RING_LAYOUT)
    fe_ev, be_ev = memory_event_pair(FRONT, BACK)
    back_ch = BackRingChannel(back, be_ev)
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(DISK))
    front_grants, grants = memory_grants(FRONT, BACK)
    pool = await front_grants.share(BACK, 4)
    ref = pool.refs[0]
    with Image(path) as image:
        service = BlockService(image, GrantMapper(grants, FRONT, persistent=False),
                               ServiceConfig())
        bad = [
            struct.pack("<BBH4xQQIBB2x", blkif.Op.READ, 1, 0, 1, 0, 9999, 0, 7),  # bad ref
            struct.pack("<BBH4xQQIBB2x", blkif.Op.READ, 1, 0, 2, DISK // 512, ref, 0, 0),
            struct.pack("<BBH4xQQIBB2x", blkif.Op.WRITE, 1, 0, 3, 0, ref, 3, 1),
            struct.pack("<BBH4xQQ", 77, 0, 0, 4, 0),
            struct.pack("<BBH4xQQ", blkif.Op.READ, 12, 0, 5, 0),
        ]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                done = anyio.Event()

                async def serve() -> None:
                    with pytest.raises(anyio.BrokenResourceError) as info:
                        await serve_ring(back_ch, service)
                    assert isinstance(info.value.__cause__, RemoteProtocolError)
                    done.set()

                tg.start_soon(serve)
                for i, raw in enumerate(bad):
                    _push_raw_request(page, i, raw.ljust(112, b"\0"))
                    fe_ev.notify()
                    await anyio.sleep(0.01)
                # the five answers, whole and in order
                while struct.unpack_from("<I", page, 8)[0] < len(bad):
                    await anyio.sleep(0.01)
                for i in range(len(bad)):
                    off = SRING_HEADER_SIZE + i * 112
                    rsp = blkif.parse_response(bytes(page[off:off + 16]))
                    expect = blkif.Status.EOPNOTSUPP if i == 3 else blkif.Status.ERROR
                    assert (rsp.id, rsp.status) == (i + 1, expect)
                    assert page[off + 9] == 0 and page[off + 12:off + 16] == bytes(4)
                # now a producer index 1000 ahead: a ring overflow -> the backend disconnects
                struct.pack_into("<I", page, SRING_REQ_PROD, 1000)
                fe_ev.notify()
                await done.wait()
    assert grants.live == (4, 0)
    await pool.aclose()


@pytest.mark.anyio
async def test_hostile_backend_unknown_id_fails_callers(tmp_path: Path) -> None:
    async with rig(tmp_path, serve=False) as r:
        back = BackRing.attach(r.page, blkif.RING_LAYOUT)
        back_ch = BackRingChannel(back, r.back_event)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async def answer_wrongly() -> None:
                    slot = await back_ch.receive()
                    rid = struct.unpack_from("<Q", slot, 8)[0]
                    await back_ch.send(blkif.encode_response(rid + 1000, blkif.Op.READ, 0))

                tg.start_soon(answer_wrongly)
                with pytest.raises(RemoteProtocolError, match="not an id this queue issued"):
                    await r.client.read(0, 4096)
            with pytest.raises(RemoteProtocolError):
                await r.client.write(0, bytes(512))


@pytest.mark.anyio
async def test_hostile_backend_bad_status(tmp_path: Path) -> None:
    async with rig(tmp_path, serve=False) as r:
        back_ch = BackRingChannel(BackRing.attach(r.page, blkif.RING_LAYOUT), r.back_event)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async def answer() -> None:
                    slot = await back_ch.receive()
                    rid = struct.unpack_from("<Q", slot, 8)[0]
                    await back_ch.send(blkif.encode_response(rid, blkif.Op.WRITE, -9))

                tg.start_soon(answer)
                with pytest.raises(RemoteProtocolError, match="status -9"):
                    await r.client.write(0, bytes(4096))


@pytest.mark.anyio
async def test_backend_gone_fails_waiters(tmp_path: Path) -> None:
    async with rig(tmp_path, serve=False) as r:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async def die() -> None:
                    await anyio.sleep(0.05)
                    await r.back_event.aclose()   # the backend's end closes

                tg.start_soon(die)
                with pytest.raises(PeerGoneError):
                    await r.client.read(0, 4096)
