"""Xen io/ring.h request/response rings, sans-I/O: `FrontRing` and `BackRing`.

Public API
----------
::

    from ringkit.proto.ring import BackRing, FrontRing, RingLayout

    layout = RingLayout("blkif", request_size=112, response_size=16)   # slot = 112 bytes

    front = FrontRing.init(page, layout)        # frontend: SHARED_RING_INIT + FRONT_RING_INIT
    back = BackRing.attach(page, layout)        # backend: BACK_RING_INIT (never writes the page)
    FrontRing.attach(page, layout, index=i)     # reconnect at known indices (FRONT_RING_ATTACH)

    # frontend                                  # backend
    front.free_requests() -> int                back.pending_requests() -> int
    front.put_request(msg)                      back.take_request() -> bytearray | None
    front.put_requests_from(src, count)         back.take_request_into(buf, offset=0) -> bool
    front.push_requests() -> bool  (notify?)    back.take_requests_into(buf, max_count) -> int
    front.pending_responses() -> int            back.put_response(msg)
    front.take_response() -> bytearray | None   back.put_responses_from(src, count)
    front.take_response_into(buf, offset) ...   back.push_responses() -> bool  (notify?)
    front.take_responses_into(buf, max_count)   back.final_check_for_requests() -> bool
    front.final_check_for_responses() -> bool

    ring.entries, ring.layout, ring.error, ring.release() / ``with ring: ...``

`page` is any writable buffer: a bytearray, or the mmap of 2**order granted pages (slots may
straddle page boundaries; the area must be contiguous).  ``native=`` picks the
`ringkit._native` implementation (compiled or ABI mode); the default is the best available.

Errors: `RemoteProtocolError` when the peer's indices are impossible (the half is then poisoned
and every later call raises), `LocalProtocolError` when the caller breaks the rules (put on a
full ring, a message longer than its declared size, a response without a consumed request),
`ConfigError` when the area cannot hold one slot.
"""

# Theory of operation
# -------------------
# The shared area is a 64-byte header (req_prod, req_event, rsp_prod, rsp_event, padding) then a
# power-of-two array of slots, each the union of a request and a response.  Indices are
# free-running uint32 counters; a slot is index & (entries - 1).  The frontend produces requests
# at req_prod and consumes responses at its private rsp_cons; the backend consumes requests at
# its private req_cons and produces responses into the same slots at rsp_prod.  Each side keeps
# a private producer (req_prod_pvt / rsp_prod_pvt) and publishes it with a push, exactly as the
# macros in ring.h do:
#
#   push:         wmb; store prod; mb; load event; notify iff (new - event) < (new - old)
#   final check:  if nothing pending: store event = cons + 1; mb; look again
#   consume:      load prod; validate; rmb; copy slots out
#
# Every uint32 index access is one single-copy load or store through ringkit._native (a CPython
# struct.pack_into can expose a torn, half-cleared index to the other CPU), and the fences are
# real fences from the same place.
#
# The peer is not trusted.  Only two words it writes matter to us: its producer index and its
# event index.  The event index only changes whether we notify, so any value is harmless.  The
# producer index is validated on every load before a slot is read:
#
#   backend:  0 <= req_prod - req_cons <= entries - (req_cons - rsp_prod_pvt)
#             which is RING_REQUEST_PROD_OVERFLOW (req_prod - rsp_prod_pvt > entries) plus "the
#             producer moved behind our consumer" (it can never go backwards);
#   frontend: 0 <= rsp_prod - rsp_cons <= req_pushed - rsp_cons
#             which is RING_RESPONSE_PROD_OVERFLOW (rsp_prod - rsp_cons > entries), tightened to
#             "no response for a request we never published" (a slot we may be rewriting).
#
# A violation raises RemoteProtocolError naming the index and its value, and poisons the half.
# Our own indices (req_prod for the front, rsp_prod for the back) are never read back from the
# page: the private copy is the truth, so a peer scribbling on them changes nothing.  Each slot is
# copied out exactly once into caller-owned memory and never read again (XSA-155), and each slot
# we write is written whole -- the message, then zeroes to the end of the slot -- so nothing
# stale from our memory or a previous message leaks into the page (XSA-216).

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self

