"""Serving one blkif request: validate, map, do the I/O, decide the response.

`BlockService` is the blkif heart of the block backend: the request-queue layer
(`ringkit.requests.RequestServer`, wired in `backends.block.queue`) hands it each request as
an `IncomingRequest` -- a private copy of the slot, its grant refs -- and `answer` returns the
response.  Pages are mapped through the request (`IncomingRequest.pages` / `map`, persistent
or not as the `GrantMapper` says) and unmapped by the layer before the answer goes out.
A response is sent only once its data is in the image (a WRITE is acknowledged after
``pwritev`` returned) and a FLUSH_DISKCACHE or WRITE_BARRIER covers every write answered
before it.

The event loop never waits for the device.  A read the page cache holds is served in the event
loop (``RWF_NOWAIT``: a memory copy, cheaper than any hand-off); any other read, every write to
a direct image or of a ring served at depth, and whatever may wait for the device (fdatasync,
hole punching) goes through the service's `IoEngine` (``ServiceConfig.io_engine``): submitted to
the kernel's io_uring and awaited from the event loop, or, where io_uring is unavailable, run
in a worker thread.  With ``io_depth`` 1 and persistent grants, the usual request -- a READ or
WRITE, direct or INDIRECT, whose every grant is already mapped -- does not reach `answer` at
all: the ring's server hands each burst to the C fast path first
(`backends.block.fastpath`), which serves the burst's leading such requests and leaves the
rest, in order, to this Python path (the reference the fast path is tested against).  With
``io_depth`` > 1 the ring's server takes that many requests at once and answers each as it
completes, as Linux's blkback does, so a real disk's queue stays full; a WRITE_BARRIER then
waits for every request before it to finish, and the requests after it wait for it
(blkback's drain).

What the frontend can get wrong and what it gets back, following xen-blkback:

* unknown operation, or INDIRECT when not offered          -> BLKIF_RSP_EOPNOTSUPP
* segment count 0 or > 11 (direct) / > advertised (indirect), a segment's sector range outside
  0..7 or reversed, sectors past the end of the disk, a grant that cannot be mapped, a write of
  any kind to a read-only disk, an I/O error                -> BLKIF_RSP_ERROR

None of these poisons the device; hostile ring indices do (that is the ring engine's job).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ringkit.proto import blkif
from ringkit.proto.blkif import InvalidRequest, Op, Status
from ringkit.requests import GrantMapper, IncomingRequest, RequestError

from .config import ServiceConfig
from .engine import IoEngine, open_engine
from .fastpath import BlkifFastPath
from .fastpath import unavailable as fast_path_unavailable
from .image import Image
from .stats import ServiceStats
from .uringpath import BlkifUringPath
from .uringpath import unavailable as uring_path_unavailable

log = logging.getLogger(__name__)

_WRITES = frozenset({Op.WRITE, Op.WRITE_BARRIER, Op.FLUSH_DISKCACHE, Op.DISCARD})
MIN_BURST = 32
"""Most requests a ring's server takes at once when the ring is smaller: up to a whole ring's
worth, so a frontend that filled a 16-page ring is answered with one push too."""
_PAGE_SIZE = 4096
PUSH_AFTER_SECTORS = 128
"""A request moving this many sectors (64 KiB) or more is answered at once, without waiting
for the rest of its burst (`IncomingRequest.urgent`)."""


class BlockService:
    """Serves blkif requests from one frontend against one `Image`; `aclose` releases its
    `IoEngine` once it serves no more.

    Raises (constructor):
        ConfigError: ``io_engine = "uring"`` and io_uring is unavailable here.
    """

    def __init__(self, image: Image, mapper: GrantMapper, config: ServiceConfig) -> None:
        self.image = image
        self.mapper = mapper
        self.config = config
        self.stats = ServiceStats()
        self._max_indirect = min(
            config.max_indirect_segments,
            blkif.MAX_INDIRECT_PAGES_PER_REQUEST * blkif.SEGMENTS_PER_INDIRECT_PAGE)
        self.engine: IoEngine = open_engine(config.io_engine, config.io_depth)
        """Where disk accesses that may wait for the device go (io_uring or threads)."""
        self._drain = _Drain(self._in_flight_elsewhere)
        # buffered writes go to the page cache in the event loop when requests are served one
        # at a time, as before; with a queue to fill, or O_DIRECT, they go to the engine
        self._inline_writes = config.io_depth == 1 and not image.direct
        self.fast_path: BlkifFastPath | None = None
        """The C fast path for the ring's server (None where it does not run: see
        `backends.block.fastpath`)."""
        if (config.fast_path and mapper.persistent and config.io_depth == 1
                and not image.direct and not fast_path_unavailable()):
            self.fast_path = BlkifFastPath(image, mapper.max_persistent,
                                           inline_writes=self._inline_writes, stats=self.stats,
                                           max_indirect=self._max_indirect)
            mapper.watch(self.fast_path)
        self.uring_path: BlkifUringPath | None = None
        """The C fast path at depth for the ring's server (None where it does not run: see
        `backends.block.uringpath`)."""
        if (config.fast_path and mapper.persistent and config.io_depth > 1
                and config.io_engine != "threads" and not uring_path_unavailable()):
            try:
                self.uring_path = BlkifUringPath(
                    image, mapper.max_persistent, capacity=config.io_depth,
                    burst=burst_for(config), stats=self.stats, on_reaped=self._drain.poke)
            except OSError as exc:  # io_uring refused here: the Python path serves it all
                log.debug("no io_uring for the blkif fast path at depth: %s", exc)
            else:
                mapper.watch(self.uring_path)

    def _in_flight_elsewhere(self) -> int:
        path = self.uring_path
        return path.in_flight if path is not None else 0

    async def aclose(self) -> None:
        """Release the engine (its io_uring) and the fast path's grant table; call once no
        request is in service."""
        if self.fast_path is not None:
            self.fast_path.releasing()
        if self.uring_path is not None:
            self.uring_path.close()
        await self.engine.aclose()

    async def answer(self, incoming: IncomingRequest) -> bytes:
        """The response to `incoming` (the `RequestServer` handler)."""
        rid, op, status = await self.handle(incoming)
        return blkif.encode_response(rid, op, status)

    async def handle(self, incoming: IncomingRequest) -> tuple[int, int, int]:
        """Serve `incoming` and return ``(id, operation, status)`` for its response.  Never
        raises for anything the frontend wrote."""
        self.stats.requests += 1
        if incoming.operation == Op.WRITE_BARRIER:
            try:
                async with self._drain.exclusive():
                    return await self._handle(incoming)
            finally:
                if self.uring_path is not None:
                    self.uring_path.barrier_answered()
        async with self._drain.shared():
            return await self._handle(incoming)

    async def _handle(self, incoming: IncomingRequest) -> tuple[int, int, int]:
        try:
            request = blkif.parse_request(incoming.slot,
                                          max_indirect_segments=self._max_indirect)
            if isinstance(request, blkif.DiscardRequest):
                await self._discard(request)
                return request.id, Op.DISCARD, Status.OKAY
            if isinstance(request, blkif.IndirectRequest):
                segments = await self._indirect_segments(incoming, request)
                await self._transfer(incoming, request.id, request.indirect_op,
                                     request.sector_number, segments, direct=False)
                return request.id, request.indirect_op, Status.OKAY
            await self._read_write(incoming, request)
            return request.id, request.operation, Status.OKAY
        except InvalidRequest as exc:
            if exc.status == Status.EOPNOTSUPP:
                self.stats.unsupported += 1
            else:
                self.stats.errors += 1
            log.debug("blkif request %#x refused: %s", exc.id, exc.reason)
            return exc.id, exc.operation, exc.status

    async def _read_write(self, incoming: IncomingRequest,
                          request: blkif.ReadWriteRequest) -> None:
        op, rid = request.operation, request.id
        if op == Op.FLUSH_DISKCACHE and not self.config.flush:
            raise InvalidRequest(rid, op, Status.EOPNOTSUPP, "flush not offered")
        if op == Op.WRITE_BARRIER and not self.config.barrier:
            raise InvalidRequest(rid, op, Status.EOPNOTSUPP, "barrier not offered")
        if op in _WRITES and self.image.readonly:
            raise InvalidRequest(rid, op, Status.ERROR, "write to a read-only disk")
        if op == Op.WRITE_BARRIER:
            # everything answered before is already in the file: make it durable first
            await self._io(rid, op, self.engine.flush, self.image)
        if request.segments:
            await self._transfer(incoming, rid, op, request.sector_number, request.segments,
                                 direct=True)
        if op in (Op.FLUSH_DISKCACHE, Op.WRITE_BARRIER):
            await self._io(rid, op, self.engine.flush, self.image)
            self.stats.flushes += 1

    async def _indirect_segments(self, incoming: IncomingRequest,
                                 request: blkif.IndirectRequest) -> blkif.SegmentArray:
        op, rid = request.indirect_op, request.id
        if op == Op.WRITE and self.image.readonly:
            raise InvalidRequest(rid, op, Status.ERROR, "write to a read-only disk")
        try:
            pages = await incoming.map(request.indirect_grefs, writable=False)
        except RequestError as exc:
            raise InvalidRequest(rid, op, Status.ERROR, f"indirect pages: {exc}") from exc
        # one private copy of the segment list, parsed from there (never the shared pages)
        length = request.nr_segments * blkif.SEGMENT_SIZE
        raw = b"".join(bytes(page) for page in pages)[:length]
        return blkif.parse_indirect_segment_array(raw, request)

    async def _transfer(self, incoming: IncomingRequest, rid: int, op: int, sector: int,
                        segments: blkif.SegmentArray, *, direct: bool) -> None:
        nr_sectors = segments.nr_sectors
        if sector + nr_sectors > self.image.sectors:
            raise InvalidRequest(rid, op, Status.ERROR,
                                 f"sectors {sector}..{sector + nr_sectors - 1} beyond the end "
                                 f"of the disk ({self.image.sectors} sectors)")
        reading = op == Op.READ
        try:
            # direct segments are the refs the layer read from the slot; an indirect
            # request's come from its segment list
            mapped = (await incoming.pages() if direct
                      else await incoming.map(segments.grefs, writable=reading))
        except RequestError as exc:
            raise InvalidRequest(rid, op, Status.ERROR, f"grant map failed: {exc}") from exc
        size = blkif.SECTOR_SIZE
        count = len(segments)
        if (segments.first.count(0) == count
                and segments.last.count(blkif.SECTORS_PER_PAGE - 1, 0, count - 1)
                == count - 1):
            # whole pages but maybe the last: the usual shape
            views = list(mapped)
            if segments.last[-1] != blkif.SECTORS_PER_PAGE - 1:
                views[-1] = views[-1][:(segments.last[-1] + 1) * size]
        else:
            views = [page[first * size:(last + 1) * size]
                     for page, first, last in zip(mapped, segments.first, segments.last,
                                                  strict=True)]
        offset = sector * blkif.SECTOR_SIZE
        length = nr_sectors * size
        if reading:
            if not self.image.read_cached(views, offset, length):
                await self._io(rid, op, self.engine.read, self.image, views, offset,
                               length)
            self.stats.sectors_read += nr_sectors
        else:
            await self._write(rid, op, views, offset, length)
            self.stats.sectors_written += nr_sectors
        if nr_sectors >= PUSH_AFTER_SECTORS:
            incoming.urgent = True

    async def _discard(self, request: blkif.DiscardRequest) -> None:
        rid = request.id
        if not self.config.discard:
            raise InvalidRequest(rid, Op.DISCARD, Status.EOPNOTSUPP, "discard not offered")
        if request.secure:
            raise InvalidRequest(rid, Op.DISCARD, Status.EOPNOTSUPP, "secure discard not offered")
        if self.image.readonly:
            raise InvalidRequest(rid, Op.DISCARD, Status.ERROR, "discard on a read-only disk")
        end = request.sector_number + request.nr_sectors
        if end > self.image.sectors:
            raise InvalidRequest(rid, Op.DISCARD, Status.ERROR,
                                 f"discard up to sector {end} beyond the end of the disk")
        await self._io(rid, Op.DISCARD, self.engine.discard, self.image,
                       request.sector_number * blkif.SECTOR_SIZE,
                       request.nr_sectors * blkif.SECTOR_SIZE)
        self.stats.discards += 1

    async def _write(self, rid: int, op: int, views: Sequence[memoryview], offset: int,
                     length: int) -> None:
        if not self._inline_writes:
            await self._io(rid, op, self.engine.write, self.image, views, offset, length)
            return
        try:  # to the page cache: a memory copy, cheaper than a thread hand-off
            self.image.write_from(views, offset, length)
        except OSError as exc:
            log.warning("blkif request %#x: I/O error: %s", rid, exc)
            raise InvalidRequest(rid, op, Status.ERROR, f"I/O error: {exc}") from exc

    async def _io(self, rid: int, op: int, call: Callable[..., Awaitable[None]],
                  *args: Any) -> None:
        """`call` (an `IoEngine` method), for anything that may wait for the device, so that
        the event loop -- every ring this process serves -- goes on meanwhile; an OSError is
        the request's ERROR."""
        try:
            await call(*args)
        except OSError as exc:
            log.warning("blkif request %#x: I/O error: %s", rid, exc)
            raise InvalidRequest(rid, op, Status.ERROR, f"I/O error: {exc}") from exc


