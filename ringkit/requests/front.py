"""`RequestQueue`: the frontend's side of a request/response protocol over io/ring.h rings.

Theory of operation
-------------------
Every request of a queue is one of a fixed set of `Request` records, one per id: ids ``0 ..
window - 1`` per ring, in disjoint ranges when the device has several rings (as Linux's
blkfront keeps a shadow entry per ring slot, and virtio a descriptor head per request).  An
id is *held* from `prepare` until the request is answered (or released unsent), so at most
`window` requests of a ring are ever in flight, the window never exceeds the ring, and a
prepared request always finds a free slot: sending never waits.  What waits is `prepare`:
for an id, then for the request's pages from the `GrantPool` -- never a `ResourceLimitError`.

The receive loop (`run`, one task per ring) takes responses in bursts, reads their ids in one
call (compiled when available, see `ringkit.requests.codec.gather`), checks each against the
request it claims to answer, copies the response into that request's record and wakes its
waiter.  An id outside the queue, of a request not in flight, or answered twice is the
backend's fault: `RemoteProtocolError`, and the queue fails every waiter with it.

Which ids are free, held, in flight or answered is a table of one byte per id (a free id is a
0, so the lowest free id of a ring is one ``bytearray.find``); a compiled fast path of the
driver's (`ringkit.requests.shadow`, block's) reads and writes that same table, and the
pool's free map, for the requests it sends and matches itself, and gets each burst of
responses first: it consumes the leading ones that answer its requests and hands the next
one back here.

A caller cancelled while its request is in flight does not get its id or pages back: the
backend may still write into them.  The request becomes an orphan; its answer, when it comes,
is dropped and only then are its id and pages reused.

On disconnect (`fail`), every waiter -- on an id, on pages, on an answer -- gets the typed
error (`PeerGoneError`, or the `RemoteProtocolError` that ended the connection), and so does
every later `prepare`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.lowlevel

from .. import _native
from .._async.channel import FrontRingChannel
from .._errors import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from ..abc import PAGE_SIZE
from .codec import SlotCodec, gather
from .pool import GrantPool, fresh_error

__all__ = ("Completions", "QueueStats", "Request", "RequestQueue")


class _State(enum.Enum):
    FREE = "free"
    HELD = "held"
    SENT = "sent"
    ANSWERED = "answered"
    SHADOW = "shadow"
    """In flight for a compiled fast path (`ringkit.requests.shadow`), not for the record."""

    # members are singletons: hashing by identity keeps `_CODES[state]` (once per request
    # state change) off Enum's Python-level __hash__
    __hash__ = object.__hash__


# The id table: one byte per id, shared with the compiled fast path (ringkit.requests.shadow,
# the RK_ID_* constants of ringkit/_native/_build.py): the state in the low bits, _ID_ORPHAN
# once a request's caller is gone, _ID_SHADOW for a request of the fast path's.  A free id is a
# 0 byte, so the lowest free id of a ring is one ``bytearray.find``.
_ID_STATE = 3
_ID_ORPHAN = 4
_ID_SHADOW = 8
_CODES = {_State.FREE: 0, _State.HELD: 1, _State.SENT: 2, _State.ANSWERED: 3}
_BY_CODE = (_State.FREE, _State.HELD, _State.SENT, _State.ANSWERED)


class _ShadowPath(Protocol):
    """What the queue asks of a compiled fast path's table (`ringkit.requests.shadow`)."""

    in_flight: int

    def complete(self, buf: bytearray, start: int, count: int) -> int: ...
    def failed(self) -> None: ...


