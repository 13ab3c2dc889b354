"""The compiled blkif parser against the Python one: same records, same errors.

`ringkit.proto.blkif` has two request parsers (`blkif.parser`): the Python reference and the
compiled one, whose per-field work is C in `ringkit._native` (the ABI-mode implementation has
none and gets the Python parser).  Every check here runs a slot or a segment list through both
and asks for the same outcome: an equal record (and sector total), or an exception of the same
type carrying the same id, operation, status and reason.  Random and garbage slots come from
hypothesis; the hostile values a frontend could write (segment counts 0 and past the limit,
sector bounds reversed or past 7, huge indirect counts, unknown operations) are enumerated.

Negative control: a compiled parser whose C "skips" the sector bound check (its range error
turned into a valid request) must be caught by the same comparison.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_blkif_codec import discard_requests, indirect_requests, rw_requests

from ringkit import _native
from ringkit.proto import blkif
from ringkit.proto.blkif import InvalidRequest, Op

PYTHON = blkif.BlkifParser()  # the reference


def _compiled() -> blkif.BlkifParser:
    impl = _native.implementations().get("compiled")
    if impl is None:
        pytest.skip(f"compiled helper unavailable: {_native.unavailable().get('compiled')}")
    return blkif.parser(impl)


@pytest.fixture
def compiled() -> blkif.BlkifParser:
    return _compiled()


def test_parser_follows_the_native_implementation() -> None:
    for name, impl in _native.implementations().items():
        assert blkif.parser(impl).name == ("compiled" if name == "compiled" else "python")
    assert blkif.parser().name == blkif.parser(
        _native.implementations()[_native.IMPLEMENTATION]).name


def test_kinds_and_error_codes_match_the_c() -> None:
    if "compiled" not in _native.implementations():
        pytest.skip("compiled helper unavailable")
    from ringkit._native import _capi

    lib: Any = _capi._lib
    assert (_native.BLKIF_RW_KIND, _native.BLKIF_DISCARD_KIND,
            _native.BLKIF_INDIRECT_KIND) == (
        lib.RK_BLKIF_RW, lib.RK_BLKIF_DISCARD, lib.RK_BLKIF_INDIRECT)
    assert (_native.BLKIF_E_OPERATION, _native.BLKIF_E_NO_INDIRECT, _native.BLKIF_E_COUNT,
            _native.BLKIF_E_RANGE, _native.BLKIF_E_INNER, _native.BLKIF_E_INDIRECT_COUNT) == (
        lib.RK_BLKIF_E_OPERATION, lib.RK_BLKIF_E_NO_INDIRECT, lib.RK_BLKIF_E_COUNT,
        lib.RK_BLKIF_E_RANGE, lib.RK_BLKIF_E_INNER, lib.RK_BLKIF_E_INDIRECT_COUNT)


# --------------------------------------------------------------------------- outcomes


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a parser call did, in a form two parsers can be compared by."""
    try:
        result = call()
    except InvalidRequest as exc:
        return "invalid", (exc.id, exc.operation, int(exc.status), exc.reason)
    except (ValueError, TypeError, struct.error, OverflowError) as exc:
        return "error", type(exc).__name__
    if isinstance(result, blkif.SegmentArray):
        return "segments", (result, result.nr_sectors)
    if isinstance(result, blkif.ReadWriteRequest):
        return "request", (result, result.nr_sectors)
    return "value", result


def _same_parse(other: blkif.BlkifParser, slot: bytes | bytearray | memoryview,
                limit: int) -> tuple[str, Any]:
    expected = _outcome(lambda: PYTHON.parse_request(slot, max_indirect_segments=limit))
    got = _outcome(lambda: other.parse_request(slot, max_indirect_segments=limit))
    assert got == expected, f"slot {bytes(slot).hex()} limit {limit}"
    return got


LIMITS = [0, 1, 11, 256, 511, 512, 513, 4096, 65535, 70000, -1]


