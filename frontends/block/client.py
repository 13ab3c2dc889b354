"""The block frontend's I/O engine: byte-range calls in, blkif requests out, answers landed.

`BlockClient` turns ``read``/``write``/``flush``/``discard`` on byte ranges into blkif requests
on the request-queue layer (`ringkit.requests.RequestQueue`), which owns the ids, the in-flight
window, the `GrantPool` of pages granted to the backend, matching, cancellation and
disconnects.  What is left here is blkif: cutting transfers into requests, the segment lists,
moving data into and out of the pool's pages, and checking what came back.

Large transfers are split into requests of at most 11 segments, or, when the backend offers
``feature-max-indirect-segments``, into INDIRECT requests of up to that many segments whose
segment list lives in one more pool page.  Each segment is one pool page (sectors 0..n-1 of
it).  The pieces of a transfer are in flight together, bounded by the pool and the ring.

The pool is reused across requests, so its grants stay valid; with ``feature-persistent`` the
backend keeps them mapped, without it the backend maps them per request.  Responses are never
trusted: an id that is not in flight (the layer's check), an operation that does not match the
request or a status outside BLKIF_RSP_* (this module's `check_response`) is a
`RemoteProtocolError` that fails the queue and every waiter.

Besides one call per transfer (each in its own task for several in flight), `submit` takes a
batch of reads and writes at once, like io_uring or libaio at an I/O depth: their requests are
put on the ring together and published with one push (one doorbell at most), and their answers
are gathered together; the pool bounds how many are in flight, the rest follow as pages free.
A batch of plain reads and writes (direct or INDIRECT requests alike), on a device with one
ring, runs without Python per request when the compiled helper is there (`fast_path`, on by
default): the C shadow table of `ringkit.requests.shadow` writes its requests and matches its
answers, one call each way; a single `read_into` or `write` goes the same way, as a batch of
one; every other batch, and ABI mode, takes the Python path.

With ``verify_reads`` the client also checks that an OKAY read really wrote its pages: the
first 8 bytes of every sector of a read's pages are stamped with a random canary before the
request goes out, and a sector of the copied-out data that still starts with it raises
`StaleReadError` (a few microseconds per MiB: two strided copies of 8 bytes per sector).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio

from ringkit import ConfigError, PeerGoneError, RemoteProtocolError
from ringkit.channel import FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.blkif import Op, Status
from ringkit.requests import GrantPool, Request, RequestQueue
from ringkit.requests import shadow as shadow_table

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


_RESPONSE = struct.Struct("<QBxh")  # id, operation, status (the head of a response slot)


def check_response(request: Request) -> None:
    """The `RequestQueue` check of every blkif response: the operation must be the request's
    (an INDIRECT request is answered with its inner operation, as Linux's blkback does) and
    the status one of BLKIF_RSP_OKAY/ERROR/EOPNOTSUPP.

    Raises:
        RemoteProtocolError: either is not; the queue is failed.
    """
    _, operation, status = _RESPONSE.unpack_from(request.response)
    slot = request.slot
    expected = slot[1] if slot[0] == Op.INDIRECT else slot[0]
    problem = blkif.response_problem(request.id, operation, status, expected)
    if problem is not None:
        raise RemoteProtocolError(problem)


class _Flight(NamedTuple):
    """One request of a `submit` batch (its `Request.tag`): which op it serves, and what it
    needs once answered."""

    op_index: int
    op: Op
    data: memoryview
    sector: int
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
        self._held: list[tuple[Request, int, range]] = []
        """Requests on these pages whose callers gave up while they were in flight: (record,
        its generation then, the pages it uses)."""

    def _release(self, client: BlockClient) -> None:
        """Give the pages back -- except those of requests still in flight: they go back with
        those requests, when answered (the backend may write into them until then)."""
        if self.released:
            return
        self.released = True
        with contextlib.suppress(BufferError):   # the caller kept a slice: its problem
            self.view.release()
        keep = bytearray(b"\x01") * len(self.pages)
        for request, generation, sub in self._held:
            if request.generation == generation and request.in_flight:
                client.queue.adopt_pages(request, sub)
                keep[sub.start - self.pages.start:sub.stop - self.pages.start] = \
                    bytes(len(sub))
        if all(keep):
            client.pool.give(self.pages)
        else:
            client.pool.give([page for page, mine in zip(self.pages, keep, strict=True)
                              if mine])


class BlockClient:
    """Byte-range block I/O over blkif requests (see the module docstring).

    `channels` are the device's rings (one per queue), `pool` the pages granted to the backend
    for data and segment lists, `info` what the backend advertised.  Run `run` in a task while
    connected (it receives and matches the responses) and `fail` the client when the
    connection ends.  `window`: most requests in flight per ring (default: the ring's size).
    `fast_path`: run `submit`'s usual batches through the C shadow table when it is available
    (see the module docstring; False: always the Python path, the reference);
    `shadow_module`: the cffi module whose C that table uses (default: the compiled helper;
    tests pass a differently built one).
    Every I/O method raises:

        ConfigError: offset/length not aligned to `info.sector_size` or outside the disk, a
            write to a read-only disk.
        BlockIOError: the backend answered BLKIF_RSP_ERROR.
        BlockNotSupportedError: the backend does not offer the operation (or said EOPNOTSUPP).
        RemoteProtocolError: the backend sent a hostile response; the client is failed.
        PeerGoneError: the device went away while requests were in flight.
        StaleReadError: (`verify_reads` only) a read answered OKAY left sectors unwritten.
    """

    def __init__(self, channels: Sequence[FrontRingChannel], pool: GrantPool, info: DiskInfo,
                 *, handle: int = 0, verify_reads: bool = False,
                 window: int | None = None, fast_path: bool = True,
                 shadow_module: Any = None) -> None:
        self.queue = RequestQueue(channels, blkif.CODEC, pool=pool, window=window,
                                  check=check_response)
        """The request queue the blkif requests travel on."""
        self.pool = pool
        """The granted pages (data, segment lists, lent buffers)."""
        self.info = info
        self.handle = handle
        refs = pool.refs
        # the blkif_request_segment of each pool page covering the whole page (sectors 0..7),
        # so an indirect segment list for contiguous pages is one slice
        self._full_page_segments = blkif.pack_segments(
            list(refs), 0, blkif.SECTORS_PER_PAGE - 1, blkif.SECTORS_PER_PAGE - 1)
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
        self._shadow: shadow_table.ShadowTable | None = None
        if fast_path and not verify_reads and len(channels) == 1 \
                and not shadow_table.unavailable():
            self._shadow = shadow_table.ShadowTable(self.queue, handle=handle,
                                                    max_segments=self._max_segments,
                                                    module=shadow_module)

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Receive and match responses until the connection ends (`RequestQueue.run`)."""
        await self.queue.run()

    def fail(self, exc: BaseException) -> None:
        """Fail the client with `exc` and wake every waiter (peer gone, protocol error)."""
        self.queue.fail(exc)

    # ------------------------------------------------------------------ public API

    @property
    def verify_reads(self) -> bool:
        """Whether reads are checked for sectors the backend did not write (see the module
        docstring)."""
        return self._canary is not None

    @property
    def shadow(self) -> shadow_table.ShadowTable | None:
        """The C shadow table `submit` runs its usual batches through (None: the Python path
        runs them all -- ABI mode, several rings, ``verify_reads``, or ``fast_path=False``)."""
        return self._shadow

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self.queue.in_flight

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
        async with self.queue.request() as req:
            blkif.encode_request_into(req.slot, 0, blkif.ReadWriteRequest(
                Op.FLUSH_DISKCACHE, req.id, self.handle, 0, _NO_SEGMENTS))
            await self.queue.call(req)
            self._check_status(req, Op.FLUSH_DISKCACHE, 0)

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
        async with self.queue.request() as req:
            blkif.encode_request_into(req.slot, 0, blkif.DiscardRequest(
                req.id, self.handle, sector, length // SECTOR, False))
            await self.queue.call(req)
            self._check_status(req, Op.DISCARD, sector)

    async def submit(self, ops: Sequence[ReadOp | WriteOp], *, depth: int | None = None
                     ) -> list[BlockIOError | None]:
        """Run a batch of reads and writes together and wait for all of them.

        Their requests go onto the ring together, published with one push (one doorbell at
        most) per run that fits the window, the page pool and `depth` (most requests in flight;
        None: only the window and the pool bound it); as answers come back, more follow.
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
        if self._shadow is not None:
            planned = self._shadow_batch(ops)
            if planned is not None:
                answers = await self._shadow.submit(planned, depth=depth)
                return [None if status == 0 else
                        self._status_error(status, Op.READ if type(item) is ReadOp
                                           else Op.WRITE, sector)
                        for (status, sector), item in zip(answers, ops, strict=True)]
        chunks = self._plan(ops)
        limit = len(chunks) if depth is None else depth
        results: list[BlockIOError | None] = [None] * len(ops)
        queue = self.queue
        done = queue.completions()
        out: list[Request] = []      # sent, not yet landed
        step = 0
        try:
            while step < len(chunks) or out:
                batch: list[Request] = []
                while step < len(chunks) and len(out) + len(batch) < limit:
                    index, op, offset, data = chunks[step]
                    need = self._pages_for(len(data))
                    if out or batch:
                        req = queue.prepare_nowait(need)
                        if req is None:
                            break  # send what is ready; answers free ids and pages
                    else:
                        req = await queue.prepare(need)
                    batch.append(req)
                    req.tag = _Flight(index, op, data, offset // SECTOR,
                                      self._fill(req, op, offset, data))
                    step += 1
                if batch:
                    queue.send_batch_nowait(batch, done)
                    out += batch
                    batch = []
                for req in await done.get():
                    out.remove(req)
                    flight = req.tag
                    assert isinstance(flight, _Flight)
                    try:
                        await self._land(req, flight.op, flight.data, flight.sector,
                                         flight.canary)
                    except BlockIOError as exc:
                        if results[flight.op_index] is None:
                            results[flight.op_index] = exc
                    finally:
                        queue.release(req)
        except BaseException:
            for req in (*out, *batch):
                queue.release(req)  # in flight: an orphan, its answer frees it
            raise
        return results

    def _shadow_batch(self, ops: Sequence[ReadOp | WriteOp]
                      ) -> shadow_table.ShadowBatch | None:
        """`ops` as a batch of the C shadow table, or None when they are not its kind (see
        `ringkit.requests.shadow`): the Python path then runs (and judges) them."""
        assert self._shadow is not None
        self._check_alive()
        spec: list[tuple[int, int, memoryview | bytearray | bytes]] = []
        for item in ops:
            kind = type(item)
            if kind is ReadOp:
                spec.append((Op.READ, item.offset, item.buffer))  # type: ignore[union-attr]
            elif kind is WriteOp:
                spec.append((Op.WRITE, item.offset, item.data))  # type: ignore[union-attr]
            else:
                return None
        info = self.info
        return self._shadow.batch(spec, align=info.sector_size, disk_bytes=info.size,
                                  readonly=info.readonly,
                                  max_bytes=self._max_segments * PAGE)

    @property
    def max_lend_bytes(self) -> int:
        """Largest `lend`: the pool, less the segment-list pages one request may need."""
        reserve = blkif.indirect_pages_for(self._max_segments) \
            if self._max_segments > blkif.MAX_SEGMENTS_PER_REQUEST else 0
        return (self.pool.size - reserve) * PAGE

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
        self._check_alive()
        pages = await self.pool.take(-(-length // PAGE), contiguous=True)
        assert isinstance(pages, range)
        start = pages.start * PAGE
        buffer = PoolBuffer(self, self.pool.memory[start:start + length], pages)
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

    # ------------------------------------------------------------------ internals

    def _check_alive(self) -> None:
        error = self.queue.error
        if error is not None:
            if isinstance(error, RemoteProtocolError | PeerGoneError):
                raise type(error)(str(error)) from error
            raise PeerGoneError(f"block device unusable: {error}") from error

    def _check_range(self, offset: int, length: int, what: str) -> None:
        self._check_alive()
        align = self.info.sector_size
        if offset < 0 or length < 0 or offset % align or length % align:
            raise ConfigError(f"{what} of {length} bytes at offset {offset}: both must be "
                              f"non-negative multiples of the {align}-byte sector size")
        if offset + length > self.info.size:
            raise ConfigError(f"{what} of bytes {offset}..{offset + length} goes past the end "
                              f"of the {self.info.size}-byte disk")

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
        from the request itself."""
        nseg = len(pages)
        list_pages = blkif.indirect_pages_for(nseg) \
            if nseg > blkif.MAX_SEGMENTS_PER_REQUEST else 0
        async with self.queue.request(list_pages) as req:
            try:
                canary = self._fill(req, op, offset, data, lent=pages)
                await self.queue.call(req)
            except BaseException:
                if req.in_flight:
                    # out and unanswered: the backend may still use the lent pages, which go
                    # back to the pool with the request (PoolBuffer._release)
                    buffer._held.append((req, req.generation, pages))
                raise
            self._check_status(req, op, offset // SECTOR)
            if canary is not None:
                await self._check_written(data, pages, offset // SECTOR, canary)

    async def _transfer(self, op: Op, offset: int, data: memoryview) -> None:
        if self._shadow is not None and data:
            # one op of the C shadow table's kind: written and matched in C, as `submit` does
            planned = self._shadow_batch([ReadOp(offset, data) if op == Op.READ
                                          else WriteOp(offset, data)])
            if planned is not None:
                ((status, sector),) = await self._shadow.submit(planned)
                error = self._status_error(status, op, sector)
                if error is not None:
                    raise error
                return
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
        async with self.queue.request(self._pages_for(len(data))) as req:
            canary = self._fill(req, op, offset, data)
            await self.queue.call(req)
            await self._land(req, op, data, offset // SECTOR, canary)

    async def _land(self, req: Request, op: Op, data: memoryview, sector: int,
                    canary: bytes | None) -> None:
        """An answered request: check its status, move a read's data out."""
        self._check_status(req, op, sector)
        if op == Op.READ:
            req.read_data(data)
            if canary is not None:
                await self._check_written(data, req.pages, sector, canary)

    def _fill(self, req: Request, op: Op, offset: int, data: memoryview, *,
              lent: range | None = None) -> bytes | None:
        """Fill `req`'s pages for one request of `data` at `offset` (a write's data, a read's
        canaries, an indirect segment list) and encode it into its slot; return the canary a
        read was stamped with.

        The data pages are the request's first pages and its segment-list pages follow --
        unless `lent` gives the data pages apart (a lent buffer): then `data` is a view of them,
        a write's data is in place already, and all of the request's pages are list pages."""
        nseg = -(-len(data) // PAGE)
        pool = self.pool
        pages: Sequence[int] = req.pages if lent is None else lent
        canary: bytes | None = None     # this read's own: the client's may change meanwhile
        if op == Op.WRITE:
            if lent is None:
                req.write_data(data)
        elif self._canary is not None:
            canary = self._stamp(pages, len(data))
        refs = pool.refs
        if isinstance(pages, range):
            grefs: Sequence[int] = refs[pages.start:pages.start + nseg]
        else:
            grefs = [refs[p] for p in pages[:nseg]]
        final_last = (len(data) - (nseg - 1) * PAGE) // SECTOR - 1
        sector = offset // SECTOR
        if nseg <= blkif.MAX_SEGMENTS_PER_REQUEST:
            blkif.encode_request_into(req.slot, 0, blkif.ReadWriteRequest(
                op, req.id, self.handle, sector,
                blkif.SegmentArray.whole_pages(list(grefs), final_last)))
            return canary
        if isinstance(pages, range):
            # precomputed whole-page entries of these pool pages, last one adjusted
            table = bytearray(self._full_page_segments[pages.start * 8:
                                                       (pages.start + nseg) * 8])
            table[-3] = final_last  # last_sect byte of the final entry
        else:
            table = bytearray(blkif.pack_segments(list(grefs), 0,
                                                  blkif.SECTORS_PER_PAGE - 1, final_last))
        list_pages = req.pages if lent is not None else req.pages[nseg:]
        for j, page in enumerate(list_pages):
            part = table[j * PAGE:(j + 1) * PAGE]
            pool.page(page)[:len(part)] = part
        blkif.encode_request_into(req.slot, 0, blkif.IndirectRequest(
            op, req.id, self.handle, sector, nseg, tuple(refs[p] for p in list_pages)))
        return canary

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
        canary, memory, heads = self._canary, self.pool.memory, self._canary_heads
        assert canary is not None
        if isinstance(pages, range):
            base = pages.start * PAGE
            with memory[base:base + length].cast("Q") as words:
                words[::_WORDS_PER_SECTOR] = heads[:length // SECTOR]
            return canary
        for i in range(-(-length // PAGE)):
            n = min(PAGE, length - i * PAGE)
            base = pages[i] * PAGE
            with memory[base:base + n].cast("Q") as words:
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
        memory = self.pool.memory
        late = []
        for index in stale:
            at = pages[index // per_page] * PAGE + (index % per_page) * SECTOR
            if memory[at:at + _CANARY_SIZE].tobytes() != canary:
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
            pages=tuple((page, self.pool.refs[page]) for page in involved))

    def _check_status(self, req: Request, operation: int, sector: int) -> None:
        error = self._status_error(_RESPONSE.unpack_from(req.response)[2], operation, sector)
        if error is not None:
            raise error

    @staticmethod
    def _status_error(status: int, operation: int, sector: int) -> BlockIOError | None:
        """The error a response's `status` means for a request of `operation` at `sector`."""
        if status == Status.OKAY:
            return None
        name = Op(operation).name if operation in Op._value2member_map_ else str(operation)
        if status == Status.EOPNOTSUPP:
            return BlockNotSupportedError(f"backend does not support {name}",
                                          operation=operation, sector=sector)
        return BlockIOError(f"{name} at sector {sector} failed (BLKIF_RSP_ERROR)",
                            operation=operation, sector=sector, status=status)


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


__all__ = ("STALE_RECHECK_SECONDS", "BlockClient", "DiskInfo", "PoolBuffer", "ReadOp",
           "WriteOp", "check_response")
