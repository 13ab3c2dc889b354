"""`Frontend`: the guest-side half of a split device.

The frontend owns the ring: it reads the backend's features, shares the ring pages with the
backend domain, allocates the event channel, publishes ``ring-ref``/``event-channel`` (and their
multi-page and multi-queue forms) in one transaction with ``state`` = Initialised, then waits
for the backend to map them and say Connected.  A supervisor task keeps following the backend:
a backend restart or death tears the rings down and sets them up again (``generation``
increments); closing does the orderly Closing -> (backend unmaps, Closed) -> unshare -> Closed.

A driver's own bug -- a hook raising, or a task it started with ``self.tasks.start_soon``
failing with anything that is not the backend's doing -- ends the connection in order (logged
at ERROR, the error node with EIO naming the exception, Closing, the rings released, Closed), so
the backend is not left serving a frontend that is gone; the frontend is then finished with
that exception, which `Frontend.wait_connected` raises.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import ClassVar, Self, cast

import anyio
from anyio.abc import AsyncResource
from typing_extensions import TypeVar

from .._async.channel import FrontRingChannel
from .._errors import PeerGoneError, PeerRefusedError, RingkitError
from ..abc import Domain, EventChannel, Transaction
from ..proto.ring import FrontRing
from ..proto.xenbus import Reaction, Role, XenbusState
from ._base import QUIET, DeviceBase, DeviceTasks, driver_hook
from .paths import DeviceAddress, Nodes
from .queue import Queue, is_ring_key, queue_nodes, ring_ref_names

__all__ = ("FrontChannelT", "Frontend", "RingChoice")


@dataclass(frozen=True)
class RingChoice:
    """What a frontend's `Frontend.negotiate` asks for: a ring of 2**`ring_page_order` pages
    and `queues` queues (each capped by the frontend's maxima and the backend's offer), and
    -- for a protocol with `DeviceBase.split_event_channel_keys`, when the backend offers them
    -- one event channel per ring (`split_event_channels`)."""

    ring_page_order: int = 0
    queues: int = 1
    split_event_channels: bool = False

S = XenbusState


FrontChannelT = TypeVar("FrontChannelT", bound=AsyncResource, default=FrontRingChannel)
"""What a frontend's driver talks through; io/ring.h's `FrontRingChannel` unless the driver
builds something else in `Frontend.make_channel` (the console: `PipeStream`)."""


class Frontend(DeviceBase[FrontChannelT]):
    """Base class of a frontend driver.  Use as ``async with MyFrontend(domain, backend_id,
    devid) as fe:`` -- entering connects (handshake to Connected), leaving closes.

    Subclasses set `device_type` and `ring_layout` (and optionally `max_ring_page_order`,
    `max_queues`, `event_channel_key`) and may override `negotiate`, `publish`, `peer_connected`,
    `disconnected` and `make_channel`.

    A device owns an anyio task group, entered when it opens and left when it closes, so it
    is closed in the task that opened it and in LIFO order with the other devices that task
    opened (nested ``async with`` does both); anything else raises `LocalProtocolError` before
    touching the device.
    """

    role = Role.FRONTEND

    connects_first: ClassVar[bool] = False
    """Whether this device says Connected as soon as its rings are published, without waiting
    for the backend's Connected (`ringkit.proto.xenbus.Handshake.connect_ahead`): netif's
    way, where Linux's xen-netback maps the rings only once it sees the frontend Connected.
    Then `peer_connected` runs right after publishing (the channels are live: requests wait in
    the ring until the backend maps it), and opening still waits for the backend's Connected."""

    connect_timeout: float | None = None
    """Seconds ``async with`` waits for the backend to connect before raising TimeoutError
    (None: forever).  May be set per instance.  This includes waiting for a backend still
    Closed from an earlier connection to answer the new frontend with InitWait (the frontend
    keeps Initialising meanwhile; see `ringkit.proto.xenbus.LEFTOVER`)."""

    def __init__(
        self,
        domain: Domain,
        backend_id: int = 0,
        devid: int = 0,
        *,
        max_ring_page_order: int | None = None,
        max_queues: int | None = None,
        poll_us: int = 0,
    ) -> None:
        super().__init__(
            domain,
            DeviceAddress(self.device_type, domain.domid, backend_id, devid),
            max_ring_page_order=max_ring_page_order,
            max_queues=max_queues,
            poll_us=poll_us,
        )
        self.ring_page_order = self.max_ring_page_order
        """The ring order of the current connection (`negotiate`'s choice, or
        `max_ring_page_order`, capped by the backend's max); set by the framework."""
        self.num_queues = self.max_queues
        """The queues of the current connection (as `ring_page_order`); set by the framework."""
        self._stack: AsyncExitStack | None = None
        self._opening = False
        self._lost_ahead = False
        """A ring broke while we were connected ahead of the backend (`_peer_died`)."""

    # ------------------------------------------------------------------ hooks

    async def negotiate(self, backend: Nodes) -> RingChoice | None:
        """Hook: read the backend's features before the rings are set up.  Return a
        `RingChoice` to ask for a smaller ring or fewer queues than the frontend's maxima (None:
        the maxima); the framework caps the choice by what the backend offers."""
        return None

    async def publish(self, nodes: Nodes) -> None:
        """Hook: write extra frontend nodes; `nodes` writes inside the transaction that also
        publishes the rings and ``state`` = Initialised."""

    async def peer_connected(self, backend: Nodes) -> None:
        """Hook: the backend said Connected (its rings are mapped); read the device properties
        it wrote in `Backend.rings_mapped` from `backend`, its dir, before the frontend says
        Connected.  The channels are live: a driver may start its tasks here."""

    async def connected(self, backend: Nodes) -> None:
        """Deprecated: the old name of `peer_connected`.  A driver that still overrides it
        has its override called instead of `peer_connected`, with a DeprecationWarning, for
        one more release.  This default calls `peer_connected`, so such an override that
        calls ``super().connected(backend)`` still reaches its parent class's
        `peer_connected`."""
        await self.peer_connected(backend)

    def make_channel(self, queue: Queue[FrontChannelT]) -> FrontChannelT:
        """Hook: initialise the freshly shared ring pages and build what the driver talks
        through.  Default: SHARED_RING_INIT for `ring_layout` and a `FrontRingChannel`.  The
        framework wires a ring shell's breakage to the device itself."""
        if self.ring_layout is None:
            raise TypeError(f"{type(self).__name__} has no ring_layout: override make_channel")
        engine = FrontRing.init(queue.buffer, self.ring_layout)
        return cast(FrontChannelT, FrontRingChannel(engine, queue.event, poll_us=self.poll_us))

    # ------------------------------------------------------------------ driver API

    @property
    def channel(self) -> FrontChannelT:
        """Queue 0's channel of the current connection.

        Raises:
            PeerGoneError: not connected (see `wait_connected`).
        """
        return self.queue(0).channel

    def queue(self, index: int = 0) -> Queue[FrontChannelT]:
        """Queue `index` of the current connection.

        Raises:
            PeerGoneError: not connected (see `wait_connected`).
        """
        if not self.queues:
            raise PeerGoneError(f"{self.address} is not connected")
        return self.queues[index]

    async def wait_connected(self) -> None:
        """Return once connected (again, after a backend restart).

        Raises:
            PeerRefusedError: the backend closed before the first connection was up.
            PeerGoneError: the device went away for good.
            RemoteProtocolError: the backend broke the protocol before the first connection.
            Exception: the driver's own exception (a bug, not the backend's doing) that ended
                the connection and the device.
        """
        while not self.is_connected:
            if self._finished is not None:
                if isinstance(self._finished, PeerRefusedError):
                    raise PeerRefusedError(
                        str(self._finished), self._finished.peer_error
                    ) from self._finished
                if isinstance(self._finished, PeerGoneError):
                    raise PeerGoneError(f"{self.address} is gone: {self._finished}")
                raise self._finished
            await self._changed.wait()

    # ------------------------------------------------------------------ reactions

    async def _react(self, reaction: Reaction) -> None:
        if reaction is Reaction.CONNECT:
            await self._connect()
        elif reaction is Reaction.FINISH and self.handshake.ahead:
            # The backend caught up with a frontend that connected first: the connection is
            # up now (and the backend's Connected says it bound our ports).
            self.handshake.caught_up()
            if self._lost_ahead:
                self._lost_ahead = False
                self.log.info("%s: the backend connected after letting go of our rings: it is "
                              "gone", self.address)
                await self._peer_died()
                return
            for queue in self.queues:
                for event in queue.events:
                    event.peer_bound()
            self.log.info("%s: the backend connected", self.address)
            self._signal_change()
        elif reaction is Reaction.FINISH:
            for queue in self.queues:
                for event in queue.events:  # a backend is Connected only once it has bound
                    event.peer_bound()
            await self._hook(driver_hook(self, Frontend, "peer_connected"), self.peer_nodes)
            await self._clear_error()
            await self._write_state(S.CONNECTED)
            self.generation += 1
            self.log.info("%s connected (generation %d)", self.address, self.generation)
        elif reaction is Reaction.CLOSE:
            await self._announce_closing()
            await self._teardown()
            await self._close_own()
            if self._closing:
                self._finish(PeerGoneError("closed"))
            elif self._opening:
                # The backend closed before the first connection was up: it refused us (a ring
                # it could not map, a node it found malformed).  Say why instead of waiting.
                peer_error = await self.read_peer_error()
                self._finish(
                    PeerRefusedError(
                        f"{self.address}: the backend closed before connecting"
                        + (f" (its error node says: {peer_error})" if peer_error else ""),
                        peer_error,
                    )
                )
        elif reaction is Reaction.RESTART:
            await self._teardown()
            await self._start_over()
        elif reaction is Reaction.GONE:
            await self._teardown()
            self._finish(PeerGoneError(f"{self.address}: the backend's entries were removed"))

    async def _peer_died(self) -> None:
        if self.handshake.ahead:
            # We connected first and the backend has not said Connected: a port it closed is
            # a backend giving up on what we published (it releases what it mapped, then says
            # Closing -- a refusal, which ends an open with PeerRefusedError) or dying before
            # it connected.  Its state node tells which; starting over now would publish the
            # same nodes to a backend that refuses them, again and again.
            self.log.info("%s: the backend let go of our rings before connecting; waiting "
                          "for its state", self.address)
            # ... but remember it: a backend that wrote Connected and then closed its port
            # may have done both before we read its state.  Its Connected then finds the
            # rings dead, and no ring will break again to say so.
            self._lost_ahead = True
            return
        await super()._peer_died()

    async def _local_failure(self, exc: RingkitError) -> None:
        """Sharing or publishing failed on our side: close and report it to the waiters."""
        self.log.warning("%s: cannot connect: %s", self.address, exc)
        with suppress(*QUIET):
            await self._refuse(exc)
        self._finish(exc)

    async def _after_driver_failure(self, exc: Exception, ended: bool) -> None:
        # The driver's bug is this device's own: its user learns of it from wait_connected.
        self._finish(exc)

    async def _after_refusal(self, exc: RingkitError) -> None:
        # A backend that broke the protocol before the first connection was up fails the
        # open with that error; later, the frontend waits for the backend to start over.
        if self._opening:
            self._finish(exc)

    async def _start_over(self) -> None:
        if self._closing:
            return
        await self._restart_state()

    async def _connect(self) -> None:
        await self._teardown()
        self._lost_ahead = False
        backend = self.peer_nodes
        choice = await self._hook(self.negotiate, backend)
        if choice is None:
            choice = RingChoice(self.max_ring_page_order, self.max_queues)
        order = min(
            choice.ring_page_order,
            self.max_ring_page_order,
            await backend.read_int("max-ring-page-order", 0, maximum=255),
        )
        queues = min(
            choice.queues,
            self.max_queues,
            await backend.read_int("multi-queue-max-queues", 1, minimum=1, maximum=2**31),
        )
        self.ring_page_order, self.num_queues = order, queues
        split = self.split_event_channel_keys if choice.split_event_channels else ()
        try:
            for index in range(queues):
                self.queues.append(await self._share_queue(index, order, queues, len(split)))
        except BaseException:
            await self._teardown()
            raise

        async def body(tx: Transaction) -> None:
            own = self.own_nodes.at(tx)
            # Start from a clean slate: a key an earlier connection (or an earlier kernel, or a
            # tampering guest) left -- e.g. multi-queue-num-queues after going down to one
            # queue -- would be read by the backend as part of this one.
            for name in await tx.directory(own.path):
                if is_ring_key(name, self.event_channel_key,
                               (*self.ring_ref_keys, *self.split_event_channel_keys)):
                    await tx.rm(own.node(name))
            if order:
                await own.write("ring-page-order", order)
            if queues > 1:
                await own.write("multi-queue-num-queues", queues)
            for queue in self.queues:
                nodes = queue.nodes.at(tx)
                for name, ref in zip(ring_ref_names(order, self.ring_ref_keys),
                                     queue.pages.refs, strict=True):
                    await nodes.write(name, ref)
                if queue.split_events:
                    for key, event in zip(split, queue.split_events, strict=True):
                        await nodes.write(key, event.port)
                else:
                    await nodes.write(self.event_channel_key, queue.event.port)
            await self._hook(self.publish, own)
            await own.write("state", S.INITIALISED.to_wire())

        if not self.handshake.can_move(S.INITIALISED):
            self.handshake.move(S.INITIALISED)  # raises the LocalProtocolError with details
        await self.domain.store.transact(body)
        self.handshake.move(S.INITIALISED)
        self._signal_change()
        if self.connects_first:
            await self._hook(driver_hook(self, Frontend, "peer_connected"), self.peer_nodes)
            await self._clear_error()
            self.handshake.connect_ahead()
            await self.own_nodes.write("state", S.CONNECTED.to_wire())
            self.generation += 1
            self.log.info("%s connected ahead of the backend (generation %d)", self.address,
                          self.generation)
            self._signal_change()

    async def _share_queue(
        self, index: int, order: int, num_queues: int, split: int = 0
    ) -> Queue[FrontChannelT]:
        pages = await self.domain.grants.share(
            self.peer_id, len(ring_ref_names(order, self.ring_ref_keys)), writable=True)
        events: list[EventChannel] = []
        try:
            for _ in range(max(1, split)):
                events.append(await self.domain.events.alloc_unbound(self.peer_id))
        except BaseException:
            for event in events:
                await event.aclose()
            await pages.aclose()
            raise
        queue: Queue[FrontChannelT] = Queue(
            index, queue_nodes(self.own_nodes, index, num_queues), pages, events[0], order,
            split_events=tuple(events) if split else (),
        )
        event = events[0]
        try:
            # If this process dies, the backend is woken and finds the port closed.
            pages.set_unmap_notify(port=event.port)
            self._attach(queue, self.make_channel(queue))
        except BaseException:
            await queue.aclose()
            raise
        return queue

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        stack.callback(self._close_wakeups)  # last out, whether opening fails or not
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            self._tg = DeviceTasks(self, group)
            await self._restart_state()
            self._tg.start_soon(self._watch, self.peer_nodes.node("state"), "backend state")
            self._tg.start_soon(self._watch, "@releaseDomain", "domain released")
            self._tg.start_soon(self._supervise)
            self._opening = True
            with anyio.fail_after(self.connect_timeout):
                await self.wait_connected()
            self._opening = False
        except BaseException:
            self._opening = False
            self._closing = True
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            try:
                with anyio.CancelScope(shield=True):
                    await self._teardown()
            finally:
                await stack.aclose()
            raise
        self._stack = stack
        self._opened()
        return self

    async def aclose(self) -> None:
        """Orderly close: Closing, wait (up to `close_timeout`) for the backend to unmap and
        close, release the rings, Closed.

        Raises:
            LocalProtocolError: called from another task than the one that opened the device,
                or while a device that task opened later is still open (see `Frontend`).
        """
        if self._stack is None:
            return
        self._check_close_order()
        stack, self._stack = self._stack, None
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                if self.handshake.error is None and self.handshake.can_move(S.CLOSING):
                    with suppress(*QUIET):
                        await self._write_state(S.CLOSING)
                # Wait for the backend to unmap only if there is a live backend with a ring
                # mapped; a dead or absent one will never answer.
                if self.queues and not self.handshake.peer_stale:
                    with anyio.move_on_after(self.close_timeout):
                        # Done when the backend closed (and we followed), or when a task
                        # using the rings found it dead (the stale mark is set after our
                        # side of the connection was torn down).
                        while (
                            self.handshake.state is not S.CLOSED
                            and self._finished is None
                            and not self.handshake.peer_stale
                        ):
                            await self._changed.wait()
                await self._teardown()
                if self.handshake.can_move(S.CLOSED):
                    with suppress(*QUIET):
                        await self._write_state(S.CLOSED)
        finally:
            await self._leave(stack)