def burst_for(config: ServiceConfig) -> int:
    """The most requests a ring's server takes at once by default (a whole ring of the
    largest size `config` offers, at least `MIN_BURST`): `backends.block.queue.serve_ring`'s
    burst, and the size of a fast path's buffers."""
    return max(MIN_BURST, blkif.RING_LAYOUT.entries(_PAGE_SIZE << config.max_ring_page_order))


class _Drain:
    """WRITE_BARRIER's ordering among requests served at once: every other request holds the
    gate shared; a barrier waits for them all to leave -- and for the requests a fast path has
    in flight (`elsewhere`) -- and holds it alone, and requests that come after it wait until
    it is done."""

    def __init__(self, elsewhere: Callable[[], int]) -> None:
        self._elsewhere = elsewhere
        self._active = 0
        self._barrier = False
        self._changed = anyio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def poke(self) -> None:
        """Requests elsewhere finished: a barrier waiting for them looks again."""
        if self._barrier:
            self._notify()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._barrier:
            await self._wait()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._barrier:
                self._notify()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while self._barrier:
            await self._wait()
        self._barrier = True
        try:
            while self._active or self._elsewhere():
                await self._wait()
            yield
        finally:
            self._barrier = False
            self._notify()


__all__ = ("MIN_BURST", "PUSH_AFTER_SECTORS", "BlockService", "ServiceConfig", "ServiceStats",
           "burst_for")
