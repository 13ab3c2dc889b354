"""Ring engine benchmark: push + consume of 112-byte slots in one process, per native layer.

Both halves of a blkif-shaped ring (112-byte requests, 16-byte responses) share one bytearray
in this process; every request is put, pushed, taken, answered, pushed back and its response
taken, so each "op" below is one full request/response exchange through the engine.  Scenarios:

- ``one at a time``: push and notify-check after every request (latency-bound use);
- ``per-slot calls``: fill the ring, one push per ring-full, but one call per request/response;
- ``batched copies``: fill the ring with one copy (``put_requests_from``) and drain it with one
  (``take_requests_into``) -- what a busy driver does;
- ``index load+store``: one single-copy 32-bit load plus one store, the primitive under it all.

Each is run for the compiled cffi helper and the ABI-mode fallback and printed side by side
(ops/s and ns/op, best of ``--repeat``).  This prints numbers; it asserts nothing.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from .. import _native
from .._native import NativeImpl
from ..proto.layout import ring_area_size
from ..proto.ring import BackRing, FrontRing, RingLayout

__all__ = (
    "LAYOUT",
    "SCENARIOS",
    "Scenario",
    "batched_copies",
    "command",
    "index_access",
    "measure",
    "one_at_a_time",
    "per_slot_calls",
)


LAYOUT = RingLayout("blkif", request_size=112, response_size=16)

Scenario = Callable[[NativeImpl, int, int], float]
"""(implementation, number of exchanges, ring page order) -> seconds."""


def _pair(native: NativeImpl, order: int) -> tuple[FrontRing, BackRing]:
    area = bytearray(ring_area_size(order))
    return FrontRing.init(area, LAYOUT, native=native), BackRing.attach(area, LAYOUT, native=native)


def one_at_a_time(native: NativeImpl, count: int, order: int) -> float:
    front, back = _pair(native, order)
    request = bytes(range(112))
    response = bytes(16)
    req_buf = bytearray(112)
    rsp_buf = bytearray(16)
    put, push, take = front.put_request, front.push_requests, back.take_request_into
    answer, push_back, collect = back.put_response, back.push_responses, front.take_response_into
    start = time.perf_counter()
    for _ in range(count):
        put(request)
        push()
        take(req_buf)
        answer(response)
        push_back()
        collect(rsp_buf)
    elapsed = time.perf_counter() - start
    assert front.free_requests() == front.entries
    return elapsed


def per_slot_calls(native: NativeImpl, count: int, order: int) -> float:
    front, back = _pair(native, order)
    entries = front.entries
    request = bytes(range(112))
    response = bytes(16)
    req_buf = bytearray(112)
    rsp_buf = bytearray(16)
    put, push, take = front.put_request, front.push_requests, back.take_request_into
    answer, push_back, collect = back.put_response, back.push_responses, front.take_response_into
    rounds = max(1, count // entries)
    slots = range(entries)
    start = time.perf_counter()
    for _ in range(rounds):
        for _ in slots:
            put(request)
        push()
        for _ in slots:
            take(req_buf)
            answer(response)
        push_back()
        for _ in slots:
            collect(rsp_buf)
    elapsed = time.perf_counter() - start
    return elapsed * count / (rounds * entries)


def batched_copies(native: NativeImpl, count: int, order: int) -> float:
    front, back = _pair(native, order)
    entries = front.entries
    requests = bytes(range(112)) * entries
    responses = bytes(112 * entries)  # 16-byte responses, zero padding to the slot
    req_buf = bytearray(112 * entries)
    rsp_buf = bytearray(112 * entries)
    rounds = max(1, count // entries)
    start = time.perf_counter()
    for _ in range(rounds):
        front.put_requests_from(requests, entries)
        front.push_requests()
        n = back.take_requests_into(req_buf)
        back.put_responses_from(responses, n)
        back.push_responses()
        front.take_responses_into(rsp_buf)
    elapsed = time.perf_counter() - start
    return elapsed * count / (rounds * entries)


def index_access(native: NativeImpl, count: int, order: int) -> float:
    mem = native.attach(bytearray(64))
    load, store = mem.load32, mem.store32
    start = time.perf_counter()
    for i in range(count):
        store(0, load(4) ^ i & 0xFFFF)
    elapsed = time.perf_counter() - start
    mem.release()
    return elapsed


SCENARIOS: dict[str, Scenario] = {
    "one at a time": one_at_a_time,
    "per-slot calls": per_slot_calls,
    "batched copies": batched_copies,
    "index load+store": index_access,
}


def measure(
    names: list[str], count: int, order: int, repeat: int
) -> dict[str, dict[str, float]]:
    """Best seconds per op, by scenario then implementation name."""
    results: dict[str, dict[str, float]] = {}
    for scenario, run in SCENARIOS.items():
        for name in names:
            native = _native.implementations()[name]
            run(native, min(count, 2000), order)  # warm-up
            best = min(run(native, count, order) for _ in range(repeat))
            results.setdefault(scenario, {})[name] = best / count
    return results


@click.command("ring")
@click.option("--requests", "count", default=100_000, show_default=True,
              type=click.IntRange(min=100), help="Exchanges per scenario and implementation.")
@click.option("--order", default=0, show_default=True, type=click.IntRange(0, 4),
              help="Ring size: 2**order pages (32 slots per page for blkif).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs per figure; the best is shown.")
def command(count: int, order: int, repeat: int) -> None:
    """Push + consume of 112-byte slots through the io/ring.h engine in one process:
    compiled native helper vs the ABI-mode fallback, side by side."""
    names = list(_native.implementations())
    missing = _native.unavailable()
    results = measure(names, count, order, repeat)
    console = Console()
    table = Table(
        title=f"ring engine: blkif 112/16 slots, {LAYOUT.entries(ring_area_size(order))} entries,"
        f" {count} exchanges, best of {repeat}"
    )
    table.add_column("scenario", no_wrap=True)
    for name in names:
        table.add_column(f"{name} ops/s", justify="right")
        table.add_column(f"{name} ns/op", justify="right")
    if len(names) == 2:
        table.add_column(f"{names[1]}/{names[0]} time", justify="right")
    for scenario, per_impl in results.items():
        row = [scenario]
        for name in names:
            row += [f"{1 / per_impl[name]:,.0f}", f"{per_impl[name] * 1e9:,.0f}"]
        if len(names) == 2:
            row.append(f"{per_impl[names[1]] / per_impl[names[0]]:.2f}x")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"default implementation: {_native.IMPLEMENTATION}, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    for name, why in missing.items():
        console.print(f"[yellow]{name} unavailable:[/yellow] {why}")
