"""The block backend at device speed: `io_depth` requests of a ring in service at once, the
event loop never waiting for the disk, WRITE_BARRIER draining, FLUSH covering every answered
write, and O_DIRECT images -- on both I/O engines (io_uring and worker threads).

The disk is made slow by hand -- its accesses sleep in their worker thread (thread engine), or a
`SlowDevice` (tests/_slow_device.py) in front of io_uring waits a random while before each -- so
that what overlaps and in which order things finish is visible.  Behind a `SlowDevice`, a ring
served at depth answers out of ring order (`ServiceStats.reordered`), every answer right.
Negative controls: at depth 1 the same load never overlaps, nor reorders; served without its
drain, a barrier is overtaken by the request behind it; a device that answers writes before
they are in the file is caught by the flush check."""

from __future__ import annotations

import mmap
import os
import random
import tempfile
import threading
from pathlib import Path

import anyio
import pytest
from _slow_device import SLOW, SlowDevice, Watch
from ringkit.backends.block.engine import uring_unavailable
from ringkit.backends.block.image import Image
from ringkit.backends.block.service import BlockService, ServiceConfig
from ringkit.frontends.block import ReadOp, WriteOp
from test_block_loopback import DISK, loopback

from ringkit.proto.blkif import Op
from ringkit.requests import IncomingRequest

pytestmark = pytest.mark.anyio

ENGINES = ["threads", pytest.param("uring", marks=pytest.mark.skipif(
    bool(uring_unavailable()), reason=f"io_uring unavailable: {uring_unavailable()}"))]


def cold(svc: BlockService, watch: Watch) -> None:
    """Make every read of `svc`'s image miss the page cache, and every disk access slow: in
    the threads themselves for the thread engine, in a `SlowDevice` in front of io_uring."""
    image = svc.image
    image.read_cached = lambda *args: False  # type: ignore[method-assign]
    if svc.engine.name == "threads":
        image.read_into = watch.slow("read", image.read_into)  # type: ignore[method-assign]
        image.write_from = watch.slow("write", image.write_from)  # type: ignore[method-assign]
        image.flush = watch.slow("flush", image.flush)  # type: ignore[method-assign]
    else:
        svc.engine = SlowDevice(svc.engine, image, watch)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 8])
async def test_reads_overlap_up_to_the_depth_and_the_loop_keeps_running(
        tmp_path: Path, depth: int, engine: str) -> None:
    # each access waits until `depth` are in service at once and the loop ticked meanwhile
    watch = Watch(gather=depth, check_loop=True)

    async def ticker() -> None:
        while True:
            await anyio.sleep(SLOW / 10)
            with watch.lock:
                watch.ticks += 1

    config = ServiceConfig(io_depth=depth, io_engine=engine)
    async with loopback(tmp_path, config=config) as (client, svc, _):
        assert svc.engine.name == engine
        cold(svc, watch)
        buffers = [bytearray(4096) for _ in range(16)]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                results = await client.submit(
                    [ReadOp(i * 65536, b) for i, b in enumerate(buffers)])
                tg.cancel_scope.cancel()
    assert results == [None] * 16
    # never more than the depth (at depth 1, the negative control, one at a time); that it
    # reached the depth, and that the event loop ran while every access was in service, the
    # gate above makes a condition of finishing at all
    assert watch.most == depth, watch.most


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [8, 1])
async def test_a_reordering_device_at_depth_answers_out_of_ring_order(
        tmp_path: Path, depth: int, engine: str) -> None:
    """32 writes of random data, then 32 reads of it, each batch on the ring at once, behind a
    device that finishes each access after a random while: at depth 8 answers go out of ring
    order, each carrying the right data; at depth 1 (the negative control) none does."""
    rng = random.Random(depth)
    blocks = [rng.randbytes(4096) for _ in range(32)]
    config = ServiceConfig(io_depth=depth, io_engine=engine)
    async with loopback(tmp_path, config=config) as (client, svc, _):
        svc.image.read_cached = lambda *args: False  # type: ignore[method-assign]
        svc.engine = SlowDevice(svc.engine, svc.image, Watch(), delay=(0.001, 0.01))
        buffers = [bytearray(4096) for _ in blocks]
        with anyio.fail_after(60):
            written = await client.submit([WriteOp(i * 8192, b) for i, b in enumerate(blocks)])
            read = await client.submit([ReadOp(i * 8192, b) for i, b in enumerate(buffers)])
    assert written == read == [None] * 32
    assert buffers == blocks
    assert svc.stats.requests == 64 and svc.stats.errors == 0
    if depth == 1:
        assert svc.stats.reordered == 0
    else:
        assert 0 < svc.stats.reordered < 64, svc.stats


