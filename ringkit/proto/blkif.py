"""blkif wire layouts (Xen public ``io/blkif.h``, x86_64 ABI) and their codecs.

Theory of operation: a blkif ring slot is 112 bytes (the size of ``struct blkif_request``; a
response is 16 bytes and uses the head of the same slot).  The ring engine copies a slot out of
shared memory once; `parse_request` then reads only that private copy and returns a typed, frozen
record, or raises `InvalidRequest` carrying what the backend must answer (the id, the operation
to echo and ``BLKIF_RSP_ERROR`` or ``BLKIF_RSP_EOPNOTSUPP``), as Linux's xen-blkback does for
malformed requests.  Encoders always write whole slots with every padding byte zeroed, so no
stale memory of ours reaches the peer (XSA-216).

Sectors are always 512-byte units (Linux's convention, independent of ``sector-size``); a
segment names one granted 4 KiB page and an inclusive sector range ``first_sect..last_sect``
inside it (0..7).

Request parsing comes in two implementations that behave identically (`parser`): Python, and
one whose per-field work (unpacking, range checks, sector totals) is C in `ringkit._native`.
`parse_request` and `parse_indirect_segment_array` use the one that goes with the native
implementation in use (``RINGKIT_NATIVE``): C where the compiled helper was built, Python in
ABI mode.

Nothing here does I/O: it is shared by the backend and the frontend.
"""

from __future__ import annotations

import enum
import operator
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .. import _native
from ..requests.codec import Field, RefList, SlotCodec
from ._half import resolve_native
from .layout import RingLayout

if TYPE_CHECKING:
    from .._native import BlkifHelper, NativeImpl

PAGE_SIZE: Final = 4096
"""Bytes of the granted page a segment names (Xen's 4 KiB page)."""
SECTOR_SIZE: Final = 512
"""blkif sector unit in bytes, whatever the disk's logical sector size."""
SECTORS_PER_PAGE: Final = PAGE_SIZE // SECTOR_SIZE
"""Sectors in one segment's page: 8, so a segment's sectors are 0..7."""

REQUEST_SIZE: Final = 112
"""``sizeof(struct blkif_request)`` on x86_64: the ring slot size."""
RESPONSE_SIZE: Final = 16
"""``sizeof(struct blkif_response)`` on x86_64."""
SEGMENT_SIZE: Final = 8
"""``sizeof(struct blkif_request_segment)``."""

RING_LAYOUT: Final = RingLayout("blkif", REQUEST_SIZE, RESPONSE_SIZE)
"""``DEFINE_RING_TYPES(blkif, struct blkif_request, struct blkif_response)``: 112-byte slots,
32 per page."""

MAX_SEGMENTS_PER_REQUEST: Final = 11
"""``BLKIF_MAX_SEGMENTS_PER_REQUEST``: direct segments in one request."""
MAX_INDIRECT_PAGES_PER_REQUEST: Final = 8
"""``BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST``: indirect_grefs slots in an indirect request."""
SEGMENTS_PER_INDIRECT_PAGE: Final = PAGE_SIZE // SEGMENT_SIZE
"""Segments one indirect page holds (512)."""

DISCARD_SECURE: Final = 1
"""``BLKIF_DISCARD_SECURE`` flag of a discard request."""

PROTOCOL_X86_64: Final = "x86_64-abi"
"""Value of the frontend's ``protocol`` node for this ABI."""

VDISK_CDROM: Final = 0x1
"""Bit of the backend's ``info`` node: the disk is a CD-ROM."""
VDISK_REMOVABLE: Final = 0x2
"""Bit of the backend's ``info`` node: the medium is removable."""
VDISK_READONLY: Final = 0x4
"""Bit of the backend's ``info`` node: the disk is read-only."""


class Op(enum.IntEnum):
    """``BLKIF_OP_*`` request operations."""

    READ = 0
    WRITE = 1
    WRITE_BARRIER = 2
    FLUSH_DISKCACHE = 3
    DISCARD = 5
    INDIRECT = 6


