"""The block backend's fast path at depth (io_uring from C) against its reference, the Python path.

Two identical worlds -- an image with the same random bytes, a frontend's granted pages with the
same random bytes and refs (some granted read-only), a persistent `GrantMapper` that already
keeps most refs mapped -- are served the same random and hostile bursts through a real ring at
``io_depth`` 8: one with the fast path at depth (`backends.block.uringpath`), one without.
Answers come in any order at depth, so each burst's answers are compared as sorted lists (ids
are unique within a burst); at the end the image and every granted page must be equal, and the
service's counters.  Within a burst no two requests touch the same sectors or the same pages
(at depth their order is the device's, in both worlds), so every answer and byte is determined.

The bursts mix what the C takes -- READs and WRITEs of refs kept mapped -- with what it must
leave to Python or hand back: refs not mapped yet (the first map is Python's), never granted,
READs into pages granted read-only, bad operations and segment counts, reversed or out-of-page
sector ranges, sectors past the end of the disk, DISCARD, FLUSH, BARRIER; and READs of the
image's last 64 KiB, which the file lost after the backend opened it: the kernel reads short
there, the C hands the request back and the Python path answers ERROR (EIO).

Negative control: the same C built with ``RK_AIO_SKIP_LENGTH_CHECK`` answers those short reads
OKAY, and the comparison catches it.  A second pair of tests holds the C's completions back and
checks that a WRITE_BARRIER waits for them (and that a READ behind the barrier sees its data);
its control is a path that does not report what it has in flight.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from _native_control import control_module
from ringkit.backends.block.engine import uring_unavailable
from ringkit.backends.block.image import Image
from ringkit.backends.block.queue import serve_ring
from ringkit.backends.block.service import BlockService, ServiceConfig
from ringkit.backends.block.uringpath import BlkifUringPath, unavailable

from ringkit.abc import MappedPages
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.persistent_grants import PersistentGrantTable, UringBurstServer
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantMapper
from ringkit.testing.memory import memory_event_pair, memory_grants

pytestmark = [
    pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available"),
    pytest.mark.skipif(bool(uring_unavailable()), reason=f"io_uring: {uring_unavailable()}"),
]

FRONT, BACK = 1, 0
SECTORS = 4096            # a 2 MiB image ...
KEPT = SECTORS - 128      # ... of which the file keeps this much once the backend opened it
BLOCK = 128               # each request of a burst has its own 128-sector block
WRITABLE, READ_ONLY = 72, 4
PRE_MAPPED = 64
DEPTH = 8
BURSTS = 40
NEVER_GRANTED = 0xDEAD


@dataclass
class World:
    service: BlockService
    front: FrontRingChannel
    image_path: Path
    pages: list[memoryview]
    refs: list[int]
    ro_refs: list[int]


@asynccontextmanager
async def world(tmp: Path, seed: int, *, fast: bool, module: ModuleType | None = None
                ) -> AsyncIterator[World]:
    config = ServiceConfig(fast_path=fast, io_depth=DEPTH, io_engine="uring")
    rng = random.Random(seed)
    tmp.mkdir(parents=True)
    path = tmp / "disk.img"
    path.write_bytes(rng.randbytes(SECTORS * 512))
    ring = bytearray(4096)
    front_ring = FrontRing.init(ring, blkif.RING_LAYOUT)
    back_ring = BackRing.attach(ring, blkif.RING_LAYOUT)
    fe_ev, be_ev = memory_event_pair(FRONT, BACK)
    front = FrontRingChannel(front_ring, fe_ev)
    back = BackRingChannel(back_ring, be_ev)
    front_grants, grants = memory_grants(FRONT, BACK)
    shared = await front_grants.share(BACK, WRITABLE)
    shared_ro = await front_grants.share(BACK, READ_ONLY, writable=False)
    pages = [shared.buffer[i * 4096:(i + 1) * 4096] for i in range(WRITABLE)]
    pages += [shared_ro.buffer[i * 4096:(i + 1) * 4096] for i in range(READ_ONLY)]
    for page in pages:
        page[:] = rng.randbytes(4096)
    mapper = GrantMapper(grants, FRONT, persistent=True)
    held: list[MappedPages] = []
    with Image(path) as image:
        os.truncate(path, KEPT * 512)   # the disk still says SECTORS: reads past KEPT are short
        service = BlockService(image, mapper, config)
        assert (service.uring_path is not None) == fast
        if module is not None:  # a differently built C (the negative control)
            old = service.uring_path
            assert old is not None
            old.close()
            service.uring_path = BlkifUringPath(
                image, mapper.max_persistent, capacity=DEPTH, burst=len(old.out) // 112,
                stats=service.stats, on_reaped=old.on_reaped,
                table=PersistentGrantTable(mapper.max_persistent, module=module))
            mapper.watch(service.uring_path)
        await mapper.map(list(shared.refs[:PRE_MAPPED]), writable=True)
        if service.uring_path is not None:
            assert len(service.uring_path.table) == PRE_MAPPED
            for ref in shared_ro.refs:  # as if mapped read-only for good
                mapped = await grants.map(FRONT, [ref], writable=False)
                held.append(mapped)
                service.uring_path.table.add(ref, mapped.buffer, writable=False)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_ring, back, service)
                yield World(service, front, path, pages, list(shared.refs),
                            list(shared_ro.refs))
                tg.cancel_scope.cancel()
        finally:
            await service.aclose()
            await mapper.aclose()
            for mapped in held:
                await mapped.aclose()
    await shared.aclose()
    await shared_ro.aclose()


def burst_slots(rng: random.Random, world: World, hostile: float) -> list[bytes]:
    """One burst: requests on disjoint sector blocks and disjoint pages."""
    pre = world.refs[:PRE_MAPPED]
    pages = list(pre)
    rng.shuffle(pages)
    blocks = list(range(SECTORS // BLOCK))
    rng.shuffle(blocks)
    slots = []
    for rid in rng.sample(range(1 << 16), rng.choice([1, 3, 8, 16])):
        block = blocks.pop()
        nseg = rng.randint(1, 4)
        op = rng.randrange(2)
        sector = block * BLOCK + rng.randrange(BLOCK - 8 * nseg + 1)
        if block == SECTORS // BLOCK - 1 and op == 1:
            op = 0              # the lost tail is read (short), never written back
        refs = [pages.pop() for _ in range(nseg)] if len(pages) >= nseg else []
        if not refs:
            break
        ranges = [(0, 7)] * nseg if rng.random() < 0.6 else [
            (f, rng.randrange(f, 8)) for f in (rng.randrange(8) for _ in range(nseg))]
        if rng.random() < hostile:
            fault = rng.choice(["op", "count", "ref", "ro", "range", "sector", "discard",
                                "flush", "barrier", "unmapped"])
            if fault == "op":
                op = rng.choice([4, 0xFF, 7])
            elif fault == "count":
                nseg = rng.choice([0, 12, 255])
            elif fault == "ref":
                refs[0] = rng.choice([NEVER_GRANTED, rng.randrange(1 << 32)])
            elif fault == "ro":
                op = 0
                refs[0] = rng.choice(world.ro_refs)
            elif fault == "range":
                ranges[0] = rng.choice([(5, 2), (0, 8), (9, 200)])
            elif fault == "sector":
                sector = rng.choice([SECTORS - 2, SECTORS, (1 << 64) - 1, 1 << 63])
            elif fault == "discard":
                op = 5
            elif fault == "flush":
                op, nseg = 3, 0
            elif fault == "barrier":
                op = 2
            elif fault == "unmapped":
                refs[0] = world.refs[PRE_MAPPED + rng.randrange(WRITABLE - PRE_MAPPED)]
        slot = bytearray(112)
        struct.pack_into("<BBHxxxxQQ", slot, 0, op, nseg, 0, rid, sector)
        if op == 5:     # its sectors inside its block
            struct.pack_into("<QQ", slot, 16, block * BLOCK, rng.randrange(1, BLOCK + 1))
        else:
            for i in range(min(nseg, 11)):
                ref = refs[i % len(refs)] if i < len(refs) else refs[-1]
                first, last = ranges[i % len(ranges)]
                struct.pack_into("<IBB", slot, 24 + 8 * i, ref, first, last)
        slots.append(bytes(slot))
    return slots


async def exchange(front: FrontRingChannel, burst: list[bytes]) -> list[bytes]:
    front.send_batch_nowait(burst)
    answers: list[bytes] = []
    with anyio.fail_after(20):
        while len(answers) < len(burst):
            answers.extend(bytes(a) for a in await front.receive_batch(64))
    return answers


async def differences(tmp: Path, seed: int, module: ModuleType | None = None
                      ) -> tuple[list[str], int, int]:
    """Serve the seed's bursts in both worlds: what differs, how many requests the C answered
    and how many it handed back."""
    rng = random.Random(seed * 104729)
    found: list[str] = []
    async with (world(tmp / "c", seed, fast=True, module=module) as c,
                world(tmp / "py", seed, fast=False) as py):
        assert c.refs == py.refs and c.ro_refs == py.ro_refs
        for number in range(BURSTS):
            burst = burst_slots(rng, c, rng.choice([0.0, 0.0, 0.1, 0.3, 1.0]))
            got, want = await exchange(c.front, burst), await exchange(py.front, burst)
            if sorted(got) != sorted(want):
                ops = {s[8:16]: s[0] for s in burst}
                extra = [f"op {ops.get(a[:8], -1)}: {a[:16].hex()}"
                         for a in sorted(set(got) - set(want))]
                found.append(f"burst {number}: C path answered {extra} where the Python path "
                             f"answered {[a[:16].hex() for a in sorted(set(want) - set(got))]}")
        for index, (a, b) in enumerate(zip(c.pages, py.pages, strict=True)):
            if a != b:
                found.append(f"granted page {index} differs")
        if c.image_path.read_bytes() != py.image_path.read_bytes():
            found.append("the images differ")
        for name in ("requests", "errors", "sectors_read", "sectors_written", "flushes"):
            if getattr(c.service.stats, name) != getattr(py.service.stats, name):
                found.append(f"stats.{name}: {getattr(c.service.stats, name)} vs "
                             f"{getattr(py.service.stats, name)}")
        path = c.service.uring_path
        assert path is not None
        served = path.served
    return found, served, c.service.stats.errors


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(6))
async def test_fast_path_at_depth_answers_as_the_python_path_does(tmp_path: Path,
                                                                  seed: int) -> None:
    found, served, errors = await differences(tmp_path, seed)
    assert not found, "\n".join(found)
    assert served > 100, f"the fast path served only {served} requests: the test tests little"
    assert errors > 5, f"only {errors} requests were refused: the hostile mix tests little"


def _control_module(tmp: Path, macro: str) -> ModuleType:
    """The shipped C built with `macro` defined: a check left out."""
    return control_module(tmp, macro, "_rk_aio_control_")


@pytest.mark.anyio
async def test_negative_control_short_reads_answered_okay_are_caught(tmp_path: Path) -> None:
    module = _control_module(tmp_path / "build", "RK_AIO_SKIP_LENGTH_CHECK")
    caught = []
    for seed in range(3):
        found, _, _ = await differences(tmp_path / f"s{seed}", seed, module)
        caught += found
    assert any("C path answered" in line for line in caught), caught


class HeldServer:
    """A `UringBurstServer` whose completions are held back until `release`: `reap` finds
    nothing until then.  `reports_in_flight`: False makes it hide what it has in flight (the
    negative control)."""

    def __init__(self, inner: UringBurstServer, *, reports_in_flight: bool = True) -> None:
        self.inner = inner
        self.held = True
        self.reports_in_flight = reports_in_flight

    @property
    def closed(self) -> bool:
        return self.inner.closed

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight if self.reports_in_flight else 0

    def fileno(self) -> int:
        return self.inner.fileno()

    def submit(self, *args: Any) -> tuple[int, int, int, int, int]:
        return self.inner.submit(*args)

    def reap(self, *args: Any) -> tuple[int, int, int, int]:
        if self.held:
            return 0, 0, 0, 0
        return self.inner.reap(*args)

    def release(self) -> None:
        self.held = False
        os.eventfd_write(self.inner.fileno(), 1)   # wake the server's reaper

    def close(self) -> None:
        self.inner.close()


def _slot(op: int, rid: int, sector: int, ref: int) -> bytes:
    slot = bytearray(112)
    struct.pack_into("<BBHxxxxQQIBB", slot, 0, op, 1, 0, rid, sector, ref, 0, 7)
    return bytes(slot)


async def barrier_order(tmp: Path, *, reports_in_flight: bool) -> tuple[list[int], bytes, bytes]:
    """Four READs the C takes and holds, then a WRITE_BARRIER of page 4 to sector 0 and a READ
    of sector 0 into page 5 behind it; the reads are released after 0.3 s.  Returns the ids in
    the order answered, the barrier's data and what the READ behind it read."""
    async with world(tmp / "w", 1, fast=True) as w:
        path = w.service.uring_path
        assert path is not None
        held = HeldServer(path.server, reports_in_flight=reports_in_flight)
        path.server = held  # type: ignore[assignment]
        refs = w.refs
        w.front.send_batch_nowait([_slot(0, rid, 8 * (rid + 1), refs[rid]) for rid in range(4)])
        order: list[int] = []
        with anyio.fail_after(10):
            while held.inner.in_flight < 4:
                await anyio.sleep(0.01)
            w.front.send_batch_nowait([_slot(2, 100, 0, refs[4]), _slot(0, 101, 0, refs[5])])
            with anyio.move_on_after(0.3):
                while True:
                    order += [struct.unpack_from("<Q", a)[0]
                              for a in await w.front.receive_batch(8)]
            held.release()
            while len(order) < 6:
                order += [struct.unpack_from("<Q", a)[0] for a in await w.front.receive_batch(8)]
        return order, bytes(w.pages[4]), bytes(w.pages[5])


@pytest.mark.anyio
async def test_a_barrier_waits_for_the_requests_in_flight_in_c(tmp_path: Path) -> None:
    order, written, read_back = await barrier_order(tmp_path, reports_in_flight=True)
    assert sorted(order[:4]) == [0, 1, 2, 3], order
    assert order[4:] == [100, 101], order
    assert read_back == written


@pytest.mark.anyio
async def test_negative_control_a_path_hiding_its_requests_lets_the_barrier_pass(
        tmp_path: Path) -> None:
    order, _, _ = await barrier_order(tmp_path, reports_in_flight=False)
    assert order.index(100) < 4, f"the barrier waited anyway: {order}"