@pytest.mark.parametrize("engine", ENGINES)
async def test_negative_control_a_server_short_of_its_depth_never_finishes(
        tmp_path: Path, engine: str) -> None:
    """Asked to gather 8 accesses from a server that keeps 4 in service, the reads wait until
    the deadline: the gate of the overlap test fails a server that does not reach its depth."""
    watch = Watch(gather=8)
    config = ServiceConfig(io_depth=4, io_engine=engine)
    async with loopback(tmp_path, config=config) as (client, svc, _):
        cold(svc, watch)
        with anyio.move_on_after(2) as scope:
            await client.submit([ReadOp(i * 65536, bytearray(4096)) for i in range(16)])
        assert scope.cancelled_caught
        assert watch.most == 4
        with watch.lock:                # let what is in service drain before teardown
            watch.gathered = True
        with anyio.fail_after(30):
            while watch.running:
                await anyio.sleep(SLOW / 10)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_barrier_waits_for_the_writes_before_it_and_holds_back_the_rest(
        tmp_path: Path, engine: str) -> None:
    await _barrier_order(tmp_path, engine, drain=True)


@pytest.mark.parametrize("engine", ENGINES)
async def test_negative_control_without_the_drain_the_barrier_overtakes(
        tmp_path: Path, engine: str) -> None:
    with pytest.raises(AssertionError, match="finished before"):
        await _barrier_order(tmp_path, engine, drain=False)


def _without_the_drain(svc: BlockService) -> None:
    """Break `svc`'s drain: it decides to drain by a request's ``operation``, so a barrier
    that reads as a plain write there is served as a barrier (its slot says so) but undrained,
    alongside the requests around it."""
    handle = svc.handle

    async def undrained(incoming: IncomingRequest) -> tuple[int, int, int]:
        if incoming.operation == Op.WRITE_BARRIER:
            incoming.operation = Op.WRITE
        return await handle(incoming)

    svc.handle = undrained  # type: ignore[method-assign]


async def _barrier_order(tmp_path: Path, engine: str, *, drain: bool) -> None:
    watch = Watch()
    from ringkit.proto import blkif

    config = ServiceConfig(io_depth=8, io_engine=engine)
    async with loopback(tmp_path, config=config) as (client, svc, grants):
        if not drain:
            _without_the_drain(svc)
        cold(svc, watch)
        if isinstance(svc.engine, SlowDevice):   # no random order here: the drain decides
            svc.engine.rng = _Fixed()
        grants.page(0)[:] = b"\x11" * 4096
        order: list[str] = []

        async def write() -> None:
            await client.write(0, b"\x22" * 4096)
            order.append("write")

        async def barrier() -> None:
            async with client.queue.request() as req:
                blkif.encode_request_into(req.slot, 0, blkif.ReadWriteRequest(
                    blkif.Op.WRITE_BARRIER, req.id, 0, 0, blkif.SegmentArray([], b"", b"")))
                await client.queue.call(req)
            order.append("barrier")

        async def read_after() -> None:
            await client.read(65536, 4096)
            order.append("read")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                while not watch.running:         # the write is in service
                    await anyio.sleep(SLOW / 50)
                sent = client.queue.stats.sent
                tg.start_soon(barrier)
                while client.queue.stats.sent == sent:   # the barrier is on the ring
                    await anyio.sleep(SLOW / 50)
                tg.start_soon(read_after)
    assert order.index("write") < order.index("barrier"), \
        f"the barrier finished before the write it must drain: {order}"
    assert order.index("barrier") < order.index("read"), \
        f"a request after the barrier finished before it: {order}"
    assert watch.finished.index("flush") < watch.finished.index("read"), watch.finished


