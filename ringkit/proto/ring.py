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

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, ParamSpec, Self, TypeVar, cast

from .._errors import ConfigError, LocalProtocolError
from ._half import SharedHalf, resolve_native
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _msg_len(msg: bytes | bytearray | memoryview) -> int:
    return msg.nbytes if type(msg) is memoryview else len(msg)


def _own_copy(fn: Callable[_P, _R], qualname: str) -> Callable[_P, _R]:
    """A copy of `fn` with a code object of its own, named `qualname` ("FrontRing.put_request").

    CPython 3.11 specialises attribute loads and method calls per code object, for one type at a
    time.  One function shared by FrontRing and BackRing sees both types in a process that runs
    both halves (a loopback, the simulator, the benchmark) and keeps falling back to the generic
    path, which made the shared code ~5% slower than two copies; each half's own copy stays
    specialised.  The copy carries the public name, for tracebacks and help().
    """
    func = cast(types.FunctionType, fn)
    name = qualname.rpartition(".")[2]
    code = func.__code__.replace(co_name=name, co_qualname=qualname)
    copy = types.FunctionType(code, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = qualname
    copy.__doc__ = func.__doc__
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__annotations__ = func.__annotations__
    copy.__module__ = func.__module__
    return cast(Callable[_P, _R], copy)


class _RingHalf(SharedHalf):
    """What both halves do, written once; not public.

    Each half puts one kind of message and takes the other, so one set of names serves both:
    `_prod_pvt` / `_pushed` count the messages this half puts (requests on the frontend,
    responses on the backend), `_cons` / `_seen` the ones it takes.  The subclass says which
    index words and sizes that means (`_puts_requests`, `_offsets`), publishes the shared
    methods under its public names (each as its own copy, see `_own_copy`), and keeps what truly
    differs: how the peer's producer index is validated (`_pending`) and what "no room to put"
    means (`_no_room`).
    """

    __slots__ = (
        "_cons",
        "_copy_in",
        "_copy_out",
        "_entries",
        "_event_off",
        "_full_fence",
        "_layout",
        "_load32",
        "_mask",
        "_peer_event_off",
        "_prod_off",
        "_prod_pvt",
        "_pushed",
        "_put_ahead",
        "_put_size",
        "_read_fence",
        "_scratch",
        "_seen",
        "_slot",
        "_store32",
        "_take_size",
        "_write_fence",
        "_zero",
    )

    _side = "ring"
    #: True for the half that puts requests and takes responses (the frontend).
    _puts_requests = True
    #: Offsets of the producer index this half publishes, the event index the peer sets to be
    #: notified of it, and the event index this half sets to be notified.
    _offsets = (SRING_REQ_PROD, SRING_REQ_EVENT, SRING_RSP_EVENT)

    def __init__(
        self,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> None:
        """Attach to an initialised shared ring at free-running `index`, writing nothing.

        `FrontRing.init`, `FrontRing.attach` and `BackRing.attach` say the same more plainly.
        """
        impl = resolve_native(native)
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
        self._attached((mem,), label=f"{self._side} ring", who=f"{self._side} ring")
        self._layout = layout
        self._mask = self._entries - 1
        self._slot = layout.slot_size
        # A whole slot image whose bytes past the message stay zero: a full-length message is
        # laid over its head and the slot goes out in one copy.
        self._scratch = bytearray(layout.slot_size)
        if self._puts_requests:
            self._put_size, self._take_size = layout.request_size, layout.response_size
            self._put_ahead = self._entries  # requests may run a whole ring ahead of responses
        else:
            self._put_size, self._take_size = layout.response_size, layout.request_size
            self._put_ahead = 0  # a response only for a request already taken
        self._prod_off, self._peer_event_off, self._event_off = self._offsets
        index &= _U32
        self._prod_pvt = self._pushed = self._cons = self._seen = index
        # Bound once: the hot path is a chain of these calls.
        self._load32 = mem.load32
        self._store32 = mem.store32
        self._copy_in = mem.copy_in
        self._copy_out = mem.copy_out
        self._zero = mem.zero
        self._full_fence = impl.full_fence
        self._read_fence = impl.read_fence
        self._write_fence = impl.write_fence

    @classmethod
    def attach(
        cls,
        buffer: Buffer,
        layout: RingLayout,
        *,
        index: int = 0,
        size: int | None = None,
        native: NativeImpl | None = None,
    ) -> Self:
        """Attach to a shared ring the frontend initialised, at `index`, without writing to it.

        The backend always attaches (BACK_RING_INIT for `index` 0, BACK_RING_ATTACH to resume
        at known indices): it never initialises the page.  The frontend attaches only to
        reconnect to a live ring (FRONT_RING_ATTACH); a fresh one it creates with `init`.
        """
        return cls(buffer, layout, index=index, size=size, native=native)

    # ------------------------------------------------------------------ introspection

    @property
    def entries(self) -> int:
        """Number of slots (a power of two): ring.h's RING_SIZE."""
        return self._entries

    @property
    def layout(self) -> RingLayout:
        """The request/response layout this ring was declared with."""
        return self._layout

    # ------------------------------------------------------------------ side-specific rules

    def _pending(self) -> int:
        """Validate the peer's producer index; messages ready to take (see the subclasses)."""
        raise NotImplementedError

    def _no_room(self, count: int, room: int) -> NoReturn:
        """Raise LocalProtocolError: `count` messages to put, room for only `room`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ putting

    def _put_one(self, msg: bytes | bytearray | memoryview) -> None:
        """Write one message into the next slot: `put_request` / `put_response`.

        At most `layout.request_size` (frontend) or `layout.response_size` (backend) bytes.  The
        whole slot is written, `msg` then zeroes, so no padding byte carries stale data
        (XSA-216); the peer sees it after the next push.  Raises LocalProtocolError when there is
        no room -- the request ring is full, or no consumed request awaits a response -- or when
        `msg` is too long.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._prod_pvt
        if (self._cons + self._put_ahead - prod) & _U32 == 0:
            self._no_room(1, 0)
        n = msg.nbytes if type(msg) is memoryview else len(msg)
        limit = self._put_size
        if n > limit:
            raise LocalProtocolError(
                f"{self._layout.name}: a {n}-byte message exceeds the declared {limit} bytes"
            )
        slot = self._slot
        off = SRING_HEADER_SIZE + (prod & self._mask) * slot
        if n == slot:
            self._copy_in(off, msg)
        elif n == limit:  # each half puts one message kind: scratch[limit:] is always zero
            scratch = self._scratch
            scratch[:n] = msg
            self._copy_in(off, scratch)
        else:
            self._copy_in(off, msg)
            self._zero(off + n, slot - n)
        self._prod_pvt = (prod + 1) & _U32

    def _put_many(self, src: bytes | bytearray | memoryview, count: int) -> None:
        """Write `count` messages laid out at slot stride in `src`, copied verbatim:
        `put_requests_from` / `put_responses_from`.

        Slot i is ``src[i * slot_size : (i + 1) * slot_size]``; bytes past a message's end are
        copied as they are, so keep them zero (XSA-216).  Raises LocalProtocolError if there is
        room for fewer than `count` (free request slots, or consumed requests awaiting a
        response) or `src` is too short.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._prod_pvt
        room = (self._cons + self._put_ahead - prod) & _U32
        if count > room:
            self._no_room(count, room)
        slot = self._slot
        if count < 0 or _msg_len(src) < count * slot:
            raise LocalProtocolError(
                f"{self._layout.name}: source holds fewer than {count} slots of {slot} bytes"
            )
        first = min(count, self._entries - (prod & self._mask))
        off = SRING_HEADER_SIZE + (prod & self._mask) * slot
        with memoryview(src) as view, view.cast("B") as flat:
            self._copy_in(off, flat[: first * slot])
            if count > first:
                self._copy_in(SRING_HEADER_SIZE, flat[first * slot : count * slot])
        self._prod_pvt = (prod + count) & _U32

    def _push(self) -> bool:
        """Publish what was put so far; True if the peer must be notified:
        `push_requests` / `push_responses`.

        RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY: write fence (the peer sees the slots
        before the index), store the producer index, full fence (the peer sees it before we
        read its event index), then notify iff the peer's event index lies in (old, new].
        """
        if self._error is not None:
            self._raise_poisoned()
        new = self._prod_pvt
        old = self._pushed
        self._pushed = new
        self._write_fence()
        self._store32(self._prod_off, new)
        self._full_fence()
        event = self._load32(self._peer_event_off)
        return ((new - event) & _U32) < ((new - old) & _U32)

    # ------------------------------------------------------------------ taking

    def _take_one_into(self, buf: bytearray | memoryview, offset: int = 0) -> bool:
        """Copy the next message into `buf` at `offset`: `take_request_into` (backend,
        `layout.request_size` bytes) / `take_response_into` (frontend, `layout.response_size`).

        Returns False, copying nothing, when none is pending.  The copy is the only read of that
        slot: parse and validate `buf`, never the page (XSA-155).
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._cons
        if cons == self._seen and self._pending() == 0:
            return False
        self._copy_out(
            SRING_HEADER_SIZE + (cons & self._mask) * self._slot, buf, offset, self._take_size
        )
        self._cons = (cons + 1) & _U32
        return True

    def _take_one(self) -> bytearray | None:
        """A private copy of the next message, or None when none is pending:
        `take_request` / `take_response`."""
        buf = bytearray(self._take_size)
        return buf if self._take_one_into(buf) else None

    def _take_many_into(self, buf: bytearray | memoryview, max_count: int | None = None) -> int:
        """Copy up to `max_count` pending messages into `buf` at slot stride; return how many:
        `take_requests_into` / `take_responses_into`.

        Message i lands at ``buf[i * slot_size:]`` (whole slots, one or two copies in all).
        Limited by what is pending and by what fits in `buf`.
        """
        if self._error is not None:
            self._raise_poisoned()
        cons = self._cons
        ready = self._pending()  # one fresh load per batch: take everything published
        slot = self._slot
        room = (buf.nbytes if type(buf) is memoryview else len(buf)) // slot
        count = min(ready, room) if max_count is None else min(ready, room, max_count)
        if count <= 0:
            return 0
        first = min(count, self._entries - (cons & self._mask))
        self._copy_out(SRING_HEADER_SIZE + (cons & self._mask) * slot, buf, 0, first * slot)
        if count > first:
            self._copy_out(SRING_HEADER_SIZE, buf, first * slot, (count - first) * slot)
        self._cons = (cons + count) & _U32
        return count

    def _final_check(self) -> bool:
        """Before sleeping: True if messages are pending:
        `final_check_for_requests` / `final_check_for_responses` (RING_FINAL_CHECK_FOR_*).

        If none are, asks the peer to notify on the very next one (event = cons + 1), fences, and
        looks once more, closing the race with a message pushed in between.
        """
        if self._pending():
            return True
        self._store32(self._event_off, (self._cons + 1) & _U32)
        self._full_fence()
        return self._pending() > 0


class FrontRing(_RingHalf):
    """The frontend half: produces requests, consumes responses (ring.h FRONT_RING_*)."""

    __slots__ = ()

    _side = "front"
    _puts_requests = True
    _offsets = (SRING_REQ_PROD, SRING_REQ_EVENT, SRING_RSP_EVENT)

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

    # ------------------------------------------------------------------ private indices

    @property
    def req_prod_pvt(self) -> int:
        """Index of the next request slot to fill."""
        return self._prod_pvt

    @property
    def rsp_cons(self) -> int:
        """Index of the next response to consume."""
        return self._cons

    # ------------------------------------------------------------------ requests

    def free_requests(self) -> int:
        """Slots free for new requests (RING_FREE_REQUESTS)."""
        if self._error is not None:
            self._raise_poisoned()
        return self._entries - ((self._prod_pvt - self._cons) & _U32)

    @property
    def full(self) -> bool:
        """True when no request can be put until responses are consumed (RING_FULL)."""
        return self.free_requests() == 0

    def _no_room(self, count: int, room: int) -> NoReturn:
        if count == 1:
            raise LocalProtocolError(f"{self._layout.name}: request ring is full")
        raise LocalProtocolError(
            f"{self._layout.name}: {count} requests do not fit the {room} free slots"
        )

    put_request = _own_copy(_RingHalf._put_one, "FrontRing.put_request")
    put_requests_from = _own_copy(_RingHalf._put_many, "FrontRing.put_requests_from")
    push_requests = _own_copy(_RingHalf._push, "FrontRing.push_requests")

    # ------------------------------------------------------------------ responses

    def pending_responses(self) -> int:
        """Responses ready to take (RING_HAS_UNCONSUMED_RESPONSES), after validating rsp_prod.

        Raises RemoteProtocolError (and poisons the ring) if the backend claims responses to
        requests that were never published.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._load32(SRING_RSP_PROD)
        cons = self._cons
        ready = (prod - cons) & _U32
        if ready > (self._pushed - cons) & _U32:
            self._response_overflow(prod, cons)
        self._read_fence()  # read the slots only after the index that covers them
        self._seen = prod
        return ready

    _pending = pending_responses

    def _response_overflow(self, prod: int, cons: int) -> NoReturn:
        outstanding = (self._pushed - cons) & _U32
        if (prod - cons) & _U32 > self._entries:
            why = f"more than the {self._entries} slots (RING_RESPONSE_PROD_OVERFLOW)"
        else:
            why = f"but only {outstanding} requests are outstanding"
        self._poison(
            f"rsp_prod={prod} is {(prod - cons) & _U32} ahead of rsp_cons={cons}, {why}"
        )

    take_response_into = _own_copy(_RingHalf._take_one_into, "FrontRing.take_response_into")
    take_response = _own_copy(_RingHalf._take_one, "FrontRing.take_response")
    take_responses_into = _own_copy(_RingHalf._take_many_into, "FrontRing.take_responses_into")
    final_check_for_responses = _own_copy(
        _RingHalf._final_check, "FrontRing.final_check_for_responses"
    )
    _take_one_into = take_response_into  # what take_response calls: this class's own copy


class BackRing(_RingHalf):
    """The backend half: consumes requests, produces responses (ring.h BACK_RING_*)."""

    __slots__ = ()

    _side = "back"
    _puts_requests = False
    _offsets = (SRING_RSP_PROD, SRING_RSP_EVENT, SRING_REQ_EVENT)

    # ------------------------------------------------------------------ private indices

    @property
    def req_cons(self) -> int:
        """Index of the next request to consume."""
        return self._cons

    @property
    def rsp_prod_pvt(self) -> int:
        """Index of the next response slot to fill."""
        return self._prod_pvt

    # ------------------------------------------------------------------ requests

    def pending_requests(self) -> int:
        """Requests ready to take (RING_HAS_UNCONSUMED_REQUESTS), after validating req_prod.

        Raises RemoteProtocolError (and poisons the ring) if req_prod claims more requests than
        the ring can hold (RING_REQUEST_PROD_OVERFLOW) or moved behind our consumer.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._load32(SRING_REQ_PROD)
        cons = self._cons
        ready = (prod - cons) & _U32
        if ready > self._entries - ((cons - self._prod_pvt) & _U32):
            self._request_overflow(prod, cons)
        self._read_fence()  # read the slots only after the index that covers them
        self._seen = prod
        return ready

    _pending = pending_requests

    def _request_overflow(self, prod: int, cons: int) -> NoReturn:
        rsp = self._prod_pvt
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

    take_request_into = _own_copy(_RingHalf._take_one_into, "BackRing.take_request_into")
    take_request = _own_copy(_RingHalf._take_one, "BackRing.take_request")
    take_requests_into = _own_copy(_RingHalf._take_many_into, "BackRing.take_requests_into")
    final_check_for_requests = _own_copy(
        _RingHalf._final_check, "BackRing.final_check_for_requests"
    )
    _take_one_into = take_request_into  # what take_request calls: this class's own copy

    # ------------------------------------------------------------------ responses

    def _no_room(self, count: int, room: int) -> NoReturn:
        if count == 1:
            raise LocalProtocolError(
                f"{self._layout.name}: no consumed request is waiting for a response"
            )
        raise LocalProtocolError(
            f"{self._layout.name}: {count} responses but only {room} consumed requests await one"
        )

    put_response = _own_copy(_RingHalf._put_one, "BackRing.put_response")
    put_responses_from = _own_copy(_RingHalf._put_many, "BackRing.put_responses_from")
    push_responses = _own_copy(_RingHalf._push, "BackRing.push_responses")


__all__ = ("BackRing", "FrontRing", "RingLayout")
