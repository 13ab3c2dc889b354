"""BlockClient against BlockService with no transport: the request logic of both ends.

The two meet on one in-memory ring (`RingPair`): the client's request queue on its front half,
the service's request server (`serve_ring`) on its back half; the client's pool is pages the
frontend shares through `ringkit.testing.memory`'s grants, which the service maps.  Raw requests
go to the service through `answer_slot`, the layer's one-request path.  A bytearray model of the
disk checks every read.
"""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from ringkit.backends.block.image import Image
from ringkit.backends.block.queue import serve_ring
from ringkit.backends.block.service import BlockService, ServiceConfig
from ringkit.frontends.block.client import BlockClient, DiskInfo
from ringkit.frontends.block.errors import BlockIOError, BlockNotSupportedError

from ringkit import ConfigError, RemoteProtocolError
from ringkit.abc import PAGE_SIZE, SharedPages
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantMapper, GrantPool, answer_slot
from ringkit.testing.memory import MemoryGrantTable, memory_event_pair, memory_grants

DISK = 4 << 20
FRONT, BACK = 1, 0


@dataclass
class Grants:
    """The frontend's grant table, the pool it shared (the client's pages) and the backend's
    table, which the service maps them through."""

    front: MemoryGrantTable
    pool: SharedPages
    back: MemoryGrantTable

    def ref(self, index: int) -> int:
        """The grant ref of pool page `index`."""
        return self.pool.refs[index]

    def page(self, index: int) -> memoryview:
        """Pool page `index`, as the frontend sees it."""
        return self.pool.buffer[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]


async def share_pool(pages: int) -> Grants:
    front, back = memory_grants(FRONT, BACK)
    return Grants(front, await front.share(BACK, pages), back)


class RingPair:
    """A `BlockClient` on one in-memory blkif ring, its pool the pages `pool` shares, with the
    ring's backend half left to the test (`back`, a raw `BackRing`, and `back_event`) -- to
    serve it (`serve_ring`) or to answer by hand.  Run `client.run` (or call
    `client.queue.poll()`) for the answers to land."""

    def __init__(self, pool: SharedPages, info: DiskInfo, **client_args: Any) -> None:
        self.ring = bytearray(PAGE_SIZE)
        self.front_event, self.back_event = memory_event_pair(FRONT, BACK)
        self.front = FrontRingChannel(FrontRing.init(self.ring, blkif.RING_LAYOUT),
                                      self.front_event)
        self.back = BackRing.attach(self.ring, blkif.RING_LAYOUT)
        self.back_channel = BackRingChannel(BackRing.attach(self.ring, blkif.RING_LAYOUT),
                                            self.back_event)
        self.client = BlockClient([self.front], GrantPool(pool.buffer, pool.refs), info,
                                  **client_args)

    def answer(self, response: blkif.Response) -> None:
        """Put one response on the ring by hand (the backend half `back`) and ring the bell."""
        self.back.put_response(blkif.encode_response(response.id, response.operation,
                                                     response.status))
        if self.back.push_responses():
            self.back_event.notify()


@asynccontextmanager
async def loopback(tmp_path: Path, *, persistent: bool = True, indirect: int = 256,
                   readonly: bool = False, pool_pages: int = 300,
                   config: ServiceConfig | None = None,
                   ) -> AsyncIterator[tuple[BlockClient, BlockService, Grants]]:
    path = tmp_path / "disk.img"
    if not path.exists():
        path.write_bytes(bytes(DISK))
    grants = await share_pool(pool_pages)
    config = config or ServiceConfig(max_indirect_segments=indirect)
    with Image(path, readonly=readonly, direct=config.direct) as image:
        mapper = GrantMapper(grants.back, FRONT, persistent=persistent)
        service = BlockService(image, mapper, config)
        info = DiskInfo(sectors=image.sectors, readonly=readonly,
                        max_indirect_segments=config.max_indirect_segments,
                        flush=config.flush, barrier=config.barrier, discard=config.discard,
                        persistent=persistent)
        ring = RingPair(grants.pool, info)

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_ring, ring.back_channel, service)
            tg.start_soon(ring.client.run)
            yield ring.client, service, grants
            tg.cancel_scope.cancel()
        await service.aclose()
        await mapper.aclose()
    assert grants.back.live == (pool_pages, 0)      # every mapping gone, the pool still shared
    await grants.pool.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(("persistent", "indirect", "io_depth", "direct"),
                         [(True, 256, 1, False), (False, 0, 1, False), (False, 64, 1, False),
                          (True, 256, 16, False), (True, 256, 8, True), (False, 0, 4, True)])
