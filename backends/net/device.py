"""`NetBackend`: a netif (``vif``) backend that bridges a guest's network interface to frames.

The xenstore side follows Linux's xen-netback.  Before InitWait the backend dir gets
``feature-rx-copy`` = 1 (Linux's netfront refuses a backend without it), ``feature-rx-flip`` = 0
and ``feature-sg`` = 1; the toolstack's ``mac`` node (`create_vif`) names the guest's MAC.  The
frontend publishes ``tx-ring-ref``, ``rx-ring-ref`` and one ``event-channel`` for both rings,
``request-rx-copy`` = 1 (the only receive path ringkit serves: flipping pages is long gone from
Linux too), ``feature-rx-notify`` and ``feature-sg``.  Split event channels and GSO are not
offered yet.

Multi-queue (``max_queues`` > 1), as Linux's xen-netback: the backend writes
``multi-queue-max-queues``; a frontend asking for n > 1 queues writes
``multi-queue-num-queues`` = n and each queue's ``tx-ring-ref``, ``rx-ring-ref`` and
``event-channel`` under ``queue-<i>/`` (the device framework reads and checks them: a missing
ref, or more queues than offered, refuses the frontend with a typed error in the error node).
Each queue is served as one queue is; frames from the guest on every queue go to the link,
and frames from the link are spread over the queues by `netif.flow_hash`, so one flow keeps
its order.

Packets: the **tx** ring (`ringkit.proto.netif.TX_CODEC`) is read in whole chains
(`ringkit.requests.PostedRequests.take_chain`): a packet's requests are checked (every fragment
inside its page, the first request's size the packet's, at least an Ethernet header, at most 64
KiB, at most `NR_SLOTS_MIN` slots, known extra-info types), then its fragments are copied out
of the frontend's grants (a grant copy: `GrantTable.copy_from_grants`) before the answers go
back; a packet flagged ``NETTXF_csum_blank`` (Linux's netfront leaves every TCP and UDP
checksum to the backend: netif has no key to refuse checksum offload) has its checksum finished
in software (`checksum`), since the link expects whole frames; a packet that fails a check --
or names a ref that cannot be copied from -- gets NETIF_RSP_ERROR on each of its requests and
is not delivered. A chain that runs past what the frontend published, or bad ring indices, end
the connection (`RemoteProtocolError`). The packets published together (up to `TX_BURST`) are
copied with one grant copy and answered with one push (`copy_packets`; a refused copy is redone
packet by packet, so only a packet naming a bad ref is refused). The **rx** ring's requests are
buffers the frontend posts ahead of time: each frame from the link is copied into as many
posted pages as it needs (several only with ``feature-sg``) with `GrantTable.copy_to_grants`,
so that no page is still mapped when its answer is seen (Linux's xen-netfront disables itself
otherwise: "Grant still in use by backend domain"), answered {id, offset 0, ``more_data`` on
all but the last, status = bytes in that page}; a frame too long for the frontend is dropped
and counted. The frames waiting (up to `RX_BURST`) go with one grant copy and one push, into
the buffers already posted; a refused copy is redone frame by frame, so a frame whose buffer is
unusable is the only one lost. Queue 0's task reads the link and hands each frame to its queue
(`spread`).

The packet side is pluggable: any anyio object stream of frames (`link`), such as a
`ringkit.requests`-free memory stream in tests or a `TapDevice`.
"""

from __future__ import annotations

from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import anyio
from anyio.abc import AsyncResource, ObjectStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ringkit import GrantError, RemoteProtocolError, TransportError
from ringkit.abc import PAGE_SIZE, Domain, GrantCopySegment, GrantTable
from ringkit.channel import BackRingChannel
from ringkit.device import Backend, Nodes, Queue
from ringkit.proto import netif
from ringkit.proto.ring import BackRing
from ringkit.requests import (
    GrantMapper,
    IncomingRequest,
    PostedRequests,
    RequestChain,
    RequestError,
    SharedEventChannel,
)
from ringkit.requests.codec import SlotCodec

from .checksum import complete_partial_checksum