class Status(enum.IntEnum):
    """``BLKIF_RSP_*`` response status codes."""

    OKAY = 0
    ERROR = -1
    EOPNOTSUPP = -2


_STATUS_VALUES = frozenset(int(s) for s in Status)

CODEC: Final = SlotCodec(
    RING_LAYOUT,
    request_id=Field(8, 8),
    response_id=Field(0, 8),
    operation=Field(0, 1),
    refs=RefList(offset=24, stride=8, maximum=MAX_SEGMENTS_PER_REQUEST, count=Field(1, 1),
                 operations=frozenset({Op.READ, Op.WRITE, Op.WRITE_BARRIER,
                                       Op.FLUSH_DISKCACHE}),
                 writable_operations=frozenset({Op.READ})),
    status=Field(10, 2, signed=True),
    error_status=Status.ERROR,
    echo=((Field(8, 1), Field(0, 1)),),
)
"""blkif for `ringkit.requests`: the id (``u.rw.id``, answered in ``blkif_response.id``), the
operation, the direct segments' grant refs (INDIRECT and DISCARD requests name theirs
otherwise), and the error answer (BLKIF_RSP_ERROR, the operation echoed)."""


# --------------------------------------------------------------------------- layouts
#
# struct blkif_request_segment {
#     grant_ref_t gref;        /* reference to I/O buffer frame        */
#     uint8_t     first_sect, last_sect;
# };                                                   /* 8 bytes: 2 trailing pad */
_SEGMENT = struct.Struct("<IBB2x")

# struct blkif_request {
#     uint8_t        operation;    /* BLKIF_OP_???                         */
#     uint8_t        nr_segments;  /* number of segments                   */
#     blkif_vdev_t   handle;       /* only for read/write requests         */
#     uint64_t       id;           /* private guest value, echoed in resp  */
#     blkif_sector_t sector_number;/* start sector idx on disk (r/w only)  */
#     struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
# };                              /* 0, 1, 2, (pad 4..7), 8, 16, seg at 24; 112 bytes */
_RW_HEADER = struct.Struct("<BBH4xQQ")
_SEGMENTS_OFFSET: Final = _RW_HEADER.size
_RW_FULL = struct.Struct("<BBH4xQQ" + "IBB2x" * MAX_SEGMENTS_PER_REQUEST)

# struct blkif_request_discard {
#     uint8_t        operation;    /* BLKIF_OP_DISCARD                     */
#     uint8_t        flag;         /* BLKIF_DISCARD_SECURE or zero         */
#     blkif_vdev_t   handle;       /* same as for read/write requests      */
#     uint64_t       id;           /* private guest value, echoed in resp  */
#     blkif_sector_t sector_number;/* start sector idx on disk             */
#     uint64_t       nr_sectors;   /* number of contiguous sectors to discard*/
# };                                         /* 0, 1, 2, 8, 16, 24; 32 bytes */
_DISCARD = struct.Struct("<BBH4xQQQ")

# struct blkif_request_indirect {
#     uint8_t        operation;    /* BLKIF_OP_INDIRECT                    */
#     uint8_t        indirect_op;  /* BLKIF_OP_{READ/WRITE}                */
#     uint16_t       nr_segments;  /* number of segments                   */
#     uint64_t       id;           /* private guest value, echoed in resp  */
#     blkif_sector_t sector_number;/* start sector idx on disk (r/w only)  */
#     blkif_vdev_t   handle;       /* same as for read/write requests      */
#     grant_ref_t    indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
# };                        /* 0, 1, 2, 8, 16, 24, (pad 26..27), grefs at 28; 64 bytes */
_INDIRECT = struct.Struct("<BBHxxxxQQH2x" + "I" * MAX_INDIRECT_PAGES_PER_REQUEST)

