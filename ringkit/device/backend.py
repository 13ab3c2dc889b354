"""`Backend`: the driver-domain half of a split device.

The backend advertises its features, says InitWait, and when the frontend has published its
rings (Initialised, or Connected for frontends that skip it) maps them, binds the event
channels, and serves them until the frontend closes, restarts or dies.  A frontend restart or
death means: stop serving, unmap, close the ports, and go back to InitWait for the next one.
After a connection closed, the backend stays at Closed (unless ``online`` is 0) until a new
frontend shows up at Initialising (or Initialised), and then goes straight back to InitWait.  A
frontend that breaks the protocol is disconnected (Closing -> Closed).  `run()` returns when the
device is removed (either dir deleted), or after the first connection ends with ``once=True``.

A driver's own bug -- `Backend.serve`, `Backend.handle` or another hook raising, or a task it
started with ``self.tasks.start_soon`` failing, with anything that is not the peer's doing (an
OSError out of a hook included: it is not taken for the store failing) -- ends only the
connection it happened in, in order: logged at ERROR with its traceback, the
error node (EIO, naming the exception), Closing, the rings released, Closed.  The frontend sees
an orderly close at once, and the backend then carries on as after a refused connection:
offered again to the frontend once it followed to Closed, or, with ``once=True`` or ``online``
= 0, finished -- and then `run()` raises the driver's exception, so that the bug is not mistaken
for a peer that went away.  A `disconnected` hook that raises comes after its connection is
over: it is logged and kept in `driver_error`, and the backend carries on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from functools import partial
from typing import Self, cast

import anyio
from anyio.abc import AsyncResource
from typing_extensions import TypeVar

from .._async.channel import BackRingChannel
from .._errors import (
    EventChannelError,
    GrantError,
    PeerGoneError,
    RemoteProtocolError,
    RingkitError,
    StoreError,
)
from ..abc import Domain, EventChannel
from ..proto.ring import BackRing
from ..proto.xenbus import Reaction, Role, XenbusState
from ._base import QUIET, DeviceBase, DeviceTasks, Wakeup, driver_hook, ring_failure
from .paths import DeviceAddress, Nodes
from .queue import MAX_QUEUES, Queue, queue_nodes, read_ring_refs

__all__ = ("REOFFER_BACKOFF", "REOFFER_BACKOFF_MAX", "BackChannelT", "Backend")

S = XenbusState

REOFFER_BACKOFF = 0.5
"""Seconds before the second InitWait offered again after refusals in a row; it doubles with
each further refusal, up to `REOFFER_BACKOFF_MAX` (the first comes at once)."""
REOFFER_BACKOFF_MAX = 30.0


BackChannelT = TypeVar("BackChannelT", bound=AsyncResource, default=BackRingChannel)
"""What a backend's driver serves through; io/ring.h's `BackRingChannel` unless the driver
builds something else in `Backend.make_channel` (the console: `PipeStream`)."""


class Backend(DeviceBase[BackChannelT]):
    """Base class of a backend driver serving one device of one frontend domain.

    Use as ``async with MyBackend(domain, frontend_id, devid) as be: await be.run()``.
    Subclasses set `device_type` and `ring_layout` and implement `handle` (or override `serve`);
    they may override `advertise`, `connecting`, `rings_mapped`, `disconnected`, `make_channel`.

    A device owns an anyio task group, entered when it opens and left when it closes, so it
    is closed in the task that opened it and in LIFO order with the other devices that task
    opened (nested ``async with`` does both); anything else raises `LocalProtocolError` before
    touching the device.
    """

    role = Role.BACKEND

    def __init__(
        self,
        domain: Domain,
        frontend_id: int,
        devid: int = 0,
        *,
        max_ring_page_order: int | None = None,
        max_queues: int | None = None,
        poll_us: int = 0,
    ) -> None:
        super().__init__(
            domain,
            DeviceAddress(self.device_type, frontend_id, domain.domid, devid),
            max_ring_page_order=max_ring_page_order,
            max_queues=max_queues,
            poll_us=poll_us,
        )
        self._serve_scopes: list[anyio.CancelScope] = []
        self._serving = 0
        self._served_all = anyio.Event()
        self._connections_ended = 0
        self._once = False
        self._refusals = 0
        """Local failures to connect since the last connection (re-offer backoff)."""
        self._reoffer = False
        self._stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ hooks

    async def advertise(self, nodes: Nodes) -> None:
        """Hook: write feature and limit nodes into the backend dir before InitWait.
        ``max-ring-page-order`` and ``multi-queue-max-queues`` are written for you."""

    async def connecting(self, frontend: Nodes) -> None:
        """Hook: the frontend published its rings; read its nodes before they are mapped.
        Raise RemoteProtocolError to refuse a frontend (-> Closing, Closed)."""

    async def rings_mapped(self, nodes: Nodes) -> None:
        """Hook: the frontend's rings are mapped and its event channels bound; write the device
        properties (a disk's size, ...) into `nodes`, the backend dir, before the backend says
        Connected -- the frontend reads them in `Frontend.peer_connected`."""

    async def connected(self, nodes: Nodes) -> None:
        """Deprecated: the old name of `rings_mapped`.  A driver that still overrides it has
        its override called instead of `rings_mapped`, with a DeprecationWarning, for one more
        release.  This default calls `rings_mapped`, so such an override that calls
        ``super().connected(nodes)`` still reaches its parent class's `rings_mapped`."""
        await self.rings_mapped(nodes)

    def make_channel(self, queue: Queue[BackChannelT]) -> BackChannelT:
        """Hook: attach to the mapped ring pages.  Default: a `BackRingChannel` over
        `ring_layout` (the backend never initialises the ring).  The framework wires a ring
        shell's breakage to the device itself."""
        if self.ring_layout is None:
            raise TypeError(f"{type(self).__name__} has no ring_layout: override make_channel")
        channel = BackRingChannel(BackRing.attach(queue.buffer, self.ring_layout), queue.event,
                                  poll_us=self.poll_us)
        return cast(BackChannelT, channel)

    async def serve(self, queue: Queue[BackChannelT]) -> None:
        """Serve one queue while connected.  Default: take every pending request, answer each
        with `handle`, push the burst's responses at once; until the channel breaks.

        An exception out of here that is not the peer's doing (a bug: not `PeerGoneError`,
        `RemoteProtocolError` or a channel error caused by them) ends this connection in order
        -- error node, Closing, rings released, Closed -- and the frontend sees it close; see
        the module docstring for what follows."""
        channel = queue.channel
        if not isinstance(channel, BackRingChannel):
            raise TypeError(f"{type(self).__name__} builds its own channel: override serve")
        while True:
            requests = await channel.receive_batch()
            responses = [await self.handle(request) for request in requests]
            await channel.send_batch(responses)

    async def handle(self, request: bytearray) -> bytes:
        """Hook: answer one request (a private copy of its slot) with one response.

        Answer a request you cannot serve with the protocol's error response; raising ends the
        whole connection (see `serve`), the requests in flight with it."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle or serve")

    # ------------------------------------------------------------------ reactions

    async def _advertise_and_wait(self) -> None:
        own = self.own_nodes
        # Write each limit, or remove it: a value left by an earlier backend (one with other
        # limits, or a hostile one) would be read by the frontend as ours.
        for name, value, written in (
            ("max-ring-page-order", self.max_ring_page_order, self.max_ring_page_order > 0),
            ("multi-queue-max-queues", self.max_queues, self.max_queues > 1),
        ):
            if written:
                await own.write(name, value)
            else:
                with suppress(StoreError):
                    await self.domain.store.rm(own.node(name))
        await self._hook(self.advertise, own)
        await self._write_state(S.INIT_WAIT)

    async def _start_over(self) -> None:
        if self.handshake.state is not S.CLOSED:
            await self._restart_state()
        # From Closed (a new frontend after the previous connection closed), straight to
        # InitWait with the features written again, as blkback's "prepare for reconnect" does;
        # a frontend waiting on our leftover Closed connects when it sees InitWait.
        await self._advertise_and_wait()

    async def _react(self, reaction: Reaction) -> None:
        if reaction is Reaction.CONNECT:
            await self._connect()
        elif reaction is Reaction.CLOSE:
            await self._announce_closing()
            await self._teardown()
            await self._close_own()
            await self._after_connection()
        elif reaction is Reaction.RESTART:
            await self._teardown()
            await self._start_over()
        elif reaction is Reaction.GONE:
            # The frontend's state reads Unknown: its dir was removed, or the guest wrote 0 or
            # nothing there.  Either way only that connection ends; the toolstack -- our own dir,
            # `online` -- decides whether the device is gone (a guest cannot stop the backend).
            await self._teardown()
            store = self.domain.store
            if not await store.exists(self.own_nodes.node("state")):
                self._finish(PeerGoneError(f"{self.address}: the device was removed"))
                return
            if not await store.exists(f"/local/domain/{self.peer_id}"):
                # Not something a guest can do: the toolstack released the domain.
                self._finish(PeerGoneError(f"{self.address}: the frontend's domain is gone"))
                return
            await self._close_own()
            # Unknown asks for nothing more: wait for the frontend to write something else.
            self.handshake.peer_lost()
            await self._after_connection()

    async def _after_connection(self, why: BaseException | None = None) -> None:
        """A connection is over: with `once`, or ``online`` = 0, the device is finished (with
        `why` if given, which `run` raises, else with a `PeerGoneError`, which it does not)."""
        if self._once and self._connections_ended:
            self._finish(why or PeerGoneError(f"{self.address}: connection ended"))
            return
        online = await self.own_nodes.read_optional("online")
        if online is not None and online.strip() == "0":
            self._finish(why or PeerGoneError(f"{self.address}: closed and offline"))

    async def _local_failure(self, exc: RingkitError) -> None:
        """Mapping or binding what the frontend published failed (a bad or stale ``ring-ref``,
        a read-only ring, an unknown port...).  Refuse the connection the way Linux does --
        error node, Closing -> Closed -- so the frontend knows at once; its state node may be
        stale (a dead frontend's), so wait for it to change before reacting again.  A frontend
        that starts over (Initialising) gets InitWait and a fresh attempt."""
        self.log.warning("%s: cannot connect to the frontend: %s", self.address, exc)
        await self._refuse(exc)
        self.handshake.peer_lost()
        await self._after_refusal(exc)
        self._refusals += 1
        self._reoffer = self._finished is None
        await self._offer_again()

    async def _carry_out(self, reaction: Reaction) -> None:
        await super()._carry_out(reaction)
        await self._offer_again()

    async def _offer_again(self) -> None:
        """After refusing what the frontend published, once it has followed to Closed: back
        to InitWait (blkback's "prepare for reconnect"), so that it publishes afresh.

        What we could not map may have been stale rather than bad: a frontend that revoked
        its ring between our read and our map (it found a predecessor of ours scribbling)
        follows our Closing to Closed and, having been connected before, waits for us to
        start over -- while we, at Closed, would wait for it to: both ends stuck for good.
        Linux's blkfront and ringkit's frontends answer InitWait from Closed by connecting
        again.  A frontend that keeps publishing what cannot be mapped is offered again with a
        backoff (`REOFFER_BACKOFF`), so it cannot make this a busy loop."""
        if not self._reoffer or self._finished is not None:
            return
        if self.handshake.state is not S.CLOSED or not await self._peer_reads_closed():
            return
        self._reoffer = False
        # Take that Closed in now: offered InitWait while the handshake still held what it saw
        # before (the frontend's Closing, when its Closed came with no watch event read yet),
        # we would take the Closed for a close of the offer and close again.
        self.handshake.observe(S.CLOSED)
        if self._refusals > 1:
            delay = min(REOFFER_BACKOFF * 2 ** (self._refusals - 2), REOFFER_BACKOFF_MAX)
            self.log.info("%s: offering the frontend a new connection in %.1f s (refused %d "
                          "in a row)", self.address, delay, self._refusals)
            await anyio.sleep(delay)
        if self._finished is None and self.handshake.state is S.CLOSED:
            self.handshake.peer_lost()  # its Closed asks for nothing; its next move is new
            await self._start_over()

    async def _after_refusal(self, exc: RingkitError) -> None:
        # Closed now: the toolstack's `online` decides whether we wait for the next frontend.
        await self._after_connection()

    async def _after_driver_failure(self, exc: Exception, ended: bool) -> None:
        """The driver's bug ended a connection (now Closed): with `once` the device is finished
        with that error (even if it came before a connection was up); with ``online`` = 0 too;
        otherwise the frontend, once it followed to Closed, is offered a new connection, as
        after a refusal (with the same backoff when it keeps failing before connecting)."""
        if self._once:
            self._finish(exc)
            return
        if not ended:
            return
        await self._after_connection(exc)
        self._refusals += 1
        self._reoffer = self._finished is None
        await self._offer_again()

    async def _peer_died(self) -> None:
        await super()._peer_died()
        if self._once:
            self._finish(PeerGoneError(f"{self.address}: the frontend died"))

    async def _connect(self) -> None:
        await self._teardown()
        frontend = self.peer_nodes
        await self._hook(self.connecting, frontend)
        order = await frontend.read_int("ring-page-order", 0, maximum=self.max_ring_page_order)
        queues = await frontend.read_int(
            "multi-queue-num-queues", 1, minimum=1, maximum=min(self.max_queues, MAX_QUEUES)
        )
        try:
            for index in range(queues):
                self.queues.append(await self._map_queue(index, order, queues))
        except (GrantError, EventChannelError, StoreError, RemoteProtocolError):
            await self._teardown()
            raise
        await self._hook(driver_hook(self, Backend, "rings_mapped"), self.own_nodes)
        await self._clear_error()
        await self._write_state(S.CONNECTED)
        self._refusals = 0
        self.generation += 1
        self.log.info("%s connected (generation %d)", self.address, self.generation)
        self._start_serving()

    async def _map_queue(self, index: int, order: int, num_queues: int) -> Queue[BackChannelT]:
        nodes = queue_nodes(self.peer_nodes, index, num_queues)
        refs = await read_ring_refs(nodes, order, self.ring_ref_keys)
        split = self.split_event_channel_keys
        given = [key for key in split if await nodes.read_optional(key) is not None]
        if given and len(given) < len(split):
            missing = [key for key in split if key not in given]
            raise RemoteProtocolError(f"{nodes.path}: {', '.join(given)} without "
                                      f"{', '.join(missing)} (split event channels need "
                                      "every one)")
        ports = [await nodes.read_int(key, maximum=2**31)
                 for key in (split if given else (self.event_channel_key,))]
        pages = await self.domain.grants.map(self.peer_id, refs, writable=True)
        events: list[EventChannel] = []
        try:
            for port in ports:
                events.append(await self.domain.events.bind_interdomain(self.peer_id, port))
        except BaseException:
            for bound in events:
                await bound.aclose()
            await pages.aclose()
            raise
        event = events[0]
        queue: Queue[BackChannelT] = Queue(index, nodes, pages, event, order,
                                           split_events=tuple(events) if given else ())
        try:
            pages.set_unmap_notify(port=event.port)
            self._attach(queue, self.make_channel(queue))
        except BaseException:
            await queue.aclose()
            raise
        return queue

    # ------------------------------------------------------------------ serving

    def _start_serving(self) -> None:
        assert self._tg is not None
        self._served_all = anyio.Event()
        for queue in self.queues:
            scope = anyio.CancelScope()
            self._serve_scopes.append(scope)
            self._serving += 1
            self._tg.start_soon(self._serve_queue, queue, scope)

    async def _serve_queue(self, queue: Queue[BackChannelT], scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self.serve(queue)
        except (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            RemoteProtocolError,
            PeerGoneError,
            BaseExceptionGroup,
        ) as exc:
            cause = ring_failure(exc)
            if cause is None:
                raise
            if not isinstance(cause, anyio.ClosedResourceError):
                self.wake("ring broken", cause)
        # Anything else is the driver's bug: it goes on to `DeviceTasks` (this runs as one of
        # the device's tasks), whose supervisor ends the connection in order.
        finally:
            self._serving -= 1
            if self._serving == 0:
                self._served_all.set()

    async def _teardown(self) -> None:
        """Stop the serving tasks first, then release the rings (unmap before closing)."""
        if self._serve_scopes:
            for scope in self._serve_scopes:
                scope.cancel()
            self._serve_scopes = []
            with anyio.CancelScope(shield=True):
                if self._serving:
                    await self._served_all.wait()
        if self.queues:
            self._connections_ended += 1
        await super()._teardown()

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        stack.callback(self._close_wakeups)  # last out, whether opening fails or not
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            self._tg = DeviceTasks(self, group)
            await self._restart_state()
            await self._advertise_and_wait()
        except BaseException:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        self._opened()
        return self

    async def run(self, *, once: bool = False) -> None:
        """Serve the device until it is removed (or, with `once`, until the first connection
        ends).  Reconnects after frontend restarts.

        A bug of the driver (`serve` or `handle` raising, a task of ``self.tasks`` failing)
        ends only its connection, in order, and the backend serves the next one; but if the
        device finishes because of it (``once=True``, or ``online`` = 0) this raises that
        exception, so the bug is seen.

        Raises:
            RemoteProtocolError: the handshake itself was poisoned by the frontend.
            Exception: the driver's own exception (not the peer's doing) that ended the last
                connection, when the device finished after it; or what stopped the supervisor
                (the xenstore connection failed...).
        """
        if self._tg is None:
            raise RuntimeError("use `async with backend:` before run()")
        self._once = once
        self._tg.start_soon(self._watch, self.peer_nodes.node("state"), "frontend state")
        self._tg.start_soon(self._watch, self.own_nodes.node("state"), "own state")
        self._tg.start_soon(self._watch, "@releaseDomain", "domain released")
        self._tg.start_soon(self._supervise)
        await self.wait_finished()
        if self._finished is not None and not isinstance(self._finished, PeerGoneError):
            raise self._finished

    @asynccontextmanager
    async def running(self, *, once: bool = False) -> AsyncIterator[Self]:
        """Open the device and serve it in the background for the body of an ``async with``;
        leaving the block closes it::

            async with EchoBackend(dom0, guest).running() as backend:
                ...                     # a frontend connects, traffic flows

        ``await backend.wait_finished()`` inside waits for the device to end by itself (removed
        by the toolstack, or with `once`, the first connection over).

        Raises:
            RemoteProtocolError, Exception: what `run` raises (not a peer's doing).
        """
        async with anyio.create_task_group() as tg, self:
            tg.start_soon(partial(self.run, once=once))
            yield self

    async def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        await super()._on_wakeups(wakeups)
        if (
            self._finished is None
            and any(w.reason == "own state" for w in wakeups)
            and not await self.domain.store.exists(self.own_nodes.node("state"))
        ):
            # The toolstack removed our dir: the device is gone.
            await self._teardown()
            self._finish(PeerGoneError(f"{self.address}: the backend's entries were removed"))

    async def aclose(self) -> None:
        """Stop serving, unmap, close the ports, then Closing -> Closed (unless removed).

        Raises:
            LocalProtocolError: called from another task than the one that opened the device,
                or while a device that task opened later is still open (see `Backend`).
        """
        if self._stack is None:
            return
        self._check_close_order()
        stack, self._stack = self._stack, None
        try:
            with anyio.CancelScope(shield=True):
                await self._teardown()
                if self.handshake.error is None and self._finished is None:
                    for to in (S.CLOSING, S.CLOSED):
                        if self.handshake.can_move(to):
                            with suppress(*QUIET):
                                await self._write_state(to)
        finally:
            await self._leave(stack)
