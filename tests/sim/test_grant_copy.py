"""Grant copy (`GrantTable.copy_to_grants` / `copy_from_grants`) on the simulated Xen and on
`ringkit.testing.memory`: bytes land in (and come from) the granting domain's pages at the
segments' offsets, with a map's checks -- a read-only grant, a grant to another domain and a
revoked one are each refused -- and nothing stays mapped once a copy returns (Linux's
xen-netfront ends its grants as soon as it sees an answer, and marks a backend that still has
one mapped broken).  The real transport's copy (gntdev's GRANT_COPY) runs under real Xen, in
tests/xen/test_interop_net.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ringkit import ConfigError, GrantError
from ringkit.abc import PAGE_SIZE, GrantCopySegment, GrantTable
from ringkit.sim import SimXen
from ringkit.testing.memory import memory_grants

pytestmark = pytest.mark.anyio
Seg = GrantCopySegment


@asynccontextmanager
async def tables(kind: str) -> AsyncIterator[tuple[GrantTable, int, GrantTable, int,
                                                    GrantTable, int]]:
    """(granter, its domid, copier, its domid, a third domain, its domid)."""
    if kind == "memory":
        front, back = memory_grants(1, 0)
        third = front.domain(2)                              # a third domain, same table
        yield front, 1, back, 0, third, 2
        return
    async with SimXen.start(in_process=True) as xen:
        front_id = await xen.create_domain("front")
        other_id = await xen.create_domain("other")
        async with xen.connect(0) as dom0, xen.connect(front_id) as front, \
                xen.connect(other_id) as other:
            yield front.grants, front_id, dom0.grants, 0, other.grants, other_id
            assert not dom0.leaks().maps
        assert not await xen.settled_leaks()


def grant_mappings() -> int:
    """The simulator's grant pages mapped in this process (shares and maps alike)."""
    return Path("/proc/self/maps").read_text().count("ringkit-grant")


@pytest.mark.parametrize("kind", ["sim", "memory"])
async def test_copy_into_and_out_of_grants_at_the_segments(kind: str) -> None:
    async with tables(kind) as (granter, granter_id, copier, _, _, _):
        pages = await granter.share(0, 3)
        data = bytes(range(256)) * 24                       # 6144 bytes
        segments = [Seg(pages.refs[2], 96, 4000), Seg(pages.refs[0], 0, 2144)]
        await copier.copy_to_grants(granter_id, segments, data)
        buf = pages.buffer
        assert bytes(buf[2 * PAGE_SIZE + 96:2 * PAGE_SIZE + 4096]) == data[:4000]
        assert bytes(buf[:2144]) == data[4000:]
        assert not any(buf[PAGE_SIZE:2 * PAGE_SIZE])        # the page not named: untouched
        assert await copier.copy_from_grants(granter_id, segments) == data
        buf[PAGE_SIZE + 7] = 0xAB
        got = await copier.copy_from_grants(granter_id, [Seg(pages.refs[1], 7, 1),
                                                         Seg(pages.refs[0], 1, 2)])
        assert got == bytes([0xAB]) + data[4001:4003]
        del buf
        await pages.aclose()


async def test_a_sim_copy_leaves_nothing_mapped_when_it_returns() -> None:
    async with tables("sim") as (granter, granter_id, copier, _, _, _):
        pages = await granter.share(0, 1)
        before = grant_mappings()
        await copier.copy_to_grants(granter_id, [Seg(pages.refs[0], 0, 5)], b"hello")
        assert await copier.copy_from_grants(granter_id, [Seg(pages.refs[0], 0, 5)]) == b"hello"
        assert grant_mappings() == before
        # negative control: what ringkit's netback did before -- map, write through a slice,
        # unmap while the slice is still held: the unmap waits for the slice, so the page is
        # still mapped when the answer would go out
        mapped = await copier.map(granter_id, pages.refs)
        view = mapped.buffer[:PAGE_SIZE]
        view[:3] = b"old"
        await mapped.aclose()
        assert grant_mappings() == before + 1
        del view
        assert grant_mappings() == before
        await pages.aclose()