__all__ = ("QUEUE_BACKLOG", "RX_BURST", "TX_BURST", "BackendQueueStats", "BackendStats",
           "NetBackRings", "NetBackend", "PacketPlan", "copy_packet", "copy_packets",
           "finish_packet", "plan_packet")

MAX_FRAME = netif.MAX_TX_SIZE
"""Largest frame either direction carries (io/netif.h's 16-bit size)."""

_LANE: ContextVar[tuple[MemoryObjectReceiveStream[bytes], BackendQueueStats]] = \
    ContextVar("_LANE")
"""The queue a serving task works for: where its frames from the link come from, and its
counters (set by `NetBackend.serve`, so `_transmit` / `_receive` keep their one argument)."""

TX_BURST = 64
"""Most tx packets served with one grant copy and one push."""

RX_BURST = 32
"""Most frames from the link copied to the guest with one grant copy and one push."""

QUEUE_BACKLOG = 64
"""Frames from the link held for one queue's rx ring (multi-queue) before the link waits."""


class NetBackRings(AsyncResource):
    """The backend's two rings of one connection: `tx` (requests: packets from the guest)
    and `rx` (requests: buffers the guest posted), over one event channel."""

    def __init__(self, tx: BackRingChannel, rx: BackRingChannel) -> None:
        self.tx = tx
        self.rx = rx

    async def aclose(self) -> None:
        """Close both rings' shells (the pages and the port belong to the queue)."""
        await self.tx.aclose()
        await self.rx.aclose()


@dataclass(slots=True)
class BackendStats:
    """Counters of a `NetBackend` (over all its connections)."""

    tx_packets: int = 0
    """Frames from the guest delivered to the link."""
    tx_refused: int = 0
    """Packets from the guest answered with NETIF_RSP_ERROR."""
    rx_packets: int = 0
    """Frames from the link copied to the guest."""
    rx_dropped: int = 0
    """Frames from the link the guest could not take (too long, or a posted page unusable)."""
    queues: list[BackendQueueStats] = field(default_factory=list)
    """The same counters for each queue index (grown as queues appear)."""

    def queue(self, index: int) -> BackendQueueStats:
        """The counters of queue `index` (created at zero on first use)."""
        while len(self.queues) <= index:
            self.queues.append(BackendQueueStats())
        return self.queues[index]


@dataclass(slots=True)
class BackendQueueStats:
    """One queue's share of `BackendStats` (over all connections)."""

    tx_packets: int = 0
    tx_refused: int = 0
    rx_packets: int = 0
    rx_dropped: int = 0