class Request:
    """One request record of a `RequestQueue` (reused: one per id).

    Between `RequestQueue.prepare` and its release the caller owns it: it encodes the request
    into `slot` (the queue writes `id` into the codec's id field when sending), reads and
    writes the data of its `pages` (through `buffer` when they are contiguous, or `page(i)`),
    and names them to the backend by `refs`.  Once answered, `response` holds a private copy
    of the response slot.  `tag` is free for the driver's own per-request data.

    Do not keep a `Request`, its `slot`, `response` or views of its pages past its release:
    the record and the pages carry later requests.
    """

    __slots__ = ("_completions", "_event", "_queue", "_states", "buffer", "channel", "extra",
                 "generation", "id", "pages", "refs", "response", "slot", "tag")

    def __init__(self, queue: RequestQueue, rid: int, channel: int) -> None:
        layout = queue.codec.layout
        self._queue = queue
        self.id = rid
        """The id the queue writes into the request and matches the response on."""
        self.channel = channel
        """Index of the ring this request travels on."""
        self.slot = bytearray(layout.request_size)
        """The request, encoded by the caller (zeroed at `prepare`)."""
        self.response = bytearray(layout.response_size)
        """The response, once answered (a private copy: the peer cannot change it)."""
        self.pages: Sequence[int] = range(0)
        """The request's pool pages (indices into the queue's `GrantPool`)."""
        self.refs: Sequence[int] = ()
        """The grant ref of each of `pages`, in order."""
        self.buffer: memoryview | None = None
        """A view of all of `pages` when they are contiguous in the pool (else None)."""
        self.tag: object = None
        self.extra = False
        """Whether this record went out as an extra-info slot of a chain (answered by the
        codec's filler response), or -- `ResponseExtra` -- was answered by an extra-info slot
        (`response` then holds that slot, not a response).  Set when sent and answered."""
        self.generation = 0
        """Bumped each time the record is prepared for a new request: a holder of an old
        reference can tell the record moved on."""
        self._states = queue._states
        self._event: anyio.Event | None = None
        self._completions: Completions | None = None

    @property
    def _state(self) -> _State:
        code = self._states[self.id]
        return _State.SHADOW if code & _ID_SHADOW else _BY_CODE[code & _ID_STATE]

    @_state.setter
    def _state(self, state: _State) -> None:
        # freed or prepared afresh: no flag stays; in flight or answered: an orphan stays one
        states, rid = self._states, self.id
        code = _CODES[state]
        states[rid] = code if code <= 1 else (states[rid] & ~_ID_STATE) | code

    @property
    def _orphan(self) -> bool:
        return bool(self._states[self.id] & _ID_ORPHAN)

    @_orphan.setter
    def _orphan(self, orphan: bool) -> None:
        if orphan:
            self._states[self.id] |= _ID_ORPHAN
        else:
            self._states[self.id] &= ~_ID_ORPHAN & 0xFF

    @property
    def answered(self) -> bool:
        """Whether the response has come (`response` is valid)."""
        return self._state is _State.ANSWERED

    @property
    def in_flight(self) -> bool:
        """Sent and not answered yet."""
        return self._state is _State.SENT

    def page(self, index: int) -> memoryview:
        """A writable view of the request's page `index` (in `pages` order)."""
        pool = self._queue.pool
        if pool is None:
            raise ConfigError("the queue has no grant pool")
        return pool.page(self.pages[index])

    def write_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into the request's pages, page i holding bytes ``i * PAGE_SIZE ..``."""
        view = memoryview(data).cast("B")
        self._check_fits(len(view))
        if self.buffer is not None:
            self.buffer[:len(view)] = view
            return
        for i in range(-(-len(view) // PAGE_SIZE)):
            chunk = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            self.page(i)[:len(chunk)] = chunk

    def read_data(self, out: bytearray | memoryview) -> None:
        """Copy ``len(out)`` bytes of the request's pages into `out` (the inverse of
        `write_data`)."""
        view = memoryview(out).cast("B")
        self._check_fits(len(view))
        if self.buffer is not None:
            view[:] = self.buffer[:len(view)]
            return
        for i in range(-(-len(view) // PAGE_SIZE)):
            n = min(PAGE_SIZE, len(view) - i * PAGE_SIZE)
            view[i * PAGE_SIZE:i * PAGE_SIZE + n] = self.page(i)[:n]

    def _check_fits(self, length: int) -> None:
        if length > len(self.pages) * PAGE_SIZE:
            raise ConfigError(f"{length} bytes do not fit the request's {len(self.pages)} "
                              "page(s)")

    def __repr__(self) -> str:
        return f"<Request id={self.id} {self._state.value} pages={len(self.pages)}>"


class Completions:
    """Where the answers to a batch of requests land, as an io_uring completion queue: send
    requests with ``completions=`` and `get` the answered ones a wave at a time (one wake-up
    per wave, not per request)."""

    __slots__ = ("_done", "_event", "_queue")

    def __init__(self, queue: RequestQueue) -> None:
        self._queue = queue
        self._done: list[Request] = []
        self._event = anyio.Event()

    def _post(self, request: Request) -> None:
        self._done.append(request)
        self._event.set()

    def _wake(self) -> None:
        self._event.set()

    async def get(self) -> list[Request]:
        """The requests answered since the last call, waiting for at least one.

        Raises:
            PeerGoneError, RemoteProtocolError: the queue failed with nothing left to report.
        """
        while not self._done:
            self._queue._check()
            await self._event.wait()
            self._event = anyio.Event()
        done, self._done = self._done, []
        return done

    def get_nowait(self) -> list[Request]:
        """The requests answered since the last call (perhaps none), without waiting.

        Raises:
            PeerGoneError, RemoteProtocolError: the queue failed with nothing left to report.
        """
        if not self._done:
            self._queue._check()
        done, self._done = self._done, []
        return done


@dataclass(slots=True)
class QueueStats:
    """Counters of a `RequestQueue` (for tests and benchmarks)."""

    sent: int = 0
    answered: int = 0
    pushes: int = 0
    orphans: int = 0
    """Answers dropped because their caller had gone (cancelled)."""


class RequestQueue:
    """Requests over the rings `channels` (one per queue of the device), in `codec`'s slot
    format, their buffers in `pool`'s pages.

    `window`: most requests in flight per ring (default and maximum: the ring's size).  `check`:
    called for each response before its waiter wakes, with the request it answers (`response`
    filled); it raises `RemoteProtocolError` for a response the protocol forbids (an operation
    that does not match, an impossible status), which fails the queue.

    Run `run` in a task while connected (a driver: ``self.tasks.start_soon(queue.run)`` in its
    ``peer_connected`` hook), and `fail` the queue when the connection goes (``disconnected``).
    Any number of tasks may `prepare`, `send` and wait concurrently.
    """

    def __init__(self, channels: Sequence[FrontRingChannel], codec: SlotCodec, *,
                 pool: GrantPool | None = None, window: int | None = None,
                 check: Callable[[Request], None] | None = None,
                 burst: int = 64) -> None:
        if not channels:
            raise ConfigError("a request queue needs at least one ring")
        if window is not None and window < 1:
            raise ConfigError(f"window must be at least 1, got {window}")
        for channel in channels:
            if channel.engine.layout.slot_size != codec.layout.slot_size:
                raise ConfigError(f"the ring's layout {channel.engine.layout.name} does not "
                                  f"match the codec's {codec.layout.name}")
        self.codec = codec
        self.pool = pool
        self._channels = list(channels)
        self._check_response = check
        self._burst = burst
        self._poll_buf = bytearray(codec.layout.slot_size * burst)
        self._zero_slot = bytes(codec.layout.request_size)
        self._helper = _native.implementations()[_native.IMPLEMENTATION].slots
        self._requests: list[Request] = []
        self._ranges: list[tuple[int, int]] = []  # each ring's ids: first, one past the last
        sizes = [channel.engine.entries if window is None else min(window, channel.engine.entries)
                 for channel in channels]
        self._states = bytearray(sum(sizes))
        for index, size in enumerate(sizes):
            first = len(self._requests)
            self._requests += [Request(self, first + k, index) for k in range(size)]
            self._ranges.append((first, first + size))
        if len(self._requests) > codec.request_id.limit:
            raise ConfigError(f"{len(self._requests)} requests in flight do not fit the "
                              f"{codec.request_id.size}-byte id field")
        self._id_waiters: list[anyio.Event] = []
        chain = codec.chain
        self._fillers = (chain is not None and bool(chain.extra) and codec.status is not None
                         and chain.filler_status is not None)
        """Chains with extra slots: each answered by a filler response (matched by status)."""
        self._extra_slots: list[deque[Request]] = [deque() for _ in channels]
        self._response_extra = codec.response_extra
        self._order: list[OrderedDict[int, Request]] = [OrderedDict() for _ in channels]
        """With `ResponseExtra`: each ring's requests in flight, in the order sent."""
        self._in_extra = [False] * len(channels)
        self._shadow: _ShadowPath | None = None  # a compiled fast path's table (shadow.py)
        self._error: BaseException | None = None
        self.stats = QueueStats()

    # ------------------------------------------------------------------ facts

    @property
    def window(self) -> int:
        """Most requests in flight, over all rings."""
        return len(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered (orphans included)."""
        states = self._states
        return sum(1 for code in states if code & _ID_STATE == _CODES[_State.SENT])

    @property
    def held(self) -> int:
        """Ids in use: prepared, in flight, or answered and not yet released."""
        return self.window - self._states.count(0)

    @property
    def id_table(self) -> bytes:
        """A copy of the id table, one byte per id: 0 free, 1 prepared, 2 in flight, 3
        answered and not yet released; plus 4 for an orphan (its caller is gone) and 8 for a
        request of a compiled fast path's (`ringkit.requests.shadow`), which shares the table.
        For tests and debugging."""
        return bytes(self._states)

    @property
    def error(self) -> BaseException | None:
        """What failed the queue, or None while it works."""
        return self._error

    # ------------------------------------------------------------------ preparing

    async def prepare(self, pages: int = 0, *, contiguous: bool = False) -> Request:
        """A request record with a free id and `pages` pool pages (contiguous ones when
        `contiguous`), waiting for both as needed.  Release it with `release` (or use
        `request`).

        Raises:
            ConfigError: more pages than the pool has, or pages without a pool.
            PeerGoneError, RemoteProtocolError: the queue failed (the connection is gone).
        """
        request = self.prepare_nowait(pages, contiguous=contiguous)  # (checks the arguments)
        if request is not None:
            return request  # the usual case: no waiting, no coroutine to run
        request = await self._take_id()
        try:
            if pages:
                assert self.pool is not None
                got = self.pool.take_nowait(pages, contiguous=contiguous)
                if got is None:
                    got = await self.pool.take(pages, contiguous=contiguous)
                self._lend(request, got)
            self._check()
        except BaseException:
            self._give_back(request)
            raise
        return request

    def prepare_nowait(self, pages: int = 0, *, contiguous: bool = False) -> Request | None:
        """`prepare` without waiting: a request record, or None when no id or not enough
        pages are free right now.

        Raises: as `prepare` (but never waits).
        """
        self._check()
        if pages and self.pool is None:
            raise ConfigError("pages asked of a request queue without a grant pool")
        if self.pool is not None and pages > self.pool.size:
            raise ConfigError(f"{pages} pages asked of a {self.pool.size}-page grant pool")
        rid = self._free_id()
        if rid < 0:
            return None
        got: Sequence[int] = range(0)
        if pages:
            assert self.pool is not None
            found = self.pool.take_nowait(pages, contiguous=contiguous)
            if found is None:
                return None
            got = found
        request = self._hold(self._requests[rid])
        if pages:
            self._lend(request, got)
        return request

    def adopt_pages(self, request: Request, pages: Sequence[int]) -> None:
        """Hand pool pages the caller holds (lent by the pool outside any request) to a request
        in flight: they go back to the pool with it, once it is answered.  For a caller that
        gives up on a request whose pages it lent it (the backend may still write into them).

        Raises:
            LocalProtocolError: the request is not in flight.
        """
        self._own(request)
        if request._state is not _State.SENT:
            raise LocalProtocolError(f"request {request.id} is {request._state.value}, not in "
                                     "flight")
        request.pages = [*request.pages, *pages]

    @asynccontextmanager
    async def request(self, pages: int = 0, *, contiguous: bool = False
                      ) -> AsyncIterator[Request]:
        """`prepare` a request for the body of an ``async with``; release it on the way out
        (if it is still in flight then, its answer releases it)."""
        request = await self.prepare(pages, contiguous=contiguous)
        try:
            yield request
        finally:
            self.release(request)

    def release(self, request: Request) -> None:
        """Give a request's id and pages back.  A request still in flight becomes an orphan:
        they come back when it is answered (the backend may use its pages until then)."""
        self._own(request)
        if request._state is _State.SENT:
            self._abandon(request)
        elif request._state is not _State.FREE:
            self._give_back(request)

    def _abandon(self, request: Request) -> None:
        """A request in flight nobody waits for: an orphan until its answer comes -- or, once
        the queue failed (no answer will come; the connection is gone), given back now."""
        if self._error is not None:
            self._give_back(request)
        else:
            request._orphan = True

    # ------------------------------------------------------------------ sending

    def send_nowait(self, request: Request, completions: Completions | None = None) -> None:
        """Put a prepared request on its ring and push (notifying the backend if it asked).
        Its answer wakes `wait` -- or lands in `completions`."""
        self.send_batch_nowait((request,), completions)

    def send_batch_nowait(self, requests: Sequence[Request],
                          completions: Completions | None = None) -> None:
        """Put prepared requests on their rings with one push per ring (at most one doorbell
        each).

        Raises:
            LocalProtocolError: a request is not prepared (already sent, or released).
            PeerGoneError, RemoteProtocolError: the queue failed; nothing was sent.
        """
        self._check()
        for request in requests:
            self._own(request)
            if request._state is not _State.HELD:
                raise LocalProtocolError(f"request {request.id} is {request._state.value}, "
                                         "not prepared")
        if len(self._channels) == 1:
            self._put(0, requests, completions)
            return
        for index in range(len(self._channels)):
            group = [r for r in requests if r.channel == index]
            if group:
                self._put(index, group, completions)

    async def send(self, request: Request, completions: Completions | None = None) -> None:
        """`send_nowait` as a checkpoint (it never waits: the window guarantees a slot)."""
        await anyio.lowlevel.checkpoint()
        self.send_nowait(request, completions)

    async def wait(self, request: Request) -> bytearray:
        """Wait for the answer to a sent request; return its `response`.

        Cancelled, the request stays in flight as an orphan (see the module docstring).

        Raises:
            PeerGoneError, RemoteProtocolError: the queue failed before the answer came.
        """
        self._own(request)
        if request._state is _State.ANSWERED:
            return request.response
        event = request._event
        if request._state is not _State.SENT or event is None:
            raise LocalProtocolError(f"request {request.id} was not sent to be waited on")
        try:
            await event.wait()
        except BaseException:
            if request._state is _State.SENT:
                self._abandon(request)
            raise
        if not request.answered:
            self._check()
            raise PeerGoneError("the request was abandoned")
        return request.response

    async def call(self, request: Request) -> bytearray:
        """Send a prepared request and wait for its answer (`send` then `wait`)."""
        self.send_nowait(request)
        return await self.wait(request)

    def completions(self) -> Completions:
        """A new `Completions` for a batch of this queue's requests."""
        return Completions(self)

    async def call_batch(self, requests: Sequence[Request]) -> None:
        """Send prepared requests together (one push per ring) and wait until every one is
        answered.  Cancelled or failed, the ones still in flight become orphans."""
        done = self.completions()
        self.send_batch_nowait(requests, done)
        left = len(requests)
        try:
            while left:
                left -= len(await done.get())
        except BaseException:
            for request in requests:
                if request._state is _State.SENT:
                    self._abandon(request)
            raise

    # ------------------------------------------------------------------ receiving

    async def run(self) -> None:
        """Receive and match responses on every ring until the connection ends.

        Returns when the rings were closed locally (the queue is failed with `PeerGoneError`).
        When it raises, the queue was failed with the same error first.

        Raises:
            RemoteProtocolError: the backend broke the protocol (indices, ids, `check`).
            PeerGoneError: the backend went away.
        """
        try:
            if len(self._channels) == 1:
                await self._receive_loop(0)
            else:
                async with anyio.create_task_group() as tg:
                    for index in range(len(self._channels)):
                        tg.start_soon(self._receive_loop, index)
        except BaseExceptionGroup as group:
            raise _first(group) from None

    def poll(self) -> int:
        """Take and match the responses waiting on every ring now, without waiting (for a
        caller that drives the queue itself instead of running `run`); return how many.

        Raises:
            RemoteProtocolError, PeerGoneError: as `run` (the queue was failed first).
        """
        self._check()
        total = 0
        for index, channel in enumerate(self._channels):
            buf = self._poll_buf
            try:
                count = channel.receive_into_nowait(buf, self._burst)
                if count:
                    self._deliver(index, buf, count)
            except RemoteProtocolError as exc:
                self.fail(exc)
                raise
            except anyio.BrokenResourceError as exc:
                raise self._broken(index, exc) from exc
            total += count
        return total

    async def _receive_loop(self, index: int) -> None:
        channel = self._channels[index]
        buf = bytearray(self.codec.layout.slot_size * self._burst)
        try:
            while True:
                count = await channel.receive_into(buf, self._burst)
                self._deliver(index, buf, count)
        except RemoteProtocolError as exc:
            self.fail(exc)
            raise
        except anyio.BrokenResourceError as exc:
            raise self._broken(index, exc) from exc
        except anyio.ClosedResourceError:
            self.fail(PeerGoneError("the request queue's ring was closed"))

    def _broken(self, index: int, exc: anyio.BrokenResourceError) -> BaseException:
        """Fail the queue for a broken ring; the error to raise."""
        cause = exc.__cause__
        error = (cause if isinstance(cause, RemoteProtocolError | PeerGoneError)
                 else PeerGoneError(f"ring {index} broke: {exc}"))
        self.fail(error)
        return error

    def _deliver(self, index: int, buf: bytearray, count: int) -> None:
        """Match the `count` responses in `buf` (taken from ring `index`) to their requests."""
        codec = self.codec
        slot = codec.layout.slot_size
        positional = self._fillers or self._response_extra is not None
        shadow = self._shadow
        if shadow is not None and shadow.in_flight:
            # the shadow table consumes the leading responses it owns, Python the next one
            at = 0
            while at < count:
                if shadow.in_flight:
                    at += shadow.complete(buf, at, count)
                    if at == count:
                        break
                if positional:
                    self._deliver_positional(index, buf, at * slot)
                else:
                    self._deliver_one(index, codec.response_id.read(buf, at * slot), buf,
                                      at * slot)
                at += 1
            self.stats.answered += count
            return
        if positional:
            for at in range(0, count * slot, slot):
                self._deliver_positional(index, buf, at)
            self.stats.answered += count
            return
        size = codec.layout.response_size
        table = self._requests
        check = self._check_response
        ids = gather(buf, count, slot, codec.response_id, self._helper)
        for i, rid in enumerate(ids):
            request = table[rid] if 0 <= rid < len(table) else None
            if request is None or request._state is not _State.SENT \
                    or request.channel != index:
                raise RemoteProtocolError(self._bad_id(rid, request, index))
            request.response[:] = buf[i * slot:i * slot + size]
            if check is not None:
                check(request)
            self._answered(request)
        self.stats.answered += count

    def _deliver_one(self, index: int, rid: int, buf: bytearray, at: int) -> None:
        """Match one response (id `rid`, at byte `at` of `buf`) to its Python request."""
        table = self._requests
        request = table[rid] if 0 <= rid < len(table) else None
        if request is None or request._state is not _State.SENT or request.channel != index:
            raise RemoteProtocolError(self._bad_id(rid, request, index))
        request.response[:] = buf[at:at + self.codec.layout.response_size]
        if self._check_response is not None:
            self._check_response(request)
        self._answered(request)

    def _deliver_positional(self, index: int, buf: bytearray, at: int) -> None:
        """One response of a codec whose extra-info slots carry no id: a filler (chains with
        extra slots) or an extra slot among the responses (`ResponseExtra`) answers its
        request by position; any other response is matched on its id."""
        codec = self.codec
        size = codec.layout.response_size
        extra = self._response_extra
        if extra is not None and self._in_extra[index]:
            order = self._order[index]
            if not order:
                raise RemoteProtocolError(f"ring {index}: an extra-info response slot with no "
                                          "request in flight")
            _, request = order.popitem(last=False)
            request.response[:] = buf[at:at + size]
            request.extra = True
            self._in_extra[index] = bool(extra.extra_flags.read(buf, at) & extra.extra_more)
            self._answered(request)
            return
        if self._fillers:
            assert codec.status is not None and codec.chain is not None
            if codec.status.read(buf, at) == codec.chain.filler_status:
                slots = self._extra_slots[index]
                if not slots:
                    raise RemoteProtocolError(f"ring {index}: a filler response (status "
                                              f"{codec.chain.filler_status}) answering no "
                                              "extra-info slot")
                request = slots.popleft()
                request.response[:] = buf[at:at + size]
                self._answered(request)
                return
        rid = codec.response_id.read(buf, at)
        table = self._requests
        matched = table[rid] if 0 <= rid < len(table) else None
        if matched is None or matched._state is not _State.SENT or matched.channel != index \
                or matched.extra:
            raise RemoteProtocolError(self._bad_id(rid, matched, index))
        if extra is not None:
            self._order[index].pop(rid, None)
            self._in_extra[index] = bool(extra.flags.read(buf, at) & extra.extra)
        matched.response[:] = buf[at:at + size]
        if self._check_response is not None:
            self._check_response(matched)
        self._answered(matched)

    def fail(self, error: BaseException) -> None:
        """End the queue: every waiter (for an id, pages or an answer) and every later call
        raises `error`'s kind (`PeerGoneError` unless it is a `RemoteProtocolError`)."""
        if self._error is None:
            self._error = error
        for request in self._requests:
            if request._state is _State.SENT and request._orphan:
                self._give_back(request)  # its caller is gone, and no answer will come
            elif request._state is _State.SENT:
                if request._completions is not None:
                    request._completions._wake()
                if request._event is not None:
                    request._event.set()
        if self._shadow is not None:
            self._shadow.failed()
        for slots in self._extra_slots:
            slots.clear()
        for order in self._order:
            order.clear()
        self._in_extra = [False] * len(self._channels)
        if self.pool is not None:
            self.pool.close(fresh_error(error))
        self._wake_id_waiters()

    # ------------------------------------------------------------------ internals

    def _check(self) -> None:
        if self._error is not None:
            raise fresh_error(self._error)

    def _own(self, request: Request) -> None:
        if request._queue is not self:
            raise LocalProtocolError("the request belongs to another queue")

    async def _take_id(self) -> Request:
        while True:
            self._check()
            rid = self._free_id()
            if rid >= 0:
                request = self._requests[rid]
                break
            waiter = anyio.Event()
            self._id_waiters.append(waiter)
            await waiter.wait()
        return self._hold(request)

    def _free_id(self) -> int:
        """The lowest free id of the ring with the most free ids (-1: none is free)."""
        states = self._states
        ranges = self._ranges
        if len(ranges) == 1:
            return states.find(0)
        lo, hi = max(ranges, key=lambda r: states.count(0, r[0], r[1]))
        return states.find(0, lo, hi)

    def _hold(self, request: Request) -> Request:
        request._state = _State.HELD
        request.generation += 1
        request._orphan = False
        request._event = None
        request._completions = None
        request.tag = None
        request.extra = False
        request.slot[:] = self._zero_slot
        return request

    def _lend(self, request: Request, pages: Sequence[int]) -> None:
        pool = self.pool
        assert pool is not None
        request.pages = pages
        if isinstance(pages, range):
            request.refs = pool.refs[pages.start:pages.stop]
            request.buffer = pool.memory[pages.start * PAGE_SIZE:pages.stop * PAGE_SIZE]
        else:
            request.refs = [pool.refs[p] for p in pages]
            request.buffer = None

    def _give_back(self, request: Request) -> None:
        """Free the id and the pages of a request nobody waits for any more."""
        if request._state is _State.FREE:
            return
        pages = request.pages
        request._state = _State.FREE
        request.pages = range(0)
        request.refs = ()
        request.buffer = None
        request._event = None
        request._completions = None
        if pages and self.pool is not None:
            self.pool.give(pages)
        self._wake_id_waiters()

    def _wake_id_waiters(self) -> None:
        if self._id_waiters:
            waiters, self._id_waiters = self._id_waiters, []
            for waiter in waiters:
                waiter.set()

    def _put(self, index: int, requests: Sequence[Request],
             completions: Completions | None) -> None:
        write_id = self.codec.request_id.write
        for request in requests:
            write_id(request.slot, request.id)
        if self._fillers:
            self._mark_extra_slots(requests)
        channel = self._channels[index]
        try:
            sent = channel.send_batch_nowait([r.slot for r in requests])
        except anyio.WouldBlock:
            sent = 0
        except anyio.BrokenResourceError as exc:
            cause = exc.__cause__
            raise fresh_error(cause if cause is not None else exc) from exc
        except anyio.ClosedResourceError as exc:
            raise PeerGoneError("the request queue's ring was closed") from exc
        for request in requests[:sent]:
            request._state = _State.SENT
            if request.extra and self._fillers:
                self._extra_slots[index].append(request)
            if self._response_extra is not None:
                self._order[index][request.id] = request
            if completions is not None:
                request._completions = completions
            else:
                request._event = anyio.Event()
        self.stats.sent += sent
        self.stats.pushes += 1
        if sent < len(requests):  # the window makes this impossible: a bug of ours
            raise LocalProtocolError(f"ring {index} had room for {sent} of {len(requests)} "
                                     "requests inside the window")

    def _mark_extra_slots(self, requests: Sequence[Request]) -> None:
        """Which of `requests` (whole chains, in ring order) are extra-info slots (`Chain`)."""
        spec = self.codec.chain
        assert spec is not None and spec.extra_flags is not None
        extras = False
        for request in requests:
            request.extra = extras
            if extras:
                extras = bool(spec.extra_flags.read(request.slot) & spec.extra_more)
            else:
                extras = bool(spec.flags.read(request.slot) & spec.extra)

    def _answered(self, request: Request) -> None:
        request._state = _State.ANSWERED
        if request._orphan:
            self.stats.orphans += 1
            self._give_back(request)
        elif request._completions is not None:
            request._completions._post(request)
        elif request._event is not None:
            request._event.set()

    def _bad_id(self, rid: int, request: Request | None, index: int) -> str:
        name = self.codec.layout.name
        if request is None:
            return f"{name}: response id {rid} on ring {index} is not an id this queue issued"
        if request.channel != index:
            return f"{name}: response id {rid} on ring {index}, sent on ring {request.channel}"
        if request._state is _State.ANSWERED:
            return f"{name}: response id {rid} answered twice"
        return f"{name}: response id {rid} on ring {index} is not in flight"


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of a (nested) exception group, preferring a ringkit error."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            todo[:0] = exc.exceptions
        else:
            leaves.append(exc)
    return next((e for e in leaves if isinstance(e, RemoteProtocolError | PeerGoneError)),
                leaves[0])