@pytest.mark.parametrize("kind", ["sim", "memory"])
async def test_copies_are_refused_as_maps_are(kind: str) -> None:
    async with tables(kind) as (granter, granter_id, copier, _, third, third_id):
        read_only = await granter.share(0, 1, writable=False)
        seg = Seg(read_only.refs[0], 0, 4)
        with pytest.raises(GrantError) as info:
            await copier.copy_to_grants(granter_id, [seg], b"nope")
        assert "read-only" in str(info.value)
        assert not any(read_only.buffer[:4])
        assert await copier.copy_from_grants(granter_id, [seg]) == bytes(4)   # reading is fine

        elsewhere = await granter.share(third_id, 1)                # granted to someone else
        with pytest.raises(GrantError):
            await copier.copy_to_grants(granter_id, [Seg(elsewhere.refs[0], 0, 2)], b"no")
        with pytest.raises(GrantError):
            await copier.copy_from_grants(granter_id, [Seg(elsewhere.refs[0], 0, 2)])
        await third.copy_to_grants(granter_id, [Seg(elsewhere.refs[0], 0, 2)], b"ok")
        assert bytes(elsewhere.buffer[:2]) == b"ok"                 # ... who may copy

        revoked = await granter.share(0, 1)
        ref = revoked.refs[0]
        await copier.copy_to_grants(granter_id, [Seg(ref, 0, 2)], b"ok")
        await revoked.aclose()
        with pytest.raises(GrantError):
            await copier.copy_to_grants(granter_id, [Seg(ref, 0, 2)], b"no")
        with pytest.raises(GrantError):
            await copier.copy_from_grants(granter_id, [Seg(ref, 0, 2)])
        await read_only.aclose()
        await elsewhere.aclose()


@pytest.mark.parametrize("kind", ["sim", "memory"])
async def test_bad_segments_are_config_errors(kind: str) -> None:
    async with tables(kind) as (granter, granter_id, copier, _, _, _):
        pages = await granter.share(0, 1)
        ref = pages.refs[0]
        for bad in ([], [Seg(ref, PAGE_SIZE - 1, 2)], [Seg(ref, -1, 1)], [Seg(ref, 0, 0)],
                    [Seg(-1, 0, 1)], [Seg(1 << 32, 0, 1)]):
            with pytest.raises(ConfigError):
                await copier.copy_from_grants(granter_id, bad)
        with pytest.raises(ConfigError, match="3 bytes"):
            await copier.copy_to_grants(granter_id, [Seg(ref, 0, 4)], b"abc")
        assert not any(pages.buffer)
        await pages.aclose()