class NetBackend(Backend[NetBackRings]):
    """The vif backend for one frontend's device `devid`; frames travel over `link`.

    Use as ``async with NetBackend(domain, frontend_id, devid, link=stream) as be:
    await be.run()``.  `link` is an anyio object stream of Ethernet frames (bytes): what the
    guest sends is sent to it, what it receives goes to the guest.  It outlives connections.
    `max_queues`: the most queues offered (``multi-queue-max-queues``; 1 offers none).
    """

    device_type: ClassVar[str] = "vif"
    ring_layout = None
    ring_ref_keys: ClassVar[tuple[str, ...]] = netif.RING_REF_KEYS
    request_codecs: ClassVar[tuple[SlotCodec, ...]] = (netif.TX_CODEC, netif.RX_CODEC)

    def __init__(self, domain: Domain, frontend_id: int, devid: int = 0, *,
                 link: ObjectStream[bytes], max_queues: int | None = None,
                 poll_us: int = 0) -> None:
        super().__init__(domain, frontend_id, devid, max_queues=max_queues, poll_us=poll_us)
        self.link = link
        self.stats = BackendStats()
        self.sg = False
        """Whether the current frontend takes a frame over several rx pages (feature-sg)."""
        self.mac: bytes | None = None
        """The guest's MAC from the toolstack's ``mac`` node (None: there is none)."""
        self._spread: list[MemoryObjectSendStream[bytes]] = []
        self._spread_out: list[MemoryObjectReceiveStream[bytes]] = []

    # ------------------------------------------------------------------ handshake

    async def advertise(self, nodes: Nodes) -> None:
        """``feature-rx-copy`` = 1, ``feature-rx-flip`` = 0, ``feature-sg`` = 1."""
        await nodes.write("feature-rx-copy", 1)
        await nodes.write("feature-rx-flip", 0)
        await nodes.write("feature-sg", 1)

    async def connecting(self, frontend: Nodes) -> None:
        """Refuse a frontend that does not ask for rx-copy; read ``feature-sg`` and the MAC.

        Raises:
            RemoteProtocolError: ``request-rx-copy`` is not 1, or a flag is malformed.
        """
        if not await frontend.read_flag("request-rx-copy"):
            raise RemoteProtocolError(f"{frontend.path}: request-rx-copy is not 1 (only the "
                                      "copying receive path is served)")
        self.sg = await frontend.read_flag("feature-sg")
        mac = await self.own_nodes.read_optional("mac")
        try:
            self.mac = netif.parse_mac(mac) if mac is not None else None
        except ValueError:
            self.mac = None  # the toolstack's node, not the guest's: reported, not fatal
            self.log.warning("%s: ignoring a malformed mac node %r", self.address, mac)

    async def rings_mapped(self, nodes: Nodes) -> None:
        """One stream per queue for the frames the link spreads (`spread`)."""
        self._spread, self._spread_out = [], []
        for _ in self.queues:
            send, receive = anyio.create_memory_object_stream[bytes](QUEUE_BACKLOG)
            self._spread.append(send)
            self._spread_out.append(receive)

    def make_channel(self, queue: Queue[NetBackRings]) -> NetBackRings:
        """Attach to the tx ring (first page) and the rx ring (second), sharing the port."""
        shared = SharedEventChannel(queue.event)
        buf = queue.buffer
        rings = NetBackRings(
            BackRingChannel(BackRing.attach(buf[:PAGE_SIZE], netif.TX_RING), shared.view(),
                            poll_us=self.poll_us),
            BackRingChannel(BackRing.attach(buf[PAGE_SIZE:2 * PAGE_SIZE], netif.RX_RING),
                            shared.view(), poll_us=self.poll_us))
        for channel in (rings.tx, rings.rx):
            channel.on_broken = partial(self.wake, "ring broken")
        return rings

    # ------------------------------------------------------------------ serving

    async def serve(self, queue: Queue[NetBackRings]) -> None:
        """Move packets both ways until the connection ends.  Queue 0's task also reads the
        link, spreading its frames over the queues (`spread`)."""
        mapper = GrantMapper(self.domain.grants, self.peer_id, persistent=False)
        spread, streams = self._spread, self._spread_out
        _LANE.set((streams[queue.index], self.stats.queue(queue.index)))
        try:
            async with anyio.create_task_group() as tg:
                if queue.index == 0:
                    tg.start_soon(self.spread, spread)
                tg.start_soon(self._transmit, PostedRequests(queue.channel.tx, netif.TX_CODEC,
                                                             mapper=mapper))
                tg.start_soon(self._receive, PostedRequests(queue.channel.rx, netif.RX_CODEC,
                                                            mapper=mapper))
        finally:
            with anyio.CancelScope(shield=True):
                await mapper.aclose()
                streams[queue.index].close()
                if queue.index == 0:
                    for send in spread:
                        send.close()

    async def spread(self, queues: list[MemoryObjectSendStream[bytes]]) -> None:
        """Link -> queues: each frame to the queue its flow hashes to (`netif.flow_hash`), so
        the frames of one flow stay in order.  A frame for a queue that has stopped is
        dropped (the connection is ending)."""
        while True:
            frame = await self.link.receive()
            index = netif.flow_hash(frame) % len(queues) if len(queues) > 1 else 0
            try:
                await queues[index].send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.stats.rx_dropped += 1
                self.stats.queue(index).rx_dropped += 1

    async def _transmit(self, tx: PostedRequests) -> None:
        """Guest -> link: the packets published together are checked, copied out with one
        grant copy (`copy_packets`), answered with one push, then delivered."""
        stats = _LANE.get()[1]
        while True:
            chains = [await tx.take_chain()]
            chains += tx.take_ready_chains(limit=TX_BURST - 1)
            frames = await self.packets_of(chains)
            answers: list[tuple[RequestChain, list[bytes] | None]] = []
            for chain, frame in zip(chains, frames, strict=True):
                if isinstance(frame, RequestError):
                    self.stats.tx_refused += 1
                    stats.tx_refused += 1
                    self.log.debug("%s: tx packet refused: %s", self.address, frame.reason)
                    answers.append((chain, None))
                else:
                    answers.append((chain, [netif.encode_tx_response(r.id, netif.Status.OKAY)
                                            for r in chain.requests]))
            await tx.respond_chains(answers)
            for frame in frames:
                if not isinstance(frame, RequestError):
                    self.stats.tx_packets += 1
                    stats.tx_packets += 1
                    await self.link.send(frame)

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        """The frames chains of tx requests carry, or why each is refused (`copy_packets`:
        checked, then copied out of the frontend's grants together)."""
        return await copy_packets(chains, self.domain.grants, self.peer_id)

    async def _receive(self, rx: PostedRequests) -> None:
        """Link (this queue's share of it) -> guest: the frames waiting (up to `RX_BURST`)
        are copied into as many posted pages as each needs with one grant copy, and answered
        with one push."""
        frames, stats = _LANE.get()
        held: deque[bytes] = deque()
        while True:
            if not held:
                try:
                    held.append(await frames.receive())
                except anyio.EndOfStream:
                    await anyio.sleep_forever()  # the link ended: the connection ends
            while len(held) < RX_BURST:
                try:
                    held.append(frames.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            batch: list[tuple[bytes, list[IncomingRequest], list[int]]] = []
            while held:
                frame = held[0]
                pages = -(-len(frame) // PAGE_SIZE)
                if not frame or len(frame) > MAX_FRAME or (pages > 1 and not self.sg):
                    held.popleft()
                    self.stats.rx_dropped += 1
                    stats.rx_dropped += 1
                    continue
                # wait for buffers for the burst's first frame; the rest take what is posted
                requests = rx.take_nowait(pages) if batch else await rx.take(pages)
                if requests is None:
                    break
                held.popleft()
                batch.append((frame, requests,
                              [min(PAGE_SIZE, len(frame) - i * PAGE_SIZE)
                               for i in range(pages)]))
            if batch:
                await self._copy_frames(rx, batch, stats)

    async def _copy_frames(self, rx: PostedRequests,
                           batch: list[tuple[bytes, list[IncomingRequest], list[int]]],
                           stats: BackendQueueStats) -> None:
        """Copy each frame of `batch` into its posted pages (one grant copy for all; if that
        is refused, frame by frame, so that only a frame whose pages are unusable is lost)
        and answer every request with one push: {id, offset 0, ``more_data`` on all but a
        frame's last page, status = bytes in that page, or NETIF_RSP_ERROR}."""
        grants = self.domain.grants
        failed: set[int] = set()
        try:
            # a grant copy: the frontend may end its grants as soon as it sees the answer
            await grants.copy_to_grants(
                self.peer_id, [GrantCopySegment(r.refs[0], 0, n) for _, requests, lengths in batch
                               for r, n in zip(requests, lengths, strict=True)],
                b"".join(frame for frame, _, _ in batch))
        except (GrantError, TransportError):
            for i, (frame, requests, lengths) in enumerate(batch):
                try:
                    await grants.copy_to_grants(
                        self.peer_id, [GrantCopySegment(r.refs[0], 0, n)
                                       for r, n in zip(requests, lengths, strict=True)], frame)
                except (GrantError, TransportError) as exc:
                    self.log.debug("%s: rx buffers refused: %s", self.address, exc)
                    failed.add(i)
        answered: list[IncomingRequest] = []
        responses: list[bytes] = []
        for i, (_, requests, lengths) in enumerate(batch):
            last = len(requests) - 1
            for j, (r, n) in enumerate(zip(requests, lengths, strict=True)):
                responses.append(netif.encode_rx_response(
                    r.id, 0, netif.RxFlag.MORE_DATA if j < last else 0,
                    netif.Status.ERROR if i in failed else n))
            answered += requests
            if i in failed:
                self.stats.rx_dropped += 1
                stats.rx_dropped += 1
            else:
                self.stats.rx_packets += 1
                stats.rx_packets += 1
        await rx.respond(answered, responses)


@dataclass(slots=True)
class PacketPlan:
    """What a checked chain of tx requests asks to copy (`plan_packet`)."""

    segments: list[GrantCopySegment]
    """The packet's bytes in the frontend's pages, in order."""
    csum_blank: bool
    """NETTXF_csum_blank: the checksum is left to the backend."""

    @property
    def size(self) -> int:
        """The packet's length."""
        return sum(seg.length for seg in self.segments)


def plan_packet(chain: RequestChain) -> PacketPlan:
    """Check a chain of tx requests (see the module docstring) and say what to copy.

    Raises:
        RequestError: the packet is malformed; every request of the chain gets
            NETIF_RSP_ERROR.
    """
    if chain.fault is not None:
        raise RequestError(chain.fault)
    for raw in chain.extras:
        extra = netif.parse_extra_info(raw)
        if not extra.known:
            raise RequestError(f"extra-info type {extra.type} is unknown")
    parsed = [netif.parse_tx_request(r.slot) for r in chain.requests]
    total = parsed[0].size
    rest = sum(p.size for p in parsed[1:])
    if total < netif.ETH_HLEN or rest > total:
        raise RequestError(f"a packet of {total} bytes whose later fragments hold {rest}")
    sizes = [total - rest, *(p.size for p in parsed[1:])]
    for p, size in zip(parsed, sizes, strict=True):
        why = netif.check_fragment(p.offset, size)
        if why is not None:
            raise RequestError(f"request {p.id}: {why}")
    return PacketPlan([GrantCopySegment(p.gref, p.offset, size)
                       for p, size in zip(parsed, sizes, strict=True) if size],
                      bool(parsed[0].flags & netif.TxFlag.CSUM_BLANK))


def finish_packet(plan: PacketPlan, frame: bytes) -> bytes:
    """The frame as the link takes it: a csum_blank packet's checksum finished.

    Raises:
        RequestError: NETTXF_csum_blank on a packet with no checksum to finish.
    """
    if not plan.csum_blank:
        return frame
    try:
        return complete_partial_checksum(frame)
    except ValueError as exc:
        raise RequestError(f"NETTXF_csum_blank on a packet with no checksum to finish: "
                           f"{exc}") from None


async def copy_packet(chain: RequestChain, grants: GrantTable, peer: int) -> bytes:
    """The frame a chain of tx requests carries, copied out of the pages `peer` granted
    (`GrantTable.copy_from_grants`: a grant copy, nothing left mapped when it is answered).

    Raises:
        RequestError: the packet is malformed (see the module docstring) or a page cannot be
            copied; every request of the chain gets NETIF_RSP_ERROR.
    """
    plan = plan_packet(chain)
    try:
        frame = await grants.copy_from_grants(peer, plan.segments) if plan.segments else b""
    except (GrantError, TransportError) as exc:
        raise RequestError(f"cannot copy the packet out of its grants: {exc}") from exc
    return finish_packet(plan, frame)


async def copy_packets(chains: list[RequestChain], grants: GrantTable,
                       peer: int) -> list[bytes | RequestError]:
    """`copy_packet` for several chains, with one grant copy for all the packets that pass
    their checks; if that copy is refused (a ref the frontend revoked, say), each packet is
    copied on its own, so only the packets naming a bad ref are refused."""
    plans: list[PacketPlan | RequestError] = []
    for chain in chains:
        try:
            plans.append(plan_packet(chain))
        except RequestError as exc:
            plans.append(exc)
    good = [plan for plan in plans if isinstance(plan, PacketPlan)]
    segments = [seg for plan in good for seg in plan.segments]
    data: bytes | None = None
    if segments:
        try:
            data = await grants.copy_from_grants(peer, segments)
        except (GrantError, TransportError):
            data = None  # find the culprits one by one
    else:
        data = b""
    out: list[bytes | RequestError] = []
    pos = 0
    for chain, plan in zip(chains, plans, strict=True):
        if isinstance(plan, RequestError):
            out.append(plan)
            continue
        try:
            if data is None:
                out.append(await copy_packet(chain, grants, peer))
                continue
            out.append(finish_packet(plan, data[pos:pos + plan.size]))
        except RequestError as exc:
            out.append(exc)
        finally:
            pos += plan.size
    return out
