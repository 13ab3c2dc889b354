"""Where a driver's slots keep the fields the request-queue layer needs: `SlotCodec`.

A request/response protocol on an io/ring.h ring (blkif, netif, scsiif, 9pfs, a driver's own)
puts an id into each request, which the response carries back, and often names grant refs the
backend must map.  Everything else in a slot is the driver's business.  A `SlotCodec` says only
where those few fields are -- a byte offset and a width each -- so the layer can read them
from a whole burst of slots at once without calling the driver per slot, in C when the compiled
helper is there (`ringkit._native`), in Python otherwise.

Fields are little-endian integers (every Xen ABI ringkit speaks is x86's).  Every value read
from a slot is the peer's and untrusted: a ref count above `RefList.maximum` is reported per
request (`RequestError`), never used to read past the slot.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._errors import ConfigError, RingkitError
from ..proto.layout import RingLayout

if TYPE_CHECKING:
    from .._native import SlotHelper

__all__ = ("Chain", "Field", "RefList", "RequestError", "ResponseExtra", "SlotCodec", "gather",
           "gather_refs")

_WIDTHS = (1, 2, 4, 8)
_PACKERS = {(size, signed): struct.Struct("<" + (code.lower() if signed else code)).pack_into
            for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))
            for signed in (False, True)}
"""A precompiled little-endian packer per width and signedness (`Field.write`)."""
_UNPACKERS = {(size, signed): struct.Struct("<" + (code.lower() if signed else code)).unpack_from
              for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))
              for signed in (False, True)}
"""The unpackers to match (`Field.read`: a third of the time of slicing and ``from_bytes``)."""


class RequestError(RingkitError):
    """One request is malformed (its ref count, a ref the backend cannot map...): it gets an
    error response; the connection goes on.  `reason` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Field:
    """A little-endian integer of `size` bytes (1, 2, 4 or 8) at byte `offset` of a slot."""

    offset: int
    size: int
    signed: bool = False

    def __post_init__(self) -> None:
        if self.size not in _WIDTHS:
            raise ConfigError(f"a field is 1, 2, 4 or 8 bytes wide, not {self.size}")
        if self.offset < 0:
            raise ConfigError(f"field offset {self.offset} is negative")

    @property
    def end(self) -> int:
        """The byte after the field."""
        return self.offset + self.size

    @property
    def limit(self) -> int:
        """One past the largest value the field holds (unsigned)."""
        return 1 << (8 * self.size)

    def read(self, slot: bytes | bytearray | memoryview, base: int = 0) -> int:
        """The field's value in the slot starting at `base` of `slot`."""
        return _UNPACKERS[self.size, self.signed](slot, base + self.offset)[0]  # type: ignore[no-any-return]

    def write(self, slot: bytearray | memoryview, value: int, base: int = 0) -> None:
        """Store `value` into the field of the slot at `base`.

        Raises:
            OverflowError: `value` does not fit.
        """
        try:
            _PACKERS[self.size, self.signed](slot, base + self.offset, value)
        except struct.error as exc:
            raise OverflowError(f"{value} does not fit a {self.size}-byte field") from exc


@dataclass(frozen=True, slots=True)
class RefList:
    """Where a request names its grant refs: up to `maximum` entries from byte `offset`,
    `stride` bytes apart, each holding a 32-bit ref at `ref_offset` within the entry.  How many
    a request names is the value of the `count` field (a `Field`) or a fixed number.

    `operations`: only requests whose `SlotCodec.operation` is one of these name refs this way
    (None: every request).  `writable_operations`: requests whose pages the backend writes into
    (a read from a disk), mapped writable.
    """

    offset: int
    stride: int
    maximum: int
    count: Field | int
    ref_offset: int = 0
    operations: frozenset[int] | None = None
    writable_operations: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.maximum < 1 or self.stride < 4 or self.offset < 0 \
                or not 0 <= self.ref_offset <= self.stride - 4:
            raise ConfigError(f"bad ref list: {self}")
        if isinstance(self.count, int) and not 0 <= self.count <= self.maximum:
            raise ConfigError(f"fixed ref count {self.count} is outside 0..{self.maximum}")

    @property
    def end(self) -> int:
        """The byte after the last entry."""
        return self.offset + self.maximum * self.stride


