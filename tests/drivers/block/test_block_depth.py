"""The block backend at device speed: `io_depth` requests of a ring in service at once, the
event loop never waiting for the disk, WRITE_BARRIER draining, and O_DIRECT images.

The disk is made slow by hand (its reads and writes sleep in their worker thread), so that
what overlaps and in which order things finish is visible.  Negative controls: at depth 1 the
same load never overlaps; served without its drain, a barrier is overtaken by the request
behind it."""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import time
from pathlib import Path

import anyio
import pytest
from ringkit.backends.block.image import Image
from ringkit.backends.block.service import BlockService, ServiceConfig
from ringkit.frontends.block import ReadOp
from test_block_loopback import DISK, loopback

from ringkit.proto.blkif import Op
from ringkit.requests import IncomingRequest

pytestmark = pytest.mark.anyio

SLOW = 0.05


class Watch:
    """Counts what runs in the disk's threads at once, and the order things finish in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.finished: list[str] = []

    def slow(self, name: str, call: object) -> object:
        def run(*args: object) -> None:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(SLOW)
                call(*args)  # type: ignore[operator]
            finally:
                with self.lock:
                    self.running -= 1
                    self.finished.append(name)
        return run


def cold(image: Image, watch: Watch) -> None:
    """Make every read of `image` miss the page cache, and every disk access slow."""
    image.read_cached = lambda *args: False  # type: ignore[method-assign]
    image.read_into = watch.slow("read", image.read_into)  # type: ignore[method-assign]
    image.write_from = watch.slow("write", image.write_from)  # type: ignore[method-assign]


@pytest.mark.parametrize("depth", [1, 8])
async def test_reads_overlap_up_to_the_depth_and_the_loop_keeps_running(
        tmp_path: Path, depth: int) -> None:
    watch = Watch()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(SLOW / 10)
            ticks += 1

    async with loopback(tmp_path, config=ServiceConfig(io_depth=depth)) as (client, svc, _):
        cold(svc.image, watch)
        buffers = [bytearray(4096) for _ in range(16)]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                started = time.monotonic()
                results = await client.submit(
                    [ReadOp(i * 65536, b) for i, b in enumerate(buffers)])
                elapsed = time.monotonic() - started
                tg.cancel_scope.cancel()
    assert results == [None] * 16
    if depth == 1:   # the negative control: one at a time
        assert watch.most == 1
    else:
        assert watch.most == depth, watch.most
    # the event loop ran all along: the disk waits happen in threads
    assert ticks >= 0.5 * elapsed / (SLOW / 10), (ticks, elapsed)


async def test_a_barrier_waits_for_the_writes_before_it_and_holds_back_the_rest(
        tmp_path: Path) -> None:
    await _barrier_order(tmp_path, drain=True)


async def test_negative_control_without_the_drain_the_barrier_overtakes(
        tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="finished before"):
        await _barrier_order(tmp_path, drain=False)


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


async def _barrier_order(tmp_path: Path, *, drain: bool) -> None:
    watch = Watch()
    from ringkit.proto import blkif

    async with loopback(tmp_path, config=ServiceConfig(io_depth=8)) as (client, svc, grants):
        if not drain:
            _without_the_drain(svc)
        cold(svc.image, watch)
        svc.image.flush = watch.slow("flush", svc.image.flush)  # type: ignore[method-assign]
        grants.page(1000)[:] = b"\x11" * 4096
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
                await anyio.sleep(SLOW / 5)      # the write is in service
                tg.start_soon(barrier)
                await anyio.sleep(SLOW / 5)
                tg.start_soon(read_after)
    assert order.index("write") < order.index("barrier"), \
        f"the barrier finished before the write it must drain: {order}"
    assert order.index("barrier") < order.index("read"), \
        f"a request after the barrier finished before it: {order}"
    assert watch.finished.index("flush") < watch.finished.index("read"), watch.finished


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
