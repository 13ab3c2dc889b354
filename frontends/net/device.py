"""`NetFrontend`: a netif (``vif``) frontend exposing the guest's link as a stream of frames.

The xenstore side follows Linux's xen-netfront.  The backend must offer ``feature-rx-copy``
(as Linux's netfront insists).  The frontend shares a tx ring and an rx ring and publishes
``tx-ring-ref``, ``rx-ring-ref``, one ``event-channel`` for both, ``request-rx-copy`` = 1,
``feature-rx-notify`` = 1, ``feature-sg`` = 1 and ``feature-no-csum-offload`` = 1 (its frames
carry their checksums; it fills in none) -- or, with ``offload=True``, ``feature-gso-tcpv4`` =
``feature-gso-tcpv6`` = ``feature-ipv6-csum-offload`` = 1 instead.  When the backend offers
``feature-split-event-channels`` it writes ``event-channel-tx`` and ``event-channel-rx`` (one
port per ring) instead of ``event-channel`` (``split_event_channels=False``: never).

Offloads (``offload=True``, for a program whose frames may leave work to a device, such as a
TAP with a virtio-net header): `send` takes a `netif.Frame` whose `netif.Offload` asks for GSO
(of a kind the backend offered: `tx_gso`) and sends it whole, flagged ``csum_blank`` and
``data_validated`` with a GSO extra slot after its first request; a frame that only leaves its
checksum goes flagged ``csum_blank``.  Received packets with a GSO extra become `netif.Frame`s
that say how to segment them; a ``csum_blank`` packet without one has its checksum finished
here.  A bad extra (unknown type, a GSO extra that does not fit the frame) drops the packet
and counts it (``rx_errors``), as Linux's netfront does.

Like Linux's netfront it says Connected at once, its receive buffers posted, without waiting
for the backend's Connected (`connects_first`): Linux's xen-netback connects only when it sees
the frontend Connected; opening still waits for the backend to follow.  The MAC is the
toolstack's ``mac`` node in the frontend dir.  (The device framework also writes its generic
``ring-ref`` = the tx ring's ref, which netif backends ignore.)

Multi-queue (``max_queues`` > 1), as Linux's xen-netfront: when the backend offers
``multi-queue-max-queues``, the frontend asks for the smaller of the two maxima, writes
``multi-queue-num-queues`` and each queue's ``tx-ring-ref``, ``rx-ring-ref`` and
``event-channel`` under ``queue-<i>/``.  Every queue has its own tx and rx rings, pools and
tasks; `send` puts a frame on the queue its flow hashes to (`netif.flow_hash`: one TCP
connection stays in order), and frames received on every queue go to the one `receive`.

Sending (`send`): a frame is copied into pages of a `GrantPool` granted once per connection,
one tx request per page (``more_data`` on all but the last, the first's size the frame's),
and pushed with one push; the answers free the ids and pages -- `send` waits only for room in
the window, as a NIC queue does.  Where the compiled helper has it, that bookkeeping runs in C
(`ringkit.requests.nettx.NetTxTable`: a batch of frames encoded with one call, a burst of
answers matched with one); otherwise, or with ``native_tx=False``, its Python reference does
(`PythonTxPath`, whose answers a reaper task frees).  Receiving: every rx slot
holds a posted page (`RequestQueue` requests sent ahead, answered when a packet arrives); each
answered chain (``more_data``) is checked, copied out, its pages posted again, and the frame
queued for `receive` (dropped and counted when the program does not keep up, as a NIC does).

Never trusting the backend: a response id not in flight, a tx status netif does not define
(or NETIF_RSP_NULL answering no extra-info slot of ours), an rx fragment past its page, a
flag this frontend did not negotiate (extra-info and checksum-blank without offloads, GSO
prefix) or an rx chain longer than `netif.NR_SLOTS_MIN` end the connection with
`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import anyio
from anyio.abc import AsyncResource, ObjectStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from ringkit.backends.net.checksum import complete_partial_checksum, gso_offload

from ringkit import ConfigError, PeerGoneError, RemoteProtocolError
from ringkit.abc import PAGE_SIZE, Domain
from ringkit.channel import FrontRingChannel
from ringkit.device import Frontend, Nodes, Queue, RingChoice
from ringkit.proto import netif
from ringkit.proto.ring import FrontRing
from ringkit.requests import (
    Completions,
    GrantPool,
    Request,
    RequestQueue,
    SharedEventChannel,
    nettx,
)
from ringkit.requests.codec import SlotCodec

__all__ = ("FrameStream", "FrontendStats", "NetFrontRings", "NetFrontend", "FrontendQueueStats",
           "check_rx", "check_rx_offload", "check_tx")

MAX_FRAME = netif.MAX_TX_SIZE
"""Largest frame the frontend sends or accepts (io/netif.h's 16-bit size)."""


class NetFrontRings(AsyncResource):
    """The frontend's two rings of one connection: `tx` and `rx` over one event channel."""

    def __init__(self, tx: FrontRingChannel, rx: FrontRingChannel) -> None:
        self.tx = tx
        self.rx = rx

    async def aclose(self) -> None:
        """Close both shells (the framework unshares their pages)."""
        await self.tx.aclose()
        await self.rx.aclose()


@dataclass(slots=True)
class FrontendStats:
    """Counters of a `NetFrontend` (over all its connections)."""

    tx_packets: int = 0
    tx_errors: int = 0
    """Packets the backend answered with an error status."""
    rx_packets: int = 0
    rx_errors: int = 0
    """Packets the backend could not deliver (an error status in their chain)."""
    rx_dropped: int = 0
    """Frames received while `receive`'s queue was full."""
    tx_gso: int = 0
    """Of `tx_packets`, GSO frames sent whole with a GSO extra."""
    tx_pushes: int = 0
    """Pushes of tx requests (each at most one notification): `send_batch` puts a batch's
    packets on the ring with one."""
    rx_gso: int = 0
    """Of `rx_packets`, GSO frames received whole with a GSO extra."""
    queues: list[FrontendQueueStats] = field(default_factory=list)
    """The same counters for each queue index (grown as queues appear)."""

    def queue(self, index: int) -> FrontendQueueStats:
        """The counters of queue `index` (created at zero on first use)."""
        while len(self.queues) <= index:
            self.queues.append(FrontendQueueStats())
        return self.queues[index]


@dataclass(slots=True)
class FrontendQueueStats:
    """One queue's share of `FrontendStats` (over all connections)."""

    tx_packets: int = 0
    tx_errors: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0


@dataclass(slots=True)
class _TxPlan:
    """One frame to send: its bytes, its first request's checksum flags, its GSO segment
    size and type (0: none)."""

    data: memoryview
    first_flags: int
    gso_size: int = 0
    gso_type: int = 0


@dataclass(eq=False)
class _Lane:
    """One queue's sending and receiving state in the current connection."""

    tx: RequestQueue
    rx: RequestQueue
    path: nettx.NetTxTable | nettx.PythonTxPath
    """How frames go on the tx ring: in C, or the Python reference (`ringkit.requests.nettx`)."""
    stats: FrontendQueueStats
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class NetFrontend(Frontend[NetFrontRings]):
    """``await vif.send(frame)`` / ``await vif.receive()``: Ethernet frames over netif.

    `tx_pages` / `rx_buffers`: pages granted for sending, and receive buffers kept posted (at
    most the ring's 256), each per queue; by default 256 shared out over `max_queues` (at
    least `netif.NR_SLOTS_MIN`, a largest frame's pages), so that more queues do not multiply
    the grants held.  `backlog`: received frames held for `receive`
    before more are dropped.  `max_queues`: the most queues to ask for (the backend's
    ``multi-queue-max-queues`` caps it; 1 asks for none).  `native_tx`: send through the C
    tx table where the compiled helper has it (False: the Python path, the reference).
    """

    device_type: ClassVar[str] = "vif"
    ring_ref_keys: ClassVar[tuple[str, ...]] = netif.RING_REF_KEYS
    split_event_channel_keys: ClassVar[tuple[str, ...]] = netif.SPLIT_EVENT_CHANNEL_KEYS
    request_codecs: ClassVar[tuple[SlotCodec, ...]] = (netif.TX_CODEC, netif.RX_CODEC)
    ring_layout = None
    connects_first: ClassVar[bool] = True
    """As Linux's xen-netfront: Connected as soon as the rings are published and the receive
    buffers posted; Linux's xen-netback maps the rings only once it sees that."""

    def __init__(self, domain: Domain, backend_id: int = 0, devid: int = 0, *,
                 tx_pages: int | None = None, rx_buffers: int | None = None,
                 backlog: int = 1024, max_queues: int | None = None,
                 poll_us: int = 0, offload: bool = False,
                 split_event_channels: bool = True, native_tx: bool = True) -> None:
        share = max(netif.NR_SLOTS_MIN, netif.RX_RING_SIZE // (max_queues or 1))
        tx_pages = share if tx_pages is None else tx_pages
        rx_buffers = share if rx_buffers is None else rx_buffers
        if not 1 <= rx_buffers <= netif.RX_RING_SIZE or tx_pages < netif.NR_SLOTS_MIN:
            raise ConfigError(f"rx_buffers must be 1..{netif.RX_RING_SIZE} and tx_pages at "
                              f"least {netif.NR_SLOTS_MIN}")
        super().__init__(domain, backend_id, devid, max_queues=max_queues, poll_us=poll_us)
        self.tx_pages = tx_pages
        self.rx_buffers = rx_buffers
        self.split_event_channels = split_event_channels
        self.native_tx = native_tx
        """Whether the tx ring goes through the C table (`ringkit.requests.nettx`) where the
        compiled helper has it; False keeps the Python path (the reference)."""
        """Whether to give each ring its own event channel when the backend offers
        ``feature-split-event-channels`` (``event-channel-tx``/``-rx``)."""
        self.offload = offload
        """Whether the program's frames may leave work to the device (`netif.Frame`): then
        GSO and checksum offload are asked for and used."""
        self.tx_gso: frozenset[netif.GsoType] = frozenset()
        """The GSO kinds the backend takes (its ``feature-gso-tcpv4``/``v6``; with `offload`
        and ``feature-sg`` only): `send` accepts GSO frames of these kinds."""
        self.stats = FrontendStats()
        self.mac: bytes | None = None
        """The MAC the toolstack gave this interface (``mac`` node), or None."""
        self.sg = False
        """Whether the backend takes frames over several pages (its ``feature-sg``)."""
        self.connection_error: BaseException | None = None
        """What broke the last connection's rings -- the backend breaking the protocol, a
        `RemoteProtocolError` -- or None (connected, or it ended otherwise).  `send` raises
        its `PeerGoneError` from it while disconnected."""
        self._lanes: list[_Lane] = []
        self._frames_in: MemoryObjectSendStream[bytes]
        self._frames_out: MemoryObjectReceiveStream[bytes]
        self._frames_in, self._frames_out = anyio.create_memory_object_stream[bytes](backlog)

    # ------------------------------------------------------------------ handshake

    async def negotiate(self, backend: Nodes) -> RingChoice | None:
        """Insist on ``feature-rx-copy``; read ``feature-sg``.

        Raises:
            RemoteProtocolError: the backend offers no rx-copy.
        """
        if not await backend.read_flag("feature-rx-copy"):
            raise RemoteProtocolError(f"{backend.path}: the backend does not offer "
                                      "feature-rx-copy")
        self.sg = await backend.read_flag("feature-sg")
        gso: set[netif.GsoType] = set()
        if self.offload and self.sg:
            if await backend.read_flag("feature-gso-tcpv4"):
                gso.add(netif.GsoType.TCPV4)
            if await backend.read_flag("feature-gso-tcpv6"):
                gso.add(netif.GsoType.TCPV6)
        self.tx_gso = frozenset(gso)
        split = self.split_event_channels and \
            await backend.read_flag("feature-split-event-channels")
        return RingChoice(self.max_ring_page_order, self.max_queues, split_event_channels=split)

    def make_channel(self, queue: Queue[NetFrontRings]) -> NetFrontRings:
        """Initialise the tx ring (the queue's first page) and the rx ring (its second), each
        on its own event channel with split event channels, else on one shared port."""
        if queue.split_events:
            tx_event, rx_event = queue.split_events
        else:
            shared = SharedEventChannel(queue.event)
            tx_event, rx_event = shared.view(), shared.view()
        buf = queue.buffer
        rings = NetFrontRings(
            FrontRingChannel(FrontRing.init(buf[:PAGE_SIZE], netif.TX_RING),
                             tx_event, poll_us=self.poll_us),
            FrontRingChannel(FrontRing.init(buf[PAGE_SIZE:2 * PAGE_SIZE], netif.RX_RING),
                             rx_event, poll_us=self.poll_us))
        for channel in (rings.tx, rings.rx):
            channel.on_broken = partial(self.wake, "ring broken")
        return rings

    async def publish(self, nodes: Nodes) -> None:
        """The features this frontend has (the framework wrote both ring refs, as
        `ring_ref_keys` names them)."""
        await nodes.write("request-rx-copy", 1)
        await nodes.write("feature-rx-notify", 1)
        await nodes.write("feature-sg", 1)
        if self.offload:
            await nodes.write("feature-gso-tcpv4", 1)
            await nodes.write("feature-gso-tcpv6", 1)
            await nodes.write("feature-ipv6-csum-offload", 1)
        else:
            await nodes.write("feature-no-csum-offload", 1)

    async def peer_connected(self, backend: Nodes) -> None:
        """Grant the tx pool and the rx buffers, post every rx buffer, start the tasks (right
        after publishing the rings: `connects_first`)."""
        self.connection_error = None
        mac = await self.own_nodes.read_optional("mac")
        try:
            self.mac = netif.parse_mac(mac) if mac is not None else None
        except ValueError:
            self.mac = None
        self._lanes = []
        for queue in self.queues:
            rings = queue.channel
            tx_pool = await GrantPool.share(self.domain.grants, self.peer_id, self.tx_pages)
            try:
                rx_pool = await GrantPool.share(self.domain.grants, self.peer_id,
                                                self.rx_buffers)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await tx_pool.aclose()
                raise
            tx = RequestQueue([rings.tx], netif.TX_CODEC, pool=tx_pool, check=check_tx)
            rx = RequestQueue([rings.rx], netif.RX_CODEC, pool=rx_pool,
                              window=self.rx_buffers,
                              check=check_rx_offload if self.offload else check_rx)
            stats = self.stats.queue(queue.index)
            max_pages = netif.NR_SLOTS_MIN if self.sg else 1
            answered = partial(self._tx_answered, stats)
            path: nettx.NetTxTable | nettx.PythonTxPath
            if self.native_tx and not nettx.unavailable():
                path = nettx.NetTxTable(tx, max_pages=max_pages, on_answered=answered)
            else:
                path = nettx.PythonTxPath(tx, max_pages=max_pages, on_answered=answered)
            lane = _Lane(tx, rx, path, stats)
            self._lanes.append(lane)
            rx_done = rx.completions()
            self._post(rx, rx_done, self.rx_buffers)
            self.tasks.start_soon(tx.run)
            self.tasks.start_soon(rx.run)
            if isinstance(path, nettx.PythonTxPath):
                self.tasks.start_soon(self._reap, path)
            self.tasks.start_soon(self._deliver, lane, rx_done)

    async def disconnected(self) -> None:
        """Fail both queues (every sender wakes with `PeerGoneError`) and revoke their pools."""
        lanes, self._lanes = self._lanes, []
        for queue in [q for lane in lanes for q in (lane.tx, lane.rx)]:
            if self.connection_error is None and not isinstance(
                    queue.error, (PeerGoneError, type(None))):
                self.connection_error = queue.error
            queue.fail(PeerGoneError(f"{self.address}: disconnected"))
            assert queue.pool is not None
            await queue.pool.aclose()

    # ------------------------------------------------------------------ frames

    async def send(self, frame: bytes | bytearray | memoryview) -> None:
        """Queue one Ethernet frame for the backend; wait only for room in the tx window.

        Raises:
            ValueError: shorter than an Ethernet header, longer than 64 KiB, or over one page
                to a backend without ``feature-sg``.
            PeerGoneError: not connected (see `wait_connected`), or the connection went away.
            RemoteProtocolError: the backend broke the protocol.
        """
        await self.send_batch((frame,))

    async def send_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        """`send` for several frames, in order, put on the ring together: one push (at most one
        notification) per queue, or one more each time the window fills and the frames so far
        go out before waiting for room.  Every frame is checked before any is queued.

        Raises:
            ValueError: a frame `send` would refuse (none of the batch is queued then).
            PeerGoneError: as `send`.
        """
        plans = [self._tx_plan(frame) for frame in frames]
        lanes = self._lanes
        if not lanes:
            raise PeerGoneError(f"{self.address} is not connected") from self.connection_error
        if len(lanes) == 1:
            await self._send_plans(lanes[0], plans)
            return
        groups: dict[int, list[_TxPlan]] = {}
        for plan in plans:
            groups.setdefault(netif.flow_hash(plan.data) % len(lanes), []).append(plan)
        for index, group in groups.items():
            await self._send_plans(lanes[index], group)

    def _tx_plan(self, frame: bytes | bytearray | memoryview) -> _TxPlan:
        """What one frame takes on the tx ring (its first flags, its GSO segmentation)."""
        offload = netif.offload_of(frame)
        data = memoryview(frame).cast("B")
        size = len(data)
        pages = max(1, -(-size // PAGE_SIZE))
        if size < netif.ETH_HLEN or size > MAX_FRAME or (pages > 1 and not self.sg):
            raise ValueError(f"cannot send a {size}-byte frame "
                             f"({'with' if self.sg else 'without'} feature-sg)")
        if offload is None:
            return _TxPlan(data, 0)
        first_flags = 0
        if offload.gso_type != netif.VNET_GSO_NONE or offload.flags & netif.VNET_F_NEEDS_CSUM:
            first_flags = int(netif.TxFlag.CSUM_BLANK | netif.TxFlag.DATA_VALIDATED)
        if offload.gso_type == netif.VNET_GSO_NONE:
            return _TxPlan(data, first_flags)
        kind = offload.gso
        if kind not in self.tx_gso or not 0 < offload.gso_size <= size:
            raise ValueError(f"cannot send a GSO {kind.name} frame (segments of "
                             f"{offload.gso_size}) to a backend taking "
                             f"{sorted(k.name for k in self.tx_gso)}")
        return _TxPlan(data, first_flags, offload.gso_size, int(kind))

    async def _send_plans(self, lane: _Lane, plans: list[_TxPlan]) -> None:
        """Put `plans` on `lane`'s tx ring, each packet's requests in consecutive slots: as
        many whole packets per push as fit, waiting for room (answers) when the next does
        not; the packets pushed before a cancellation stay sent."""
        path = lane.path
        frames = [(plan.data, plan.first_flags, plan.gso_size, plan.gso_type)
                  for plan in plans]
        async with lane.lock:
            done = 0
            while done < len(frames):
                sent = path.send_nowait(frames[done:] if done else frames)
                if sent:
                    gso = sum(1 for plan in plans[done:done + sent] if plan.gso_type)
                    done += sent
                    self.stats.tx_pushes += 1
                    self.stats.tx_packets += sent
                    lane.stats.tx_packets += sent
                    self.stats.tx_gso += gso
                else:
                    await path.room(frames[done])

    def _tx_answered(self, stats: FrontendQueueStats, packets: int, errors: int) -> None:
        """A burst of tx answers (either path): count the packets refused."""
        if errors:
            self.stats.tx_errors += errors
            stats.tx_errors += errors

    async def receive(self) -> bytes:
        """The next Ethernet frame from the backend, waiting for one.  Frames received while
        disconnected are not lost: the queue outlives connections.

        Raises:
            anyio.EndOfStream: the frontend was closed.
        """
        return await self._frames_out.receive()

    async def receive_batch(self, limit: int = 64) -> list[bytes]:
        """The frames received so far, at least one (waiting for it) and at most `limit`.

        Raises:
            anyio.EndOfStream: the frontend was closed.
        """
        frames = [await self._frames_out.receive()]
        while len(frames) < limit:
            try:
                frames.append(self._frames_out.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return frames

    @property
    def stream(self) -> FrameStream:
        """This link as an anyio object stream of frames (`FrameStream`)."""
        return FrameStream(self)

    async def aclose(self) -> None:
        """Close the device (see `Frontend.aclose`), then end `receive`'s stream."""
        try:
            await super().aclose()
        finally:
            self._frames_in.close()

    # ------------------------------------------------------------------ tasks

    def _post(self, queue: RequestQueue, done: Completions, count: int) -> None:
        held: list[Request] = []
        for _ in range(count):
            request = queue.prepare_nowait(1)
            if request is None:  # the window and the pool are sized for every buffer
                raise RuntimeError("no rx buffer free to post")
            netif.RX_REQUEST.pack_into(request.slot, 0, request.id, request.refs[0])
            held.append(request)
        if held:
            queue.send_batch_nowait(held, done)

    @staticmethod
    async def _reap(path: nettx.PythonTxPath) -> None:
        """The Python tx path's answers: free them, count the refused packets."""
        while True:
            try:
                answered = await path.completions.get()
            except PeerGoneError:
                return  # the connection ended: its teardown already said why
            path.reap(answered)

    async def _deliver(self, lane: _Lane, done: Completions) -> None:
        queue = lane.rx
        chain: list[Request] = []
        more = False
        while True:
            try:
                answered = await done.get()
            except PeerGoneError:
                return  # the connection ended: its teardown already said why
            for request in answered:
                chain.append(request)
                if request.extra:  # an extra-info slot (the layer matched it by position)
                    if len(chain) > netif.NR_SLOTS_MIN + netif.EXTRA_TYPE_MAX:
                        raise RemoteProtocolError(f"{self.address}: an rx packet with more "
                                                  "extra-info slots than netif has types")
                    if netif.parse_extra_info(request.response).flags & \
                            netif.EXTRA_FLAG_MORE or more:
                        continue
                else:
                    flags = netif.parse_rx_response(request.response)[2]
                    more = bool(flags & netif.RxFlag.MORE_DATA)
                    if sum(not r.extra for r in chain) > netif.NR_SLOTS_MIN:
                        raise RemoteProtocolError(
                            f"{self.address}: an rx packet over more than "
                            f"{netif.NR_SLOTS_MIN} buffers")
                    if more or flags & netif.RxFlag.EXTRA_INFO:
                        continue
                more = False
                frame = self._frame_of(chain)
                if isinstance(frame, netif.Frame):
                    self.stats.rx_gso += 1
                for part in chain:
                    queue.release(part)
                self._post(queue, done, len(chain))
                chain = []
                if frame is None:
                    self.stats.rx_errors += 1
                    lane.stats.rx_errors += 1
                    continue
                try:
                    self._frames_in.send_nowait(frame)
                    self.stats.rx_packets += 1
                    lane.stats.rx_packets += 1
                except anyio.WouldBlock:
                    self.stats.rx_dropped += 1
                    lane.stats.rx_dropped += 1

    @staticmethod
    def _frame_of(chain: list[Request]) -> bytes | None:
        """The frame an answered rx chain carries (None: an error, or one not to deliver):
        a GSO extra makes it a `netif.Frame` leaving its segmentation to the device; a
        checksum left blank is finished here otherwise."""
        parts = []
        segmentation: netif.GsoInfo | None = None
        for request in chain:
            if request.extra:
                extra = netif.parse_extra_info(request.response)
                if not extra.known or (extra.type == netif.ExtraType.GSO
                                       and segmentation is not None):
                    return None  # as Linux's netfront: the packet is an error
                if extra.type == netif.ExtraType.GSO:
                    segmentation = netif.parse_gso(extra)
                continue
            _, offset, _, status = netif.parse_rx_response(request.response)
            if status < 0:
                return None
            parts.append(bytes(request.page(0)[offset:offset + status]))
        frame = b"".join(parts)
        if not frame:
            return None
        first = netif.parse_rx_response(chain[0].response)[2]
        try:
            if segmentation is not None:
                whole = bytearray(frame)
                return netif.Frame(whole, gso_offload(whole, netif.GsoType(segmentation.type),
                                                      segmentation.size))
            if first & netif.RxFlag.CSUM_BLANK:
                return complete_partial_checksum(frame)
        except ValueError:
            return None
        return frame


def check_tx(request: Request) -> None:
    """A tx response must carry OKAY, ERROR or DROPPED (NETIF_RSP_NULL answers a GSO extra
    slot: the request layer matches it to the oldest such slot in flight, by position, and
    fails the queue when there is none)."""
    status = netif.parse_tx_response(request.response)[1]
    if status not in (netif.Status.OKAY, netif.Status.ERROR, netif.Status.DROPPED):
        raise RemoteProtocolError(f"netif tx: status {status} for request {request.id}")


def check_rx_offload(request: Request) -> None:
    """`check_rx` for a frontend that asked for offloads: checksum-blank and extra-info flags
    are allowed too."""
    _check_rx(request, netif.RxFlag.MORE_DATA | netif.RxFlag.DATA_VALIDATED
              | netif.RxFlag.CSUM_BLANK | netif.RxFlag.EXTRA_INFO)


def check_rx(request: Request) -> None:
    """An rx response's fragment lies inside its page; its flags are ones this frontend
    negotiated; a negative status is ERROR or DROPPED."""
    _check_rx(request, netif.RxFlag.MORE_DATA | netif.RxFlag.DATA_VALIDATED)


def _check_rx(request: Request, allowed: netif.RxFlag) -> None:
    _, offset, flags, status = netif.parse_rx_response(request.response)
    if flags & ~allowed:
        raise RemoteProtocolError(f"netif rx: flags {int(flags):#x} for request {request.id} "
                                  "(extra-info and checksum offload were not negotiated)")
    if status < 0:
        if status not in (netif.Status.ERROR, netif.Status.DROPPED):
            raise RemoteProtocolError(f"netif rx: status {status} for request {request.id}")
        return
    why = netif.check_fragment(offset, status)
    if why is not None:
        raise RemoteProtocolError(f"netif rx: request {request.id}: {why}")


class FrameStream(ObjectStream[bytes]):
    """A `NetFrontend`'s link as an anyio object stream of Ethernet frames: `send` and
    `receive` are the frontend's; closing it closes nothing (the device is the owner)."""

    def __init__(self, frontend: NetFrontend) -> None:
        self.frontend = frontend

    async def send(self, item: bytes) -> None:
        """`NetFrontend.send`."""
        await self.frontend.send(item)

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        """`NetFrontend.send_batch`."""
        await self.frontend.send_batch(frames)

    async def receive(self) -> bytes:
        """`NetFrontend.receive`."""
        return await self.frontend.receive()

    async def receive_batch(self, limit: int = 64) -> list[bytes]:
        """`NetFrontend.receive_batch`."""
        return await self.frontend.receive_batch(limit)

    async def send_eof(self) -> None:
        """A network link has no end-of-stream: nothing to do."""

    async def aclose(self) -> None:
        """Nothing to release (the frontend owns the link)."""
