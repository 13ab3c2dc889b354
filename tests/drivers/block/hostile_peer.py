"""A blkif backend for BlockClient tests that does everything a correct backend may do, at the
worst moment: the frontend's page discipline is checked against it.

`HostilePeer` serves a disk held in memory through a pool of pages standing in for the granted
ones.  It takes each request as the ring would hand it over, and then:

* checks that none of the request's grant refs (data or indirect segment list) belongs to a
  request still in flight, and that none repeats inside the request: a frontend that reuses a
  page early lets the backend write one request's data into another's buffer;
* scribbles over every page of a READ as soon as it has the request (a backend owns those pages
  until it answers), so a frontend that copies data out before the answer, or out of the wrong
  page, reads the scribble;
* answers in random order after random delays, moving the data a few segments at a time with
  yields in between, and for a READ writes the data before it answers, as Linux's blkback does.

`violations` lists every breach of the page discipline; `in_flight` the requests not answered.
Client and peer share one in-memory blkif ring: the client's request queue is its front half,
the peer takes requests off the back half (`pull`) and puts its answers there (`respond`),
then has the client take them at once (`RequestQueue.poll`), so no receive task is needed.
`batches` records how many requests each of the client's pushes carried.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import anyio
import anyio.lowlevel
from ringkit.frontends.block.client import BlockClient, DiskInfo

from ringkit.channel import FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantPool
from ringkit.testing.memory import memory_event_pair

PAGE = blkif.PAGE_SIZE
SECTOR = blkif.SECTOR_SIZE
BASE_REF = 5000
SCRIBBLE = b"\xee" * PAGE


def free_pages(client: BlockClient) -> int:
    """The client's free pool pages."""
    return client.pool.free


class _RecordingChannel(FrontRingChannel):
    """A front ring channel that notes how many requests each push carried."""

    batches: list[int]

    def send_batch_nowait(self, items: Iterable[bytes | bytearray | memoryview]) -> int:
        sent = super().send_batch_nowait(items)
        self.batches.append(sent)
        return sent

    def send_from_nowait(self, src: bytes | bytearray | memoryview, count: int) -> int:
        sent = super().send_from_nowait(src, count)  # (the C shadow table's batches)
        self.batches.append(sent)
        return sent


@dataclass
class Held:
    """A request the peer has taken and not yet answered."""

    request: blkif.Request
    operation: int
    segments: blkif.SegmentArray
    grefs: frozenset[int]