from .. import _native
from .._errors import ConfigError, LocalProtocolError, RemoteProtocolError
from .layout import (
    SRING_HEADER_SIZE,
    SRING_PAD,
    SRING_PAD_SIZE,
    SRING_PVT,
    SRING_PVT_SIZE,
    SRING_REQ_EVENT,
    SRING_REQ_PROD,
    SRING_RSP_EVENT,
    SRING_RSP_PROD,
    RingLayout,
)

if TYPE_CHECKING:
    from .._native import Buffer, NativeImpl

_U32 = 0xFFFFFFFF


def _resolve(native: NativeImpl | None) -> NativeImpl:
    """The implementation to use: `native`, or the one `ringkit._native` chose at import."""
    if native is not None:
        return native
    return _native.implementations()[_native.IMPLEMENTATION]


def _msg_len(msg: bytes | bytearray | memoryview) -> int:
    return msg.nbytes if type(msg) is memoryview else len(msg)


class _RingHalf:
    """State and plumbing shared by both halves; not public."""

    __slots__ = (
        "_copy_in",
        "_copy_out",
        "_entries",
        "_error",
        "_full_fence",
        "_layout",
        "_load32",
        "_mask",
        "_mem",
        "_read_fence",
        "_scratch",
        "_slot",
        "_store32",
        "_write_fence",
        "_zero",
    )

    _side = "ring"

    def __init__(
        self,
        buffer: Buffer,
        layout: RingLayout,
        *,
        size: int | None,
        native: NativeImpl | None,
    ) -> None:
        impl = _resolve(native)
        mem = impl.attach(buffer)
        try:
            area = mem.size if size is None else size
            if not 0 < area <= mem.size:
                raise ConfigError(
                    f"ring area size {area} does not fit the {mem.size}-byte buffer"
                )
            if not mem.writable:
                raise ConfigError("a ring needs a writable buffer (both halves write indices)")
            self._entries = layout.entries(area)
        except BaseException:
            mem.release()
            raise
        self._mem = mem
        self._layout = layout
        self._mask = self._entries - 1
        self._slot = layout.slot_size
        # A whole slot image whose bytes past the message stay zero: a full-length message is
        # laid over its head and the slot goes out in one copy.
        self._scratch = bytearray(layout.slot_size)
        self._error: RemoteProtocolError | None = None
        # Bound once: the hot path is a chain of these calls.
        self._load32 = mem.load32
        self._store32 = mem.store32
        self._copy_in = mem.copy_in
        self._copy_out = mem.copy_out
        self._zero = mem.zero
        self._full_fence = impl.full_fence
        self._read_fence = impl.read_fence
        self._write_fence = impl.write_fence

    # ------------------------------------------------------------------ introspection

    @property
    def entries(self) -> int:
        """Number of slots (a power of two): ring.h's RING_SIZE."""
        return self._entries

    @property
    def layout(self) -> RingLayout:
        """The request/response layout this ring was declared with."""
        return self._layout

    @property
    def error(self) -> RemoteProtocolError | None:
        """The protocol error that poisoned this half, or None while it is usable."""
        return self._error

    # ------------------------------------------------------------------ lifetime

    def release(self) -> None:
        """Let go of the shared buffer (so an mmap can be closed); the half is unusable after."""
        self._mem.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers

    def _poison(self, message: str) -> NoReturn:
        self._error = RemoteProtocolError(f"{self._side} ring: {message}")
        raise self._error

    def _raise_poisoned(self) -> NoReturn:
        err = self._error
        raise RemoteProtocolError(
            f"{self._side} ring is unusable after an earlier protocol error: {err}"
        ) from err

    def _write_slot(self, index: int, msg: bytes | bytearray | memoryview, limit: int) -> None:
        """Write `msg` then zeroes to the end of the slot for free-running `index`."""
        n = _msg_len(msg)
        if n > limit:
            raise LocalProtocolError(
                f"{self._layout.name}: a {n}-byte message exceeds the declared {limit} bytes"
            )
        off = SRING_HEADER_SIZE + (index & self._mask) * self._slot
        if n == self._slot:
            self._copy_in(off, msg)
        elif n == limit:  # each half writes one message kind: scratch[limit:] is always zero
            scratch = self._scratch
            scratch[:n] = msg
            self._copy_in(off, scratch)
        else:
            self._copy_in(off, msg)
            self._zero(off + n, self._slot - n)

    def _write_slots(self, index: int, src: bytes | bytearray | memoryview, count: int) -> None:
        """Copy `count` whole slots from `src` (slot-stride) starting at free-running `index`."""
        slot = self._slot
        if count < 0 or _msg_len(src) < count * slot:
            raise LocalProtocolError(
                f"{self._layout.name}: source holds fewer than {count} slots of {slot} bytes"
            )
        first = min(count, self._entries - (index & self._mask))
        off = SRING_HEADER_SIZE + (index & self._mask) * slot
        with memoryview(src) as view, view.cast("B") as flat:
            self._copy_in(off, flat[: first * slot])
            if count > first:
                self._copy_in(SRING_HEADER_SIZE, flat[first * slot : count * slot])

    def _read_slots(self, index: int, dst: bytearray | memoryview, count: int) -> None:
        """Copy `count` whole slots starting at free-running `index` into `dst` (slot-stride)."""
        slot = self._slot
        first = min(count, self._entries - (index & self._mask))
        off = SRING_HEADER_SIZE + (index & self._mask) * slot
        self._copy_out(off, dst, 0, first * slot)
        if count > first:
            self._copy_out(SRING_HEADER_SIZE, dst, first * slot, (count - first) * slot)

    def _push(self, prod_off: int, event_off: int, old: int, new: int) -> bool:
        """RING_PUSH_*_AND_CHECK_NOTIFY: publish `new`; True iff the peer asked to be told."""
        self._write_fence()  # the peer sees the slots before the new producer index
        self._store32(prod_off, new)
        self._full_fence()  # the peer sees the new producer before we read its event index
        event = self._load32(event_off)
        return ((new - event) & _U32) < ((new - old) & _U32)


