"""Cross-CPU: a reader on one CPU never sees a half-written index stored on another CPU.

design.md: ``struct.pack_into`` clears its destination before writing, so a reader on the other
CPU can observe 0 mid-store.  Here a writer process pinned to one CPU alternates two patterns
with no byte in common while a reader pinned to the other CPU loads continuously; every value it
sees must be one of the two patterns.  Run for each implementation.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os

import pytest

import ringkit._native as native

A, B = 0x5A5A5A5A, 0xA5A5A5A5
WORD, GO, DONE = 64, 0, 4
STORES = 200_000


def _writer(name: str, m: mmap.mmap, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    mem = native.implementations()[name].attach(m)
    while mem.load32(GO) == 0:
        pass
    for i in range(STORES):
        mem.store32(WORD, A if i & 1 else B)
    mem.store32(DONE, 1)
    mem.release()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["compiled", "abi"])
def test_no_torn_reads_across_cpus(name: str) -> None:
    if name not in native.implementations():
        pytest.skip(f"{name} unavailable here")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    m = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED|MAP_ANONYMOUS: shared with the forked child
    mem = native.implementations()[name].attach(m)
    mem.store32(WORD, A)
    child = multiprocessing.get_context("fork").Process(target=_writer, args=(name, m, cpus[1]))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        child.start()
        mem.store32(GO, 1)
        seen: dict[int, int] = {}
        while not mem.load32(DONE):
            value = mem.load32(WORD)
            seen[value] = seen.get(value, 0) + 1
        child.join(60)
    finally:
        os.sched_setaffinity(0, before)
        if child.is_alive():
            child.kill()
            child.join()
        mem.release()
        m.close()
    assert child.exitcode == 0
    assert set(seen) <= {A, B}, {hex(v): n for v, n in seen.items() if v not in (A, B)}
    assert sum(seen.values()) > 0
