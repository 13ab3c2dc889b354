"""A console `out` pipe with its producer and consumer in two processes pinned to different CPUs:
a 2 MiB byte stream, written and read in uneven chunks, arrives intact and in order."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

from ringkit import _native
from ringkit.proto.pipe import CONSOLE_OUT_PIPE, PipeConsumer, PipeProducer

TOTAL = 2 << 20
PERIOD = 65521  # prime, so a byte misplaced by any multiple of the ring size shows
PATTERN = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(PERIOD)) * 2
DEADLINE = 120.0  # only a guard against hangs


def expected(pos: int, n: int) -> bytes:
    out = bytearray()
    while n:
        start = pos % PERIOD
        take = min(n, PERIOD)
        out += PATTERN[start : start + take]
        pos += take
        n -= take
    return bytes(out)


def shared_page(path: str) -> mmap.mmap:
    """The page both processes share: a MAP_SHARED mapping of one file."""
    with open(path, "r+b") as file:
        return mmap.mmap(file.fileno(), 4096)


def producer(path: str, impl: str, cpu: int, errors: Any) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
        area = shared_page(path)
        tx = PipeProducer(area, CONSOLE_OUT_PIPE, index=0,
                          native=_native.implementations()[impl])
        pos = 0
        deadline = time.monotonic() + DEADLINE
        while pos < TOTAL:
            size = min(1 + (pos * 31) % 3000, TOTAL - pos)
            n = tx.write(expected(pos, size))
            if n == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"producer stalled at {pos}")
                os.sched_yield()
            pos += n
        tx.release()
    except BaseException:
        errors.put("producer: " + traceback.format_exc())
        raise SystemExit(1) from None


def consumer(path: str, impl: str, cpu: int, errors: Any) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
        area = shared_page(path)
        rx = PipeConsumer(area, CONSOLE_OUT_PIPE, index=0,
                          native=_native.implementations()[impl])
        buf = bytearray(2500)
        pos = 0
        deadline = time.monotonic() + DEADLINE
        while pos < TOTAL:
            n = rx.read_into(buf, 0, 1 + (pos * 17) % 2500)
            if n == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"consumer stalled at {pos}")
                os.sched_yield()
                continue
            if buf[:n] != expected(pos, n):
                raise AssertionError(f"bytes {pos}..{pos + n} arrived corrupted")
            pos += n
        rx.release()
    except BaseException:
        errors.put("consumer: " + traceback.format_exc())
        raise SystemExit(1) from None


@pytest.mark.slow
@pytest.mark.parametrize("impl", sorted(_native.implementations()))
def test_console_stream_across_cpus(impl: str, tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"only CPU {cpus} usable here: cannot put the ends on different CPUs")
    ctx = multiprocessing.get_context("spawn")  # no fork of a possibly threaded pytest
    page = tmp_path / "console-page"
    page.write_bytes(bytes(4096))
    area = str(page)
    errors = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=producer, args=(area, impl, cpus[0], errors)),
        ctx.Process(target=consumer, args=(area, impl, cpus[1], errors)),
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(DEADLINE + 30)
    hung = [p for p in procs if p.is_alive()]
    for proc in hung:
        proc.kill()
        proc.join()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not hung and problems == [], problems
    assert [p.exitcode for p in procs] == [0, 0]
