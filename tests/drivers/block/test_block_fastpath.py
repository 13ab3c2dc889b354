"""The block backend's C fast path against its reference, the Python path.

Two identical worlds -- an image file with the same random bytes, a frontend's granted pages
with the same random bytes and refs (some granted read-only), a persistent `GrantMapper` that
already keeps some of the refs mapped -- are served the same random and hostile bursts through
a real ring (`serve_ring`): one with the fast path, one without.  Every response, and at the
end the image and every granted page, must be equal.  The bursts mix plain READs and WRITEs on
refs in the table with what the fast path must hand back: refs not yet mapped (the first map
is Python's), refs never granted, READs into a page the table names read-only, bad operations
and segment counts, reversed or out-of-page sector ranges, sectors past the end of the disk,
DISCARD, FLUSH and BARRIER in between.  INDIRECT requests come in both kinds: ones the fast
path serves (a READ or WRITE of 1 to `MAX_INDIRECT` segments, over up to 3 indirect pages so
that the iovecs exceed ``IOV_MAX``, their list pages and data pages kept mapped) and hostile
ones (a bad inner operation, a segment count of 0 or past the advertised limit, list pages
not mapped or never granted, list entries with bad ranges or refs, sectors past the end, a
list page that an earlier READ of the burst overwrites).  Each list is written into the
frontend's page of both worlds before the burst goes out.

Negative controls: the same C built with ``RK_BLKFAST_SKIP_WRITABLE_CHECK`` (it then reads the
disk into a page the table names read-only), and with ``RK_BLKFAST_SKIP_INDIRECT_LIMIT`` (it
then serves INDIRECT requests of more segments than advertised), must each make the
comparison fail.

(A WRITE from a read-only entry is served by the fast path -- it only reads the page -- while
the reference's persistent mapper maps every grant writable and refuses it; so the fuzz names
read-only refs in READs only, and `test_a_read_only_entry_serves_writes_not_reads` covers
WRITEs.)
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from _native_control import control_module
from ringkit.backends.block.fastpath import BlkifFastPath, unavailable
from ringkit.backends.block.image import Image
from ringkit.backends.block.queue import serve_ring
from ringkit.backends.block.service import BlockService, ServiceConfig

from ringkit import persistent_grants
from ringkit.abc import MappedPages
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.persistent_grants import PersistentGrantTable
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantMapper
from ringkit.testing.memory import memory_event_pair, memory_grants

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")

FRONT, BACK = 1, 0
SECTORS = 2048            # a 1 MiB image
WRITABLE, READ_ONLY = 24, 4
PRE_MAPPED = 16           # of the writable refs, kept mapped before the first burst
BURSTS = 48
NEVER_GRANTED = 0xDEAD
MAX_INDIRECT = 1100       # advertised: up to 3 indirect pages, more iovecs than IOV_MAX


@dataclass
class World:
    service: BlockService
    front: FrontRingChannel
    image_path: Path
    pages: list[memoryview]   # the frontend's view of every granted page, writable then RO
    refs: list[int]
    ro_refs: list[int]


@asynccontextmanager
async def world(tmp: Path, seed: int, *, fast: bool,
                table: PersistentGrantTable | None = None) -> AsyncIterator[World]:
    config = ServiceConfig(fast_path=fast, max_indirect_segments=MAX_INDIRECT)
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
        service = BlockService(image, mapper, config)
        assert (service.fast_path is not None) == fast
        if table is not None:  # a differently built C (the negative control)
            service.fast_path = BlkifFastPath(image, mapper.max_persistent, inline_writes=True,
                                              stats=service.stats, max_indirect=MAX_INDIRECT,
                                              table=table)
            mapper.watch(service.fast_path)
        await mapper.map(list(shared.refs[:PRE_MAPPED]), writable=True)
        if service.fast_path is not None:
            assert len(service.fast_path.table) == PRE_MAPPED
            for ref in shared_ro.refs:  # as if mapped read-only for good
                mapped = await grants.map(FRONT, [ref], writable=False)
                held.append(mapped)
                service.fast_path.table.add(ref, mapped.buffer, writable=False)
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


def request_slot(rng: random.Random, refs: list[int], ro_refs: list[int], pre: list[int],
                 hostile: float) -> bytes:
    """One request slot: with probability 1 - `hostile` a plain READ or WRITE of refs kept
    mapped (what the fast path serves, but for a few READs into read-only entries), else
    anything, often what it must hand back."""
    if rng.random() >= hostile:
        op, nseg = rng.randrange(2), rng.randint(1, 11)
        sector = rng.randrange(SECTORS - 88)
        # now and then a READ into a page the table names read-only: handed back
        pools, weights = ([pre, ro_refs], [97, 3]) if op == 0 else ([pre], [1])
    else:
        op = rng.choices([0, 1, 2, 3, 5, 6, 4, 0xFF], [40, 35, 4, 4, 4, 4, 2, 2])[0]
        nseg = rng.choices([rng.randint(1, 11), 0, 12, 255], [90, 4, 3, 3])[0]
        sector = rng.choices([rng.randrange(SECTORS - 88),
                              rng.randrange(SECTORS - 8, SECTORS + 8),
                              SECTORS, (1 << 64) - 1, 1 << 63], [60, 25, 5, 5, 5])[0]
        pools = [pre, refs, [NEVER_GRANTED, rng.randrange(1 << 32)]]
        weights = [70, 15, 5]
        if op == 0:
            pools.append(ro_refs)
            weights.append(20)
    slot = bytearray(112)
    struct.pack_into("<BBHxxxxQQ", slot, 0, op, nseg, rng.randrange(1 << 16),
                     rng.randrange(1 << 64), sector)
    for i in range(min(nseg, 11)):
        ref = rng.choice(rng.choices(pools, weights)[0])
        if hostile and rng.random() < 0.05:
            first, last = rng.randrange(256), rng.randrange(256)
        else:
            first = rng.randrange(8)
            last = rng.randrange(first, 8)
            if rng.random() < 0.6:
                first, last = 0, 7
        struct.pack_into("<IBB", slot, 24 + 8 * i, ref, first, last)
    if op == 5:  # DISCARD: a sector count where the segments start
        struct.pack_into("<Q", slot, 24, rng.randrange(64))
    return bytes(slot)


def indirect_slot(rng: random.Random, refs: list[int], pre: list[int], lists: list[int],
                  hostile: float) -> tuple[bytes, list[tuple[int, bytes]]]:
    """One INDIRECT slot and what its list pages must hold ((ref, bytes at the page's start)
    each), its list pages taken from `lists` (refs no other INDIRECT of the burst uses): with
    probability 1 - `hostile` one the fast path serves, else one with a fault.

    No list names a read-only ref: a list page may be overwritten by an earlier READ or reach
    the disk through a WRITE, so a read-only ref in a list could end up in a WRITE's list,
    which the fast path serves and the reference refuses (see the module docstring); the
    direct READs cover read-only entries."""
    inner = rng.randrange(2)
    nseg = rng.choice([rng.randint(1, 11), rng.randint(12, 256), rng.randint(257, MAX_INDIRECT)])
    fault = rng.choice(["inner", "count", "over", "sector", "pages", "data", "entries", "all"]
                       ) if rng.random() < hostile else ""
    if fault in ("count", "all"):
        nseg = rng.choice([0, MAX_INDIRECT + 600, 0xFFFF])
    elif fault == "over":   # all else right: only the advertised limit refuses it
        nseg = MAX_INDIRECT + rng.randint(1, 40)
    whole = nseg <= 256 and rng.random() < 0.7      # whole pages, else one sector each
    sector = rng.randrange(max(SECTORS - (8 if whole else 1) * nseg + 1, 1))
    page_refs = pre
    data_pools, data_weights = [pre], [1]
    bad_entries = 0.0
    if fault in ("inner", "all"):
        inner = rng.choice([2, 3, 5, 6, 0xFF])
    if fault in ("sector", "all"):
        sector = rng.choice([rng.randrange(SECTORS - 8, SECTORS + 8), (1 << 64) - 1])
    if fault in ("pages", "all"):
        page_refs = [NEVER_GRANTED, *refs[PRE_MAPPED:]]   # not mapped yet, or never
    if fault in ("data", "all"):
        data_pools = [pre, refs, [NEVER_GRANTED, rng.randrange(1 << 32)]]
        data_weights = [85, 5, 5]
    if fault in ("entries", "all"):
        bad_entries = rng.choice([0.01, 0.2])
    pages = blkif.indirect_pages_for(min(nseg, MAX_INDIRECT + 600)) if nseg else 1
    pages = min(pages, blkif.MAX_INDIRECT_PAGES_PER_REQUEST)
    list_refs = []
    for _ in range(pages):
        ref = rng.choice(page_refs)
        if page_refs is pre:
            if not lists:
                break
            ref = lists.pop(rng.randrange(len(lists)))
        list_refs.append(ref)
    table = bytearray()
    for _ in range(min(nseg, pages * blkif.SEGMENTS_PER_INDIRECT_PAGE)):
        ref = rng.choice(rng.choices(data_pools, data_weights)[0])
        if whole:
            first, last = 0, 7
        else:
            first = last = rng.randrange(8)
        if rng.random() < bad_entries:
            first, last = rng.randrange(256), rng.randrange(256)
        table += struct.pack("<IBBH", ref, first, last,
                             rng.randrange(1 << 16) if rng.random() < 0.1 else 0)
    slot = bytearray(112)
    struct.pack_into("<BBHxxxxQQHxx", slot, 0, 6, inner, nseg, rng.randrange(1 << 64), sector,
                     rng.randrange(1 << 16))
    for i, ref in enumerate(list_refs):
        struct.pack_into("<I", slot, 28 + 4 * i, ref)
    fill = [(ref, bytes(table[i * 4096:(i + 1) * 4096])) for i, ref in enumerate(list_refs)
            if ref in refs]
    return bytes(slot), fill


async def exchange(front: FrontRingChannel, burst: list[bytes]) -> list[bytes]:
    front.send_batch_nowait(burst)
    answers: list[bytes] = []
    with anyio.fail_after(20):
        while len(answers) < len(burst):
            answers.extend(bytes(a) for a in await front.receive_batch(64))
    return answers


async def differences(tmp: Path, seed: int, *, table: PersistentGrantTable | None = None
                      ) -> tuple[list[str], int, int]:
    """Serve the seed's bursts in both worlds: what differs, and how many requests (and
    INDIRECT requests) the fast path answered."""
    rng = random.Random(seed * 7919)
    found: list[str] = []
    indirect = 0
    async with (world(tmp / "c", seed, fast=True, table=table) as c,
                world(tmp / "py", seed, fast=False) as py):
        assert c.refs == py.refs and c.ro_refs == py.ro_refs
        pre = c.refs[:PRE_MAPPED]
        for number in range(BURSTS):
            hostile = rng.choice([0.0, 0.0, 0.02, 0.1, 0.5, 1.0])
            lists = list(pre)
            burst: list[bytes] = []
            for _ in range(rng.choice([1, 5, 16, 31])):
                if rng.random() < 0.3:
                    slot, fill = indirect_slot(rng, c.refs, pre, lists, hostile)
                    for ref, data in fill:   # the list, in the frontend's page of both worlds
                        index = c.refs.index(ref)
                        c.pages[index][:len(data)] = data
                        py.pages[index][:len(data)] = data
                    burst.append(slot)
                else:
                    burst.append(request_slot(rng, c.refs, c.ro_refs, pre, hostile))
            before = c.service.fast_path.served if c.service.fast_path is not None else 0
            got, want = await exchange(c.front, burst), await exchange(py.front, burst)
            fast = (c.service.fast_path.served if c.service.fast_path is not None else 0) - before
            indirect += sum(slot[0] == 6 for slot in burst[:fast])  # a prefix is served fast
            for index, (a, b) in enumerate(zip(got, want, strict=True)):
                if a != b:
                    found.append(f"burst {number} slot {index} ({burst[index][:2].hex()}): "
                                 f"C path answered {a.hex()}, Python path {b.hex()}")
        for index, (a, b) in enumerate(zip(c.pages, py.pages, strict=True)):
            if a != b:
                found.append(f"granted page {index} differs")
        if c.image_path.read_bytes() != py.image_path.read_bytes():
            found.append("the images differ")
        assert c.service.fast_path is not None
        served = c.service.fast_path.served
        for name in ("requests", "errors", "sectors_read", "sectors_written"):
            if getattr(c.service.stats, name) != getattr(py.service.stats, name):
                found.append(f"stats.{name}: {getattr(c.service.stats, name)} vs "
                             f"{getattr(py.service.stats, name)}")
    return found, served, indirect


@pytest.fixture(params=["disk", "tmpfs"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Where the images live: pytest's tmp_path (reads through RWF_NOWAIT where that is not a
    memory file system) or /dev/shm (tmpfs: plain reads)."""
    if request.param == "disk":
        yield tmp_path
        return
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="ringkit-fast-") as d:
        yield Path(d)


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(8))
async def test_fast_path_answers_as_the_python_path_does(place: Path, seed: int) -> None:
    found, served, indirect = await differences(place, seed)
    assert not found, "\n".join(found)
    assert served > 30, f"the fast path served only {served} requests: the test tests little"
    assert indirect > 5, f"the fast path served only {indirect} INDIRECT requests"