@dataclass(frozen=True, slots=True)
class Chain:
    """How requests continue into the next slots, as netif's packets do: a request whose
    `flags` field has the `more` bit is followed by another request of the same chain (a packet
    over several pages, io/netif.h's ``NETTXF_more_data``); a chain's first request with the
    `extra` bit is followed by extra-info slots (``NETTXF_extra_info``), each followed by one
    more while its `extra_flags` field has the `extra_more` bit (``XEN_NETIF_EXTRA_FLAG_MORE``).

    `maximum`: most requests (extra slots not counted) a well-formed chain has; a longer one
    that ends is refused whole (every request gets the error response), one that runs past the
    requests the frontend published is a ring-level violation.  `filler_status`: the status of
    the response slot that answers an extra slot (``NETIF_RSP_NULL``), or None when the
    protocol has no extra slots.
    """

    flags: Field
    more: int
    maximum: int
    extra: int = 0
    extra_flags: Field | None = None
    extra_more: int = 0
    filler_status: int | None = None

    def __post_init__(self) -> None:
        # the bits as plain ints (a protocol's enum.Flag members are accepted): they are
        # tested once per slot, and a Flag's `&` is a Python call
        for name in ("more", "extra", "extra_more"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.maximum < 1 or self.more <= 0:
            raise ConfigError(f"bad chain: {self}")
        if self.extra and (self.extra_flags is None or self.filler_status is None):
            raise ConfigError("a chain with extra slots needs extra_flags and filler_status")


@dataclass(frozen=True, slots=True)
class ResponseExtra:
    """Extra-info slots among the *responses*, as on netif's rx ring: a response whose `flags`
    field has the `extra` bit (``NETRXF_extra_info``) is followed by extra-info slots, each
    followed by one more while its `extra_flags` field has the `extra_more` bit.  An extra slot
    carries no id: it answers the oldest request still in flight on its ring (the backend
    took the frontend's posted requests in ring order; Linux's netfront matches by position).
    """

    flags: Field
    extra: int
    extra_flags: Field
    extra_more: int

    def __post_init__(self) -> None:
        for name in ("extra", "extra_more"):   # plain ints, as `Chain`'s
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.extra <= 0 or self.extra_more <= 0:
            raise ConfigError(f"bad response extra: {self}")


@dataclass(frozen=True, slots=True)
class SlotCodec:
    """The fields of a protocol's slots the layer reads and writes (see the module docstring).

    `request_id` / `response_id`: where the id is in a request and in its response (the layer
    writes the first and matches on the second).  `operation`: a request's operation (for
    `RefList.operations`, and echoed into error responses).  `refs`: the grant refs a request
    names.  `error_response`: how the layer answers a request it cannot deliver (its ref list
    is malformed) or that a handler refused with `RequestError`: the response's `status`
    field set to `error_status`, and `echo` pairs (response field, request field) copied from
    the request -- blkif's operation, for instance.  Without `status` such a request ends the
    connection instead (there is no way to say "error" in that protocol).  `posted`: the
    requests are buffers posted ahead of time, which the backend takes and answers when it has
    data for them (netif's rx ring: `ringkit.requests.PostedRequests`), not as they come.
    `response_extra`: responses may be followed by extra-info slots (`ResponseExtra`).
    """

    layout: RingLayout
    request_id: Field
    response_id: Field
    operation: Field | None = None
    refs: RefList | None = None
    status: Field | None = None
    error_status: int = -1
    echo: tuple[tuple[Field, Field], ...] = ()
    chain: Chain | None = None
    posted: bool = False
    response_extra: ResponseExtra | None = None

    def __post_init__(self) -> None:
        req, rsp = self.layout.request_size, self.layout.response_size
        request_fields = [self.request_id, *(f for _, f in self.echo)]
        if self.operation is not None:
            request_fields.append(self.operation)
        if self.refs is not None:
            if self.refs.end > req:
                raise ConfigError(f"{self.layout.name}: the ref list ends at byte "
                                  f"{self.refs.end}, past the {req}-byte request")
            if isinstance(self.refs.count, Field):
                request_fields.append(self.refs.count)
        for f in request_fields:
            if f.end > req:
                raise ConfigError(f"{self.layout.name}: field at {f.offset} (+{f.size}) lies "
                                  f"past the {req}-byte request")
        for f in (self.response_id, *(r for r, _ in self.echo),
                  *((self.status,) if self.status is not None else ())):
            if f.end > rsp:
                raise ConfigError(f"{self.layout.name}: field at {f.offset} (+{f.size}) lies "
                                  f"past the {rsp}-byte response")
        if self.chain is not None:
            chain_fields = [self.chain.flags, *((self.chain.extra_flags,)
                                                if self.chain.extra_flags else ())]
            for f in chain_fields:
                if f.end > req:
                    raise ConfigError(f"{self.layout.name}: chain flags at {f.offset} lie past "
                                      f"the {req}-byte request")
        if self.response_extra is not None:
            for f in (self.response_extra.flags, self.response_extra.extra_flags):
                if f.end > rsp:
                    raise ConfigError(f"{self.layout.name}: response extra field at {f.offset} "
                                      f"lies past the {rsp}-byte response")
        if self.refs is not None and self.refs.operations is not None and self.operation is None:
            raise ConfigError("RefList.operations needs SlotCodec.operation")

    @property
    def can_refuse(self) -> bool:
        """Whether the protocol has an error response (`status` is set)."""
        return self.status is not None

    def encode_error(self, request: bytes | bytearray | memoryview, out: bytearray | memoryview,
                     base: int = 0) -> None:
        """Write the error response to `request` into `out` at `base` (zeroed first).

        Raises:
            ConfigError: the codec has no `status` field.
        """
        if self.status is None:
            raise ConfigError(f"{self.layout.name}: no status field to answer an error with")
        size = self.layout.response_size
        out[base:base + size] = bytes(size)
        self.response_id.write(out, self.request_id.read(request) % self.response_id.limit, base)
        for to, frm in self.echo:
            value = frm.read(request)
            if to.signed != frm.signed or to.size < frm.size:
                value %= to.limit
                if to.signed and value >= to.limit // 2:
                    value -= to.limit
            to.write(out, value, base)
        self.status.write(out, self.error_status, base)

    def names_refs(self, operation: int | None) -> bool:
        """Whether a request with `operation` names refs through `refs`."""
        refs = self.refs
        return refs is not None and (refs.operations is None
                                     or (operation is not None and operation in refs.operations))

    def refs_of(self, slot: bytes | bytearray | memoryview, base: int = 0) -> list[int]:
        """The refs the request at `base` of `slot` names ([] if it names none this way).

        Raises:
            RequestError: its count field is above `RefList.maximum`.
        """
        refs = self.refs
        if refs is None:
            return []
        op = self.operation.read(slot, base) if self.operation is not None else None
        if not self.names_refs(op):
            return []
        count = refs.count if isinstance(refs.count, int) else refs.count.read(slot, base)
        if count > refs.maximum:
            raise RequestError(f"{self.layout.name}: the request names {count} grant refs, "
                               f"at most {refs.maximum} fit")
        start = base + refs.offset + refs.ref_offset
        return [int.from_bytes(slot[at:at + 4], "little")
                for at in range(start, start + count * refs.stride, refs.stride)]


def gather(buf: bytes | bytearray | memoryview, count: int, stride: int, f: Field,
           helper: SlotHelper | None = None) -> list[int]:
    """`f` of each of the `count` slots laid out `stride` bytes apart in `buf`.

    `helper`: the compiled `ringkit._native` slot helper (None: Python, the reference).

    Raises:
        IndexError: `buf` is shorter than `count` slots reaching `f`.
    """
    if count < 0 or stride < f.end:
        raise ValueError(f"gather of {count} slots of {stride} bytes, field ending at {f.end}")
    size = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if count and (count - 1) * stride + f.end > size:
        raise IndexError(f"{count} slots of {stride} bytes do not fit a {size}-byte buffer")
    if helper is not None:
        return helper.gather(buf, count, stride, f.offset, f.size, f.signed)
    off, width, signed = f.offset, f.size, f.signed
    return [int.from_bytes(buf[at:at + width], "little", signed=signed)
            for at in range(off, off + count * stride, stride)]


def gather_refs(codec: SlotCodec, buf: bytes | bytearray | memoryview, count: int,
                helper: SlotHelper | None = None) -> tuple[list[int], list[int]]:
    """The refs of `count` request slots in `buf` (at request-slot stride ``layout.slot_size``):
    ``(counts, refs)`` where ``counts[i]`` is how many refs slot i names (-1: more than
    `RefList.maximum`, the request is malformed) and `refs` holds them all, in order.

    The Python version is the reference for the compiled one (`helper`).
    """
    refs_spec = codec.refs
    stride = codec.layout.slot_size
    size = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if count < 0 or count * stride > size:
        raise IndexError(f"{count} slots of {stride} bytes do not fit a {size}-byte buffer")
    if refs_spec is None:
        return [0] * count, []
    if helper is not None:
        return helper.gather_refs(buf, count, stride, _native_spec(codec))
    counts: list[int] = []
    refs: list[int] = []
    for i in range(count):
        base = i * stride
        try:
            found = codec.refs_of(buf, base)
        except RequestError:
            counts.append(-1)
            continue
        counts.append(len(found))
        refs += found
    return counts, refs


def _native_spec(codec: SlotCodec) -> Sequence[int]:
    """The codec's ref list as the integers the C helper takes (see `SlotHelper.gather_refs`)."""
    refs = codec.refs
    assert refs is not None
    op = codec.operation
    count = refs.count
    ops = sorted(refs.operations) if refs.operations is not None else []
    return (
        refs.offset, refs.stride, refs.ref_offset, refs.maximum,
        -1 if isinstance(count, int) else count.offset,
        count if isinstance(count, int) else count.size,
        -1 if op is None else op.offset, 0 if op is None else op.size,
        1 if op is not None and op.signed else 0,
        1 if refs.operations is not None else 0,
        len(ops), *ops,
    )