# struct blkif_response {
#     uint64_t        id;              /* copied from request */
#     uint8_t         operation;       /* copied from request */
#     int16_t         status;          /* BLKIF_RSP_???       */
# };                                  /* 0, 8, (pad 9), 10, (pad 12..15); 16 bytes */
_RESPONSE = struct.Struct("<QBxh4x")

_HEAD = struct.Struct("<BB6xQ")  # operation, byte 1, id: common to every request layout

# Offsets, for the C layout check and for readers of this module.
OFFSETS: Final[dict[str, dict[str, int]]] = {
    "blkif_request_segment": {"gref": 0, "first_sect": 4, "last_sect": 5},
    "blkif_request": {
        "operation": 0, "nr_segments": 1, "handle": 2, "id": 8, "sector_number": 16, "seg": 24,
    },
    "blkif_request_discard": {
        "operation": 0, "flag": 1, "handle": 2, "id": 8, "sector_number": 16, "nr_sectors": 24,
    },
    "blkif_request_indirect": {
        "operation": 0, "indirect_op": 1, "nr_segments": 2, "id": 8, "sector_number": 16,
        "handle": 24, "indirect_grefs": 28,
    },
    "blkif_response": {"id": 0, "operation": 8, "status": 10},
}
"""Byte offset of each field of blkif.h's structs, by struct name (checked against the C
header by the layout test)."""
SIZES: Final[dict[str, int]] = {
    "blkif_request_segment": SEGMENT_SIZE,
    "blkif_request": REQUEST_SIZE,
    "blkif_request_discard": _DISCARD.size,
    "blkif_request_indirect": 64,
    "blkif_response": RESPONSE_SIZE,
}
"""``sizeof`` each of blkif.h's structs on x86_64, by struct name."""

_ZERO_SLOT: Final = bytes(REQUEST_SIZE)
_ALL_SEVENS: Final = bytes((SECTORS_PER_PAGE - 1,)) * (
    MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE)
_U64: Final = (1 << 64) - 1


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Segment:
    """One granted page and the inclusive sector range of it to transfer."""

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nr_sectors(self) -> int:
        """Sectors this segment covers."""
        return self.last_sect - self.first_sect + 1

    @property
    def offset(self) -> int:
        """Byte offset of the range inside the page."""
        return self.first_sect * SECTOR_SIZE

    @property
    def length(self) -> int:
        """Bytes this segment covers."""
        return self.nr_sectors * SECTOR_SIZE


@dataclass(frozen=True, slots=True)
class SegmentArray:
    """Validated segments in columns, the fast form of a long segment list: ``grefs[i]``,
    ``first[i]`` and ``last[i]`` describe segment i."""

    grefs: list[int]
    first: bytes
    last: bytes
    known_sectors: int = field(default=-1, compare=False, repr=False)
    """`nr_sectors` when the parser already counted them (-1: not counted)."""

    def __len__(self) -> int:
        return len(self.grefs)

    @property
    def nr_sectors(self) -> int:
        """Total sectors the segments cover."""
        known = self.known_sectors
        if known >= 0:
            return known
        return sum(self.last) - sum(self.first) + len(self.grefs)

    @classmethod
    def from_segments(cls, segments: tuple[Segment, ...] | list[Segment]) -> SegmentArray:
        """The column form of `segments` (one object each: for tests and occasional use)."""
        return cls([s.gref for s in segments], bytes(s.first_sect for s in segments),
                   bytes(s.last_sect for s in segments))

    @classmethod
    def whole_pages(cls, grefs: list[int], final_last: int = SECTORS_PER_PAGE - 1
                    ) -> SegmentArray:
        """Segments covering all of each page of `grefs`, except that the final one ends at
        sector `final_last`: what a frontend sends for a page-aligned transfer."""
        count = len(grefs)
        last = _ALL_SEVENS[:count - 1] + bytes((final_last,)) if count else b""
        return cls(grefs, bytes(count), last)

    def segments(self) -> tuple[Segment, ...]:
        """One `Segment` per entry (for tests and logs; the hot paths use the columns)."""
        return tuple(Segment(g, f, la)
                     for g, f, la in zip(self.grefs, self.first, self.last, strict=True))