def _control_module(tmp: Path, macro: str = "RK_BLKFAST_SKIP_WRITABLE_CHECK") -> ModuleType:
    """The shipped C built with `macro` defined: a check left out."""
    return control_module(tmp, macro, "_rk_blkfast_control_")


@pytest.mark.anyio
async def test_negative_control_no_writable_check_is_caught(tmp_path: Path) -> None:
    module = _control_module(tmp_path / "build")
    caught = []
    for seed in range(3):
        table = PersistentGrantTable(1056, module=module)
        found, _, _ = await differences(tmp_path / f"s{seed}", seed, table=table)
        caught += found
    assert any("C path answered" in line for line in caught), caught
    assert any("granted page" in line for line in caught), caught


@pytest.mark.anyio
async def test_negative_control_no_indirect_limit_is_caught(tmp_path: Path) -> None:
    module = _control_module(tmp_path / "build", "RK_BLKFAST_SKIP_INDIRECT_LIMIT")
    caught = []
    for seed in range(3):
        table = PersistentGrantTable(1056, module=module)
        found, _, _ = await differences(tmp_path / f"s{seed}", seed, table=table)
        caught += found
    assert any("C path answered" in line and "(06" in line for line in caught), caught


def _read_write(op: int, ref: int, sector: int = 0, rid: int = 7) -> bytes:
    slot = bytearray(112)
    struct.pack_into("<BBHxxxxQQIBB", slot, 0, op, 1, 0, rid, sector, ref, 0, 7)
    return bytes(slot)


