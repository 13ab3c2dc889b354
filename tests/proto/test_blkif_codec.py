"""Round trips and validation of the blkif codecs (no C needed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkit.proto import blkif
from ringkit.proto.blkif import InvalidRequest, Op, Status

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)


@st.composite
def segments(draw: st.DrawFn) -> blkif.Segment:
    first = draw(st.integers(0, 7))
    last = draw(st.integers(first, 7))
    return blkif.Segment(draw(u32), first, last)


rw_requests = st.builds(
    blkif.ReadWriteRequest,
    st.sampled_from([Op.READ, Op.WRITE, Op.WRITE_BARRIER, Op.FLUSH_DISKCACHE]),
    u64, u16, u64,
    st.lists(segments(), min_size=1, max_size=11).map(blkif.SegmentArray.from_segments),
)
discard_requests = st.builds(blkif.DiscardRequest, u64, u16, u64, u64, st.booleans())


@st.composite
def indirect_requests(draw: st.DrawFn) -> blkif.IndirectRequest:
    nseg = draw(st.integers(1, 4096))
    pages = blkif.indirect_pages_for(nseg)
    grefs = tuple(draw(st.lists(u32, min_size=pages, max_size=pages)))
    return blkif.IndirectRequest(draw(st.sampled_from([Op.READ, Op.WRITE])), draw(u64),
                                 draw(u16), draw(u64), nseg, grefs)


@given(st.one_of(rw_requests, discard_requests, indirect_requests()))
def test_request_round_trip(request: blkif.Request) -> None:
    raw = blkif.encode_request(request)
    assert len(raw) == blkif.REQUEST_SIZE
    assert blkif.parse_request(raw, max_indirect_segments=4096) == request


@given(st.one_of(rw_requests, discard_requests, indirect_requests()))
def test_encode_overwrites_a_dirty_slot_entirely(request: blkif.Request) -> None:
    dirty = bytearray(b"\xa5" * (blkif.REQUEST_SIZE + 8))
    blkif.encode_request_into(dirty, 4, request)
    assert dirty[4:4 + blkif.REQUEST_SIZE] == blkif.encode_request(request)
    assert dirty[:4] == b"\xa5" * 4 and dirty[-4:] == b"\xa5" * 4


def test_padding_is_zero() -> None:
    raw = blkif.encode_request(blkif.ReadWriteRequest(
        Op.READ, 1, 2, 3, blkif.SegmentArray.from_segments([blkif.Segment(4, 0, 7)])))
    assert raw[4:8] == bytes(4)  # pad after handle
    assert raw[30:32] == bytes(2)  # segment padding
    assert raw[32:] == bytes(80)  # unused segments
    rsp = bytearray(b"\xff" * 16)
    blkif.encode_response_into(rsp, 0, 7, 1, -1)
    assert rsp[9] == 0 and rsp[12:] == bytes(4)


@given(u64, st.integers(0, 255), st.sampled_from(list(Status)))
def test_response_round_trip(rid: int, op: int, status: Status) -> None:
    raw = blkif.encode_response(rid, op, status)
    assert blkif.parse_response(raw) == blkif.Response(rid, op, status)


def _rw(op: int, nseg: int, segs: list[tuple[int, int, int]], rid: int = 5) -> bytes:
    raw = bytearray(blkif.REQUEST_SIZE)
    struct.pack_into("<BBH4xQQ", raw, 0, op, nseg, 0, rid, 0)
    for i, (gref, first, last) in enumerate(segs):
        struct.pack_into("<IBB", raw, 24 + 8 * i, gref, first, last)
    return bytes(raw)


@pytest.mark.parametrize(("op", "nseg"), [(Op.READ, 0), (Op.WRITE, 0), (Op.READ, 12),
                                          (Op.WRITE, 255), (Op.WRITE_BARRIER, 12),
                                          (Op.FLUSH_DISKCACHE, 12)])
def test_bad_segment_count_is_an_error_response(op: Op, nseg: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        blkif.parse_request(_rw(op, nseg, []))
    assert (info.value.id, info.value.operation, info.value.status) == (5, op, Status.ERROR)


@pytest.mark.parametrize("op", [Op.FLUSH_DISKCACHE, Op.WRITE_BARRIER])
def test_flush_and_barrier_may_have_no_segments(op: Op) -> None:
    req = blkif.parse_request(_rw(op, 0, []))
    assert isinstance(req, blkif.ReadWriteRequest) and len(req.segments) == 0


@pytest.mark.parametrize(("first", "last"), [(0, 8), (5, 4), (8, 8), (255, 255), (7, 0)])
def test_bad_sector_range_in_segment(first: int, last: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        blkif.parse_request(_rw(Op.READ, 2, [(1, 0, 7), (2, first, last)]))
    assert info.value.status == Status.ERROR
    assert "segment 1" in info.value.reason


@pytest.mark.parametrize("op", [4, 7, 100, 255])
def test_unknown_operation_is_eopnotsupp(op: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        blkif.parse_request(_rw(op, 1, [(1, 0, 7)], rid=2**64 - 1))
    assert (info.value.id, info.value.operation, info.value.status) == (
        2**64 - 1, op, Status.EOPNOTSUPP)


def _indirect(inner: int, nseg: int) -> bytes:
    raw = bytearray(blkif.REQUEST_SIZE)
    struct.pack_into("<BBH4xQQH2x8I", raw, 0, Op.INDIRECT, inner, nseg, 11, 0, 0, *range(8))
    return bytes(raw)


def test_indirect_not_offered_is_eopnotsupp() -> None:
    with pytest.raises(InvalidRequest) as info:
        blkif.parse_request(_indirect(Op.READ, 4))
    assert info.value.status == Status.EOPNOTSUPP


@pytest.mark.parametrize(("inner", "nseg"), [(Op.READ, 0), (Op.WRITE, 257),
                                             (Op.FLUSH_DISKCACHE, 4), (9, 4)])
def test_bad_indirect_requests(inner: int, nseg: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        blkif.parse_request(_indirect(inner, nseg), max_indirect_segments=256)
    assert info.value.status == Status.ERROR
    assert info.value.operation == inner  # the response echoes the inner operation, as Linux


def _segment_list(segs: list[blkif.Segment], size: int) -> bytearray:
    """`segs` as a blkif_request_segment array, packed here field by field (the reference the
    codec is checked against)."""
    out = bytearray(size)
    for i, seg in enumerate(segs):
        struct.pack_into("<IBB2x", out, 8 * i, seg.gref, seg.first_sect, seg.last_sect)
    return out


def _columns(segs: list[blkif.Segment]) -> blkif.SegmentArray:
    return blkif.SegmentArray([s.gref for s in segs], bytes(s.first_sect for s in segs),
                              bytes(s.last_sect for s in segs))


def test_indirect_segments_parse_and_validate() -> None:
    req = blkif.parse_request(_indirect(Op.WRITE, 513), max_indirect_segments=1024)
    assert isinstance(req, blkif.IndirectRequest)
    assert req.indirect_grefs == (0, 1)
    segs = [blkif.Segment(i, i % 8, 7) for i in range(513)]
    pages = _segment_list(segs, 2 * 4096)
    assert blkif.parse_indirect_segment_array(pages, req) == _columns(segs)
    struct.pack_into("<IBB", pages, 8 * 512, 3, 6, 2)
    with pytest.raises(InvalidRequest, match="segment 512"):
        blkif.parse_indirect_segment_array(pages, req)


def test_indirect_segment_list_too_short_is_a_caller_bug() -> None:
    req = blkif.IndirectRequest(Op.READ, 1, 0, 0, 4, (1,))
    with pytest.raises(ValueError, match="need 32"):
        blkif.parse_indirect_segment_array(bytes(31), req)


def test_whole_pages_and_segment_objects() -> None:
    array = blkif.SegmentArray.whole_pages([5, 6, 7], 3)
    assert array.segments() == (blkif.Segment(5, 0, 7), blkif.Segment(6, 0, 7),
                                blkif.Segment(7, 0, 3))
    assert array == blkif.SegmentArray.from_segments(array.segments())
    assert array.nr_sectors == 8 + 8 + 4
    assert len(blkif.SegmentArray.whole_pages([])) == 0


def test_segment_geometry() -> None:
    seg = blkif.Segment(1, 2, 5)
    assert (seg.nr_sectors, seg.offset, seg.length) == (4, 1024, 2048)


def test_encode_rejects_what_does_not_fit() -> None:
    too_many = blkif.SegmentArray.whole_pages([1] * 12)
    with pytest.raises(ValueError, match="12 direct segments"):
        blkif.encode_request(blkif.ReadWriteRequest(Op.READ, 1, 0, 0, too_many))
    with pytest.raises(ValueError, match="id"):
        blkif.encode_request(blkif.DiscardRequest(-1, 0, 0, 1, False))


@given(st.lists(segments(), min_size=1, max_size=1024))
def test_segment_array_matches_segment_objects(segs: list[blkif.Segment]) -> None:
    req = blkif.IndirectRequest(Op.READ, 1, 0, 0, len(segs), (1, 2))
    array = blkif.parse_indirect_segment_array(_segment_list(segs, 2 * 4096), req)
    assert array == _columns(segs)
    assert array == blkif.SegmentArray.from_segments(tuple(segs))
    assert array.nr_sectors == sum(s.nr_sectors for s in segs)


@given(st.lists(u32, min_size=1, max_size=600), st.integers(0, 7))
def test_pack_segments(grefs: list[int], final_last: int) -> None:
    segs = [blkif.Segment(g, 0, 7) for g in grefs[:-1]] + [blkif.Segment(grefs[-1], 0,
                                                                         final_last)]
    assert blkif.pack_segments(grefs, 0, 7, final_last) == _segment_list(segs, 8 * len(segs))


def test_segment_array_rejects_bad_ranges() -> None:
    req = blkif.IndirectRequest(Op.WRITE, 9, 0, 0, 3, (1,))
    pages = _segment_list([blkif.Segment(1, 0, 7), blkif.Segment(2, 3, 3)], 4096)
    struct.pack_into("<IBB", pages, 16, 3, 2, 9)
    with pytest.raises(InvalidRequest, match="segment 2"):
        blkif.parse_indirect_segment_array(pages, req)
    struct.pack_into("<IBB", pages, 16, 3, 5, 4)
    with pytest.raises(InvalidRequest, match="segment 2"):
        blkif.parse_indirect_segment_array(pages, req)
