"""The block frontend's I/O engine: byte-range calls in, blkif requests out, responses matched.

`BlockClient` turns ``read``/``write``/``flush``/``discard`` on byte ranges into blkif requests
over a pool of pages already granted to the backend, and completes them from the responses the
ring delivers.  It knows nothing of rings or event channels: it hands each encoded 112-byte
request to an async `send` callable (which waits for a free slot, pushes and notifies) and is
fed every response through `deliver`.  That makes it testable against the backend's
`BlockService` directly, and the device layer wires it to a real ring.

Large transfers are split into requests of at most 11 segments, or, when the backend offers
``feature-max-indirect-segments``, into INDIRECT requests of up to that many segments whose
segment list lives in one more pool page.  Each segment is one pool page (sectors 0..n-1 of
it).  The pieces of a transfer are in flight together, bounded by the pool and the ring.

The pool is reused across requests, so its grants stay valid; with ``feature-persistent`` the
backend keeps them mapped, without it the backend maps them per request.  Responses are never
trusted: an id that is not in flight, an operation that does not match the request, or a status
outside BLKIF_RSP_* is a `RemoteProtocolError` that poisons the client and fails every waiter.

Besides one call per transfer (each in its own task for several in flight), `submit` takes a
batch of reads and writes at once, like io_uring or libaio at an I/O depth: their requests are
put on the ring together and published with one push (one doorbell at most), and their answers
are gathered together; the pool bounds how many are in flight, the rest follow as pages free.

With ``verify_reads`` the client also checks that an OKAY read really wrote its pages: the
first 8 bytes of every sector of a read's pages are stamped with a random canary before the
request goes out, and a sector of the copied-out data that still starts with it raises
`StaleReadError` (a few microseconds per MiB: two strided copies of 8 bytes per sector).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple

import anyio

from ringkit import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from ringkit.proto import blkif
from ringkit.proto.blkif import Op, Status

from .errors import BlockIOError, BlockNotSupportedError, StaleReadError

PAGE = blkif.PAGE_SIZE
SECTOR = blkif.SECTOR_SIZE
_NO_SEGMENTS = blkif.SegmentArray([], b"", b"")
_CANARY_SIZE = 8
_WORDS_PER_SECTOR = SECTOR // _CANARY_SIZE  # stride of the sector heads in a 'Q' view
STALE_RECHECK_SECONDS = 0.5
"""With ``verify_reads``: how long after finding unwritten sectors the pages are looked at once
more, to tell data that arrives late from data that never arrives."""


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """What the backend advertised about the disk and the features both ends agreed on."""

    sectors: int
    """Disk size in 512-byte sectors (``sectors``)."""
    sector_size: int = SECTOR
    """Logical sector size in bytes (``sector-size``): I/O must be aligned to it."""
    readonly: bool = False
    """``info`` has VDISK_READONLY (or ``mode`` is ``r``)."""
    max_indirect_segments: int = 0
    """``feature-max-indirect-segments`` (0: direct requests only)."""
    flush: bool = False
    """``feature-flush-cache``."""
    barrier: bool = False
    """``feature-barrier``."""
    discard: bool = False
    """``feature-discard``."""
    discard_granularity: int = 0
    discard_alignment: int = 0
    persistent: bool = False
    """Both ends wrote ``feature-persistent = 1``."""

    @property
    def size(self) -> int:
        """Disk size in bytes."""
        return self.sectors * SECTOR


class ReadOp(NamedTuple):
    """A read in a `BlockClient.submit` batch: ``len(buffer)`` bytes at byte `offset` into
    `buffer` (writable)."""

    offset: int
    buffer: memoryview | bytearray


class WriteOp(NamedTuple):
    """A write in a `BlockClient.submit` batch: `data` at byte `offset`."""

    offset: int
    data: bytes | bytearray | memoryview


SendMany = Callable[[Sequence[bytearray]], Awaitable[int]]
"""Queue the leading encoded requests of a list on one ring with one push; return how many
(at least one).  A cancellation may land only before anything was queued."""


class _Waker:
    """Who waits for answers: one request's caller, or a whole `submit` batch (one event per
    wave of answers, not one per request)."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()

    async def wait(self) -> None:
        """Wait for the next answer (or poisoning), then be ready for the one after."""
        await self.event.wait()
        self.event = anyio.Event()