class _Fixed(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return SLOW


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_flush_covers_every_write_answered_before_it(tmp_path: Path,
                                                             engine: str) -> None:
    await _flush_covers(tmp_path, engine, early_ack=False)


@pytest.mark.parametrize("engine", ENGINES)
async def test_negative_control_a_device_answering_writes_early_is_caught(
        tmp_path: Path, engine: str) -> None:
    with pytest.raises(AssertionError, match="not in the file when the flush began"):
        await _flush_covers(tmp_path, engine, early_ack=True)


async def _flush_covers(tmp_path: Path, engine: str, *, early_ack: bool) -> None:
    """Crash consistency: writes to 16 blocks in service at once on a slow device that
    finishes them in its own order; a FLUSH sent once some were answered.  What the fdatasync
    made durable -- the file as it was when the flush began -- holds every write answered
    before the FLUSH was sent, whichever engine does the I/O."""
    watch = Watch()
    rng = random.Random(11)
    config = ServiceConfig(io_depth=16, io_engine=engine)
    async with (loopback(tmp_path, config=config) as (client, svc, _),
                anyio.create_task_group() as background):
            device = SlowDevice(svc.engine, svc.image, watch, copy_at_flush=True,
                                early_ack_tg=background if early_ack else None)
            # blocks 6.. stay in service until the FLUSH was sent, so that it overlaps them
            device.held = {i * 8192 for i in range(6, 16)}
            svc.engine = device
            blocks = {i: rng.randbytes(4096) for i in range(16)}
            answered: list[int] = []
            covered: list[int] = []

            async def write(i: int) -> None:
                await client.write(i * 8192, blocks[i])
                answered.append(i)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in blocks:
                        tg.start_soon(write, i)
                    while len(answered) < 6:
                        await anyio.sleep(SLOW / 20)
                    covered = list(answered)     # answered before the FLUSH is sent
                    await client.flush()
                    device.release.set()
    # (the early writes of the broken device have landed now: its task group is done)
    assert len(device.at_flush) == 1
    durable = device.at_flush[0]
    for i in covered:
        assert durable[i * 8192:i * 8192 + 4096] == blocks[i], \
            f"write {i} was answered before the FLUSH but not in the file when the flush began"
    assert len(covered) < len(blocks)    # the flush really overlapped other writes
    on_disk = (tmp_path / "disk.img").read_bytes()
    for i, data in blocks.items():
        assert on_disk[i * 8192:i * 8192 + 4096] == data


async def test_direct_images_read_and_write_through_bounces_where_unaligned(
        tmp_path: Path) -> None:
    """O_DIRECT with a 4 KiB alignment (what a 4 KiB-sector disk asks): 512-byte sectors and
    buffers that are not aligned go through the bounce buffer, a write as read-modify-write;
    two such writes into the same block from two threads both land."""
    path = tmp_path / "direct.img"
    data = bytearray(os.urandom(DISK))
    path.write_bytes(data)
    with Image(path, direct=True) as image:
        assert image.direct_alignment in (512, 1024, 2048, 4096)
        image.direct_alignment = 4096        # stricter than the disk: still valid O_DIRECT
        got = bytearray(1536)
        image.read_into([memoryview(got)[:512], memoryview(got)[512:]], 4096 + 512)
        assert got == data[4096 + 512:4096 + 2048]
        with mmap.mmap(-1, 8192) as aligned:  # an aligned buffer goes straight through
            view = memoryview(aligned)
            image.read_into([view], 8192)
            assert view == data[8192:16384]
            view.release()

        def write(sector: int) -> None:
            for _ in range(50):
                image.write_from([memoryview(bytes([sector]) * 512)], 65536 + sector * 512)

        threads = [threading.Thread(target=write, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    on_disk = path.read_bytes()
    for sector in range(8):    # all eight sectors of one 4 KiB block, from eight threads
        assert on_disk[65536 + sector * 512:65536 + (sector + 1) * 512] == bytes([sector]) * 512
    assert on_disk[:65536] == data[:65536] and on_disk[69632:] == data[69632:]


async def test_reads_the_page_cache_holds_are_served_without_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "cached.img"
    path.write_bytes(os.urandom(1 << 20))
    with Image(path) as image:
        buf = bytearray(4096)
        image.read_into([memoryview(buf)], 0)          # now cached
        assert image.read_cached([memoryview(buf)], 0, 4096)
        os.fsync(image.fd)
        os.posix_fadvise(image.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        # evicted: the cache cannot answer without the disk (negative control)
        assert not image.read_cached([memoryview(buf)], 0, 4096)
    with Image(path, direct=True) as image:
        assert not image.read_cached([memoryview(buf)], 0, 4096)   # direct: never cached


async def test_a_tmpfs_image_is_read_in_the_loop() -> None:
    """tmpfs refuses RWF_NOWAIT (EOPNOTSUPP) but never waits for a device: its reads stay in
    the event loop (sending each to a thread made 4 KiB random reads four times slower)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    with tempfile.NamedTemporaryFile(dir=shm) as f:
        data = os.urandom(1 << 16)
        f.write(data)
        f.flush()
        with pytest.raises(OSError):      # why: the flag itself is refused there
            os.preadv(f.fileno(), [memoryview(bytearray(4096))], 0, os.RWF_NOWAIT)
        with Image(f.name) as image:
            buf = bytearray(4096)
            assert image.read_cached([memoryview(buf)], 8192, 4096)
            assert buf == data[8192:12288]