@dataclass(frozen=True, slots=True)
class ReadWriteRequest:
    """READ, WRITE, WRITE_BARRIER or FLUSH_DISKCACHE with direct segments (all validated),
    held in column form like an indirect request's, so both are served the same way."""

    operation: Op
    id: int
    handle: int
    sector_number: int
    segments: SegmentArray

    @property
    def nr_sectors(self) -> int:
        """Total sectors transferred."""
        return self.segments.nr_sectors


@dataclass(frozen=True, slots=True)
class IndirectRequest:
    """BLKIF_OP_INDIRECT: the segments live in the pages named by `indirect_grefs`.

    `indirect_op` is READ or WRITE; the indirect pages are still to be mapped and parsed with
    `parse_indirect_segment_array`.
    """

    indirect_op: Op
    id: int
    handle: int
    sector_number: int
    nr_segments: int
    indirect_grefs: tuple[int, ...]

    @property
    def operation(self) -> Op:
        """Always `Op.INDIRECT`; the operation it carries is `indirect_op`."""
        return Op.INDIRECT


@dataclass(frozen=True, slots=True)
class DiscardRequest:
    """BLKIF_OP_DISCARD of `nr_sectors` sectors from `sector_number`."""

    id: int
    handle: int
    sector_number: int
    nr_sectors: int
    secure: bool

    @property
    def operation(self) -> Op:
        """Always `Op.DISCARD`."""
        return Op.DISCARD


Request = ReadWriteRequest | IndirectRequest | DiscardRequest
"""Any parsed blkif request: what `parse_request` returns."""


@dataclass(frozen=True, slots=True)
class Response:
    """A ``struct blkif_response``."""

    id: int
    operation: int
    status: int