def _slot(op: int, byte1: int, word2: int, rid: int = 0x1122334455667788, sector: int = 99,
          tail: bytes = b"") -> bytes:
    raw = bytearray(blkif.REQUEST_SIZE)
    struct.pack_into("<BBH4xQQ", raw, 0, op, byte1, word2, rid, sector)
    raw[24:24 + len(tail)] = tail
    return bytes(raw)


def _segs(entries: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack("<IBB2x", *entry) for entry in entries)


def _hostile_slots() -> Iterator[bytes]:
    """The values a hostile frontend would try, in every field the parser checks."""
    good = (0xFFFFFFFF, 0, 7)
    for op in [*range(0, 9), 100, 255]:
        for nseg in [0, 1, 2, 10, 11, 12, 200, 255]:
            yield _slot(op, nseg, 0xBEEF, tail=_segs([good] * min(nseg, 11)))
    for first, last in [(0, 8), (5, 4), (8, 8), (255, 255), (7, 0), (0, 255), (7, 7), (0, 0)]:
        for index in (0, 5, 10):
            entries = [good] * 11
            entries[index] = (index, first, last)
            for op in (Op.READ, Op.WRITE, Op.FLUSH_DISKCACHE):
                yield _slot(op, 11, 1, tail=_segs(entries))
    for inner in [0, 1, 2, 3, 5, 6, 255]:
        for count in [0, 1, 11, 256, 511, 512, 513, 4096, 4097, 65535]:
            grefs = struct.pack("<8I", *range(1, 9))
            raw = bytearray(_slot(Op.INDIRECT, inner, count))
            struct.pack_into("<H2x", raw, 24, 0xCAFE)
            raw[28:60] = grefs
            yield bytes(raw)
    yield _slot(Op.DISCARD, 1, 7, tail=struct.pack("<Q", 2**64 - 1))
    yield _slot(Op.DISCARD, 0xFE, 7, tail=struct.pack("<Q", 0))


# --------------------------------------------------------------------------- parse_request


def test_hostile_slots_same_outcome(compiled: blkif.BlkifParser) -> None:
    kinds = set()
    for slot in _hostile_slots():
        for limit in LIMITS:
            kinds.add(_same_parse(compiled, slot, limit)[0])
    assert kinds == {"invalid", "request", "value"}  # the corpus reaches every outcome


@given(slot=st.binary(min_size=blkif.REQUEST_SIZE, max_size=blkif.REQUEST_SIZE + 16),
       limit=st.sampled_from(LIMITS))
def test_garbage_slots_same_outcome(slot: bytes, limit: int) -> None:
    _same_parse(_compiled(), slot, limit)


@given(op=st.integers(0, 7), nseg=st.integers(0, 255),
       entries=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 9),
                                  st.integers(0, 9)), min_size=11, max_size=11),
       rid=st.integers(0, 2**64 - 1), limit=st.sampled_from(LIMITS))
def test_near_valid_slots_same_outcome(op: int, nseg: int, entries: list[tuple[int, int, int]],
                                       rid: int, limit: int) -> None:
    """Mostly plausible requests, so the fuzz reaches the segment checks, not only the op."""
    _same_parse(_compiled(), _slot(op, nseg, 3, rid=rid, tail=_segs(entries)), limit)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_slot_buffer_types(compiled: blkif.BlkifParser, kind: Callable[[bytes], Any]) -> None:
    slot = _slot(Op.WRITE, 2, 3, tail=_segs([(5, 0, 7), (6, 1, 3)]))
    assert _same_parse(compiled, kind(slot), 0)[0] == "request"


def test_short_slot_is_a_caller_error(compiled: blkif.BlkifParser) -> None:
    for parser in (PYTHON, compiled):
        with pytest.raises(ValueError, match="112 bytes"):
            parser.parse_request(bytes(blkif.REQUEST_SIZE - 1))


@given(st.one_of(rw_requests, discard_requests, indirect_requests()))
def test_valid_requests_round_trip_through_both(request: blkif.Request) -> None:
    raw = bytearray(blkif.encode_request(request))
    for parser in (PYTHON, _compiled()):
        assert parser.parse_request(raw, max_indirect_segments=4096) == request


# --------------------------------------------------------------------------- indirect segments


