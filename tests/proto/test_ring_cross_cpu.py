"""Both ring halves in separate processes over one shared mmap, pinned to different CPUs.

This is the test that caught struct.pack_into: CPython clears the destination before writing,
so a peer on another CPU can read a torn index mid-store.  With real concurrency, every request
and response must still arrive exactly once, in order, with intact bytes -- and no index may
ever look hostile (which a torn read would cause).  Runs for each native implementation, with
the halves on two CPUs (skipped, with the reason, if this process may use only one) and on one.
"""

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
from ringkit.proto.ring import BackRing, FrontRing, RingLayout

LAYOUT = RingLayout("blkif-like", request_size=112, response_size=16)
SLOT = LAYOUT.slot_size
COUNT = 20_000
DEADLINE = 120.0  # seconds; only a guard against hangs, never a speed assertion


def request_body(seq: int) -> bytes:
    head = seq.to_bytes(8, "little")
    return head + bytes((seq * 13 + k) & 0xFF for k in range(104))


def response_body(seq: int) -> bytes:
    return seq.to_bytes(8, "little") + (~seq & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")


def shared_page(path: str) -> mmap.mmap:
    """The page both processes share: a MAP_SHARED mapping of one file."""
    with open(path, "r+b") as file:
        return mmap.mmap(file.fileno(), 4096)


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def run_backend(path: str, impl: str, cpu: int | None, errors: Any, ready: Any) -> None:
    try:
        _pin(cpu)
        # BackRing.attach never initialises the page: it must only look once the frontend has.
        if not ready.wait(DEADLINE):
            raise TimeoutError("the frontend never signalled that the ring was initialised")
        area = shared_page(path)
        back = BackRing.attach(area, LAYOUT, native=_native.implementations()[impl])
        requests = bytearray(SLOT * back.entries)
        responses = bytearray(SLOT * back.entries)
        done = 0
        deadline = time.monotonic() + DEADLINE
        while done < COUNT:
            got = back.take_requests_into(requests)
            if got == 0:
                if not back.final_check_for_requests():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"backend stalled after {done} requests")
                    os.sched_yield()
                continue
            for i in range(got):
                slot = requests[i * SLOT : (i + 1) * SLOT]
                if slot != request_body(done + i):
                    raise AssertionError(f"request {done + i} arrived as {slot[:16].hex()}...")
                responses[i * SLOT : i * SLOT + 16] = response_body(done + i)
            back.put_responses_from(responses, got)
            back.push_responses()
            done += got
        back.release()
    except BaseException:
        errors.put("backend: " + traceback.format_exc())
        raise SystemExit(1) from None


def run_frontend(path: str, impl: str, cpu: int | None, errors: Any, ready: Any) -> None:
    try:
        _pin(cpu)
        area = shared_page(path)
        front = FrontRing.init(area, LAYOUT, native=_native.implementations()[impl])
        ready.set()  # the page is initialised (init ends with a full fence): the backend may attach
        sent = received = 0
        buf = bytearray(16)
        deadline = time.monotonic() + DEADLINE
        while received < COUNT:
            burst = 1 + (sent * 7) % 19  # vary batch sizes so the indices go round unevenly
            while burst and sent < COUNT and front.free_requests():
                front.put_request(request_body(sent))
                sent += 1
                burst -= 1
            front.push_requests()
            progressed = False
            while front.take_response_into(buf):
                if buf != response_body(received):
                    raise AssertionError(f"response {received} arrived as {buf.hex()}")
                received += 1
                progressed = True
            if not progressed and not front.final_check_for_responses():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"frontend stalled: sent {sent}, received {received}")
                os.sched_yield()
        front.release()
    except BaseException:
        errors.put("frontend: " + traceback.format_exc())
        raise SystemExit(1) from None


def placements() -> list[Any]:
    cpus = sorted(os.sched_getaffinity(0))
    two = (
        pytest.param((cpus[0], cpus[1]), id="two-cpus")
        if len(cpus) >= 2
        else pytest.param(
            None, id="two-cpus", marks=pytest.mark.skip(reason=f"only CPU {cpus} usable here")
        )
    )
    return [two, pytest.param((cpus[0], cpus[0]), id="one-cpu")]


@pytest.mark.slow
@pytest.mark.parametrize("cpus", placements())
@pytest.mark.parametrize("impl", sorted(_native.implementations()))
def test_halves_on_separate_cpus_exchange_everything(
    impl: str, cpus: tuple[int, int], tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a possibly threaded pytest
    page = tmp_path / "ring-page"
    page.write_bytes(bytes(4096))
    area = str(page)
    errors = ctx.SimpleQueue()
    # The frontend initialises the page and then sets `ready`; the backend waits for it before
    # attaching, as a real backend waits for the frontend's ring-ref in xenstore.
    ready = ctx.Event()
    front = ctx.Process(target=run_frontend, args=(area, impl, cpus[0], errors, ready))
    front.start()
    back = ctx.Process(target=run_backend, args=(area, impl, cpus[1], errors, ready))
    back.start()
    for proc in (front, back):
        proc.join(DEADLINE + 30)
    hung = [p for p in (front, back) if p.is_alive()]
    for proc in hung:
        proc.kill()
        proc.join()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not hung, f"hung: {hung}; {problems}"
    assert problems == []
    assert front.exitcode == 0 and back.exitcode == 0