class InvalidRequest(Exception):
    """A request the backend must refuse with a response rather than serve.

    `id` and `operation` are what the response echoes; `status` is ERROR or EOPNOTSUPP;
    `reason` says what was wrong (for logs and tests).
    """

    def __init__(self, id: int, operation: int, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.id = id
        self.operation = operation
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- parse


def _range_error(rid: int, op: int, index: int, lo: int, hi: int) -> InvalidRequest:
    return InvalidRequest(rid, op, Status.ERROR,
                          f"segment {index}: sectors {lo}..{hi} not an ordered range inside 0..7")


def _check_ranges(first: bytes, last: bytes, rid: int, op: int) -> None:
    """Every segment's sectors ``first[i]..last[i]`` must be an ordered range inside 0..7;
    checked column-wise (C speed), the culprit found only when one is wrong."""
    if last and (max(last) >= SECTORS_PER_PAGE or any(map(operator.gt, first, last))):
        for index, (lo, hi) in enumerate(zip(first, last, strict=True)):
            if hi >= SECTORS_PER_PAGE or hi < lo:
                raise _range_error(rid, op, index, lo, hi)


def _py_parse_request(slot: bytes | bytearray | memoryview, max_indirect_segments: int
                      ) -> Request:
    """`parse_request` in Python: the reference the compiled parser is tested against."""
    if len(slot) < REQUEST_SIZE:
        raise ValueError(f"a blkif slot is {REQUEST_SIZE} bytes, got {len(slot)}")
    op, _, rid = _HEAD.unpack_from(slot)
    if op in (Op.READ, Op.WRITE, Op.WRITE_BARRIER, Op.FLUSH_DISKCACHE):
        fields = _RW_FULL.unpack_from(slot)
        nseg = fields[1]
        # as xen-blkback: a flush or barrier may carry no data, a read or write must
        minimum = 0 if op in (Op.FLUSH_DISKCACHE, Op.WRITE_BARRIER) else 1
        if not minimum <= nseg <= MAX_SEGMENTS_PER_REQUEST:
            raise InvalidRequest(
                rid, op, Status.ERROR,
                f"{nseg} segments (allowed {minimum}..{MAX_SEGMENTS_PER_REQUEST})",
            )
        end = 5 + 3 * nseg
        first, last = bytes(fields[6:end:3]), bytes(fields[7:end:3])
        _check_ranges(first, last, rid, op)
        return ReadWriteRequest(Op(op), rid, fields[2], fields[4],
                                SegmentArray(list(fields[5:end:3]), first, last))
    if op == Op.DISCARD:
        _, flag, handle, _, sector, nr_sectors = _DISCARD.unpack_from(slot)
        return DiscardRequest(rid, handle, sector, nr_sectors, bool(flag & DISCARD_SECURE))
    if op == Op.INDIRECT:
        if max_indirect_segments <= 0:
            raise InvalidRequest(rid, op, Status.EOPNOTSUPP, "indirect requests not offered")
        fields = _INDIRECT.unpack_from(slot)
        inner, nseg, handle, sector = fields[1], fields[2], fields[5], fields[4]
        if inner not in (Op.READ, Op.WRITE):
            raise InvalidRequest(rid, inner, Status.ERROR, f"indirect operation {inner}")
        if not 1 <= nseg <= max_indirect_segments:
            raise InvalidRequest(
                rid, inner, Status.ERROR,
                f"{nseg} indirect segments (allowed 1..{max_indirect_segments})",
            )
        pages = indirect_pages_for(nseg)
        return IndirectRequest(Op(inner), rid, handle, sector, nseg, tuple(fields[6:6 + pages]))
    raise InvalidRequest(rid, op, Status.EOPNOTSUPP, f"unknown operation {op}")


def indirect_pages_for(nr_segments: int) -> int:
    """Indirect pages needed to describe `nr_segments` segments."""
    return -(-nr_segments // SEGMENTS_PER_INDIRECT_PAGE)


def _py_parse_indirect_segment_array(pages: bytes | bytearray | memoryview,
                                    request: IndirectRequest) -> SegmentArray:
    """`parse_indirect_segment_array` in Python (the reference)."""
    need = request.nr_segments * SEGMENT_SIZE
    if len(pages) < need:
        raise ValueError(f"indirect pages hold {len(pages)} bytes, need {need}")
    raw = bytes(memoryview(pages)[:need])
    first, last = raw[4::SEGMENT_SIZE], raw[5::SEGMENT_SIZE]
    _check_ranges(first, last, request.id, request.indirect_op)
    words = array("I", raw)
    if sys.byteorder != "little":
        words.byteswap()
    return SegmentArray(words[::2].tolist(), first, last)


def pack_segments(grefs: list[int] | tuple[int, ...], first: int, last: int,
                  final_last: int) -> bytes:
    """A ``blkif_request_segment`` array (indirect page contents) for segments that all cover
    sectors `first`..`last` of their page, except the final one, which ends at `final_last`."""
    if not grefs:
        return b""
    common = (first << 32) | (last << 40)
    words = array("Q", [g | common for g in grefs])
    words[-1] = grefs[-1] | (first << 32) | (final_last << 40)
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()


def parse_response(slot: bytes | bytearray | memoryview) -> Response:
    """Decode a response from a private copy of a ring slot (no validation: the frontend
    checks the id and operation against what it has in flight)."""
    rid, op, status = _RESPONSE.unpack_from(slot)
    return Response(rid, op, status)


def response_problem(rid: int, operation: int, status: int, expected: int) -> str | None:
    """What is wrong with a response (id `rid`, `operation`, `status`) to a request whose
    operation was `expected` (an INDIRECT request's inner one, which blkback answers with), or
    None when it is well formed: the operation must match and the status be one of
    BLKIF_RSP_OKAY/ERROR/EOPNOTSUPP.  One wording for the frontend's Python and C paths."""
    if operation != expected:
        return (f"blkif response for id {rid:#x} has operation {operation}, the request was "
                f"{expected}")
    if status not in _STATUS_VALUES:
        return (f"blkif response for id {rid:#x} has status {status}, not one of "
                "BLKIF_RSP_OKAY/ERROR/EOPNOTSUPP")
    return None


# --------------------------------------------------------------------------- encode


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value <= _U64:
        raise ValueError(f"{name} {value} does not fit in 64 bits")


def encode_request_into(buffer: bytearray | memoryview, offset: int, request: Request) -> None:
    """Write `request` as one whole 112-byte slot at `offset`, padding zeroed.

    Raises:
        ValueError: a field does not fit its C type or the request breaks a layout limit
            (a caller bug: more than 11 direct segments, more than 8 indirect pages).
    """
    _check_u64("id", request.id)
    _check_u64("sector_number", request.sector_number)
    buffer[offset:offset + REQUEST_SIZE] = _ZERO_SLOT
    if isinstance(request, ReadWriteRequest):
        segs = request.segments
        count = len(segs)
        if count > MAX_SEGMENTS_PER_REQUEST:
            raise ValueError(f"{count} direct segments (max {MAX_SEGMENTS_PER_REQUEST})")
        _RW_HEADER.pack_into(buffer, offset, request.operation, count, request.handle,
                             request.id, request.sector_number)
        pos = offset + _SEGMENTS_OFFSET
        for gref, first, last in zip(segs.grefs, segs.first, segs.last, strict=True):
            _SEGMENT.pack_into(buffer, pos, gref, first, last)
            pos += SEGMENT_SIZE
    elif isinstance(request, DiscardRequest):
        _check_u64("nr_sectors", request.nr_sectors)
        _DISCARD.pack_into(buffer, offset, Op.DISCARD, DISCARD_SECURE if request.secure else 0,
                           request.handle, request.id, request.sector_number,
                           request.nr_sectors)
    else:
        grefs = request.indirect_grefs
        if len(grefs) > MAX_INDIRECT_PAGES_PER_REQUEST:
            raise ValueError(f"{len(grefs)} indirect pages (max "
                             f"{MAX_INDIRECT_PAGES_PER_REQUEST})")
        padded = grefs + (0,) * (MAX_INDIRECT_PAGES_PER_REQUEST - len(grefs))
        _INDIRECT.pack_into(buffer, offset, Op.INDIRECT, request.indirect_op,
                            request.nr_segments, request.id, request.sector_number,
                            request.handle, *padded)


def encode_request(request: Request) -> bytes:
    """`request` as a whole zero-padded 112-byte slot."""
    out = bytearray(REQUEST_SIZE)
    encode_request_into(out, 0, request)
    return bytes(out)


def encode_response_into(buffer: bytearray | memoryview, offset: int, id: int, operation: int,
                         status: int) -> None:
    """Write one whole 16-byte response at `offset`; ``pack_into`` covers every byte, padding
    included, so nothing stale is left in the slot's response part."""
    _RESPONSE.pack_into(buffer, offset, id, operation, status)


def encode_response(id: int, operation: int, status: int) -> bytes:
    """A whole zero-padded 16-byte response."""
    return _RESPONSE.pack(id, operation, status)


# --------------------------------------------------------------------------- parsers
#
# Two parsers, one behaviour.  The Python one above is the reference.  The compiled one hands
# the per-field work (unpacking, range checks, sector totals) to C through
# `ringkit._native` (`BlkifHelper`, built from _native/_build.py) and builds the same records
# and the same `InvalidRequest`s from what the C reports.  Which one serves is decided the way
# the rest of the native layer is: by `ringkit._native`'s implementation (RINGKIT_NATIVE);
# the ABI-mode implementation has no C of its own, so it gets the Python parser.  Encoding has
# one implementation, Python: through cffi, converting a request's arguments and buffer cost as
# much as struct.pack_into takes for the whole slot (measured), so C gained nothing there.

_OPS: Final = {op.value: op for op in Op}
# What the C helper reports: the contract lives beside `BlkifHelper` in ringkit._native.
_RW_KIND, _DISCARD_KIND, _INDIRECT_KIND = (
    _native.BLKIF_RW_KIND, _native.BLKIF_DISCARD_KIND, _native.BLKIF_INDIRECT_KIND)
_E_OPERATION, _E_NO_INDIRECT, _E_COUNT, _E_RANGE, _E_INNER, _E_INDIRECT_COUNT = (
    _native.BLKIF_E_OPERATION, _native.BLKIF_E_NO_INDIRECT, _native.BLKIF_E_COUNT,
    _native.BLKIF_E_RANGE, _native.BLKIF_E_INNER, _native.BLKIF_E_INDIRECT_COUNT)
_U16: Final = 0xFFFF


class BlkifParser:
    """The blkif request parsers of one implementation: `parse_request` and
    `parse_indirect_segment_array`, with exactly the behaviour the module-level functions of
    the same names document.  `parser()` picks one."""

    name = "python"
    """``"python"`` or ``"compiled"``."""

    def parse_request(self, slot: bytes | bytearray | memoryview, *,
                      max_indirect_segments: int = 0) -> Request:
        """See the module-level `parse_request`."""
        return _py_parse_request(slot, max_indirect_segments)

    def parse_indirect_segment_array(self, pages: bytes | bytearray | memoryview,
                                     request: IndirectRequest) -> SegmentArray:
        """See the module-level `parse_indirect_segment_array`."""
        return _py_parse_indirect_segment_array(pages, request)


class _CompiledParser(BlkifParser):
    """`BlkifParser` with the parsing in C (`ringkit._native.BlkifHelper`)."""

    name = "compiled"

    def __init__(self, helper: BlkifHelper) -> None:
        self._parse = helper.parse_request
        self._segments = helper.parse_segments

    def parse_request(self, slot: bytes | bytearray | memoryview, *,
                      max_indirect_segments: int = 0) -> Request:
        if len(slot) < REQUEST_SIZE:
            raise ValueError(f"a blkif slot is {REQUEST_SIZE} bytes, got {len(slot)}")
        # nr_segments of an indirect request is 16 bits: any larger limit means the same
        limit = min(max(max_indirect_segments, 0), _U16)
        kind, head, grefs, first, last = self._parse(
            slot if type(slot) is bytes else bytes(slot), limit)
        op, byte1, handle, rid, sector, count, extra, detail, _ = head
        if kind == _RW_KIND:
            return ReadWriteRequest(_OPS[op], rid, handle, sector,
                                    SegmentArray(grefs, first, last, extra))
        if kind == _DISCARD_KIND:
            return DiscardRequest(rid, handle, sector, extra, bool(byte1 & DISCARD_SECURE))
        if kind == _INDIRECT_KIND:
            return IndirectRequest(_OPS[byte1], rid, handle, sector, count, tuple(grefs))
        if kind == _E_RANGE:
            raise _range_error(rid, op, detail, first[detail], last[detail])
        if kind == _E_COUNT:
            raise InvalidRequest(rid, op, Status.ERROR,
                                 f"{count} segments (allowed {detail}..{MAX_SEGMENTS_PER_REQUEST})")
        if kind == _E_NO_INDIRECT:
            raise InvalidRequest(rid, op, Status.EOPNOTSUPP, "indirect requests not offered")
        if kind == _E_INNER:
            raise InvalidRequest(rid, byte1, Status.ERROR, f"indirect operation {byte1}")
        if kind == _E_INDIRECT_COUNT:
            raise InvalidRequest(rid, byte1, Status.ERROR,
                                 f"{count} indirect segments (allowed 1..{max_indirect_segments})")
        if kind == _E_OPERATION:
            raise InvalidRequest(rid, op, Status.EOPNOTSUPP, f"unknown operation {op}")
        raise AssertionError(f"blkif helper returned kind {kind}")  # pragma: no cover

    def parse_indirect_segment_array(self, pages: bytes | bytearray | memoryview,
                                     request: IndirectRequest) -> SegmentArray:
        count = request.nr_segments
        need = count * SEGMENT_SIZE
        if len(pages) < need:
            raise ValueError(f"indirect pages hold {len(pages)} bytes, need {need}")
        raw = pages if type(pages) is bytes else bytes(memoryview(pages)[:need])
        code, sectors, bad, grefs, first, last = self._segments(raw, count)
        if code == _E_RANGE:
            raise _range_error(request.id, request.indirect_op, bad, first[bad], last[bad])
        if code:  # pragma: no cover - the length was checked above
            raise AssertionError(f"blkif helper returned code {code}")
        return SegmentArray(grefs, first, last, sectors)


_PYTHON_PARSER: Final = BlkifParser()


def parser(native: NativeImpl | None = None) -> BlkifParser:
    """The blkif parser that goes with `native` (default: the implementation
    `ringkit._native` chose, so RINGKIT_NATIVE decides): the compiled one where `native` has
    a blkif helper, the Python one otherwise."""
    helper = resolve_native(native).blkif
    return _PYTHON_PARSER if helper is None else _CompiledParser(helper)


_PARSER: BlkifParser = parser()


def parse_request(slot: bytes | bytearray | memoryview, *, max_indirect_segments: int = 0
                  ) -> Request:
    """Decode and validate one request from a private copy of a ring slot.

    `max_indirect_segments` is what this backend advertised in
    ``feature-max-indirect-segments`` (0: indirect requests are not supported and are answered
    EOPNOTSUPP, as a backend without the feature would).

    Raises:
        InvalidRequest: the request must be answered with its `status` instead of served:
            unknown operation (EOPNOTSUPP), bad segment count, sector range outside a page or
            reversed, bad indirect operation or page count (ERROR).
        ValueError: `slot` is shorter than a request (a caller bug, not peer input).
    """
    return _PARSER.parse_request(slot, max_indirect_segments=max_indirect_segments)


def parse_indirect_segment_array(pages: bytes | bytearray | memoryview,
                                 request: IndirectRequest) -> SegmentArray:
    """Decode and validate the segments of `request` from a private copy of its indirect
    pages, in column form: no object per segment, since a request may carry thousands.

    Raises:
        InvalidRequest: a segment's sector range is outside its page or reversed (ERROR).
        ValueError: `pages` is too short (a caller bug).
    """
    return _PARSER.parse_indirect_segment_array(pages, request)


__all__ = (
    "CODEC",
    "DISCARD_SECURE",
    "MAX_INDIRECT_PAGES_PER_REQUEST",
    "MAX_SEGMENTS_PER_REQUEST",
    "OFFSETS",
    "PAGE_SIZE",
    "PROTOCOL_X86_64",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "RING_LAYOUT",
    "SECTORS_PER_PAGE",
    "SECTOR_SIZE",
    "SEGMENTS_PER_INDIRECT_PAGE",
    "SEGMENT_SIZE",
    "SIZES",
    "VDISK_CDROM",
    "VDISK_READONLY",
    "VDISK_REMOVABLE",
    "BlkifParser",
    "DiscardRequest",
    "IndirectRequest",
    "InvalidRequest",
    "Op",
    "ReadWriteRequest",
    "Request",
    "Response",
    "Segment",
    "SegmentArray",
    "Status",
    "parser",
    "encode_request",
    "encode_request_into",
    "encode_response",
    "encode_response_into",
    "indirect_pages_for",
    "pack_segments",
    "parse_indirect_segment_array",
    "parse_request",
    "parse_response",
    "response_problem",
)