@pytest.mark.parametrize("kind", ["sim", "memory"])
async def test_a_copy_larger_than_one_simulator_request(kind: str) -> None:
    """The simulator carries a copy in requests of at most COPY_CHUNK bytes: a copy of more
    whole pages than that and some odd pieces arrives whole and in order, both ways."""
    from ringkit.sim._wire import COPY_CHUNK

    whole = COPY_CHUNK // PAGE_SIZE + 16
    async with tables(kind) as (granter, granter_id, copier, _, _, _):
        pages = await granter.share(0, whole + 10)
        segments = [Seg(ref, 0, PAGE_SIZE) for ref in reversed(pages.refs[:whole])]
        segments += [Seg(pages.refs[whole + i], i * 7, 100 + i) for i in range(10)]
        size = sum(s.length for s in segments)
        assert size > COPY_CHUNK
        data = bytes((i * 131 + i // 4096) & 0xFF for i in range(size))
        await copier.copy_to_grants(granter_id, segments, data)
        buf = pages.buffer
        last = (whole - 1) * PAGE_SIZE
        assert bytes(buf[last:last + PAGE_SIZE]) == data[:PAGE_SIZE]   # the first
        assert bytes(buf[:PAGE_SIZE]) == data[last:last + PAGE_SIZE]   # the last whole page
        del buf
        assert await copier.copy_from_grants(granter_id, segments) == data
        await pages.aclose()


@pytest.mark.parametrize("kind", ["sim", "memory"])
async def test_a_copy_of_more_segments_than_one_simulator_request(kind: str) -> None:
    """The simulator also carries at most COPY_SEGMENTS segments a request: a copy of 100,000
    one-byte pieces (100 KB, far inside one COPY_CHUNK, but more segments than one request's
    frame could name: without the cap the request is refused) arrives whole and in order."""
    from ringkit.sim._wire import COPY_SEGMENTS, MAX_BODY

    count = 100_000
    assert count * len("[8, 4095, 1], ") > MAX_BODY > COPY_SEGMENTS * len("[99999, 4095, 4096], ")
    async with tables(kind) as (granter, granter_id, copier, _, _, _):
        pages = await granter.share(0, -(-count // PAGE_SIZE))
        segments = [Seg(pages.refs[i // PAGE_SIZE], i % PAGE_SIZE, 1) for i in range(count)]
        data = bytes((i * 7 + 1) & 0xFF for i in range(count))
        await copier.copy_to_grants(granter_id, segments, data)
        assert bytes(pages.buffer[:count]) == data
        assert await copier.copy_from_grants(granter_id, segments[::-1]) == data[::-1]
        await pages.aclose()


def test_the_simulator_checks_every_segment_before_any_byte_moves() -> None:
    """The simulated Xen does the copy itself (as Xen does GNTTABOP_copy) and trusts nothing
    its client sends: each segment and the place in the client's copy area are checked there,
    and a copy refused at its last segment has written nothing."""
    import mmap

    from ringkit.sim import _hypervisor, _state
    from ringkit.sim._wire import COPY_AREA_SIZE

    hv = _hypervisor.Hypervisor()
    hv.create_domain("Domain-0", 0)
    guest = hv.create_domain("guest")
    granter = _state.Client(guest, lambda message: None)
    copier = _state.Client(0, lambda message: None)
    hv.attach(granter)
    hv.attach(copier)
    share = hv.share(granter, 0, 2, True)
    hv.activate(granter, share.id)
    first, second = share.refs
    with pytest.raises(ConfigError, match="copy area"):
        hv.copy(copier, guest, [[first, 0, 3]], 0, into=False)
    area = mmap.mmap(hv.copy_area(copier), COPY_AREA_SIZE)
    assert hv.copy_area(copier) == hv.copy_area(copier)    # one area per client

    def copied_out() -> bytes:
        hv.copy(copier, guest, [[first, 0, 3]], 100, into=False)
        return area[100:103]

    # control: the first segment alone is copied, both ways
    area[:3] = b"abc"
    hv.copy(copier, guest, [[first, 0, 3]], 0, into=True)
    assert copied_out() == b"abc"
    for bad, error in (([[second, PAGE_SIZE - 1, 2]], ConfigError),
                       ([[second, 0, 0]], ConfigError),
                       ([[second, -1, 1]], ConfigError),
                       ([[second, True, 1]], ConfigError),
                       ([[True, 0, 1]], ConfigError),
                       ([[second + 100, 0, 1]], GrantError)):
        area[:3] = b"xyz"
        with pytest.raises(error):
            hv.copy(copier, guest, [[first, 0, 3], *bad], 0, into=True)
        assert copied_out() == b"abc"   # untouched
    area[:3] = b"xyz"
    for at in (-1, COPY_AREA_SIZE - 2, True, "0"):     # outside the area, or not a place
        with pytest.raises(ConfigError, match="copy area"):
            hv.copy(copier, guest, [[first, 0, 3]], at, into=True)   # type: ignore[arg-type]
        assert copied_out() == b"abc"
    with pytest.raises(ConfigError):
        hv.copy(copier, guest, [], 0, into=False)
    area.close()
    hv.disconnect(granter)
    hv.disconnect(copier)
    assert copier.copy_area is None
