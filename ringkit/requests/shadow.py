"""`ShadowTable`: a block frontend's usual batches written and answered in C, one call each way.

Linux's blkfront keeps a *shadow* entry per request id: what it needs once the answer comes.
This is that table in C (``rk_shadow_*`` in ringkit/_native/_build.py) for the frontend's
common case -- a batch of plain READs and WRITEs, one pool page per segment, direct or, past 11
segments, INDIRECT -- so that no Python runs per request:

* `ShadowTable.submit` takes, per request, the lowest free id and pool pages, copies a WRITE's
  data into the pages and encodes the blkif slot -- for an INDIRECT request, its data pages
  first, then its indirect pages, filled with the segment list, as the Python path lays them
  out -- for as many requests as ids, pages and the depth allow, in one call; the slots go
  onto the ring with one copy and one push (``FrontRingChannel.send_from_nowait``: the ring
  engine publishes and notifies with its hold-off, as for any batch).
* The queue's receive path hands each burst of responses (its private copy, never the shared
  ring) to the table first: one call consumes the leading responses that answer shadow
  requests -- operation and status checked, a READ's data copied from the pool pages into the
  caller's buffer, id and pages freed, the op's result noted -- and hands the rest back to the
  Python path, which matches the next one itself and hands the remainder back again.

The state is the queue's own, not a copy: the id table (`RequestQueue`'s byte per id, where a
shadow request is marked ``ID_SHADOW``) and the `GrantPool`'s free map are the bytearrays the
Python path reads and writes, and both pick ids (lowest free first) and pages (the first run
long enough, else the first free pages) the same way, so the two paths can be mixed on one
queue and compared request for request.

What stays Python: checking a batch (the C refuses it whole when an op is misaligned, out of
range, or a write to a read-only disk), waiting, cancellation (an op whose
caller was cancelled keeps its id and pages until its answer comes: the table marks it an
orphan, and its answer frees it without touching the caller's buffer), the errors (a hostile
response is the same `RemoteProtocolError`, in the same words, as on the Python path) and the
connection's end.  The Python path stays the reference and the fallback: in ABI mode
(``RINGKIT_NATIVE=abi``), with several rings, with ``verify_reads``, or for any other batch.
tests/drivers/block/test_block_shadow.py runs random batches and hostile response bursts both
ways and compares results, buffers, pages, ids and pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from .._native import compiled_part
from ..proto import blkif
from .pool import fresh_error

if TYPE_CHECKING:
    from .front import RequestQueue

__all__ = ("ShadowBatch", "ShadowTable", "unavailable")

_ANY_BATCH = 0xFFFFFFFF
_ORPHAN, _FREE_NOW, _FREE_ORPHANS = 0, 1, 2
_E_OPERATION, _E_STATUS = 1, 2
_TOUCHED = 64

_ffi, _lib, _MISSING = compiled_part("rk_shadow_complete", "the blkfront shadow table")


def unavailable() -> str:
    """Why a `ShadowTable` cannot be made here, or "" when it can."""
    return _MISSING


def _pages_for(nseg: int) -> int:
    """Pool pages a request of `nseg` data pages takes (its indirect pages past 11)."""
    if nseg > blkif.MAX_SEGMENTS_PER_REQUEST:
        return nseg + blkif.indirect_pages_for(nseg)
    return nseg


class ShadowBatch:
    """One `ShadowTable.submit` call's ops as C sees them (built by `ShadowTable.batch`):
    the caller's buffers, held exported until the batch ends, and its counters and per-op
    results."""

    __slots__ = ("_event", "_exports", "counters", "cursor", "lengths", "nops", "ops", "token")

    def __init__(self, ffi: Any, nops: int, token: int) -> None:
        self.nops = nops
        self.token = token
        self.ops = ffi.new("rk_shadow_op[]", max(nops, 1))
        self.counters = ffi.new("int64_t[]", 2 + 2 * nops)
        """[0] answered, [1] in flight, then per op (status, sector) of its first failure."""
        self.cursor = ffi.new("uint64_t[2]")
        self.lengths: list[int] = []
        self._exports: list[Any] = []
        self._event = anyio.Event()

    def results(self) -> list[tuple[int, int]]:
        """Per op: (status, sector) of its first failed request, or (0, 0)."""
        counters = self.counters
        return [(int(counters[2 + 2 * i]), int(counters[3 + 2 * i])) for i in range(self.nops)]


class ShadowTable:
    """The C shadow table of `queue` (one ring, a `GrantPool`, blkif slots): see the module
    docstring.  `handle`: the virtual device the requests name.  `max_segments`: the most
    pages one request carries (more than 11: INDIRECT requests; `submit` takes no more).
    `module`: the cffi module whose C to use (default: `ringkit._native._compiled`; tests pass
    a differently built one).

    Raises (constructor):
        RuntimeError: the compiled helper is unavailable (`unavailable`).
        ConfigError: the queue has several rings, no pool, or is not blkif.
    """

    def __init__(self, queue: RequestQueue, *, handle: int = 0,
                 max_segments: int = blkif.MAX_SEGMENTS_PER_REQUEST, module: Any = None) -> None:
        if module is not None:
            ffi, lib = module.ffi, module.lib
        elif _lib is None:
            raise RuntimeError(_MISSING)
        else:
            ffi, lib = _ffi, _lib
        if len(queue._channels) != 1 or queue.pool is None:
            raise ConfigError("a shadow table serves a queue of one ring with a grant pool")
        if queue.codec is not blkif.CODEC:
            raise ConfigError("a shadow table speaks blkif")
        self._ffi, self._lib = ffi, lib
        self._queue = queue
        self._pool = pool = queue.pool
        self.handle = handle
        window = queue.window
        self._window = window
        if not 1 <= max_segments <= blkif.MAX_INDIRECT_PAGES_PER_REQUEST \
                * blkif.SEGMENTS_PER_INDIRECT_PAGE:
            raise ConfigError(f"a request of {max_segments} pages")
        self.max_segments = max_segments
        """The most pages one request carries."""
        self._table = ffi.new("rk_shadow[]", window)
        capacity = _pages_for(max_segments)
        self._page_lists = ffi.new("uint32_t[]", window * capacity)
        for i in range(window):
            self._table[i].pages = self._page_lists + i * capacity
            self._table[i].capacity = capacity
        self._refs = ffi.new("uint32_t[]", list(pool.refs))
        # the queue's id table, the pool's free map and pages are exported to C for one call
        # at a time: an export kept would pin them (an mmap could not be closed, and a
        # memoryview cleared by the garbage collector with an export alive crashes CPython)
        self._npages = pool.size
        self._staging = bytearray(blkif.REQUEST_SIZE * window)
        self._taken = ffi.new("uint64_t[1]")
        self._info = ffi.new("uint64_t[6]")
        self._touched = ffi.new("uint32_t[]", _TOUCHED)
        self._batches: dict[int, ShadowBatch] = {}
        self._next_token = 0
        self.in_flight = 0
        """Shadow requests sent and not answered (orphans included)."""
        queue._shadow = self

    # ------------------------------------------------------------------ a batch

    def batch(self, ops: Sequence[tuple[int, int, Any]], *, align: int, disk_bytes: int,
              readonly: bool, max_bytes: int) -> ShadowBatch | None:
        """The batch of `ops` -- (operation, byte offset, buffer) each, READ (0) into a
        writable buffer or WRITE (1) from any -- or None when the C path must not take it
        (see the module docstring: the caller uses the Python path, which judges it)."""
        ffi = self._ffi
        token = self._next_token
        self._next_token = (token + 1) % _ANY_BATCH
        batch = ShadowBatch(ffi, len(ops), token)
        cops, exports, lengths = batch.ops, batch._exports, batch.lengths
        from_buffer = ffi.from_buffer
        try:
            for i, (operation, offset, buffer) in enumerate(ops):
                export = from_buffer("char[]", buffer, require_writable=operation == 0)
                exports.append(export)
                entry = cops[i]
                entry.data = export
                entry.length = n = len(export)
                entry.offset = offset
                entry.operation = operation
                lengths.append(n)
        except (TypeError, ValueError, BufferError, OverflowError):
            batch._exports = []
            for export in exports:
                ffi.release(export)
            return None  # a read-only or non-contiguous buffer: the Python path says so
        if self._lib.rk_shadow_check(cops, len(ops), align, disk_bytes, int(readonly),
                                     max_bytes) != len(ops):
            self._release(batch)
            return None
        return batch

    async def submit(self, batch: ShadowBatch, *, depth: int | None = None,
                     max_segments: int | None = None) -> list[tuple[int, int]]:
        """Run `batch` to the end: requests out as ids and pages allow (at most `depth` in
        flight; requests of at most `max_segments` pages, default and limit the table's),
        answers matched by the queue's receive path.  Returns `ShadowBatch.results`.

        Cancelled or failed, its requests still in flight become orphans (or, once the queue
        failed, are freed).

        Raises:
            PeerGoneError, RemoteProtocolError: the queue failed.
        """
        queue = self._queue
        if max_segments is None:
            max_segments = self.max_segments
        elif not 1 <= max_segments <= self.max_segments:
            raise ConfigError(f"requests of {max_segments} pages in a table of requests of up "
                              f"to {self.max_segments}")
        counters, cursor = batch.counters, batch.cursor
        self._batches[batch.token] = batch
        try:
            while True:
                queue._check()
                if cursor[0] < batch.nops:
                    limit = self._window if depth is None else depth - int(counters[1])
                    if limit > 0:
                        self._send(batch, limit, max_segments)
                if counters[1] == 0:
                    if cursor[0] >= batch.nops:
                        return batch.results()
                    await self._room(self._next_pages(batch, max_segments))
                    continue
                await batch._event.wait()
                batch._event = anyio.Event()
        except BaseException:
            self._drop(batch.token, _FREE_NOW if queue._error is not None else _ORPHAN)
            raise
        finally:
            del self._batches[batch.token]
            self._release(batch)

    def _send(self, batch: ShadowBatch, limit: int, max_segments: int) -> None:
        queue, pool = self._queue, self._pool
        ffi = self._ffi
        states, freemap, memory = self._export()
        staging = ffi.from_buffer("char[]", self._staging, require_writable=True)
        try:
            sent = self._lib.rk_shadow_submit(
                states, self._window, freemap, self._npages, memory, len(memory), self._refs,
                self._table, batch.ops, batch.nops, batch.cursor, batch.counters,
                2 + 2 * batch.nops, batch.token, self.handle, max_segments, limit, staging,
                len(staging), self._taken)
        finally:
            self._unexport(states, freemap, memory, staging)
        if sent < 0:
            raise LocalProtocolError("rk_shadow_submit refused a checked batch")
        if not sent:
            return
        pool._free -= int(self._taken[0])
        self.in_flight += sent
        channel = queue._channels[0]
        try:
            put = channel.send_from_nowait(self._staging, sent)
        except anyio.WouldBlock:
            put = 0
        except anyio.BrokenResourceError as exc:
            self._drop(batch.token, _FREE_NOW)
            cause = exc.__cause__
            raise fresh_error(cause if cause is not None else exc) from exc
        except anyio.ClosedResourceError as exc:
            self._drop(batch.token, _FREE_NOW)
            raise PeerGoneError("the request queue's ring was closed") from exc
        queue.stats.sent += put
        queue.stats.pushes += 1
        if put < sent:  # the window makes this impossible: a bug of ours
            raise LocalProtocolError(f"the ring had room for {put} of {sent} requests inside "
                                     "the window")

    def _next_pages(self, batch: ShadowBatch, max_segments: int) -> int:
        """Pool pages the batch's next request needs."""
        op, at = int(batch.cursor[0]), int(batch.cursor[1])
        while op < batch.nops and at >= batch.lengths[op]:
            op, at = op + 1, 0
        if op >= batch.nops:
            return 0
        left = min(batch.lengths[op] - at, max_segments * blkif.PAGE_SIZE)
        return _pages_for(-(-left // blkif.PAGE_SIZE))

    async def _room(self, pages: int) -> None:
        """Wait until an id and `pages` pool pages are free (nothing of the batch is in flight:
        what frees them is someone else's answer)."""
        queue, pool = self._queue, self._pool
        while True:
            queue._check()
            if queue._states.find(0) < 0:
                waiter = anyio.Event()
                queue._id_waiters.append(waiter)
                await waiter.wait()
            elif pool.free < pages:
                pool._check()
                waiter = anyio.Event()
                pool._waiters.append(waiter)
                await waiter.wait()
            else:
                return

    def _release(self, batch: ShadowBatch) -> None:
        exports, batch._exports = batch._exports, []
        for export in exports:
            self._ffi.release(export)

    # ------------------------------------------------------------------ answers, the end

    def complete(self, buf: bytearray | memoryview, start: int, count: int) -> int:
        """Consume the leading responses of slots ``start .. count - 1`` of `buf` (a burst's
        private copy, at slot stride) that answer shadow requests; return how many.

        Raises:
            RemoteProtocolError: one answers a shadow request with the wrong operation or an
                impossible status (the caller fails the queue).
        """
        ffi, info = self._ffi, self._info
        slot = blkif.REQUEST_SIZE
        states, freemap, memory = self._export()
        src = ffi.from_buffer("char[]", buf)
        try:
            done = self._lib.rk_shadow_complete(
                states, self._window, freemap, self._npages, memory, len(memory), self._table,
                src + start * slot, len(src) - start * slot, count - start, self._touched,
                _TOUCHED, info)
        finally:
            self._unexport(states, freemap, memory, src)
        if done < 0:
            raise LocalProtocolError(f"{count} response slots do not fit a {len(src)}-byte "
                                     "burst")
        if done:
            self._freed(done, int(info[1]))
            self._queue.stats.orphans += int(info[2])
            batches = self._batches
            if info[5]:   # more batches than listed: wake them all
                for batch in batches.values():
                    batch._event.set()
            else:
                for k in range(int(info[4])):
                    woken = batches.get(int(self._touched[k]))
                    if woken is not None:
                        woken._event.set()
        if info[0]:
            at = (start + done) * slot
            response = blkif.parse_response(buf[at:at + blkif.RESPONSE_SIZE])
            problem = blkif.response_problem(response.id, response.operation,
                                             response.status, int(info[3]))
            raise RemoteProtocolError(problem or f"blkif response for id {response.id:#x} "
                                      "refused")
        return int(done)

    def failed(self) -> None:
        """The queue failed: free the orphans (no answer will come) and wake every batch."""
        self._drop(_ANY_BATCH, _FREE_ORPHANS)
        for batch in self._batches.values():
            batch._event.set()

    def _drop(self, token: int, mode: int) -> None:
        ffi = self._ffi
        states = ffi.from_buffer("uint8_t[]", self._queue._states, require_writable=True)
        freemap = ffi.from_buffer("uint8_t[]", self._pool._freemap, require_writable=True)
        try:
            count = self._lib.rk_shadow_drop(states, self._window, freemap, self._npages,
                                             self._table, token, mode, self._info)
        finally:
            self._unexport(states, freemap)
        if count > 0 and mode != _ORPHAN:
            self._freed(int(count), int(self._info[0]))

    def _export(self) -> tuple[Any, Any, Any]:
        """The id table, the pool's free map and its pages, exported for one C call."""
        ffi = self._ffi
        return (ffi.from_buffer("uint8_t[]", self._queue._states, require_writable=True),
                ffi.from_buffer("uint8_t[]", self._pool._freemap, require_writable=True),
                ffi.from_buffer("char[]", self._pool.memory, require_writable=True))

    def _unexport(self, *exports: Any) -> None:
        for export in exports:
            self._ffi.release(export)

    def _freed(self, ids: int, pages: int) -> None:
        """C freed `ids` shadow ids and `pages` pool pages: keep the Python side's counters."""
        self.in_flight -= ids
        if pages:
            self._pool._free += pages
            self._pool._wake()
        self._queue._wake_id_waiters()
