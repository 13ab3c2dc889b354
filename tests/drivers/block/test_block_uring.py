"""`IoRing` (io_uring awaited from anyio) and the engine choice around it.

Pipes make the kernel hold a request as long as a test likes (a read of an empty pipe waits
for a writer), so "many in flight", "answered out of order" and "cancelled while the kernel
holds the buffer" are the kernel's real behaviour, not a simulation.  Negative controls: the
same cancellation without the shielded wait lets the kernel write into the buffer after its
waiter is gone; a pipe read that is never cancelled never completes.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from ringkit.backends.block import engine as engine_module
from ringkit.backends.block.config import InvalidSetting, ServiceConfig
from ringkit.backends.block.engine import ThreadEngine, UringEngine, open_engine, uring_unavailable

from ringkit import ConfigError
from ringkit._native._uring import Uring
from ringkit.uring import IoRing

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(bool(uring_unavailable()),
                                 reason=f"io_uring unavailable: {uring_unavailable()}")]


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made: list[tuple[int, int]] = []
    yield made
    for r, w in made:
        os.close(r)
        os.close(w)


def new_pipe(pipes: list[tuple[int, int]]) -> tuple[int, int]:
    pair = os.pipe()
    pipes.append(pair)
    return pair


async def test_reads_and_writes_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(8192))
    ring = IoRing(8)
    fd = os.open(path, os.O_RDWR)
    try:
        a, b = b"a" * 1000, b"b" * 3000
        assert await ring.writev(fd, [memoryview(a), memoryview(b)], 100) == 4000
        await ring.fdatasync(fd)
        out = bytearray(4000)
        assert await ring.readv(fd, [memoryview(out)[:10], memoryview(out)[10:]], 100) == 4000
        assert out == a + b
        await ring.fallocate(fd, 0x03, 0, 4096)        # punch a hole, keep the size
        assert path.read_bytes()[:4096] == bytes(4096)
        assert path.stat().st_size == 8192
    finally:
        os.close(fd)
        await ring.aclose()
    assert ring.closed


async def test_short_reads_are_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    ring = IoRing(8)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(4096)
        assert await ring.readv(fd, [memoryview(buf)], 4000) == 1000
        assert buf[:1000] == b"x" * 1000 and buf[1000:] == bytes(3096)
        assert await ring.readv(fd, [memoryview(buf)], 5000) == 0
    finally:
        os.close(fd)
        await ring.aclose()


async def test_errors_are_per_request(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 16))
    ring = IoRing(8)
    fd = os.open(path, os.O_RDONLY)
    direct = os.open(path, os.O_RDONLY | os.O_DIRECT)
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    results: dict[str, object] = {}

    async def attempt(name: str, fd: int, buf: memoryview, offset: int) -> None:
        try:
            results[name] = await ring.readv(fd, [buf], offset)
        except OSError as exc:
            results[name] = exc.errno

    with mmap.mmap(-1, 8192) as area:
        view = memoryview(area)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(attempt, "ebadf", closed, view[:4096], 0)
                tg.start_soon(attempt, "misaligned-buffer", direct, view[1:4097], 0)
                tg.start_soon(attempt, "misaligned-offset", direct, view[:4096], 100)
                tg.start_soon(attempt, "good", fd, view[4096:], 0)
        finally:
            view.release()
            os.close(fd)
            os.close(direct)
            await ring.aclose()
    assert results == {"ebadf": errno.EBADF, "misaligned-buffer": errno.EINVAL,
                       "misaligned-offset": errno.EINVAL, "good": 4096}


async def test_many_in_flight_complete_out_of_order_while_the_loop_runs(
        pipes: list[tuple[int, int]]) -> None:
    ring = IoRing(32)
    pairs = [new_pipe(pipes) for _ in range(32)]
    bufs = [bytearray(8) for _ in pairs]
    order: list[int] = []
    ticks = 0

    async def read(i: int) -> None:
        n = await ring.readv(pairs[i][0], [memoryview(bufs[i])], 0)
        assert n == 8
        order.append(i)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with anyio.create_task_group() as readers:
                for i in range(32):
                    readers.start_soon(read, i)
                while ring.in_flight < 32:
                    await anyio.sleep(0.001)
                await anyio.sleep(0.02)
                assert order == [] and ring.in_flight == 32
                for i in reversed(range(32)):       # the "device" finishes them backwards
                    os.write(pairs[i][1], i.to_bytes(8, "little"))
                    await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert order == list(reversed(range(32)))
    assert [int.from_bytes(b, "little") for b in bufs] == list(range(32))
    assert ticks > 10
    assert ring.in_flight == 0
    await ring.aclose()


async def test_more_requests_than_entries_wait_for_a_slot(
        pipes: list[tuple[int, int]]) -> None:
    ring = IoRing(8)
    r, w = new_pipe(pipes)
    done = 0

    async def read() -> None:
        nonlocal done
        assert await ring.readv(r, [memoryview(bytearray(1))], 0) == 1
        done += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(read)
            await anyio.sleep(0.05)
            assert ring.in_flight == ring.entries == 8
            os.write(w, b"x" * 40)
    assert done == 40
    await ring.aclose()


async def test_a_cancelled_waiter_leaves_nothing_in_the_kernel(
        pipes: list[tuple[int, int]]) -> None:
    ring = IoRing(8)
    r, w = new_pipe(pipes)
    buf = bytearray(b"untouched")
    with anyio.fail_after(10):
        with anyio.move_on_after(0.05) as scope:
            await ring.readv(r, [memoryview(buf)], 0)
    assert scope.cancelled_caught
    # the request was cancelled in the kernel and its completion reaped before the
    # cancellation went on: the kernel holds nothing, later data goes nowhere near `buf`
    assert ring.in_flight == 0
    os.write(w, b"too late!")
    await anyio.sleep(0.05)
    assert buf == b"untouched"
    assert os.read(r, 100) == b"too late!"
    await ring.aclose()


class _CarelessRing(IoRing):
    """Broken on purpose: a waiter that is cancelled leaves at once, its request still in the
    kernel (no cancel, no shielded wait for the completion)."""

    async def _complete(self, request: Any) -> int:
        await self._wait(request)
        result: int = request.result
        return result


async def test_negative_control_without_the_shielded_wait_the_kernel_writes_later(
        pipes: list[tuple[int, int]]) -> None:
    ring = _CarelessRing(8)
    r, w = new_pipe(pipes)
    buf = bytearray(b"untouched")
    with anyio.fail_after(10):
        with anyio.move_on_after(0.05):
            await ring.readv(r, [memoryview(buf)], 0)
        assert ring.in_flight == 1             # the kernel still holds the buffer...
        os.write(w, b"too late!")
        while buf == b"untouched":
            await anyio.sleep(0.005)
        assert buf == b"too late!"             # ...and wrote into it after its waiter left
        # the next waiter reaps the stray completion along with its own
        r2, w2 = new_pipe(pipes)
        os.write(w2, b"x")
        assert await ring.readv(r2, [memoryview(bytearray(1))], 0) == 1
    assert ring.in_flight == 0
    await ring.aclose()


async def test_cancelling_one_of_many_waiters_keeps_the_others_served(
        pipes: list[tuple[int, int]]) -> None:
    """Whichever task is the reaper, cancelling it hands the role on."""
    ring = IoRing(8)
    pairs = [new_pipe(pipes) for _ in range(4)]
    got: dict[int, bytes] = {}

    async def read(i: int, scope: anyio.CancelScope) -> None:
        with scope:
            buf = bytearray(1)
            await ring.readv(pairs[i][0], [memoryview(buf)], 0)
            got[i] = bytes(buf)

    scopes = [anyio.CancelScope() for _ in pairs]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i, scope in enumerate(scopes):
                tg.start_soon(read, i, scope)
            while ring.in_flight < 4:
                await anyio.sleep(0.001)
            scopes[0].cancel()       # the first to wait: the reaper
            scopes[2].cancel()
            await anyio.sleep(0.02)
            for i in (1, 3):
                os.write(pairs[i][1], bytes([i]))
    assert got == {1: b"\x01", 3: b"\x03"}
    assert ring.in_flight == 0
    await ring.aclose()


def test_the_kernel_keeps_the_buffer_exported_until_the_completion_is_reaped(
        pipes: list[tuple[int, int]]) -> None:
    uring = Uring(4)
    r, w = new_pipe(pipes)
    area = mmap.mmap(-1, 4096)
    uring.readv(r, [memoryview(area)], 0, 1)   # no reference kept here
    with pytest.raises(BufferError):   # the ring still holds it: it cannot be unmapped
        area.close()
    os.write(w, b"x")
    while not (done := uring.reap()):
        time.sleep(0.001)
    assert done == [(1, 1)]
    area.close()                       # released with the completion
    uring.close()


def test_close_cancels_and_waits_for_what_is_in_flight(pipes: list[tuple[int, int]]) -> None:
    uring = Uring(4)
    r, w = new_pipe(pipes)
    buf = bytearray(4)
    uring.readv(r, [memoryview(buf)], 0, 1)
    assert uring.in_flight == 1
    uring.close()                      # would block forever without the cancel
    assert uring.closed
    os.write(w, b"late")
    assert buf == bytes(4)
    with pytest.raises(OSError) as info:
        uring.fsync(r, 2)
    assert info.value.errno == errno.EBADF


def test_submissions_the_kernel_cannot_take_are_refused_up_front() -> None:
    uring = Uring(2)
    with pytest.raises(OSError) as info:
        uring.readv(0, [], 0, 1)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(TypeError):     # a read into read-only memory
        uring.readv(0, [memoryview(b"ro")], 0, 1)
    assert uring.in_flight == 0
    uring.close()


def test_the_engine_falls_back_to_threads_where_io_uring_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine("auto", 4)
    assert isinstance(engine, UringEngine)
    engine.ring.close()
    assert isinstance(open_engine("threads", 4), ThreadEngine)

    class Refused:
        def __init__(self, entries: int) -> None:
            raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(engine_module, "IoRing", Refused)
    assert isinstance(open_engine("auto", 4), ThreadEngine)
    with pytest.raises(ConfigError, match="io_uring is unavailable"):
        open_engine("uring", 4)
    assert "not permitted" in uring_unavailable()


def test_io_engine_is_validated() -> None:
    assert ServiceConfig().io_engine == "auto"
    with pytest.raises(InvalidSetting, match="one of 'auto', 'uring', 'threads'"):
        ServiceConfig(io_engine="aio")
