"""`NetBackend`: a netif (``vif``) backend that bridges a guest's network interface to frames.

The xenstore side follows Linux's xen-netback.  Before InitWait the backend dir gets
``feature-rx-copy`` = 1 (Linux's netfront refuses a backend without it), ``feature-rx-flip`` = 0
and ``feature-sg`` = 1; the toolstack's ``mac`` node (`create_vif`) names the guest's MAC.  The
frontend publishes ``tx-ring-ref``, ``rx-ring-ref`` and one ``event-channel`` for both rings,
``request-rx-copy`` = 1 (the only receive path ringkit serves: flipping pages is long gone from
Linux too), ``feature-rx-notify`` and ``feature-sg``.  The backend also writes
``feature-ipv6-csum-offload`` = 1 and ``feature-split-event-channels`` = 1: a frontend may
write ``event-channel-tx`` and ``event-channel-rx`` instead of ``event-channel`` (each ring
then has its own port; one of the two without the other refuses the frontend with a typed
error).

GSO, as Linux's xen-netback negotiates it: with a link that takes offloads (`offload`; by
default a `TapDevice` opened with ``vnet_hdr``) the backend writes ``feature-gso-tcpv4`` and
``feature-gso-tcpv6`` = 1.  **tx:** a packet with a GSO extra ({size, type}) is checked -- a
known type (TCPv4/TCPv6), a segment size above 0 and within the frame, the frame TCP over the
IP version the type names, one GSO extra only -- and goes to the link whole as a `netif.Frame`
whose `netif.Offload` is the virtio-net header (GSO type and size, ``hdr_len``, the partial
checksum's place, the checksum field set to the pseudo-header's sum as netback recalculates
it); a bad one gets NETIF_RSP_ERROR.  **rx:** the frontend's ``feature-gso-tcpv4``/``v6``
(with ``feature-sg``, checksum offload, and ``feature-ipv6-csum-offload`` for v6) say what it
takes, and the TAP's offloads are set to exactly that (``TUNSETOFFLOAD``), so the host's stack
hands over GSO frames only of those kinds; each goes to the guest with ``NETRXF_extra_info``,
``csum_blank`` and ``data_validated`` on its first response and the GSO extra in the next
response slot (which takes the next posted buffer, netif.h).  A GSO frame the frontend did not
negotiate is dropped and counted (never segmented here).

Multi-queue (``max_queues`` > 1), as Linux's xen-netback: the backend writes
``multi-queue-max-queues``; a frontend asking for n > 1 queues writes
``multi-queue-num-queues`` = n and each queue's ``tx-ring-ref``, ``rx-ring-ref`` and
``event-channel`` under ``queue-<i>/`` (the device framework reads and checks them: a missing
ref, or more queues than offered, refuses the frontend with a typed error in the error node).
Each queue is served as one queue is; frames from the guest on every queue go to the link,
and frames from the link are spread over the queues by `netif.flow_hash`, so one flow keeps
its order.

Packets: the **tx** ring (`ringkit.proto.netif.TX_CODEC`) is read a burst at a time and cut into
whole chains, checked and answered in C (`ringkit.requests.nettx.TxBursts`; a subclass that
overrides `packets_of` gets `RequestChain`s from `PostedRequests.take_chain` instead, checked by
`plan_packet` the same way): a packet's requests are checked (every fragment
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
    Turns,
)
from ringkit.requests.codec import SlotCodec
from ringkit.requests.nettx import TxBurst, TxBursts

from .checksum import complete_checksum, complete_partial_checksum, gso_offload
from .tap import TapDevice

__all__ = ("QUEUE_BACKLOG", "RX_BURST", "TX_BURST", "TX_COPIES", "BackendQueueStats",
           "BackendStats", "NetBackRings", "NetBackend", "PacketPlan", "copy_packet",
           "copy_packets", "finish_packet", "plan_packet")

MAX_FRAME = netif.MAX_TX_SIZE
"""Largest frame either direction carries (io/netif.h's 16-bit size)."""

_LANE: ContextVar[tuple[MemoryObjectReceiveStream[bytes], BackendQueueStats]] = \
    ContextVar("_LANE")
"""The queue a serving task works for: where its frames from the link come from, and its
counters (set by `NetBackend.serve`, so `_transmit` / `_receive` keep their one argument)."""

TX_BURST = 64
"""Most tx packets served with one grant copy and one push."""

_CSUM_BLANK = int(netif.TxFlag.CSUM_BLANK)

TX_COPIES = 2
"""tx bursts copied at once (`NetBackend._transmit`): while one burst's grant copy waits, the
next is taken and its copy asked for."""

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
    tx_gso: int = 0
    """Of `tx_packets`, GSO packets (a GSO extra: delivered whole, for the link to segment)."""
    rx_gso: int = 0
    """Of `rx_packets`, GSO frames passed to the guest whole (with a GSO extra slot)."""
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
    `offload`: whether `link` takes `netif.Frame`s that leave work to it (GSO frames, partial
    checksums); by default, when it is a `TapDevice` opened with ``vnet_hdr``.  Only then is
    GSO offered (``feature-gso-tcpv4``/``v6``), and the TAP's offloads are set to what each
    frontend negotiated.
    """

    device_type: ClassVar[str] = "vif"
    ring_layout = None
    ring_ref_keys: ClassVar[tuple[str, ...]] = netif.RING_REF_KEYS
    split_event_channel_keys: ClassVar[tuple[str, ...]] = netif.SPLIT_EVENT_CHANNEL_KEYS
    request_codecs: ClassVar[tuple[SlotCodec, ...]] = (netif.TX_CODEC, netif.RX_CODEC)

    def __init__(self, domain: Domain, frontend_id: int, devid: int = 0, *,
                 link: ObjectStream[bytes], max_queues: int | None = None,
                 poll_us: int = 0, offload: bool | None = None) -> None:
        super().__init__(domain, frontend_id, devid, max_queues=max_queues, poll_us=poll_us)
        self.link = link
        self.offload = (isinstance(link, TapDevice) and link.vnet_hdr) if offload is None \
            else offload
        """Whether the link takes offloads, so GSO is offered."""
        self.rx_gso: frozenset[netif.GsoType] = frozenset()
        """The GSO kinds the current frontend takes (its ``feature-gso-tcpv4``/``v6``, with
        ``feature-sg`` and checksum offload, as Linux's netback requires)."""
        self.stats = BackendStats()
        self.sg = False
        """Whether the current frontend takes a frame over several rx pages (feature-sg)."""
        self.mac: bytes | None = None
        """The guest's MAC from the toolstack's ``mac`` node (None: there is none)."""
        self._spread: list[MemoryObjectSendStream[bytes]] = []
        self._spread_out: list[MemoryObjectReceiveStream[bytes]] = []

    # ------------------------------------------------------------------ handshake

    async def advertise(self, nodes: Nodes) -> None:
        """``feature-rx-copy`` = 1, ``feature-rx-flip`` = 0, ``feature-sg`` = 1,
        ``feature-ipv6-csum-offload`` = 1 (IPv6 checksums are finished like IPv4's),
        ``feature-split-event-channels`` = 1, and with
        an offloading link ``feature-gso-tcpv4`` = ``feature-gso-tcpv6`` = 1."""
        await nodes.write("feature-rx-copy", 1)
        await nodes.write("feature-rx-flip", 0)
        await nodes.write("feature-sg", 1)
        await nodes.write("feature-ipv6-csum-offload", 1)
        await nodes.write("feature-split-event-channels", 1)
        if self.offload:
            await nodes.write("feature-gso-tcpv4", 1)
            await nodes.write("feature-gso-tcpv6", 1)

    async def connecting(self, frontend: Nodes) -> None:
        """Refuse a frontend that does not ask for rx-copy; read ``feature-sg`` and the MAC.

        Raises:
            RemoteProtocolError: ``request-rx-copy`` is not 1, or a flag is malformed.
        """
        if not await frontend.read_flag("request-rx-copy"):
            raise RemoteProtocolError(f"{frontend.path}: request-rx-copy is not 1 (only the "
                                      "copying receive path is served)")
        self.sg = await frontend.read_flag("feature-sg")
        gso: set[netif.GsoType] = set()
        if self.offload and self.sg and not await frontend.read_flag("feature-no-csum-offload"):
            if await frontend.read_flag("feature-gso-tcpv4"):
                gso.add(netif.GsoType.TCPV4)
            if await frontend.read_flag("feature-gso-tcpv6") and \
                    await frontend.read_flag("feature-ipv6-csum-offload"):
                gso.add(netif.GsoType.TCPV6)
        self.rx_gso = frozenset(gso)
        if isinstance(self.link, TapDevice) and self.link.vnet_hdr:
            self.link.set_offload(self.rx_gso)  # the host hands over only what the guest takes
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
        """Attach to the tx ring (first page) and the rx ring (second), each on its own event
        channel when the frontend split them, else sharing the one port."""
        if queue.split_events:
            tx_event, rx_event = queue.split_events
        else:
            shared = SharedEventChannel(queue.event)
            tx_event, rx_event = shared.view(), shared.view()
        buf = queue.buffer
        rings = NetBackRings(
            BackRingChannel(BackRing.attach(buf[:PAGE_SIZE], netif.TX_RING), tx_event,
                            poll_us=self.poll_us),
            BackRingChannel(BackRing.attach(buf[PAGE_SIZE:2 * PAGE_SIZE], netif.RX_RING),
                            rx_event, poll_us=self.poll_us))
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
                if type(self).packets_of is NetBackend.packets_of:
                    tg.start_soon(self._transmit_parsed,
                                  TxBursts(queue.channel.tx, gso=self.offload))
                else:   # a subclass looks at the chains themselves
                    tg.start_soon(self._transmit, PostedRequests(queue.channel.tx,
                                                                 netif.TX_CODEC, mapper=mapper))
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
        grant copy (`copy_packets`), answered with one push, then delivered.  `TX_COPIES`
        bursts are copied at once (a grant copy waits on the hypervisor, or on the simulated
        Xen's process); bursts are answered and delivered in ring order."""
        taking = anyio.Lock()
        turns = Turns()
        async with anyio.create_task_group() as tg:
            for _ in range(TX_COPIES):
                tg.start_soon(self._transmit_bursts, tx, taking, turns)

    async def _transmit_bursts(self, tx: PostedRequests, taking: anyio.Lock,
                               turns: Turns) -> None:
        """One of `_transmit`'s workers: take a burst (one worker at a time), copy it (at the
        same time as the others), then answer and deliver it in its turn."""
        stats = _LANE.get()[1]
        while True:
            async with taking:
                chains = [await tx.take_chain()]
                chains += tx.take_ready_chains(limit=TX_BURST - 1)
                ticket = turns.take()
            frames = await self.packets_of(chains)
            await turns.wait(ticket)
            try:
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
                        if isinstance(frame, netif.Frame):
                            self.stats.tx_gso += 1
                        await self.link.send(frame)
            finally:
                turns.done()

    async def _transmit_parsed(self, tx: TxBursts) -> None:
        """`_transmit` with each burst cut, checked and answered in C (`TxBursts`; its Python
        reference without the compiled helper) instead of request by request."""
        taking = anyio.Lock()
        turns = Turns()
        async with anyio.create_task_group() as tg:
            for _ in range(TX_COPIES):
                tg.start_soon(self._transmit_parsed_bursts, tx, taking, turns)

    async def _transmit_parsed_bursts(self, tx: TxBursts, taking: anyio.Lock,
                                      turns: Turns) -> None:
        """One of `_transmit_parsed`'s workers (as `_transmit_bursts`)."""
        stats = _LANE.get()[1]
        while True:
            async with taking:
                burst = await tx.take(TX_BURST)
                ticket = turns.take()
            frames = await self._frames_of(burst)
            await turns.wait(ticket)
            try:
                tx.respond(burst)
                for frame in frames:
                    if frame is None:
                        self.stats.tx_refused += 1
                        stats.tx_refused += 1
                        continue
                    self.stats.tx_packets += 1
                    stats.tx_packets += 1
                    if isinstance(frame, netif.Frame):
                        self.stats.tx_gso += 1
                    await self.link.send(frame)
            finally:
                turns.done()

    async def _frames_of(self, burst: TxBurst) -> list[bytes | None]:
        """The frames of a parsed burst, copied out of the frontend's grants with one grant
        copy (a refused copy is redone packet by packet) and finished for the link; None for
        a refused packet, whose answers `burst` now says NETIF_RSP_ERROR."""
        grants, peer = self.domain.grants, self.peer_id
        packets = burst.packets
        segments = [seg for p in packets if p.fault is None for seg in p.segments]
        data: bytes | None = b""
        if segments:
            try:
                data = await grants.copy_from_grants(peer, segments)
            except (GrantError, TransportError):
                data = None  # find the culprits one by one
        out: list[bytes | None] = []
        pos = 0
        for i, packet in enumerate(packets):
            why = packet.fault
            frame: bytes | None = None
            if why is None:
                try:
                    if data is not None:
                        frame = data[pos:pos + packet.size]
                        pos += packet.size
                    elif packet.segments:
                        frame = await grants.copy_from_grants(peer, packet.segments)
                    else:
                        frame = b""
                    frame = finish_packet(PacketPlan(packet.segments, packet.csum_blank,
                                                     packet.gso), frame)
                except (GrantError, TransportError) as exc:
                    why = f"cannot copy the packet out of its grants: {exc}"
                except RequestError as exc:
                    why = exc.reason
            if why is not None:
                frame = None
                burst.refuse(i)
                self.log.debug("%s: tx packet refused: %s", self.address, why)
            out.append(frame)
        return out

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        """The frames chains of tx requests carry, or why each is refused (`copy_packets`:
        checked, then copied out of the frontend's grants together)."""
        return await copy_packets(chains, self.domain.grants, self.peer_id, gso=self.offload)

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
            batch: list[_RxFrame] = []
            while held:
                frame = held[0]
                pages = -(-len(frame) // PAGE_SIZE)
                verdict, first_flags = self._rx_offload(frame)
                extra = verdict if isinstance(verdict, bytes) else None
                if not frame or len(frame) > MAX_FRAME or (pages > 1 and not self.sg) \
                        or verdict is False:
                    held.popleft()
                    self.stats.rx_dropped += 1
                    stats.rx_dropped += 1
                    continue
                if extra is None and isinstance(frame, netif.Frame):
                    offload = frame.offload
                    if offload is not None and offload.flags & netif.VNET_F_NEEDS_CSUM:
                        whole = bytearray(frame)
                        try:
                            complete_checksum(whole, offload.csum_start, offload.csum_offset)
                        except ValueError:
                            held.popleft()
                            self.stats.rx_dropped += 1
                            stats.rx_dropped += 1
                            continue
                        frame = bytes(whole)
                # wait for buffers for the burst's first frame; the rest take what is posted
                count = pages + (extra is not None)
                taken = rx.take_nowait(count) if batch else await rx.take(count)
                if taken is None:
                    break
                held.popleft()
                batch.append(_RxFrame(frame, taken, extra, first_flags))
            if batch:
                await self._copy_frames(rx, batch, stats)

    async def _copy_frames(self, rx: PostedRequests, batch: list[_RxFrame],
                           stats: BackendQueueStats) -> None:
        """Copy each frame of `batch` into its posted pages (one grant copy for all; if that
        is refused, frame by frame, so that only a frame whose pages are unusable is lost)
        and answer every request with one push: {id, offset 0, ``more_data`` on all but a
        frame's last page, status = bytes in that page, or NETIF_RSP_ERROR}; a GSO frame's
        extra slot answers its second buffer (netif.h)."""
        grants = self.domain.grants
        failed: set[int] = set()
        try:
            # a grant copy: the frontend may end its grants as soon as it sees the answer
            await grants.copy_to_grants(
                self.peer_id, [seg for item in batch for seg in item.segments()],
                b"".join(item.frame for item in batch))
        except (GrantError, TransportError):
            for i, item in enumerate(batch):
                try:
                    await grants.copy_to_grants(self.peer_id, item.segments(), item.frame)
                except (GrantError, TransportError) as exc:
                    self.log.debug("%s: rx buffers refused: %s", self.address, exc)
                    failed.add(i)
        answered: list[IncomingRequest] = []
        responses: list[bytes] = []
        for i, item in enumerate(batch):
            answered += item.taken
            if i in failed:
                last = len(item.taken) - 1
                responses += [netif.encode_rx_response(r.id, 0, netif.RxFlag.MORE_DATA
                                                       if j < last else 0, netif.Status.ERROR)
                              for j, r in enumerate(item.taken)]
                self.stats.rx_dropped += 1
                stats.rx_dropped += 1
                continue
            responses += item.responses()
            if item.extra is not None:
                self.stats.rx_gso += 1
            self.stats.rx_packets += 1
            stats.rx_packets += 1
        await rx.respond(answered, responses)

    def _rx_offload(self, frame: bytes) -> tuple[bytes | bool | None, netif.RxFlag]:
        """For a frame from the link: the GSO extra slot to send with it (None: a plain frame;
        False: a GSO frame this frontend did not negotiate -- dropped) and its first
        response's checksum flags."""
        offload = netif.offload_of(frame)
        if offload is None or offload.gso_type == netif.VNET_GSO_NONE:
            return None, netif.RxFlag(0)
        try:
            kind = offload.gso
        except ValueError:
            return False, netif.RxFlag(0)
        if kind not in self.rx_gso or not 0 < offload.gso_size <= len(frame):
            return False, netif.RxFlag(0)
        return (netif.encode_gso(offload.gso_size, kind),
                netif.RxFlag.EXTRA_INFO | netif.RxFlag.CSUM_BLANK | netif.RxFlag.DATA_VALIDATED)


@dataclass(slots=True)
class _RxFrame:
    """A frame from the link and the posted buffers it takes (`taken`, in ring order: with a
    GSO `extra`, the second answers the extra slot)."""

    frame: bytes
    taken: list[IncomingRequest]
    extra: bytes | None
    first_flags: netif.RxFlag

    @property
    def pages(self) -> list[IncomingRequest]:
        """The buffers the frame's bytes go to."""
        return [self.taken[0], *self.taken[2:]] if self.extra is not None else self.taken

    def lengths(self) -> list[int]:
        size = len(self.frame)
        return [min(PAGE_SIZE, size - i * PAGE_SIZE) for i in range(len(self.pages))]

    def segments(self) -> list[GrantCopySegment]:
        return [GrantCopySegment(r.refs[0], 0, n)
                for r, n in zip(self.pages, self.lengths(), strict=True)]

    def responses(self) -> list[bytes]:
        """The answers to `taken`: a page's bytes each, ``more_data`` on all but the last;
        with a GSO extra, the first carries the checksum flags and the extra slot follows."""
        pages, lengths = self.pages, self.lengths()
        last = len(pages) - 1
        out = [netif.encode_rx_response(r.id, 0, netif.RxFlag.MORE_DATA if i < last else 0, n)
               for i, (r, n) in enumerate(zip(pages, lengths, strict=True))]
        if self.extra is not None:
            out[0] = netif.encode_rx_response(
                pages[0].id, 0, self.first_flags | (netif.RxFlag.MORE_DATA if last else 0),
                lengths[0])
            out.insert(1, self.extra)
        return out


@dataclass(slots=True)
class PacketPlan:
    """What a checked chain of tx requests asks to copy (`plan_packet`)."""

    segments: list[GrantCopySegment]
    """The packet's bytes in the frontend's pages, in order."""
    csum_blank: bool
    """NETTXF_csum_blank: the checksum is left to the backend."""
    segmentation: netif.GsoInfo | None = None
    """The GSO extra's segmentation (a frame the link segments), if there is one."""

    @property
    def size(self) -> int:
        """The packet's length."""
        return sum(seg.length for seg in self.segments)


def plan_packet(chain: RequestChain, *, gso: bool = False) -> PacketPlan:
    """Check a chain of tx requests (see the module docstring) and say what to copy.  A GSO
    extra is allowed only with `gso` (the link takes offloads).

    Raises:
        RequestError: the packet is malformed; every request of the chain gets
            NETIF_RSP_ERROR.
    """
    if chain.fault is not None:
        raise RequestError(chain.fault)
    segmentation: netif.GsoInfo | None = None
    for raw in chain.extras:
        extra = netif.parse_extra_info(raw)
        if not extra.known:
            raise RequestError(f"extra-info type {extra.type} is unknown")
        if extra.type == netif.ExtraType.GSO:
            if not gso:
                raise RequestError("a GSO extra, but GSO was not offered")
            if segmentation is not None:
                raise RequestError("two GSO extras on one packet")
            segmentation = netif.parse_gso(extra)
            if segmentation.type not in (netif.GsoType.TCPV4, netif.GsoType.TCPV6):
                raise RequestError(f"GSO type {segmentation.type} is unknown")
            if segmentation.size == 0:
                raise RequestError("a GSO extra with segment size 0")
    # (gref, offset, flags, id, size) of each request: plain tuples, as this runs per packet
    unpack = netif.TX_REQUEST.unpack_from
    parsed = [unpack(r.slot) for r in chain.requests]
    total = parsed[0][4]
    rest = 0
    for fields in parsed[1:]:
        rest += fields[4]
    if total < netif.ETH_HLEN or rest > total:
        raise RequestError(f"a packet of {total} bytes whose later fragments hold {rest}")
    segments: list[GrantCopySegment] = []
    for i, (gref, offset, _, rid, size) in enumerate(parsed):
        if i == 0:
            size = total - rest
        if offset + size > PAGE_SIZE:
            raise RequestError(f"request {rid}: {netif.check_fragment(offset, size)}")
        if size:
            segments.append(GrantCopySegment(gref, offset, size))
    return PacketPlan(segments, bool(parsed[0][2] & _CSUM_BLANK), segmentation)


def finish_packet(plan: PacketPlan, frame: bytes) -> bytes:
    """The frame as the link takes it: with a GSO extra a `netif.Frame` whose `netif.Offload`
    says how to segment it, its checksum left partial; otherwise a csum_blank packet's
    checksum finished.

    Raises:
        RequestError: a GSO extra on a packet that cannot take it, or NETTXF_csum_blank on a
            packet with no checksum to finish.
    """
    if plan.segmentation is not None:
        whole = bytearray(frame)
        try:
            offload = gso_offload(whole, netif.GsoType(plan.segmentation.type),
                                  plan.segmentation.size)
        except ValueError as exc:
            raise RequestError(f"a GSO extra on a packet that cannot take it: {exc}") from None
        return netif.Frame(whole, offload)
    if not plan.csum_blank:
        return frame
    try:
        return complete_partial_checksum(frame)
    except ValueError as exc:
        raise RequestError(f"NETTXF_csum_blank on a packet with no checksum to finish: "
                           f"{exc}") from None


async def copy_packet(chain: RequestChain, grants: GrantTable, peer: int, *,
                      gso: bool = False) -> bytes:
    """The frame a chain of tx requests carries, copied out of the pages `peer` granted
    (`GrantTable.copy_from_grants`: a grant copy, nothing left mapped when it is answered),
    as `finish_packet` makes it (`gso`: see `plan_packet`).

    Raises:
        RequestError: the packet is malformed (see the module docstring) or a page cannot be
            copied; every request of the chain gets NETIF_RSP_ERROR.
    """
    plan = plan_packet(chain, gso=gso)
    try:
        frame = await grants.copy_from_grants(peer, plan.segments) if plan.segments else b""
    except (GrantError, TransportError) as exc:
        raise RequestError(f"cannot copy the packet out of its grants: {exc}") from exc
    return finish_packet(plan, frame)


async def copy_packets(chains: list[RequestChain], grants: GrantTable, peer: int, *,
                       gso: bool = False) -> list[bytes | RequestError]:
    """`copy_packet` for several chains, with one grant copy for all the packets that pass
    their checks; if that copy is refused (a ref the frontend revoked, say), each packet is
    copied on its own, so only the packets naming a bad ref are refused."""
    plans: list[PacketPlan | RequestError] = []
    for chain in chains:
        try:
            plans.append(plan_packet(chain, gso=gso))
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
                out.append(await copy_packet(chain, grants, peer, gso=gso))
                continue
            out.append(finish_packet(plan, data[pos:pos + plan.size]))
        except RequestError as exc:
            out.append(exc)
        finally:
            pos += plan.size
    return out