class _Pending:
    """One request in flight: what it was, its answer, and the slot it is encoded into (the
    request is encoded there once and the ring copies it from there).  `submit` reuses them
    (and their slots) from one request to the next."""

    __slots__ = ("answered", "operation", "orphan_pages", "rid", "sector", "slot", "status",
                 "waker")

    def __init__(self) -> None:
        self.slot = bytearray(blkif.REQUEST_SIZE)
        self.arm(0, 0, 0, None)

    def arm(self, rid: int, operation: int, sector: int, waker: _Waker | None) -> None:
        """Make this the record of a new request (woken through `waker`, or its own)."""
        self.rid = rid
        self.operation = operation
        self.sector = sector
        self.status: int | None = None
        self.answered = False
        """Answered, or abandoned by a poisoned client (`status` None then)."""
        self.waker = waker or _Waker()
        self.orphan_pages: Sequence[int] | None = None
        """Pages of a request whose caller was cancelled: freed only when the answer comes,
        since until then the backend may still write into them."""

    def wake(self) -> None:
        self.answered = True
        self.waker.event.set()


SPARE_PENDING = 256
"""Most request records a client keeps for reuse."""


class _Flight(NamedTuple):
    """One request of a `submit` batch: which op it serves, and what it needs once answered."""

    op_index: int
    op: Op
    data: memoryview
    pages: Sequence[int]
    pending: _Pending
    canary: bytes | None


class PoolBuffer:
    """Granted pool pages a `BlockClient` lends its caller (`BlockClient.lend`).

    `view` is a writable memoryview of them (valid until the `lend` block ends; do not keep
    it, nor slices of it, past that: the pages go back to the pool and carry other requests'
    data).  `pages` are their pool indices.
    """

    __slots__ = ("_held", "_owner", "pages", "released", "view")

    def __init__(self, owner: BlockClient, view: memoryview, pages: range) -> None:
        self._owner = owner
        self.view = view
        self.pages = pages
        self.released = False
        self._held: list[tuple[_Pending, range]] = []

    def _release(self, client: BlockClient) -> None:
        """Give the pages back, except those of requests still in flight: their answers do."""
        if self.released:
            return
        self.released = True
        with contextlib.suppress(BufferError):   # the caller kept a slice: its problem
            self.view.release()
        free = bytearray(b"\x01") * len(self.pages)
        for pending, sub in self._held:
            if not pending.answered:
                pending.orphan_pages = [*(pending.orphan_pages or ()), *sub]
                free[sub.start - self.pages.start:sub.stop - self.pages.start] = \
                    bytes(len(sub))
        if all(free):
            client._give_pages(self.pages)
        else:
            client._give_pages([page for page, keep in zip(self.pages, free, strict=True)
                                if keep])