def test_a_read_only_entry_serves_writes_not_reads(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 32)   # 16 sectors
    page = bytearray(b"\xaa" * 4096)
    table = PersistentGrantTable(4)
    assert table.add(5, memoryview(page), writable=False)
    out = bytearray(112 * 2)
    fd = os.open(path, os.O_RDWR)
    try:
        flags = persistent_grants.READ_PLAIN | persistent_grants.WRITE
        burst = _read_write(0, 5) + _read_write(1, 5, sector=8)
        assert table.serve(fd, 16, flags, bytearray(burst), 2, out) == (0, 0, 0)
        assert page == b"\xaa" * 4096 and out == bytes(224)   # the READ went back untouched
        served = table.serve(fd, 16, flags, bytearray(burst[112:]), 1, out)
        assert served == (1, 0, 8)
        assert out[:16] == blkif.encode_response(7, 1, 0) and out[16:112] == bytes(96)
        assert path.read_bytes()[4096:] == b"\xaa" * 4096
        assert table.add(5, memoryview(page), writable=True)
        assert table.serve(fd, 16, flags, bytearray(burst), 1, out)[0] == 1
        assert page == bytes(range(256)) * 16
    finally:
        os.close(fd)
        table.clear()


def test_the_table_names_pages_until_dropped(tmp_path: Path) -> None:
    """add / discard / clear against a dict model, seen through serve: a READ of a ref is
    served iff the model has it; the table refuses more than its size."""
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * 512))
    rng = random.Random(5)
    table = PersistentGrantTable(16)
    pages = [memoryview(bytearray(4096)) for _ in range(40)]
    model: dict[int, int] = {}
    fd = os.open(path, os.O_RDONLY)
    out = bytearray(112)
    try:
        for _ in range(2000):
            ref = rng.choice([rng.randrange(40), rng.randrange(40) * 1024, rng.randrange(1 << 32)])
            action = rng.random()
            if action < 0.5:
                index = rng.randrange(40)
                if table.add(ref, pages[index], writable=True):
                    model[ref] = index
                else:
                    assert len(model) == table.max_refs and ref not in model
            elif action < 0.9:
                table.discard(ref)
                model.pop(ref, None)
            elif action < 0.92:
                table.clear()
                model.clear()
            probe = rng.choice([*model, ref]) if model else ref
            served = table.serve(fd, 8, persistent_grants.READ_PLAIN,
                                 bytearray(_read_write(0, probe)), 1, out)[0]
            assert served == (probe in model), (probe, model)
            assert len(table) == len(model)
    finally:
        os.close(fd)
        table.clear()