def _same_segments(other: blkif.BlkifParser, pages: bytes, count: int) -> tuple[str, Any]:
    request = blkif.IndirectRequest(Op.WRITE, 77, 0, 0, count, (1,))
    expected = _outcome(lambda: PYTHON.parse_indirect_segment_array(pages, request))
    got = _outcome(lambda: other.parse_indirect_segment_array(pages, request))
    assert got == expected, f"{count} segments from {pages.hex()}"
    return got


@given(data=st.data(), count=st.integers(0, 600))
def test_garbage_segment_lists_same_outcome(data: st.DataObject, count: int) -> None:
    size = data.draw(st.integers(max(0, count * 8 - 16), count * 8 + 16))
    _same_segments(_compiled(), data.draw(st.binary(min_size=size, max_size=size)), count)


@given(entries=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 7),
                                  st.integers(0, 7)).filter(lambda e: e[1] <= e[2]),
                        min_size=1, max_size=600),
       bad=st.one_of(st.none(), st.tuples(st.integers(0, 599), st.integers(0, 9),
                                           st.integers(0, 9)),
                     st.tuples(st.integers(0, 599), st.integers(0, 255), st.integers(0, 255))))
def test_segment_lists_same_outcome(entries: list[tuple[int, int, int]],
                                    bad: tuple[int, int, int] | None) -> None:
    if bad is not None:
        index, lo, hi = bad
        entries[index % len(entries)] = (index, lo, hi)
    _same_segments(_compiled(), _segs(entries), len(entries))


def test_hostile_segment_lists_same_outcome(compiled: blkif.BlkifParser) -> None:
    kinds = set()
    for first, last in [(0, 8), (5, 4), (8, 8), (255, 255), (7, 0), (0, 255), (7, 7), (0, 0)]:
        for index in (0, 1, 511, 512, 599):
            entries = [(0xFFFFFFFF, 0, 7)] * 600
            entries[index] = (index, first, last)
            for count in (index, index + 1, 600):
                for cut in (-8, 0, 1, 8):  # longer, exact, a byte short, an entry short
                    pages = _segs(entries)[:max(0, count * 8 - cut)]
                    kinds.add(_same_segments(compiled, pages, count)[0])
    assert kinds == {"segments", "invalid", "error"}


def test_whole_indirect_request(compiled: blkif.BlkifParser) -> None:
    pages = blkif.pack_segments(list(range(1000, 5096)), 0, 7, 3)
    kind, (segments, sectors) = _same_segments(compiled, pages, 4096)
    assert kind == "segments" and sectors == 4095 * 8 + 4 and len(segments) == 4096


# --------------------------------------------------------------------------- negative control


class _SkipsSectorCheck:
    """A blkif helper whose C forgot the sector bound check: a range error comes back as a
    valid request with the segments read so far (the bad one included)."""

    def __init__(self, inner: _native.BlkifHelper) -> None:
        self._inner = inner
        self.parse_segments = inner.parse_segments

    def parse_request(self, slot: bytes, max_indirect: int, /
                      ) -> tuple[int, list[int], list[int], bytes, bytes]:
        kind, head, grefs, first, last = self._inner.parse_request(slot, max_indirect)
        if kind == _native.BLKIF_E_RANGE:
            kind = 0
        return kind, head, grefs, first, last


class _BrokenImpl:
    def __init__(self, inner: _native.NativeImpl) -> None:
        self.name = "broken"
        self.full_fence = inner.full_fence
        self.read_fence = inner.read_fence
        self.write_fence = inner.write_fence
        self.attach = inner.attach
        assert inner.blkif is not None
        self.blkif = _SkipsSectorCheck(inner.blkif)


def test_negative_control_a_parser_skipping_the_sector_check_is_caught() -> None:
    compiled = _native.implementations().get("compiled")
    if compiled is None:
        pytest.skip("compiled helper unavailable")
    broken = blkif.parser(_BrokenImpl(compiled))
    with pytest.raises(AssertionError, match="slot"):
        for slot in _hostile_slots():
            for limit in LIMITS:
                _same_parse(broken, slot, limit)