async def test_random_io_matches_model(tmp_path: Path, persistent: bool, indirect: int,
                                       io_depth: int, direct: bool) -> None:
    rng = random.Random(4242 + indirect + io_depth)
    model = bytearray(DISK)
    config = ServiceConfig(max_indirect_segments=indirect, io_depth=io_depth, direct=direct)
    async with loopback(tmp_path, persistent=persistent, indirect=indirect,
                        config=config) as (client, svc, _):
        with anyio.fail_after(60):
            for _ in range(60):
                kind = rng.choice(["read", "write", "write", "discard", "flush"])
                sectors = rng.choice([1, 7, 8, 9, 88, 89, 300, 2048, 2100])
                offset = rng.randrange(0, DISK // 512 - sectors) * 512
                length = sectors * 512
                if kind == "write":
                    data = rng.randbytes(length)
                    await client.write(offset, data)
                    model[offset:offset + length] = data
                elif kind == "read":
                    assert await client.read(offset, length) == model[offset:offset + length]
                elif kind == "discard":
                    await client.discard(offset, length)
                    model[offset:offset + length] = bytes(length)
                else:
                    await client.flush()
            assert await client.read(0, DISK) == model
    assert (tmp_path / "disk.img").read_bytes() == model
    assert svc.stats.errors == 0


@pytest.mark.anyio
async def test_many_requests_in_flight(tmp_path: Path) -> None:
    async with loopback(tmp_path) as (client, _, _):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(client.write, i * 8192, bytes([i]) * 8192)
            results: dict[int, bytes] = {}

            async def read(i: int) -> None:
                results[i] = await client.read(i * 8192, 8192)

            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(read, i)
    assert all(results[i] == bytes([i]) * 8192 for i in range(64))
    assert client.in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("persistent", [True, False])
async def test_persistent_grants_map_each_page_once(tmp_path: Path, persistent: bool) -> None:
    async with loopback(tmp_path, persistent=persistent, pool_pages=20) as (client, svc,
                                                                            grants):
        for _ in range(10):
            await client.write(0, bytes(11 * 4096))
        if persistent:
            assert grants.back.pages_mapped <= 20
            assert svc.mapper.persistent_count <= 20
        else:  # negative control: without persistent grants every write maps its 11 pages
            assert grants.back.pages_mapped == 10 * 11


@pytest.mark.anyio
async def test_read_only_disk(tmp_path: Path) -> None:
    (tmp_path / "disk.img").write_bytes(b"\x5a" * DISK)
    async with loopback(tmp_path, readonly=True) as (client, _svc, _):
        assert await client.read(512, 1024) == b"\x5a" * 1024
        with pytest.raises(ConfigError, match="read-only"):
            await client.write(0, bytes(512))
        # a frontend that ignores the read-only flag gets an error answer, not a write
        client.info = DiskInfo(sectors=client.info.sectors, discard=True, flush=True)
        with pytest.raises(BlockIOError):
            await client.write(0, bytes(512))
        with pytest.raises(BlockIOError):
            await client.discard(0, 4096)
        with pytest.raises(BlockIOError):
            await client.flush()
    assert (tmp_path / "disk.img").read_bytes() == b"\x5a" * DISK


@pytest.mark.anyio
async def test_client_refuses_bad_ranges(tmp_path: Path) -> None:
    async with loopback(tmp_path) as (client, _, _):
        for offset, length in [(1, 512), (0, 100), (-512, 512), (DISK, 512), (DISK - 512, 1024)]:
            with pytest.raises(ConfigError):
                await client.read(offset, length)


@pytest.mark.anyio
async def test_unsupported_features(tmp_path: Path) -> None:
    config = ServiceConfig(max_indirect_segments=0, discard=False, flush=False, barrier=False)
    async with loopback(tmp_path, config=config) as (client, _, _):
        with pytest.raises(BlockNotSupportedError):
            await client.discard(0, 512)
        with pytest.raises(BlockNotSupportedError):
            await client.flush()
        await client.write(0, bytes(1 << 20))  # split into direct requests only


async def handle(service: BlockService, slot: bytes) -> tuple[int, int, int]:
    """Serve one raw request slot as the ring would; the response's (id, operation, status)."""
    response = blkif.parse_response(await answer_slot(blkif.CODEC, service.answer, slot,
                                                      mapper=service.mapper))
    return response.id, response.operation, response.status


def _rw(op: int, sector: int, segs: list[tuple[int, int, int]], rid: int = 77) -> bytes:
    raw = bytearray(blkif.REQUEST_SIZE)
    struct.pack_into("<BBH4xQQ", raw, 0, op, len(segs), 0, rid, sector)
    for i, seg in enumerate(segs):
        struct.pack_into("<IBB", raw, 24 + 8 * i, *seg)
    return bytes(raw)


@pytest.mark.anyio
async def test_hostile_requests_get_error_answers(tmp_path: Path) -> None:
    async with loopback(tmp_path) as (client, svc, grants):
        sectors = DISK // 512
        read_only = await grants.front.share(BACK, writable=False)
        ro, ref = read_only.refs[0], grants.ref(0)
        unknown = max(ro, *grants.pool.refs) + 1
        cases = [
            (_rw(blkif.Op.READ, 0, [(unknown, 0, 7)]), blkif.Status.ERROR),   # unknown ref
            (_rw(blkif.Op.READ, 0, [(ro, 0, 7)]), blkif.Status.ERROR),        # RO grant, read
            (_rw(blkif.Op.READ, sectors - 7, [(ref, 0, 7)]), blkif.Status.ERROR),  # past end
            (_rw(blkif.Op.READ, 2**64 - 1, [(ref, 0, 0)]), blkif.Status.ERROR),
            (_rw(blkif.Op.WRITE, 0, [(ref, 6, 5)]), blkif.Status.ERROR),     # reversed
            (_rw(blkif.Op.WRITE, 0, [(ref, 0, 8)]), blkif.Status.ERROR),     # past the page
            (_rw(blkif.Op.WRITE, 0, []), blkif.Status.ERROR),                 # no segments
            (_rw(4, 0, [(ref, 0, 7)]), blkif.Status.EOPNOTSUPP),               # reserved op
            (_rw(200, 0, []), blkif.Status.EOPNOTSUPP),
        ]
        for slot, status in cases:
            rid, op, got = await handle(svc, slot)
            assert (rid, op, got) == (77, slot[0], status)
        # indirect request whose list page is not a grant
        raw = bytearray(blkif.REQUEST_SIZE)
        struct.pack_into("<BBH4xQQH2xI", raw, 0, blkif.Op.INDIRECT, blkif.Op.READ, 20, 5, 0, 0,
                         unknown)
        assert await handle(svc, bytes(raw)) == (5, blkif.Op.READ, blkif.Status.ERROR)
        # the device still works afterwards
        await client.write(0, b"ok" * 256)
        assert await client.read(0, 512) == b"ok" * 256
        await read_only.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(("lie", "message"), [
    (lambda rid: blkif.Response(12345, blkif.Op.READ, 0), "not an id this queue issued"),
    (lambda rid: blkif.Response(rid, blkif.Op.READ, 7), "status 7"),
    (lambda rid: blkif.Response(rid, blkif.Op.WRITE, 0), "has operation 1"),
])
async def test_hostile_responses_poison_the_client(lie: object, message: str) -> None:
    """An answer for an id never issued, with an impossible status or for another
    operation: the read fails with RemoteProtocolError, and so does everything after."""
    grants = await share_pool(16)
    ring = RingPair(grants.pool, DiskInfo(sectors=DISK // 512))
    client = ring.client
    failed: list[BaseException] = []

    async def read() -> None:
        try:
            await client.read(0, 512)
        except RemoteProtocolError as exc:
            failed.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            while (slot := ring.back.take_request()) is None:
                await anyio.sleep(0.001)
            rid = struct.unpack_from("<Q", slot, 8)[0]
            ring.answer(lie(rid))  # type: ignore[operator]
            with pytest.raises(RemoteProtocolError, match=message):
                client.queue.poll()
    assert len(failed) == 1 and message in str(failed[0])
    with pytest.raises(RemoteProtocolError):
        await client.read(0, 512)


@pytest.mark.anyio
async def test_write_barrier_writes_and_flushes(tmp_path: Path) -> None:
    async with loopback(tmp_path) as (_, svc, grants):
        grants.page(3)[:] = b"\x42" * 4096
        slot = _rw(blkif.Op.WRITE_BARRIER, 16, [(grants.ref(3), 0, 7)], rid=9)
        assert await handle(svc, slot) == (9, blkif.Op.WRITE_BARRIER, blkif.Status.OKAY)
        assert svc.stats.flushes == 1
        # a barrier without data only drains and flushes, as in blkback
        bare = _rw(blkif.Op.WRITE_BARRIER, 0, [], rid=10)
        assert await handle(svc, bare) == (10, blkif.Op.WRITE_BARRIER, blkif.Status.OKAY)
        assert svc.stats.flushes == 2
    assert (tmp_path / "disk.img").read_bytes()[16 * 512:16 * 512 + 4096] == b"\x42" * 4096


@pytest.mark.anyio
async def test_secure_discard_not_offered(tmp_path: Path) -> None:
    async with loopback(tmp_path) as (_, svc, _g):
        slot = blkif.encode_request(blkif.DiscardRequest(3, 0, 0, 8, secure=True))
        assert await handle(svc, slot) == (3, blkif.Op.DISCARD, blkif.Status.EOPNOTSUPP)
        past = blkif.encode_request(blkif.DiscardRequest(4, 0, DISK // 512 - 4, 8, False))
        assert await handle(svc, past) == (4, blkif.Op.DISCARD, blkif.Status.ERROR)


@pytest.mark.anyio
async def test_partial_page_segments(tmp_path: Path) -> None:
    """Segments that cover the middle of their pages (as Linux's blkfront sends for unaligned
    bios) read and write exactly those sectors."""
    async with loopback(tmp_path) as (_, svc, grants):
        grants.page(4)[:] = bytes(range(256)) * 16
        grants.page(5)[:] = b"\xee" * 4096
        # write sectors 2..5 of pool page 4 then 0..0 of page 5 to disk sectors 100..104
        slot = _rw(blkif.Op.WRITE, 100, [(grants.ref(4), 2, 5), (grants.ref(5), 0, 0)], rid=1)
        assert await handle(svc, slot) == (1, blkif.Op.WRITE, blkif.Status.OKAY)
        grants.page(6)[:] = bytes(4096)
        slot = _rw(blkif.Op.READ, 101, [(grants.ref(6), 7, 7), (grants.ref(6), 1, 1)], rid=2)
        assert await handle(svc, slot) == (2, blkif.Op.READ, blkif.Status.OKAY)
        expect = (bytes(range(256)) * 16)[1024:3072] + b"\xee" * 512
        page = bytes(grants.page(6))
        assert page[7 * 512:] == expect[512:1024]
        assert page[512:1024] == expect[1024:1536]
    disk = (tmp_path / "disk.img").read_bytes()
    assert disk[100 * 512:105 * 512] == expect


@pytest.mark.anyio
@pytest.mark.parametrize("persistent", [True, False])
async def test_request_with_more_segments_than_iov_max(tmp_path: Path, persistent: bool
                                                       ) -> None:
    # preadv/pwritev take at most IOV_MAX (1024 on Linux) buffers; a backend offering up to
    # 4096 indirect segments must still serve a request that names more pages than that
    nseg = 2000
    (tmp_path / "disk.img").write_bytes(bytes(8 << 20))
    data = random.Random(7).randbytes(nseg * 4096)
    async with loopback(tmp_path, persistent=persistent, indirect=4096,
                        pool_pages=nseg + 8) as (client, svc, _):
        assert client.max_request_bytes >= len(data)
        with anyio.fail_after(30):
            await client.write(4096, data)
            assert await client.read(4096, len(data)) == data
        assert (svc.stats.requests, svc.stats.errors) == (2, 0)
    assert (tmp_path / "disk.img").read_bytes()[4096:4096 + len(data)] == data