class BlockClient:
    """Byte-range block I/O over blkif requests (see the module docstring).

    `pool` is a writable view of `len(refs)` granted pages; `send(slot)` queues one encoded
    request on the ring (it must not keep the slot buffer past the request's answer), and
    `send_many(slots)`, when given, queues the leading ones of a list with one push and says
    how many (without it a batch is sent one request at a time).  Every I/O method raises:

        ConfigError: offset/length not aligned to `info.sector_size` or outside the disk, a
            write to a read-only disk.
        BlockIOError: the backend answered BLKIF_RSP_ERROR.
        BlockNotSupportedError: the backend does not offer the operation (or said EOPNOTSUPP).
        RemoteProtocolError: the backend sent a hostile response; the client is poisoned.
        PeerGoneError: the device went away while requests were in flight.
        StaleReadError: (`verify_reads` only) a read answered OKAY left sectors unwritten.

    `send` must either queue the request and return, or raise without queuing it: a request
    queued by a `send` that then raised (e.g. cancelled after the push) would be taken for
    unsent, and its pages reused while the backend still writes into them.  `FrontQueues.send`
    has no checkpoint after its push.
    """

    def __init__(self, send: Callable[[bytearray], Awaitable[None]], pool: memoryview,
                 refs: Sequence[int], info: DiskInfo, *, handle: int = 0,
                 verify_reads: bool = False, send_many: SendMany | None = None) -> None:
        if len(pool) < len(refs) * PAGE or not refs:
            raise ConfigError("the page pool must hold one page per grant ref")
        self._send = send
        self._send_many = send_many or self._send_first
        self._pool = pool
        self._refs = tuple(refs)
        self.info = info
        self.handle = handle
        # pool pages: 1 = free; runs of free pages are found with bytearray.find (C speed), so
        # a request usually gets contiguous pages and its data moves with one copy
        self._freemap = bytearray(b"\x01") * len(refs)
        self._free_count = len(refs)
        self._ones = b"\x01" * len(refs)
        self._zeros = bytes(len(refs))
        self._pool_waiters: list[anyio.Event] = []
        # the blkif_request_segment of each pool page covering the whole page (sectors 0..7),
        # so an indirect segment list for contiguous pages is one slice
        self._full_page_segments = blkif.pack_segments(
            list(self._refs), 0, blkif.SECTORS_PER_PAGE - 1, blkif.SECTORS_PER_PAGE - 1)
        self._pending: dict[int, _Pending] = {}
        self._spare: list[_Pending] = []
        self._ids = itertools.count(1)
        self._error: BaseException | None = None
        # largest request: 11 direct segments, or an indirect request that fits in the pool
        # together with its segment-list pages
        segments = min(blkif.MAX_SEGMENTS_PER_REQUEST, len(refs))
        indirect = min(info.max_indirect_segments,
                       blkif.MAX_INDIRECT_PAGES_PER_REQUEST * blkif.SEGMENTS_PER_INDIRECT_PAGE)
        while indirect > segments and indirect + blkif.indirect_pages_for(indirect) > len(refs):
            indirect -= 1
        self._max_segments = max(segments, indirect)
        self._canary: bytes | None = None
        self._canary_heads = memoryview(b"")
        if verify_reads:
            self._new_canary()

    # ------------------------------------------------------------------ public API

    @property
    def verify_reads(self) -> bool:
        """Whether reads are checked for sectors the backend did not write (see the module
        docstring)."""
        return self._canary is not None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    @property
    def max_request_bytes(self) -> int:
        """Largest transfer one request carries."""
        return self._max_segments * PAGE

    async def read(self, offset: int, length: int) -> bytes:
        """Read `length` bytes from byte `offset` of the disk."""
        out = bytearray(length)
        await self.read_into(offset, memoryview(out))
        return bytes(out)

    async def read_into(self, offset: int, buffer: memoryview | bytearray) -> None:
        """Read ``len(buffer)`` bytes from byte `offset` of the disk into `buffer` (writable)."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view), "read")
        await self._transfer(Op.READ, offset, view)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at byte `offset`; returns once the backend has it in the image."""
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view), "write")
        if self.info.readonly:
            raise ConfigError("the disk is read-only")
        await self._transfer(Op.WRITE, offset, view)

    async def flush(self) -> None:
        """Make every write answered so far durable (one FLUSH_DISKCACHE request).  On a
        read-only disk there is nothing to flush.

        Raises:
            BlockNotSupportedError: the backend does not offer ``feature-flush-cache``.
        """
        self._check_alive()
        if self.info.readonly:
            return
        if not self.info.flush:
            raise BlockNotSupportedError("the backend offers no cache flush",
                                         operation=Op.FLUSH_DISKCACHE)
        rid = self._next_id()
        await self._roundtrip(blkif.ReadWriteRequest(Op.FLUSH_DISKCACHE, rid, self.handle, 0,
                                                     _NO_SEGMENTS), 0)

    async def discard(self, offset: int, length: int) -> None:
        """Tell the backend the range is unused; it then reads back as zeros on ringkit's
        backend (other backends may leave any content)."""
        self._check_range(offset, length, "discard")
        if self.info.readonly:
            raise ConfigError("the disk is read-only")
        if not self.info.discard:
            raise BlockNotSupportedError("the backend offers no discard", operation=Op.DISCARD)
        if length == 0:
            return
        sector = offset // SECTOR
        rid = self._next_id()
        await self._roundtrip(blkif.DiscardRequest(rid, self.handle, sector, length // SECTOR,
                                                   False), sector)

    async def submit(self, ops: Sequence[ReadOp | WriteOp], *, depth: int | None = None
                     ) -> list[BlockIOError | None]:
        """Run a batch of reads and writes together and wait for all of them.

        Their requests go onto the ring together, published with one push (one doorbell at
        most) per run that fits the ring, the page pool and `depth` (most requests in flight;
        None: only the ring and the pool bound it); as answers come back, more follow.
        The backend may answer in any order, and ops of one batch have no order among
        themselves (as with io_uring: do not read back in the batch what it writes).  Returns,
        for each op, None or the `BlockIOError` (`BlockNotSupportedError`, `StaleReadError`)
        the same call alone would have raised.

        Raises:
            ConfigError: an op is out of range, misaligned, or writes a read-only disk
                (checked before anything is sent).
            RemoteProtocolError, PeerGoneError: as the other methods; the batch is abandoned.
        """
        if depth is not None and depth < 1:
            raise ConfigError(f"depth must be at least 1, got {depth}")
        limit = len(ops) * self._max_segments if depth is None else depth  # enough for all
        chunks = self._plan(ops)
        results: list[BlockIOError | None] = [None] * len(ops)
        flights: list[_Flight] = []   # sent, not yet answered (or not yet looked at)
        unsent: list[_Flight] = []    # prepared and registered, not yet on the ring
        answered: list[_Flight] = []  # answered, being landed
        waker = _Waker()              # one for the batch: woken per wave of answers
        step = 0
        try:
            while step < len(chunks) or flights:
                while step < len(chunks):
                    index, op, offset, data = chunks[step]
                    need = self._pages_for(len(data))
                    if (self._free_count < need or len(flights) + len(unsent) >= limit) \
                            and (flights or unsent):
                        break  # send what is ready; answers will free pages and room
                    pages = await self._take_pages(need)
                    unsent.append(self._launch(index, op, offset, data, pages, waker))
                    step += 1
                while unsent:
                    sent = await self._send_many([flight.pending.slot for flight in unsent])
                    flights += unsent[:sent]
                    del unsent[:sent]
                if not any(flight.pending.answered for flight in flights):
                    await waker.wait()
                answered = [flight for flight in flights if flight.pending.answered]
                flights = [flight for flight in flights if not flight.pending.answered]
                while answered:
                    flight = answered.pop(0)
                    try:
                        await self._land(flight.op, flight.data, flight.pages, flight.pending,
                                         flight.canary)
                    except BlockIOError as exc:
                        if results[flight.op_index] is None:
                            results[flight.op_index] = exc
                    self._recycle(flight.pending)
        except BaseException:
            for flight in answered:
                self._abandon(flight.pending, flight.pages, sent=True)
            for flight in flights:
                self._abandon(flight.pending, flight.pages, sent=True)
            for flight in unsent:
                self._abandon(flight.pending, flight.pages, sent=False)
            raise
        return results

    @property
    def max_lend_bytes(self) -> int:
        """Largest `lend`: the pool, less the segment-list pages one request may need."""
        reserve = blkif.indirect_pages_for(self._max_segments) \
            if self._max_segments > blkif.MAX_SEGMENTS_PER_REQUEST else 0
        return (len(self._refs) - reserve) * PAGE

    @asynccontextmanager
    async def lend(self, length: int) -> AsyncIterator[PoolBuffer]:
        """Lend the caller `length` bytes of granted pool pages, contiguous, for I/O without a
        copy: `read_lent` has the backend write straight into them, `write_lent` has it read
        straight from them.  Waits for a free run of pages; they go back to the pool when the
        block ends (or, for a request the caller abandoned in flight, when it is answered,
        since the backend may still write into them until then).

        Raises:
            ConfigError: `length` is not a positive multiple of the sector size, or exceeds
                `max_lend_bytes`.
        """
        align = self.info.sector_size
        if length <= 0 or length % align or length % SECTOR:
            raise ConfigError(f"lend of {length} bytes: must be a positive multiple of the "
                              f"{align}-byte sector size")
        if length > self.max_lend_bytes:
            raise ConfigError(f"lend of {length} bytes: the pool lends at most "
                              f"{self.max_lend_bytes}")
        count = -(-length // PAGE)
        pages = await self._take_run(count)
        buffer = PoolBuffer(self, self._pool[pages.start * PAGE:pages.start * PAGE + length], pages)
        try:
            yield buffer
        finally:
            buffer._release(self)

    async def read_lent(self, offset: int, buffer: PoolBuffer) -> None:
        """Read ``len(buffer.view)`` bytes from byte `offset` straight into the lent pages of
        `buffer` (see `lend`): no copy; read them in `buffer.view` afterwards."""
        self._check_lent(buffer)
        self._check_range(offset, len(buffer.view), "read")
        await self._lent_transfer(Op.READ, offset, buffer)

    async def write_lent(self, offset: int, buffer: PoolBuffer) -> None:
        """Write the lent pages of `buffer` (filled through `buffer.view`) at byte `offset`:
        no copy; returns once the backend has them in the image."""
        self._check_lent(buffer)
        self._check_range(offset, len(buffer.view), "write")
        if self.info.readonly:
            raise ConfigError("the disk is read-only")
        await self._lent_transfer(Op.WRITE, offset, buffer)

    def deliver(self, response: blkif.Response) -> None:
        """Complete the request `response` answers (called by the ring's receive loop).

        Raises:
            RemoteProtocolError: unknown id, wrong operation or impossible status; the client
                is poisoned and every waiter fails with the same error.
        """
        pending = self._pending.pop(response.id, None)
        try:
            if pending is None:
                raise RemoteProtocolError(f"blkif response for id {response.id:#x}, which is "
                                          "not in flight")
            if response.operation != pending.operation:
                raise RemoteProtocolError(
                    f"blkif response for id {response.id:#x} has operation "
                    f"{response.operation}, the request was {pending.operation}")
            if response.status not in (Status.OKAY, Status.ERROR, Status.EOPNOTSUPP):
                raise RemoteProtocolError(
                    f"blkif response for id {response.id:#x} has status {response.status}, "
                    "not one of BLKIF_RSP_OKAY/ERROR/EOPNOTSUPP")
        except RemoteProtocolError as exc:
            self.fail(exc)
            if pending is not None:
                pending.wake()  # status stays None: the waiter sees the poison
                if pending.orphan_pages is not None:
                    self._give_pages(pending.orphan_pages)
            raise
        pending.status = response.status
        pending.wake()
        if pending.orphan_pages is not None:
            self._give_pages(pending.orphan_pages)

    def fail(self, exc: BaseException) -> None:
        """Poison the client with `exc` and wake every waiter (peer gone, protocol error)."""
        if self._error is None:
            self._error = exc
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.wake()
            if p.orphan_pages is not None:
                self._give_pages(p.orphan_pages)
        self._wake_pool()

    # ------------------------------------------------------------------ internals

    def _check_alive(self) -> None:
        if self._error is not None:
            if isinstance(self._error, RemoteProtocolError | PeerGoneError):
                raise type(self._error)(str(self._error)) from self._error
            raise PeerGoneError(f"block device unusable: {self._error}") from self._error

    def _check_range(self, offset: int, length: int, what: str) -> None:
        self._check_alive()
        align = self.info.sector_size
        if offset < 0 or length < 0 or offset % align or length % align:
            raise ConfigError(f"{what} of {length} bytes at offset {offset}: both must be "
                              f"non-negative multiples of the {align}-byte sector size")
        if offset + length > self.info.size:
            raise ConfigError(f"{what} of bytes {offset}..{offset + length} goes past the end "
                              f"of the {self.info.size}-byte disk")

    async def _take_pages(self, count: int) -> Sequence[int]:
        """`count` pool pages: a `range` when contiguous ones were free, else a list."""
        while self._free_count < count:
            self._check_alive()
            waiter = anyio.Event()
            self._pool_waiters.append(waiter)
            await waiter.wait()
        self._check_alive()
        freemap = self._freemap
        self._free_count -= count
        start = freemap.find(memoryview(self._ones)[:count])
        if start >= 0:
            freemap[start:start + count] = memoryview(self._zeros)[:count]
            return range(start, start + count)
        pages: list[int] = []
        pos = 0
        while len(pages) < count:
            pos = freemap.find(1, pos)
            freemap[pos] = 0
            pages.append(pos)
            pos += 1
        return pages

    async def _take_run(self, count: int) -> range:
        """`count` contiguous pool pages (waits until such a run is free)."""
        while True:
            self._check_alive()
            if self._free_count >= count:
                start = self._freemap.find(memoryview(self._ones)[:count])
                if start >= 0:
                    self._freemap[start:start + count] = memoryview(self._zeros)[:count]
                    self._free_count -= count
                    return range(start, start + count)
            waiter = anyio.Event()
            self._pool_waiters.append(waiter)
            await waiter.wait()

    def _check_lent(self, buffer: PoolBuffer) -> None:
        if buffer._owner is not self:
            raise ConfigError("the pool buffer was lent by another block client")
        if buffer.released:
            raise ConfigError("the lent pool buffer was given back already")

    async def _lent_transfer(self, op: Op, offset: int, buffer: PoolBuffer) -> None:
        pages, view = buffer.pages, buffer.view
        chunk = self._max_segments
        if len(pages) <= chunk:
            await self._lent_chunk(op, offset, buffer, pages, view)
            return
        try:
            async with anyio.create_task_group() as tg:
                for first in range(0, len(pages), chunk):
                    sub = pages[first:first + chunk]
                    tg.start_soon(self._lent_chunk, op, offset + first * PAGE, buffer, sub,
                                  view[first * PAGE:(first + chunk) * PAGE])
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _lent_chunk(self, op: Op, offset: int, buffer: PoolBuffer, pages: range,
                          data: memoryview) -> None:
        """One request on lent `pages` (their view `data`); only its segment-list pages come
        from the pool here."""
        nseg = len(pages)
        list_pages: Sequence[int] = await self._take_pages(blkif.indirect_pages_for(nseg)) \
            if nseg > blkif.MAX_SEGMENTS_PER_REQUEST else ()
        pending: _Pending | None = None
        sent = False
        try:
            request, canary = self._prepare(op, offset, data, pages, list_pages)
            pending = self._register(request, offset // SECTOR)
            await self._send(pending.slot)
            sent = True
            await pending.waker.event.wait()
            self._check_status(pending)
            if canary is not None:
                await self._check_written(data, pages, pending.sector, canary)
        except BaseException:
            if pending is not None and sent and pending.status is None \
                    and self._pending.get(pending.rid) is pending:
                # out and unanswered: the backend may still use every page of it
                pending.orphan_pages = list_pages
                buffer._held.append((pending, pages))
            else:
                if pending is not None and self._pending.get(pending.rid) is pending:
                    del self._pending[pending.rid]
                if list_pages:
                    self._give_pages(list_pages)
            raise
        if list_pages:
            self._give_pages(list_pages)

    def _give_pages(self, pages: Sequence[int]) -> None:
        freemap = self._freemap
        if isinstance(pages, range):
            freemap[pages.start:pages.stop] = memoryview(self._ones)[:len(pages)]
        else:
            for page in pages:
                freemap[page] = 1
        self._free_count += len(pages)
        self._wake_pool()

    def _wake_pool(self) -> None:
        waiters, self._pool_waiters = self._pool_waiters, []
        for waiter in waiters:
            waiter.set()

    async def _transfer(self, op: Op, offset: int, data: memoryview) -> None:
        chunk = self._max_segments * PAGE
        if len(data) <= chunk:
            await self._chunk(op, offset, data)
            return
        try:
            async with anyio.create_task_group() as tg:
                for start in range(0, len(data), chunk):
                    tg.start_soon(self._chunk, op, offset + start, data[start:start + chunk])
        except BaseExceptionGroup as group:
            # the pieces run as tasks, whose group wraps their errors: raise the first failed
            # piece's own error, as a transfer of one piece would (the rest were cancelled,
            # or failed the same way)
            raise _first_error(group) from None

    def _pages_for(self, length: int) -> int:
        """Pool pages a request of `length` bytes needs (data, and its segment-list pages)."""
        nseg = -(-length // PAGE)
        return nseg + (blkif.indirect_pages_for(nseg)
                       if nseg > blkif.MAX_SEGMENTS_PER_REQUEST else 0)

    def _plan(self, ops: Sequence[ReadOp | WriteOp]) -> list[tuple[int, Op, int, memoryview]]:
        """Check every op of a batch and cut it into requests: (op index, operation, offset,
        data) each."""
        chunk = self._max_segments * PAGE
        chunks: list[tuple[int, Op, int, memoryview]] = []
        for index, item in enumerate(ops):
            if isinstance(item, ReadOp):
                op, view = Op.READ, memoryview(item.buffer).cast("B")
                if view.readonly:
                    raise ConfigError(f"batch op {index}: the read buffer is read-only")
                self._check_range(item.offset, len(view), "read")
            elif isinstance(item, WriteOp):
                op, view = Op.WRITE, memoryview(item.data).cast("B")
                self._check_range(item.offset, len(view), "write")
                if self.info.readonly:
                    raise ConfigError("the disk is read-only")
            else:
                raise ConfigError(f"batch op {index} is {item!r}, not a ReadOp or WriteOp")
            chunks += [(index, op, item.offset + start, view[start:start + chunk])
                       for start in range(0, len(view), chunk)]
        return chunks

    async def _chunk(self, op: Op, offset: int, data: memoryview) -> None:
        if not data:
            return
        pages = await self._take_pages(self._pages_for(len(data)))
        try:
            request, canary = self._prepare(op, offset, data, pages)
        except BaseException:
            self._give_pages(pages)
            raise
        # from here on _roundtrip owns the pages, and hands them back on success
        pending = await self._roundtrip(request, offset // SECTOR, pages)
        try:
            await self._land(op, data, pages, pending, canary)
        finally:
            self._recycle(pending)

    def _launch(self, index: int, op: Op, offset: int, data: memoryview,
                pages: Sequence[int], waker: _Waker) -> _Flight:
        """Prepare and register one request of a batch (not sent yet); it owns `pages`."""
        try:
            request, canary = self._prepare(op, offset, data, pages)
            pending = self._register(request, offset // SECTOR, waker)
        except BaseException:
            self._give_pages(pages)
            raise
        return _Flight(index, op, data, pages, pending, canary)

    async def _land(self, op: Op, data: memoryview, pages: Sequence[int], pending: _Pending,
                    canary: bytes | None) -> None:
        """An answered request: check its status, move a read's data out, free its pages."""
        try:
            self._check_status(pending)
            if op == Op.READ:
                self._copy(data, pages, to_pool=False)
                if canary is not None:
                    await self._check_written(data, pages, pending.sector, canary)
        finally:
            self._give_pages(pages)

    def _prepare(self, op: Op, offset: int, data: memoryview, pages: Sequence[int],
                 list_pages: Sequence[int] | None = None
                 ) -> tuple[blkif.Request, bytes | None]:
        """Fill `pages` for one request of `data` at `offset` (a write's data, a read's
        canaries, an indirect segment list) and build the request; also return the canary a
        read was stamped with.

        `pages` are the data pages followed by the segment-list pages, unless `list_pages`
        gives those apart: then `data` is a lent view of `pages` themselves and a write's data
        is already in place."""
        nseg = -(-len(data) // PAGE)
        indirect = nseg > blkif.MAX_SEGMENTS_PER_REQUEST
        pool, refs = self._pool, self._refs
        canary: bytes | None = None     # this read's own: the client's may change meanwhile
        if op == Op.WRITE:
            if list_pages is None:
                self._copy(data, pages, to_pool=True)
        elif self._canary is not None:
            canary = self._stamp(pages, len(data))
        if isinstance(pages, range):
            grefs: Sequence[int] = refs[pages.start:pages.start + nseg]
        else:
            grefs = [refs[p] for p in pages[:nseg]]
        final_last = (len(data) - (nseg - 1) * PAGE) // SECTOR - 1
        sector = offset // SECTOR
        if not indirect:
            return blkif.ReadWriteRequest(
                op, self._next_id(), self.handle, sector,
                blkif.SegmentArray.whole_pages(list(grefs), final_last)), canary
        if isinstance(pages, range):
            # precomputed whole-page entries of these pool pages, last one adjusted
            table = bytearray(self._full_page_segments[pages.start * 8:
                                                       (pages.start + nseg) * 8])
            table[-3] = final_last  # last_sect byte of the final entry
        else:
            table = bytearray(blkif.pack_segments(list(grefs), 0,
                                                  blkif.SECTORS_PER_PAGE - 1,
                                                  final_last))
        if list_pages is None:
            list_pages = pages[nseg:]
        for j, page in enumerate(list_pages):
            part = table[j * PAGE:(j + 1) * PAGE]
            pool[page * PAGE:page * PAGE + len(part)] = part
        return blkif.IndirectRequest(op, self._next_id(), self.handle, sector, nseg,
                                     tuple(refs[p] for p in list_pages)), canary

    def _new_canary(self) -> None:
        """Pick a fresh random canary (never a run of one byte value, such as zeros)."""
        canary = os.urandom(_CANARY_SIZE)
        while len(set(canary)) < 2:
            canary = os.urandom(_CANARY_SIZE)
        self._canary = canary
        # one canary per sector of the largest request, as 'Q' words to stamp with a strided
        # copy
        sectors = self._max_segments * blkif.SECTORS_PER_PAGE
        self._canary_heads = memoryview(canary * sectors).cast("Q")

    def _stamp(self, pages: Sequence[int], length: int) -> bytes:
        """Write the canary over the first 8 bytes of every sector a read of `length` bytes
        into `pages` will fill; return the canary used."""
        canary, pool, heads = self._canary, self._pool, self._canary_heads
        assert canary is not None
        if isinstance(pages, range):
            base = pages.start * PAGE
            with pool[base:base + length].cast("Q") as words:
                words[::_WORDS_PER_SECTOR] = heads[:length // SECTOR]
            return canary
        for i in range(-(-length // PAGE)):
            n = min(PAGE, length - i * PAGE)
            base = pages[i] * PAGE
            with pool[base:base + n].cast("Q") as words:
                words[::_WORDS_PER_SECTOR] = heads[:n // SECTOR]
        return canary

    def _unwritten(self, view: memoryview, canary: bytes) -> list[int]:
        """Indices of the sectors of `view` (whole sectors) that still start with the
        canary."""
        with view.cast("Q") as words:
            heads = words[::_WORDS_PER_SECTOR].tobytes()
        found: list[int] = []
        pos = heads.find(canary)
        while pos >= 0:
            if pos % _CANARY_SIZE == 0:
                found.append(pos // _CANARY_SIZE)
                pos = heads.find(canary, pos + _CANARY_SIZE)
            else:  # straddles two sector heads: not a canary
                pos = heads.find(canary, pos + 1)
        return found

    async def _check_written(self, data: memoryview, pages: Sequence[int], sector: int,
                             canary: bytes) -> None:
        """Raise StaleReadError if sectors of a read answered OKAY still hold the canary (the
        data already copied out to `data`); look at the pages once more after a pause first,
        to tell late data from data that never came."""
        stale = self._unwritten(data, canary)
        if not stale:
            return
        await anyio.sleep(STALE_RECHECK_SECONDS)
        per_page = blkif.SECTORS_PER_PAGE
        late = []
        for index in stale:
            at = pages[index // per_page] * PAGE + (index % per_page) * SECTOR
            if self._pool[at:at + _CANARY_SIZE].tobytes() != canary:
                late.append(index)
        involved = sorted({pages[index // per_page] for index in stale})
        never = len(stale) - len(late)
        # the caller's buffer now holds canaries: should it ever be written back to the disk,
        # a later read of those sectors must not be taken for stale
        self._new_canary()
        raise StaleReadError(
            f"READ at sector {sector} was answered OKAY but {len(stale)} of its "
            f"{len(data) // SECTOR} sectors were not written by then "
            f"(sectors {_runs([sector + i for i in stale])}, pool pages {_runs(involved)}); "
            f"{len(late)} of them were written within {STALE_RECHECK_SECONDS} s after the "
            f"answer, {never} not at all",
            operation=Op.READ, sector=sector,
            stale_sectors=tuple(sector + i for i in stale),
            late_sectors=tuple(sector + i for i in late),
            pages=tuple((page, self._refs[page]) for page in involved))

    def _copy(self, data: memoryview, pages: Sequence[int], *, to_pool: bool) -> None:
        """Move `data` into (or out of) the pool pages `pages`, page i holding bytes
        ``i*4096 ..`` of it: one copy when the pages are contiguous."""
        pool = self._pool
        if isinstance(pages, range):
            base = pages.start * PAGE
            if to_pool:
                pool[base:base + len(data)] = data
            else:
                data[:] = pool[base:base + len(data)]
            return
        for i in range(-(-len(data) // PAGE)):
            page = pages[i] * PAGE
            n = min(PAGE, len(data) - i * PAGE)
            if to_pool:
                pool[page:page + n] = data[i * PAGE:i * PAGE + n]
            else:
                data[i * PAGE:i * PAGE + n] = pool[page:page + n]

    def _next_id(self) -> int:
        return next(self._ids) & 0xFFFF_FFFF_FFFF_FFFF

    def _register(self, request: blkif.Request, sector: int, waker: _Waker | None = None
                  ) -> _Pending:
        """Encode `request` into a slot and record it as in flight (not sent yet), woken
        through `waker` (default: its own)."""
        self._check_alive()
        rid = request.id
        if rid in self._pending:
            raise LocalProtocolError(f"request id {rid:#x} still in flight")
        # an INDIRECT request is answered with its inner operation, as Linux's blkback does
        operation = (request.indirect_op if isinstance(request, blkif.IndirectRequest)
                     else request.operation)
        pending = self._spare.pop() if self._spare else _Pending()
        pending.arm(rid, operation, sector, waker)
        blkif.encode_request_into(pending.slot, 0, request)
        self._pending[rid] = pending
        return pending

    def _recycle(self, pending: _Pending) -> None:
        """Keep an answered and landed request's record for the next request."""
        if pending.answered and pending.orphan_pages is None \
                and len(self._spare) < SPARE_PENDING:
            self._spare.append(pending)

    def _abandon(self, pending: _Pending, pages: Sequence[int] | None, *, sent: bool) -> None:
        """A request whose caller gives up: forget it and free its pages -- unless it is out
        and unanswered, when the backend may still write into them: its answer frees them."""
        rid = pending.rid
        if sent and pending.status is None and self._pending.get(rid) is pending:
            pending.orphan_pages = pages
            return
        if self._pending.get(rid) is pending:
            del self._pending[rid]
        if pages is not None:
            self._give_pages(pages)

    async def _send_first(self, slots: Sequence[bytearray]) -> int:
        """`send_many` for a client given only `send`: one request at a time."""
        await self._send(slots[0])
        return 1

    async def _roundtrip(self, request: blkif.Request, sector: int,
                         pages: Sequence[int] | None = None) -> _Pending:
        """Send one request and wait for its answer; return it (its status is not checked
        when `pages` are given: `_land` does that and frees them).

        `pages` (the request's pool pages) go back to the caller only on an answer; on any
        error they are freed here, except when the request is out and the caller was
        cancelled: the backend may still write into them, so its answer frees them.
        """
        pending: _Pending | None = None
        sent = False
        try:
            pending = self._register(request, sector)
            await self._send(pending.slot)
            sent = True
            await pending.waker.event.wait()
            if pages is None:
                self._check_status(pending)
        except BaseException:
            if pending is not None:
                self._abandon(pending, pages, sent=sent)
            elif pages is not None:
                self._give_pages(pages)
            raise
        return pending

    def _check_status(self, pending: _Pending) -> None:
        status = pending.status
        if status is None:
            self._check_alive()
            raise PeerGoneError("block request abandoned")
        if status == Status.OKAY:
            return
        name = Op(pending.operation).name if pending.operation in Op._value2member_map_ \
            else str(pending.operation)
        if status == Status.EOPNOTSUPP:
            raise BlockNotSupportedError(f"backend does not support {name}",
                                         operation=pending.operation, sector=pending.sector)
        raise BlockIOError(f"{name} at sector {pending.sector} failed (BLKIF_RSP_ERROR)",
                           operation=pending.operation, sector=pending.sector, status=status)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside (possibly nested) `group`, noting how many more there were."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    # a KeyboardInterrupt or SystemExit among them wins: it must not hide in a note
    first = next((exc for exc in leaves if not isinstance(exc, Exception)), leaves[0])
    if len(leaves) > 1:
        others = [exc for exc in leaves if exc is not first]
        first.add_note(f"{len(others)} other request(s) of the same transfer failed too: "
                       + "; ".join(f"{type(e).__name__}: {e}" for e in others[:3]))
    return first


def _runs(numbers: Sequence[int]) -> str:
    """Sorted integers as runs: "3-5,9"."""
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = n
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


__all__ = ("SPARE_PENDING", "STALE_RECHECK_SECONDS", "BlockClient", "DiskInfo", "PoolBuffer",
           "ReadOp", "SendMany", "WriteOp")
