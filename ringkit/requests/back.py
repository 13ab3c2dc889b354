"""`RequestServer`: the backend's side of a request/response protocol over an io/ring.h ring.

Theory of operation
-------------------
The server takes requests off the ring in bursts (private copies, one copy per burst), reads
their ids and grant refs in one call each (`ringkit.requests.codec`, compiled when available)
and hands each to the driver's handler as an `IncomingRequest`: the slot, the id, the refs,
and -- on the handler's first ask -- the pages those refs name, mapped through a
`GrantMapper` (persistent or per request) and unmapped when the request is answered.

The handler returns the response.  With ``concurrency=1`` (the default) requests are handled
one after the other in ring order, and a burst's responses are pushed together (one doorbell
at most, by ring.h's hold-off) -- the order a disk backend needs, where a flush covers every
write answered before it.  With ``concurrency=n`` up to n handlers run at once and answer in
any order, as io/ring.h allows: each response is pushed with whatever others are ready.
`ServerStats.reordered` counts the responses pushed ahead of a request taken off the ring
before them and still unanswered; an `AnswerOrder` keeps the tally (ring order mode has none:
it cannot reorder, and pays nothing for the count).

A driver may hand the server a `FastPath`: given each burst (in ring order mode), it answers
the burst's leading requests itself -- in C, say, without an `IncomingRequest` each -- and
says how many; the rest are handled as above.  Answering only a prefix keeps ring order.
With ``concurrency`` > 1 the driver's fast path is a `ConcurrentFastPath` instead: it takes
the requests it can serve off each burst and starts them (submits them to the kernel, say),
hands the others to the handler, and the server pushes its answers as the fast path reports
them complete -- watching the file descriptor it names, in the same event loop.

Nothing from the frontend is trusted.  A request whose ref list is malformed, or whose refs
cannot be mapped, reaches the handler as a `RequestError` when it asks for its pages; a
handler that lets a `RequestError` escape gets the codec's error response sent for it (or, if
the protocol has no error status, the connection ends with `RemoteProtocolError`).  Bad ring
indices end the connection (the ring engine's job).  Any other exception out of a handler is
a driver bug: it ends `run`, and with it the connection (see `ringkit.device.Backend`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from .. import _native
from .._async.channel import BackRingChannel
from .._errors import ConfigError, GrantError, RemoteProtocolError, TransportError
from .codec import RequestError, SlotCodec, gather, gather_refs
from .mapping import GrantMapper, PageSet

__all__ = ("AnswerOrder", "ConcurrentFastPath", "FastPath", "Handler", "IncomingRequest",
           "RequestServer",
           "ServerStats", "answer_slot")


class IncomingRequest:
    """One request as the backend's handler sees it.

    `slot` is a private copy of the request (parse it, never the ring); `id` and `operation`
    come from the codec's fields, `refs` are the grant refs the request names (`RequestError`
    when its ref list is malformed).  `pages()` maps them -- once, on first ask -- writable when
    the codec says the operation writes into them; `map` maps further refs (a list kept in
    pages, like blkif's indirect segments).  Every mapping is released when the request is
    answered.
    """

    __slots__ = ("_codec", "_extra", "_fault", "_mapped", "_mapper", "id", "operation", "refs",
                 "slot", "urgent")

    def __init__(self, codec: SlotCodec, mapper: GrantMapper | None, slot: bytearray, rid: int,
                 operation: int | None, refs: Sequence[int], fault: str | None) -> None:
        self._codec = codec
        self._mapper = mapper
        self.slot = slot
        """The request, a private copy of its ring slot."""
        self.id = rid
        self.operation = operation
        """The codec's operation field (None when the codec has none)."""
        self.refs = refs
        """The grant refs the request names (empty when malformed: see `pages`)."""
        self.urgent = False
        """Set by the handler: push this response (with the ones before it) as soon as it is
        written, instead of with the rest of its burst -- a large transfer's frontend need not
        wait for the small requests behind it."""
        self._fault = fault
        self._mapped: PageSet | None = None
        self._extra: list[PageSet] = []

    @property
    def malformed(self) -> str | None:
        """Why the request's ref list is unusable, or None."""
        return self._fault

    async def pages(self) -> list[memoryview]:
        """The pages `refs` name, in order (mapped on first call).

        Raises:
            RequestError: the ref list is malformed, or a ref cannot be mapped (not granted to
                us, revoked, read-only where we must write).
        """
        if self._fault is not None:
            raise RequestError(self._fault)
        if self._mapped is None:
            spec = self._codec.refs
            writable = spec is not None and self.operation in spec.writable_operations
            self._mapped = await self._map(self.refs, writable)
        return self._mapped.pages

    async def map(self, refs: Sequence[int], *, writable: bool) -> list[memoryview]:
        """Map more refs for this request (released with it).

        Raises:
            RequestError: a ref cannot be mapped.
        """
        pageset = await self._map(refs, writable)
        self._extra.append(pageset)
        return pageset.pages

    async def _map(self, refs: Sequence[int], writable: bool) -> PageSet:
        if self._mapper is None:
            raise RequestError("this server maps no grants (it was given no GrantMapper)")
        try:
            return await self._mapper.map(refs, writable=writable)
        except (GrantError, TransportError) as exc:
            raise RequestError(f"cannot map the request's grants: {exc}") from exc

    async def _release(self) -> None:
        mapped, self._mapped = self._mapped, None
        extra = [pageset for pageset in self._extra if not pageset.persistent]
        self._extra.clear()
        if not extra and (mapped is None or mapped.persistent):
            return  # nothing mapped for this request alone (the usual case: persistent grants)
        with anyio.CancelScope(shield=True):
            if mapped is not None:
                await mapped.release()
            for pageset in extra:
                await pageset.release()


Handler = Callable[[IncomingRequest], Awaitable[bytes | bytearray | memoryview]]
"""The driver's request handler: the response to write (at most ``response_size`` bytes)."""


FastPath = Callable[[bytearray, int, memoryview], int]
"""A driver's fast path: ``fast_path(burst, count, out)`` is given the burst's `count` request
slots (the server's private copy, ``slot_size`` apart) and the output buffer; it answers the
first n requests -- writing each whole response slot at its request's position in `out` -- and
returns n (0..count).  The handler gets the rest, in order."""


class ConcurrentFastPath(Protocol):
    """A driver's fast path for a server at ``concurrency`` > 1, which answers in any order.

    `submit` is given each burst (the server's private copy, `count` slots ``slot_size`` apart,
    numbered `seq` onwards in ring order) and starts the leading requests it can serve; the
    slots among them it does not take it copies to `rest` (their numbers to `rest_seqs`) for
    the handler.  It returns ``(consumed, rest, stop)``: how many leading slots it consumed
    (started or copied to `rest`), how many of them are in `rest`, and why it stopped: 0 (all
    consumed), 1 (*order*: the slot at `consumed` and the rest of the burst go to the handler,
    in ring order -- a request that must wait for everything before it), 2 (*full*: it has as
    many in flight as it takes; the server waits for a completion, then offers the rest).

    When `fileno` is readable, the server calls `reap` (``cap``: most to report): it writes
    the responses of requests that completed to `out` (whole slots; their numbers to
    `seqs`), and the slots of requests it gives up on to `back` (numbers to `back_seqs`) for
    the handler to serve again, and returns ``(answered, handed_back)``.  The server pushes
    the answers at once.  Buffers hold at least the server's ``burst`` slots.
    """

    rest: bytearray
    rest_seqs: Sequence[int]
    out: bytearray
    seqs: Sequence[int]
    back: bytearray
    back_seqs: Sequence[int]

    def fileno(self) -> int:
        """A descriptor readable when completions wait to be reaped."""

    def submit(self, burst: bytearray, count: int, seq: int) -> tuple[int, int, int]:
        """Start what it can of `count` slots of `burst` (see the class docstring)."""

    def reap(self, cap: int) -> tuple[int, int]:
        """Report up to `cap` completions (see the class docstring)."""


@dataclass(slots=True)
class ServerStats:
    """Counters of a `RequestServer`."""

    requests: int = 0
    refused: int = 0
    """Requests answered with the codec's error response (`RequestError`)."""
    pushes: int = 0
    fast: int = 0
    """Requests answered by the `FastPath` or `ConcurrentFastPath` (counted in `requests`
    too)."""
    handed_back: int = 0
    """Requests a `ConcurrentFastPath` started and then gave to the handler to serve again."""
    reordered: int = 0
    """Responses pushed ahead of a request taken off the ring before them and still
    unanswered: answered out of ring order.  Only ``concurrency`` > 1 can do that (0
    otherwise)."""


class AnswerOrder:
    """Tells which answers overtake a request taken off the ring before them.

    Each request taken off the ring gets the next sequence number (`taken` hands out a
    burst's at once: the first one is returned, the rest follow it in ring order);
    `answered` says whether an older request is still unanswered when a response is pushed
    -- whether that response is out of ring order.  Both are O(1) amortized: a ring of flags
    spans the sequence numbers from the oldest unanswered request to the newest taken
    (grown by doubling when a burst would not fit, never shrunk), and the oldest is advanced
    over the answered ones behind it.  Nothing is allocated per request.

    Answers must be told in the order the responses are pushed.  A path that answers in C
    can keep the same tally by calling `taken` and `answered` too.
    """

    __slots__ = ("_done", "_mask", "_next", "_oldest")

    def __init__(self, window: int = 32) -> None:
        size = 1 << max(window - 1, 1).bit_length()
        self._done = bytearray(size)
        """Per sequence number (modulo the size): answered, while it is ahead of the oldest."""
        self._mask = size - 1
        self._next = 0
        self._oldest = 0

    @property
    def oldest(self) -> int:
        """The sequence number of the oldest unanswered request (`taken_count` if all are
        answered)."""
        return self._oldest

    @property
    def taken_count(self) -> int:
        """How many sequence numbers were handed out: the next one `taken` returns."""
        return self._next

    def taken(self, count: int) -> int:
        """`count` more requests were taken off the ring: return the first one's sequence
        number (the others are the next ``count`` - 1)."""
        first = self._next
        span = first + count - self._oldest
        if span > len(self._done):
            self._grow(span)
        self._next = first + count
        return first

    def answered(self, seq: int) -> bool:
        """The response to request `seq` is pushed (after every response told before it):
        whether it overtakes a request taken before it that is still unanswered.

        Raises:
            ValueError: `seq` was never taken, or was answered already (the caller's bug).
        """
        oldest = self._oldest
        done, mask = self._done, self._mask
        if not oldest <= seq < self._next or done[seq & mask]:
            raise ValueError(f"request {seq} was not taken or was answered already "
                             f"(taken: {oldest} .. {self._next - 1} unanswered or ahead)")
        if seq != oldest:
            done[seq & mask] = 1
            return True
        oldest += 1
        end = self._next
        while oldest < end and done[oldest & mask]:
            done[oldest & mask] = 0
            oldest += 1
        self._oldest = oldest
        return False

    def _grow(self, span: int) -> None:
        size = len(self._done)
        while size < span:
            size *= 2
        done = bytearray(size)
        for seq in range(self._oldest, self._next):
            done[seq & (size - 1)] = self._done[seq & self._mask]
        self._done, self._mask = done, size - 1


class RequestServer:
    """Serves `channel` (a backend ring) in `codec`'s format with `handler`.

    `mapper` maps the refs requests name (None: the protocol names none, or the driver maps
    itself).  `concurrency`: how many requests are handled at once (1: in ring order).
    `burst`: most requests taken off the ring at once (default: the ring's size, at least 32).
    `fast_path`: answers each burst's leading requests before the handler sees the rest (ring
    order mode only: with ``concurrency`` > 1 it is not used).  `concurrent_path`: starts
    each burst's requests it can serve and reports them complete (``concurrency`` > 1 only).
    """

    def __init__(self, channel: BackRingChannel, codec: SlotCodec, handler: Handler, *,
                 mapper: GrantMapper | None = None, concurrency: int = 1,
                 burst: int | None = None, fast_path: FastPath | None = None,
                 concurrent_path: ConcurrentFastPath | None = None) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if channel.engine.layout.slot_size != codec.layout.slot_size:
            raise ConfigError(f"the ring's layout {channel.engine.layout.name} does not match "
                              f"the codec's {codec.layout.name}")
        self.channel = channel
        self.codec = codec
        self.handler = handler
        self.mapper = mapper
        self.concurrency = concurrency
        self.burst = burst or max(32, channel.engine.entries)
        self.fast_path = fast_path
        self.concurrent_path = concurrent_path if concurrency > 1 else None
        if self.concurrent_path is not None:
            need = codec.layout.slot_size * self.burst
            path = self.concurrent_path
            if min(len(path.rest), len(path.out), len(path.back)) < need or min(
                    len(path.rest_seqs), len(path.seqs), len(path.back_seqs)) < self.burst:
                raise ConfigError(f"the concurrent fast path's buffers hold fewer than the "
                                  f"burst of {self.burst} requests")
        self.stats = ServerStats()
        self._helper = _native.implementations()[_native.IMPLEMENTATION].slots
        size = codec.layout.slot_size
        self._in = bytearray(size * self.burst)
        self._out = bytearray(size * self.burst)
        self._out_view = memoryview(self._out)

    async def run(self) -> None:
        """Serve until the ring breaks or is closed.

        Raises:
            anyio.BrokenResourceError: the frontend broke the ring protocol or went away
                (chained from `RemoteProtocolError` / `PeerGoneError`).
            anyio.ClosedResourceError: the channel was closed locally.
            RemoteProtocolError: a malformed request in a protocol without an error status.
            Exception: whatever the handler raised (not a `RequestError`): a driver bug.
        """
        if self.concurrency == 1:
            await self._run_in_order()
        else:
            await self._run_concurrent()

    # ------------------------------------------------------------------ in ring order

    async def _run_in_order(self) -> None:
        channel, codec = self.channel, self.codec
        slot = codec.layout.slot_size
        inbuf, out = self._in, self._out_view
        stats = self.stats
        fast = self.fast_path
        while True:
            count = await channel.receive_into(inbuf, self.burst)
            done = fast(inbuf, count, out) if fast is not None else 0
            if not 0 <= done <= count:
                raise ConfigError(f"the fast path answered {done} of {count} requests")
            stats.fast += done
            pushed = 0
            for i, request in enumerate(self._incoming(count, done) if done < count else (), done):
                await self._answer_into(request, out, i * slot)
                if request.urgent:
                    self._push(pushed, i + 1)
                    pushed = i + 1
            stats.requests += count
            if pushed < count:
                self._push(pushed, count)

    def _push(self, start: int, stop: int) -> None:
        """Push the responses written at positions `start` .. `stop` - 1 of the output."""
        slot = self.codec.layout.slot_size
        self.channel.send_from_nowait(self._out_view[start * slot:stop * slot], stop - start)
        self.stats.pushes += 1

    # ------------------------------------------------------------------ concurrently

    async def _run_concurrent(self) -> None:
        channel = self.channel
        slot = self.codec.layout.slot_size
        limiter = anyio.CapacityLimiter(self.concurrency)
        ready: list[bytes] = []
        wake = anyio.Event()
        outbuf = bytearray(slot * self.burst)
        order, stats = AnswerOrder(self.burst + self.concurrency), self.stats

        async def one(request: IncomingRequest, seq: int, limited: bool = True) -> None:
            try:
                response = bytearray(slot)
                await self._answer_into(request, response, 0)
                ready.append(bytes(response))   # pushed in this order
                if order.answered(seq):
                    stats.reordered += 1
                wake.set()
            finally:
                if limited:
                    limiter.release_on_behalf_of(request)

        async def responder() -> None:
            nonlocal wake
            while True:
                await wake.wait()
                wake = anyio.Event()
                await anyio.lowlevel.checkpoint()  # let handlers finishing now join the push
                while ready:
                    batch = ready[:self.burst]
                    del ready[:len(batch)]
                    for i, response in enumerate(batch):
                        outbuf[i * slot:(i + 1) * slot] = response
                    channel.send_from_nowait(memoryview(outbuf)[:len(batch) * slot],
                                             len(batch))
                    self.stats.pushes += 1

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(responder)
                if self.concurrent_path is None:
                    await self._dispatch(tg, limiter, order, one)
                else:
                    await _PathDriver(self, self.concurrent_path, tg, limiter, order,
                                      one).run()
        except BaseExceptionGroup as group:
            raise _first(group) from None

    async def _dispatch(self, tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter,
                        order: AnswerOrder, one: Callable[..., Coroutine[Any, Any, None]]
                        ) -> None:
        channel = self.channel
        while True:
            count = await channel.receive_into(self._in, self.burst)
            first = order.taken(count)
            await self._start(tg, limiter, one, self._incoming(count), range(first, first + count))
            self.stats.requests += count

    @staticmethod
    async def _start(tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter,
                     one: Callable[..., Coroutine[Any, Any, None]],
                     requests: Sequence[IncomingRequest], seqs: Sequence[int]) -> None:
        for request, seq in zip(requests, seqs, strict=True):
            await limiter.acquire_on_behalf_of(request)
            tg.start_soon(one, request, seq)

    # ------------------------------------------------------------------ both

    def _incoming(self, count: int, start: int = 0,
                  buf: bytearray | None = None) -> list[IncomingRequest]:
        """Slots `start` .. `count` - 1 of the burst in the input buffer (or in `buf`) as
        requests (ids, operations and refs read in one call each)."""
        codec, helper = self.codec, self._helper
        slot = codec.layout.slot_size
        size = codec.layout.request_size
        if buf is None:
            buf = self._in
        if start:
            buf = buf[start * slot:count * slot]
            count -= start
        ids = gather(buf, count, slot, codec.request_id, helper)
        ops: Sequence[int | None] = (gather(buf, count, slot, codec.operation, helper)
                                     if codec.operation is not None else [None] * count)
        counts, refs = gather_refs(codec, buf, count, helper)
        requests = []
        pos = 0
        for i in range(count):
            n = counts[i]
            fault = None
            if n < 0:
                fault = (f"{codec.layout.name}: request {ids[i]} names more grant refs than "
                         f"the {codec.refs.maximum if codec.refs else 0} that fit")
                n = 0
            requests.append(IncomingRequest(codec, self.mapper, buf[i * slot:i * slot + size],
                                            ids[i], ops[i], refs[pos:pos + n], fault))
            pos += n
        return requests

    async def _answer_into(self, request: IncomingRequest, out: bytearray | memoryview,
                           base: int) -> None:
        """Run the handler for `request` and write its response at `base` of `out`."""
        if not await _answer(self.codec, self.handler, request, out, base):
            self.stats.refused += 1


class _PathDriver:
    """A concurrent server's dispatch with a `ConcurrentFastPath`: each burst offered to the
    path first, the rest to handler tasks; a reaper task pushes the path's answers as it
    reports them and gives its hand-backs to handler tasks."""

    def __init__(self, server: RequestServer, path: ConcurrentFastPath,
                 tg: anyio.abc.TaskGroup, limiter: anyio.CapacityLimiter, order: AnswerOrder,
                 one: Callable[..., Coroutine[Any, Any, None]]) -> None:
        self.server, self.path, self.tg, self.limiter, self.one = server, path, tg, limiter, one
        self.order = order
        self.space = anyio.Event()

    async def run(self) -> None:
        server, path = self.server, self.path
        channel, stats = server.channel, server.stats
        inbuf = server._in
        slot = server.codec.layout.slot_size
        view = memoryview(inbuf)
        self.tg.start_soon(self._reaper)
        while True:
            count = await channel.receive_into(inbuf, server.burst)
            seq = self.order.taken(count)
            stats.requests += count
            start = 0
            while start < count:
                left = count - start
                burst = inbuf if not start else view[start * slot:count * slot]
                consumed, rest, stop = path.submit(burst, left, seq + start)  # type: ignore[arg-type]
                space = self.space  # before any await: a reap from now on sets it
                if not 0 <= rest <= consumed <= left:
                    raise ConfigError(f"the concurrent fast path consumed {consumed} of {left} "
                                      f"requests with {rest} left to the handler")
                stats.fast += consumed - rest
                if rest:
                    await server._start(self.tg, self.limiter, self.one,
                                        server._incoming(rest, buf=path.rest),
                                        path.rest_seqs[0:rest])
                start += consumed
                if stop == 1:
                    await server._start(self.tg, self.limiter, self.one,
                                        server._incoming(count, start),
                                        range(seq + start, seq + count))
                    break
                if stop == 2 and start < count:
                    await space.wait()

    async def _reaper(self) -> None:
        server, path = self.server, self.path
        channel, stats = server.channel, server.stats
        slot = server.codec.layout.slot_size
        cap = server.burst
        out = memoryview(path.out)
        fd = path.fileno()
        while True:
            await anyio.wait_readable(fd)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(fd)
            while True:
                answered, back = path.reap(cap)
                if answered:
                    channel.send_from_nowait(out[:answered * slot], answered)
                    stats.pushes += 1
                    seqs, told = path.seqs, self.order.answered
                    for k in range(answered):
                        if told(seqs[k]):
                            stats.reordered += 1
                if back:
                    stats.fast -= back
                    stats.handed_back += back
                    back_seqs = path.back_seqs
                    for k, request in enumerate(server._incoming(back, buf=path.back)):
                        self.tg.start_soon(self.one, request, back_seqs[k], False)
                if answered or back:
                    self.space.set()
                    self.space = anyio.Event()
                if answered + back < cap:
                    break


async def _answer(codec: SlotCodec, handler: Handler, request: IncomingRequest,
                  out: bytearray | memoryview, base: int) -> bool:
    """Run `handler` for `request` and write its response, zero-padded to a whole slot, at
    `base` of `out`; release the request's mappings.  False: it was refused (`RequestError`)
    and got the codec's error response."""
    size = codec.layout.response_size
    slot = codec.layout.slot_size
    try:
        response = await handler(request)
        length = len(response) if not isinstance(response, memoryview) else response.nbytes
        if length > size:
            raise ConfigError(f"{codec.layout.name}: the handler answered {length} bytes, "
                              f"a response is {size}")
        out[base:base + length] = response
        if length < slot:
            out[base + length:base + slot] = bytes(slot - length)
        return True
    except RequestError as exc:
        if not codec.can_refuse:
            raise RemoteProtocolError(f"{codec.layout.name}: request {request.id}: "
                                      f"{exc.reason}") from exc
        out[base:base + slot] = bytes(slot)
        codec.encode_error(request.slot, out, base)
        return False
    finally:
        await request._release()


async def answer_slot(codec: SlotCodec, handler: Handler,
                      slot: bytes | bytearray | memoryview, *,
                      mapper: GrantMapper | None = None) -> bytearray:
    """Serve one request slot as a `RequestServer` would -- ids and refs read through `codec`,
    pages mapped through `mapper` and released before the answer, a `RequestError` answered
    with the codec's error response -- without a ring; return the response.  For unit tests of
    a handler.

    Raises: what the handler raises (other than `RequestError`).
    """
    size = codec.layout.request_size
    copy = bytearray(codec.layout.slot_size)
    copy[:len(slot)] = slot
    fault = None
    try:
        refs = codec.refs_of(copy)
    except RequestError as exc:
        refs, fault = [], exc.reason
    operation = codec.operation.read(copy) if codec.operation is not None else None
    request = IncomingRequest(codec, mapper, copy[:size], codec.request_id.read(copy),
                              operation, refs, fault)
    out = bytearray(codec.layout.slot_size)
    await _answer(codec, handler, request, out, 0)
    return out[:codec.layout.response_size]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a group of handler tasks: its first leaf that is not a
    cancellation (the others were cancelled because of it)."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            todo[:0] = exc.exceptions
        else:
            leaves.append(exc)
    cancelled = anyio.get_cancelled_exc_class()
    return next((e for e in leaves if not isinstance(e, cancelled)), leaves[0])