def test_serve_refuses_bursts_larger_than_its_buffers() -> None:
    table = PersistentGrantTable(4)
    with pytest.raises(ValueError):
        table.serve(-1, 8, 0, bytearray(112), 2, bytearray(224))
    with pytest.raises(ValueError):
        table.serve(-1, 8, 0, bytearray(224), 2, bytearray(112))
    with pytest.raises(ValueError):
        table.add(1, memoryview(bytearray(100)), writable=False)


def test_an_indirect_request_past_iov_max(tmp_path: Path) -> None:
    """An INDIRECT WRITE then READ of 1100 one-sector segments over 3 indirect pages (more
    iovecs than IOV_MAX, none adjacent in memory) moves every sector where its entry says."""
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(2048 * 512))
    rng = random.Random(11)
    data = [memoryview(bytearray(rng.randbytes(4096))) for _ in range(4)]
    lists = [memoryview(bytearray(4096)) for _ in range(3)]
    table = PersistentGrantTable(16)
    for ref, page in enumerate(data + lists, start=100):
        assert table.add(ref, page, writable=True)
    entries = [(rng.randrange(4), rng.randrange(8)) for _ in range(1100)]
    packed = b"".join(struct.pack("<IBBxx", 100 + p, s, s) for p, s in entries)
    for i, page in enumerate(lists):
        chunk = packed[i * 4096:(i + 1) * 4096]
        page[:len(chunk)] = chunk
    expected = b"".join(bytes(data[p][s * 512:(s + 1) * 512]) for p, s in entries)

    def slot(inner: int) -> bytearray:
        raw = bytearray(112)
        struct.pack_into("<BBHxxxxQQHxxIII", raw, 0, 6, inner, 1100, 9, 5, 0, 104, 105, 106)
        return raw

    out = bytearray(112)
    fd = os.open(path, os.O_RDWR)
    try:
        flags = persistent_grants.READ_PLAIN | persistent_grants.WRITE
        assert table.serve(fd, 2048, flags, slot(1), 1, out, max_indirect=1099)[0] == 0
        assert table.serve(fd, 2048, flags, slot(1), 1, out, max_indirect=1100) == (1, 0, 1100)
        assert out[:16] == blkif.encode_response(9, 1, 0)
        assert path.read_bytes()[5 * 512:1105 * 512] == expected
        for page in data:
            page[:] = bytes(4096)
        assert table.serve(fd, 2048, flags, slot(0), 1, out, max_indirect=4096) == (1, 1100, 0)
        # the last entry naming each (page, sector) wins, as in the file's order
        last = {(p, s): n for n, (p, s) in enumerate(entries)}
        for (p, s), n in last.items():
            assert data[p][s * 512:(s + 1) * 512] == expected[n * 512:(n + 1) * 512]
    finally:
        os.close(fd)
        table.clear()