class FrontRing(_RingHalf):
    """The frontend half: produces requests, consumes responses (ring.h FRONT_RING_*)."""

    __slots__ = ("_req_prod_pvt", "_req_pushed", "_rsp_cons", "_rsp_seen")

    _side = "front"

    def __init__(
        self,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> None:
        """Attach to an already initialised shared ring at free-running `index` (see `attach`)."""
        super().__init__(buffer, layout, size=size, native=native)
        index &= _U32
        self._req_prod_pvt = index
        self._req_pushed = index
        self._rsp_cons = index
        self._rsp_seen = index

    @classmethod
    def init(
        cls,
        buffer: Buffer,
        layout: RingLayout,
        *,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> FrontRing:
        """Initialise the shared ring and attach to it (XEN_FRONT_RING_INIT).

        Only the frontend does this, once, before granting the page: both producers 0, both
        events 1, header padding zeroed.  Slots are left as they are.
        """
        ring = cls(buffer, layout, size=size, native=native)
        ring._store32(SRING_REQ_PROD, 0)
        ring._store32(SRING_RSP_PROD, 0)
        ring._store32(SRING_REQ_EVENT, 1)
        ring._store32(SRING_RSP_EVENT, 1)
        ring._zero(SRING_PVT, SRING_PVT_SIZE)
        ring._zero(SRING_PAD, SRING_PAD_SIZE)
        ring._full_fence()
        return ring

    @classmethod
    def attach(
        cls,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> FrontRing:
        """Attach to a live shared ring at `index` without touching it (FRONT_RING_ATTACH).

        For reconnecting: requests are produced and responses consumed from `index` on.
        """
        return cls(buffer, layout, index=index, size=size, native=native)

    # ------------------------------------------------------------------ private indices

    @property
    def req_prod_pvt(self) -> int:
        """Index of the next request slot to fill."""
        return self._req_prod_pvt

    @property
    def rsp_cons(self) -> int:
        """Index of the next response to consume."""
        return self._rsp_cons

    # ------------------------------------------------------------------ requests

    def free_requests(self) -> int:
        """Slots free for new requests (RING_FREE_REQUESTS)."""
        if self._error is not None:
            self._raise_poisoned()
        return self._entries - ((self._req_prod_pvt - self._rsp_cons) & _U32)

    @property
    def full(self) -> bool:
        """True when no request can be put until responses are consumed (RING_FULL)."""
        return self.free_requests() == 0

    def put_request(self, msg: bytes | bytearray | memoryview) -> None:
        """Write one request (at most `layout.request_size` bytes) into the next free slot.

        The whole slot is written: `msg`, then zeroes.  The backend sees it after the next
        `push_requests`.  Raises LocalProtocolError if the ring is full or `msg` too long.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._req_prod_pvt
        if (prod - self._rsp_cons) & _U32 >= self._entries:
            raise LocalProtocolError(f"{self._layout.name}: request ring is full")
        self._write_slot(prod, msg, self._layout.request_size)
        self._req_prod_pvt = (prod + 1) & _U32

    def put_requests_from(self, src: bytes | bytearray | memoryview, count: int) -> None:
        """Write `count` requests laid out at slot stride in `src`, copied verbatim.

        Slot i is ``src[i * slot_size : (i + 1) * slot_size]``; bytes past a request's end are
        copied as they are, so keep them zero.  Raises LocalProtocolError if fewer than `count`
        slots are free.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._req_prod_pvt
        if count > self._entries - ((prod - self._rsp_cons) & _U32):
            raise LocalProtocolError(
                f"{self._layout.name}: {count} requests do not fit the free slots"
            )
        self._write_slots(prod, src, count)
        self._req_prod_pvt = (prod + count) & _U32

    def push_requests(self) -> bool:
        """Publish the requests put so far; True if the backend must be notified.

        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: write fence, store req_prod, full fence, then
        notify iff req_event lies in (old, new].
        """
        if self._error is not None:
            self._raise_poisoned()
        new = self._req_prod_pvt
        old = self._req_pushed
        self._req_pushed = new
        return self._push(SRING_REQ_PROD, SRING_REQ_EVENT, old, new)

    # ------------------------------------------------------------------ responses

    def pending_responses(self) -> int:
        """Responses ready to take (RING_HAS_UNCONSUMED_RESPONSES), after validating rsp_prod.

        Raises RemoteProtocolError (and poisons the ring) if the backend claims responses to
        requests that were never published.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._load32(SRING_RSP_PROD)
        cons = self._rsp_cons
        ready = (prod - cons) & _U32
        if ready > (self._req_pushed - cons) & _U32:
            self._response_overflow(prod, cons)
        self._read_fence()  # read the slots only after the index that covers them
        self._rsp_seen = prod
        return ready

    def _response_overflow(self, prod: int, cons: int) -> NoReturn:
        outstanding = (self._req_pushed - cons) & _U32
        if (prod - cons) & _U32 > self._entries:
            why = f"more than the {self._entries} slots (RING_RESPONSE_PROD_OVERFLOW)"
        else:
            why = f"but only {outstanding} requests are outstanding"
        self._poison(
            f"rsp_prod={prod} is {(prod - cons) & _U32} ahead of rsp_cons={cons}, {why}"
        )

    def take_response_into(self, buf: bytearray | memoryview, offset: int = 0) -> bool:
        """Copy the next response (`layout.response_size` bytes) into `buf` at `offset`.

        Returns False, copying nothing, when no response is pending.  The copy is the only read
        of that slot: parse and validate `buf`, never the page.
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._rsp_cons
        if cons == self._rsp_seen and self.pending_responses() == 0:
            return False
        self._copy_out(
            SRING_HEADER_SIZE + (cons & self._mask) * self._slot,
            buf,
            offset,
            self._layout.response_size,
        )
        self._rsp_cons = (cons + 1) & _U32
        return True

    def take_response(self) -> bytearray | None:
        """A private copy of the next response, or None when none is pending."""
        buf = bytearray(self._layout.response_size)
        return buf if self.take_response_into(buf) else None

    def take_responses_into(self, buf: bytearray | memoryview, max_count: int | None = None) -> int:
        """Copy up to `max_count` pending responses into `buf` at slot stride; return how many.

        Response i lands at ``buf[i * slot_size:]`` (whole slots are copied, one or two copies
        in all).  Limited by what is pending and by what fits in `buf`.
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._rsp_cons
        ready = self.pending_responses()  # one fresh load per batch: take everything published
        room = (buf.nbytes if type(buf) is memoryview else len(buf)) // self._slot
        count = min(ready, room) if max_count is None else min(ready, room, max_count)
        if count <= 0:
            return 0
        self._read_slots(cons, buf, count)
        self._rsp_cons = (cons + count) & _U32
        return count

    def final_check_for_responses(self) -> bool:
        """Before sleeping: True if responses are pending (RING_FINAL_CHECK_FOR_RESPONSES).

        If none are, asks the backend to notify on the very next response (rsp_event =
        rsp_cons + 1), fences, and looks once more, closing the race with a response pushed
        in between.
        """
        if self.pending_responses():
            return True
        self._store32(SRING_RSP_EVENT, (self._rsp_cons + 1) & _U32)
        self._full_fence()
        return self.pending_responses() > 0


class BackRing(_RingHalf):
    """The backend half: consumes requests, produces responses (ring.h BACK_RING_*)."""

    __slots__ = ("_req_cons", "_req_seen", "_rsp_prod_pvt", "_rsp_pushed")

    _side = "back"

    def __init__(
        self,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> None:
        """Attach to the frontend's shared ring at free-running `index` (see `attach`)."""
        super().__init__(buffer, layout, size=size, native=native)
        index &= _U32
        self._rsp_prod_pvt = index
        self._rsp_pushed = index
        self._req_cons = index
        self._req_seen = index

    @classmethod
    def attach(
        cls,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> BackRing:
        """Attach to a shared ring the frontend initialised (BACK_RING_INIT / BACK_RING_ATTACH).

        The backend never initialises the page.  `index` is 0 for a fresh ring, or the indices
        to resume from when reconnecting.
        """
        return cls(buffer, layout, index=index, size=size, native=native)

    # ------------------------------------------------------------------ private indices

    @property
    def req_cons(self) -> int:
        """Index of the next request to consume."""
        return self._req_cons

    @property
    def rsp_prod_pvt(self) -> int:
        """Index of the next response slot to fill."""
        return self._rsp_prod_pvt

    # ------------------------------------------------------------------ requests

    def pending_requests(self) -> int:
        """Requests ready to take (RING_HAS_UNCONSUMED_REQUESTS), after validating req_prod.

        Raises RemoteProtocolError (and poisons the ring) if req_prod claims more requests than
        the ring can hold (RING_REQUEST_PROD_OVERFLOW) or moved behind our consumer.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._load32(SRING_REQ_PROD)
        cons = self._req_cons
        ready = (prod - cons) & _U32
        if ready > self._entries - ((cons - self._rsp_prod_pvt) & _U32):
            self._request_overflow(prod, cons)
        self._read_fence()  # read the slots only after the index that covers them
        self._req_seen = prod
        return ready

    def _request_overflow(self, prod: int, cons: int) -> NoReturn:
        rsp = self._rsp_prod_pvt
        ahead = (prod - rsp) & _U32
        if ahead > self._entries:
            self._poison(
                f"req_prod={prod} is {ahead} requests ahead of rsp_prod_pvt={rsp} in a ring of "
                f"{self._entries} slots (RING_REQUEST_PROD_OVERFLOW)"
            )
        self._poison(
            f"req_prod={prod} moved behind req_cons={cons}: a producer never goes backwards "
            f"(RING_REQUEST_CONS_OVERFLOW)"
        )

    def take_request_into(self, buf: bytearray | memoryview, offset: int = 0) -> bool:
        """Copy the next request (`layout.request_size` bytes) into `buf` at `offset`.

        Returns False, copying nothing, when no request is pending.  The copy is the only read
        of that slot: parse and validate `buf`, never the page (XSA-155).
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._req_cons
        if cons == self._req_seen and self.pending_requests() == 0:
            return False
        self._copy_out(
            SRING_HEADER_SIZE + (cons & self._mask) * self._slot,
            buf,
            offset,
            self._layout.request_size,
        )
        self._req_cons = (cons + 1) & _U32
        return True

    def take_request(self) -> bytearray | None:
        """A private copy of the next request, or None when none is pending."""
        buf = bytearray(self._layout.request_size)
        return buf if self.take_request_into(buf) else None

    def take_requests_into(self, buf: bytearray | memoryview, max_count: int | None = None) -> int:
        """Copy up to `max_count` pending requests into `buf` at slot stride; return how many.

        Request i lands at ``buf[i * slot_size:]`` (whole slots, one or two copies in all).
        Limited by what is pending and by what fits in `buf`.
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._req_cons
        ready = self.pending_requests()  # one fresh load per batch: take everything published
        room = (buf.nbytes if type(buf) is memoryview else len(buf)) // self._slot
        count = min(ready, room) if max_count is None else min(ready, room, max_count)
        if count <= 0:
            return 0
        self._read_slots(cons, buf, count)
        self._req_cons = (cons + count) & _U32
        return count

    def final_check_for_requests(self) -> bool:
        """Before sleeping: True if requests are pending (RING_FINAL_CHECK_FOR_REQUESTS).

        If none are, asks the frontend to notify on the very next request (req_event =
        req_cons + 1), fences, and looks once more.
        """
        if self.pending_requests():
            return True
        self._store32(SRING_REQ_EVENT, (self._req_cons + 1) & _U32)
        self._full_fence()
        return self.pending_requests() > 0

    # ------------------------------------------------------------------ responses

    def put_response(self, msg: bytes | bytearray | memoryview) -> None:
        """Write one response (at most `layout.response_size` bytes) into the next slot.

        The whole slot is written, `msg` then zeroes, so no padding byte carries stale data
        (XSA-216).  Raises LocalProtocolError if no consumed request is waiting for a response
        or `msg` is too long.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._rsp_prod_pvt
        if prod == self._req_cons:
            raise LocalProtocolError(
                f"{self._layout.name}: no consumed request is waiting for a response"
            )
        self._write_slot(prod, msg, self._layout.response_size)
        self._rsp_prod_pvt = (prod + 1) & _U32

    def put_responses_from(self, src: bytes | bytearray | memoryview, count: int) -> None:
        """Write `count` responses laid out at slot stride in `src`, copied verbatim.

        Slot i is ``src[i * slot_size : (i + 1) * slot_size]``: keep the bytes past each
        response zero (XSA-216).  Raises LocalProtocolError if fewer than `count` consumed
        requests await a response.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._rsp_prod_pvt
        if count > (self._req_cons - prod) & _U32:
            raise LocalProtocolError(
                f"{self._layout.name}: {count} responses but only "
                f"{(self._req_cons - prod) & _U32} consumed requests await one"
            )
        self._write_slots(prod, src, count)
        self._rsp_prod_pvt = (prod + count) & _U32

    def push_responses(self) -> bool:
        """Publish the responses put so far; True if the frontend must be notified.

        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: write fence, store rsp_prod, full fence, then
        notify iff rsp_event lies in (old, new].
        """
        if self._error is not None:
            self._raise_poisoned()
        new = self._rsp_prod_pvt
        old = self._rsp_pushed
        self._rsp_pushed = new
        return self._push(SRING_RSP_PROD, SRING_RSP_EVENT, old, new)


__all__ = ("BackRing", "FrontRing", "RingLayout")