class HostilePeer:
    """See the module docstring.  `hold` is the chance of leaving the requests alone for one
    more scheduling round, `seed` makes the order of answers reproducible, `scribble=False`
    leaves a read's pages as they were until the data is written."""

    def __init__(self, pool_pages: int, disk: bytearray, *, indirect: int = 256,
                 seed: int = 0, hold: float = 0.5, scribble: bool = True) -> None:
        self.memory = bytearray(pool_pages * PAGE)
        self.refs = tuple(range(BASE_REF, BASE_REF + pool_pages))
        self.disk = disk
        self.info = DiskInfo(sectors=len(disk) // SECTOR, max_indirect_segments=indirect,
                             flush=True, persistent=True)
        self.rng = random.Random(seed)
        self.hold = hold
        self.scribble = scribble
        self.violations: list[str] = []
        self.client: BlockClient | None = None
        self.requests = 0
        self.batches: list[int] = []
        """How many requests each of the client's pushes carried."""
        self.room = 32
        """The client's window: most requests in flight (a one-page blkif ring has 32)."""
        self._in_flight: dict[int, Held] = {}
        self._ring = bytearray(PAGE)
        self._back = BackRing.attach(self._ring, blkif.RING_LAYOUT)
        self._events = memory_event_pair()
        self._answering: set[int] = set()
        """Requests an `answer` is moving the data of (serve and drain may run together)."""
        self.failing: set[int] = set()
        """Start sectors of requests answered BLKIF_RSP_ERROR (their data is not moved)."""

    def new_client(self, **kwargs: bool) -> BlockClient:
        """A `BlockClient` on this peer's pool and ring (window: `room`)."""
        front = FrontRing.init(self._ring, blkif.RING_LAYOUT)
        self._back = BackRing.attach(self._ring, blkif.RING_LAYOUT)
        channel = _RecordingChannel(front, self._events[0])
        channel.batches = self.batches
        self.client = BlockClient([channel], GrantPool(memoryview(self.memory), self.refs),
                                  self.info, window=self.room, **kwargs)
        return self.client

    @property
    def in_flight(self) -> dict[int, Held]:
        """The requests taken and not answered (taking what the client pushed first)."""
        self.pull()
        return self._in_flight

    def pull(self) -> None:
        """Take every request the client pushed off the ring."""
        while (slot := self._back.take_request()) is not None:
            self.take(slot)

    def page(self, gref: int) -> memoryview:
        index = gref - BASE_REF
        if not 0 <= index < len(self.refs):
            raise AssertionError(f"request names grant ref {gref}, not one of the pool's")
        return memoryview(self.memory)[index * PAGE:(index + 1) * PAGE]

    def take(self, slot: bytes | bytearray) -> None:
        """Take one request off the ring, checking the page discipline."""
        request = blkif.parse_request(bytes(slot),
                                      max_indirect_segments=self.info.max_indirect_segments)
        refs: list[int] = []
        if isinstance(request, blkif.IndirectRequest):
            lists = b"".join(bytes(self.page(g)) for g in request.indirect_grefs)
            segments = blkif.parse_indirect_segment_array(lists, request)
            refs += request.indirect_grefs
            operation: int = request.indirect_op
        elif isinstance(request, blkif.ReadWriteRequest):
            segments = request.segments
            operation = request.operation
        else:
            segments = blkif.SegmentArray([], b"", b"")
            operation = request.operation
        refs += segments.grefs
        grefs = frozenset(refs)
        if len(grefs) != len(refs):
            self.violations.append(f"request {request.id:#x} names a page twice")
        for rid, held in self._in_flight.items():
            if grefs & held.grefs:
                self.violations.append(f"request {request.id:#x} reuses pages "
                                       f"{sorted(grefs & held.grefs)} of request {rid:#x}, "
                                       "which is still in flight")
        if request.id in self._in_flight:
            self.violations.append(f"request id {request.id:#x} is already in flight")
        if operation == blkif.Op.READ and self.scribble:
            for gref in segments.grefs:
                self.page(gref)[:] = SCRIBBLE
        self._in_flight[request.id] = Held(request, operation, segments, grefs)
        self.requests += 1

    def windows(self, held: Held) -> Iterator[tuple[int, memoryview, int, int]]:
        """Each segment of `held`: its index, its bytes in the granted page, and the disk
        position and length they stand for."""
        position = held.request.sector_number * SECTOR
        segments = held.segments
        for index, (gref, first, last) in enumerate(
                zip(segments.grefs, segments.first, segments.last, strict=True)):
            length = (last - first + 1) * SECTOR
            yield index, self.page(gref)[first * SECTOR:first * SECTOR + length], position, length
            position += length

    async def answer(self, rid: int) -> None:
        """Serve and answer request `rid` now (moving its data a few segments at a time);
        nothing if another task is answering it already."""
        if rid in self._answering or rid not in self.in_flight:
            return
        self._answering.add(rid)
        try:
            await self._answer(rid)
        finally:
            self._answering.discard(rid)

    async def _answer(self, rid: int) -> None:
        held = self._in_flight[rid]
        if held.request.sector_number in self.failing:
            del self._in_flight[rid]
            await self.respond(blkif.Response(rid, held.operation, blkif.Status.ERROR))
            return
        for index, window, position, length in self.windows(held):
            if held.operation == blkif.Op.READ:
                window[:] = self.disk[position:position + length]
            elif held.operation == blkif.Op.WRITE:
                self.disk[position:position + length] = window
            if index % 7 == 6:
                await anyio.lowlevel.checkpoint()
        del self._in_flight[rid]
        await self.respond(blkif.Response(rid, held.operation, blkif.Status.OKAY))

    async def respond(self, response: blkif.Response) -> None:
        """Put `response` on the ring, push it, and have the client take it now.

        Raises:
            RemoteProtocolError: the client found the response hostile (it is failed).
        """
        assert self.client is not None
        self._back.put_response(blkif.encode_response(response.id, response.operation,
                                                      response.status))
        if self._back.push_responses():
            self._events[1].notify()
        self.client.queue.poll()

    async def serve(self) -> None:
        """Answer requests forever, in random order, after random delays."""
        while True:
            await anyio.lowlevel.checkpoint()
            free = [rid for rid in self.in_flight if rid not in self._answering]
            if not free or self.rng.random() < self.hold:
                continue
            await self.answer(self.rng.choice(free))

    async def drain(self) -> None:
        """Answer everything still in flight (e.g. the requests of cancelled callers)."""
        while self.in_flight:
            free = [rid for rid in self.in_flight if rid not in self._answering]
            if free:
                await self.answer(free[0])
            else:  # `serve` is answering the rest: let it
                await anyio.lowlevel.checkpoint()
