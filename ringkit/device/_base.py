"""What the Frontend and Backend bases share: the store-facing side of the handshake.

Theory of operation
-------------------
A device runs one *supervisor* task.  Everything that may call for a decision -- the peer's
``state`` node changed (a xenstore watch), our own dir vanished, a domain was released, a ring
broke because the peer died or misbehaved -- only *wakes* the supervisor.  The supervisor then
reads the peer's state, feeds it to the sans-I/O `Handshake`, and carries out the `Reaction`s
it answers (re-asking after every own move) until there is nothing left to do.  A single task
deciding means no two reactions ever race, and coalesced or spurious wake-ups are harmless.
"""

from __future__ import annotations

import errno as _errno
import logging
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, cast

import anyio
from anyio.abc import AsyncResource, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._async._link import PeerLink
from .._async._poll import poll_seconds
from .._errors import (
    ConfigError,
    EventChannelError,
    LocalProtocolError,
    PeerGoneError,
    RemoteProtocolError,
    RingkitError,
    StoreError,
)
from ..abc import Access, Domain, Permission, StoreOps
from ..proto.layout import MAX_RING_PAGE_ORDER, RingLayout
from ..proto.xenbus import Handshake, Reaction, Role, XenbusState
from ..requests.codec import SlotCodec
from .paths import DeviceAddress, Nodes, error_node
from .queue import MAX_QUEUES, ChannelT, Queue

QUIET = (RingkitError, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)
"""Errors a closing device ignores: the peer, the store or the transport may be gone."""

MAX_ERROR_TEXT = 1024
"""Longest error node value written; a peer-chosen string quoted in a message is cut to fit."""

__all__ = (
    "QUIET",
    "RENAMED_HOOKS",
    "DeviceBase",
    "DeviceTasks",
    "Wakeup",
    "driver_hook",
    "ring_failure",
)

S = XenbusState
T = TypeVar("T")


class Wakeup:
    """Why the supervisor was woken (kept for logs); `error` is set for a broken ring."""

    __slots__ = ("error", "reason")

    def __init__(self, reason: str, error: BaseException | None = None) -> None:
        self.reason = reason
        self.error = error

    def __repr__(self) -> str:
        return f"Wakeup({self.reason!r}, {self.error!r})"


def ring_failure(exc: BaseException) -> BaseException | None:
    """The peer-caused failure behind `exc` (a task's exception, maybe grouped by a driver's own
    task group), or None if `exc` holds anything else (a bug, not the peer's doing)."""
    if isinstance(exc, BaseExceptionGroup):
        causes = [ring_failure(e) for e in exc.exceptions]
        if not causes or any(c is None for c in causes):
            return None
        found = [c for c in causes if c is not None]
        return next((c for c in found if not isinstance(c, anyio.ClosedResourceError)), found[0])
    if isinstance(exc, anyio.BrokenResourceError):
        return exc.__cause__ or exc
    if isinstance(
        exc, RemoteProtocolError | PeerGoneError | EventChannelError | anyio.ClosedResourceError
    ):
        return exc
    return None


RENAMED_HOOKS: dict[str, tuple[str, str]] = {
    "rings_mapped": ("connected", "once the rings are mapped, before the backend says Connected"),
    "peer_connected": ("connected", "once the backend said Connected, before the frontend does"),
}
"""Hook -> (its old name, when it runs): `Backend.connected` ran before the backend said
Connected, `Frontend.connected` after the backend did; the new names say which.  The old names
still work, with a DeprecationWarning, for one more release (see `driver_hook`)."""


def driver_hook(
    device: DeviceBase[Any], base: type[DeviceBase[Any]], name: str
) -> Callable[..., Awaitable[None]]:
    """The hook `name` of `device` (a subclass of the end `base`) to call -- or, for a hook of
    `RENAMED_HOOKS` whose old name the driver still overrides, that override, with a
    DeprecationWarning naming `name`.

    `base` defines the old name as a forwarder to `name`, so an old override that calls
    ``super().<old>(...)`` still reaches its parent class's `name`."""
    renamed = RENAMED_HOOKS.get(name)
    if renamed is not None:
        old, when = renamed
        if getattr(type(device), old) is not getattr(base, old):
            warnings.warn(
                f"{type(device).__qualname__}.{old}: the {base.__name__} hook {old!r} is now "
                f"called {name!r} (it runs {when}); rename the override -- ringkit calls "
                f"{old!r} for one more release only",
                DeprecationWarning,
                stacklevel=2,
            )
            name = old
    return cast("Callable[..., Awaitable[None]]", getattr(device, name))


_OPEN_DEVICES: ContextVar[tuple[DeviceBase[Any], ...]] = ContextVar(
    "ringkit_open_devices", default=()
)
"""The devices the current task opened and has not closed yet, oldest first."""


class DeviceTasks:
    """The device's task group as drivers see it (``self.tasks``): a task that fails because
    the peer died or misbehaved wakes the supervisor like a broken ring does.  Any other
    failure is the driver's own bug: it is logged (ERROR, with its traceback) and the
    supervisor ends the current connection in order -- the error node, Closing, the rings
    released, Closed -- so the peer is never left waiting on it; what the device does next is
    the end's choice (a `Backend` offers the next connection, or finishes with that error with
    ``once=True``; a `Frontend` finishes with it).  A failure never tears through the task that
    entered the device."""

    def __init__(self, device: DeviceBase[Any], tg: TaskGroup) -> None:
        self._device = device
        self._tg = tg

    @property
    def cancel_scope(self) -> anyio.CancelScope:
        """The scope of every task of the device."""
        return self._tg.cancel_scope

    def start_soon(
        self, func: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        """Run ``func(*args)`` in the background until it returns or the device closes."""
        self._tg.start_soon(self._guard, func, args, name=name)

    async def _guard(
        self, func: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        try:
            await func(*args)
        except Exception as exc:
            self._device._task_failed(exc)


class DeviceBase(AsyncResource, Generic[ChannelT]):
    """Shared machinery of `Frontend` and `Backend`; not used directly."""

    device_type: ClassVar[str] = ""
    """The xenstore device type: "vbd", "console", "echo"..."""
    ring_layout: ClassVar[RingLayout | None] = None
    """io/ring.h slot layout; None when the driver interprets the shared pages itself."""
    request_codec: ClassVar[SlotCodec | None] = None
    """For a driver built on `ringkit.requests`: where its slots keep the id, the operation and
    the grant refs (the codec its `RequestQueue` / `RequestServer` use).  The test kit reads it
    to attack the driver with hostile requests and responses; nothing else depends on it."""
    request_codecs: ClassVar[tuple[SlotCodec, ...]] = ()
    """For a driver that names its ring pages (`ring_ref_keys`) and runs each ring on
    `ringkit.requests`: one codec per ring, in the order of `ring_ref_keys` -- netif's
    ``(TX_CODEC, RX_CODEC)``.  Like `request_codec`, read only by the test kit: it gives each
    ring's layout and slots, so that hostile peers can attack each ring in turn."""
    max_ring_page_order: int = 0
    """Largest ring, as a power of two of pages, this end supports (0..4).  A class default;
    an instance may lower or raise it through the constructor's ``max_ring_page_order``."""
    max_queues: int = 1
    """Most rings (queues) this end supports; 1 = no multi-queue keys.  A class default; an
    instance may change it through the constructor's ``max_queues``."""
    event_channel_key: ClassVar[str] = "event-channel"
    """The node naming a queue's event channel ("port" for the console)."""
    split_event_channel_keys: ClassVar[tuple[str, ...]] = ()
    """For a protocol whose rings may each have an event channel of their own -- netif's
    ``("event-channel-tx", "event-channel-rx")`` (``feature-split-event-channels``): the
    backend accepts either those keys (all of them: one missing refuses the frontend with a
    `RemoteProtocolError`) or the one `event_channel_key`; the frontend writes them when its
    `RingChoice` says ``split_event_channels``.  The queue's `Queue.split_events` are then
    the channels, in this order.  Empty (the default): one event channel per queue."""
    ring_ref_keys: ClassVar[tuple[str, ...]] = ()
    """For a protocol that names its ring pages itself: one node per page, one page each, in
    the order of the queue's buffer -- netif's ``("tx-ring-ref", "rx-ring-ref")``: the frontend
    shares that many pages per queue and writes their refs there, the backend maps them from
    there, and ``ring-ref`` / ``ring-page-order`` are not used (`max_ring_page_order` must stay
    0).  Empty (the default): ``ring-ref``, or ``ring-page-order`` and ``ring-ref0..N``."""
    close_timeout: float = 10.0
    """How long an orderly close waits for the peer to unmap before going ahead anyway."""

    role: ClassVar[Role]

    def __init__(
        self,
        domain: Domain,
        address: DeviceAddress,
        *,
        max_ring_page_order: int | None = None,
        max_queues: int | None = None,
        poll_us: int = 0,
    ) -> None:
        if not self.device_type:
            raise TypeError(f"{type(self).__name__} must set device_type")
        if not 0 <= type(self).max_ring_page_order <= MAX_RING_PAGE_ORDER:
            raise TypeError(f"{type(self).__name__}.max_ring_page_order must be 0..4")
        if self.ring_ref_keys and (type(self).max_ring_page_order or max_ring_page_order):
            raise TypeError(f"{type(self).__name__} names its ring pages (ring_ref_keys): "
                            "its max_ring_page_order must be 0")
        if max_ring_page_order is not None:
            if not 0 <= max_ring_page_order <= MAX_RING_PAGE_ORDER:
                raise ConfigError(
                    f"max_ring_page_order must be 0..{MAX_RING_PAGE_ORDER}, got "
                    f"{max_ring_page_order!r}"
                )
            self.max_ring_page_order = max_ring_page_order
        if max_queues is not None:
            if not 1 <= max_queues <= MAX_QUEUES:
                raise ConfigError(f"max_queues must be 1..{MAX_QUEUES}, got {max_queues!r}")
            self.max_queues = max_queues
        poll_seconds(poll_us)  # checked once, here; the channels get it as it is
        self.poll_us = poll_us
        """Microseconds each ring's receiver spins before sleeping (0: never), handed to the
        channels the default `make_channel` builds (see `ringkit.channel.RingChannel`)."""
        self.domain = domain
        self.address = address
        self.handshake = Handshake(self.role)
        self.queues: list[Queue[ChannelT]] = []
        self.generation = 0
        """Incremented on every new connection."""
        self.log = logging.getLogger(f"ringkit.device.{self.device_type}.{self.role.value}")
        self._wake_tx: MemoryObjectSendStream[Wakeup]
        self._wake_rx: MemoryObjectReceiveStream[Wakeup]
        self._wake_tx, self._wake_rx = anyio.create_memory_object_stream[Wakeup](1024)
        self._tg: DeviceTasks | None = None
        self._changed = anyio.Event()
        self._finished: BaseException | None = None
        self._released = 0
        """Connections torn down so far (tells a driver failure whose connection is over)."""
        self._driver_failures: list[tuple[Exception, int | None]] = []
        """Driver failures for the supervisor: each with the `_released` count of the
        connection it happened in (None: there was no connection)."""
        self.driver_error: Exception | None = None
        """The latest exception out of the driver's own code -- ``serve``/``handle``, a task
        started through `tasks`, a hook the supervisor called -- that was not the peer's doing
        (it ended the connection it happened in); None while there was none.  For tests and
        monitoring: the conformance checks fail a driver that a peer can make raise."""
        self._closing = False
        self._owner_task: int | None = None
        self._hook_failure: BaseException | None = None
        """The latest exception out of a driver hook (see `_hook`)."""

    # ------------------------------------------------------------------ where things are

    @property
    def own_nodes(self) -> Nodes:
        """This end's device dir."""
        path = (
            self.address.frontend_path
            if self.role is Role.FRONTEND
            else self.address.backend_path
        )
        return Nodes(self.domain.store, path)

    @property
    def peer_nodes(self) -> Nodes:
        """The other end's device dir (untrusted values)."""
        path = (
            self.address.backend_path
            if self.role is Role.FRONTEND
            else self.address.frontend_path
        )
        return Nodes(self.domain.store, path)

    @property
    def peer_id(self) -> int:
        """The other end's domid."""
        a = self.address
        return a.backend_id if self.role is Role.FRONTEND else a.frontend_id

    @property
    def state(self) -> XenbusState:
        """This end's XenbusState."""
        return self.handshake.state

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up (both ends past the handshake, rings live)."""
        return (self.handshake.state is S.CONNECTED and not self.handshake.ahead
                and bool(self.queues))

    @property
    def finished(self) -> bool:
        """Whether the device is gone for good (removed, or closed and not coming back)."""
        return self._finished is not None

    @property
    def ended_by(self) -> BaseException | None:
        """What finished the device: a `PeerGoneError` when it was removed, closed for good or
        its peer went away; otherwise the error that ended it (the driver's own, the store's,
        a refused peer's).  None while the device is not `finished`.  `wait_connected` raises
        it; ``Backend.run`` raises it unless it is a `PeerGoneError`."""
        return self._finished

    @property
    def settled(self) -> bool:
        """Whether the device's supervisor has decided on everything it was told: it is
        waiting for a wake-up and none is queued.  False while it decides (a state write, a
        connection going up or down), before `async with` started it, and once the device is
        `finished`.  A wake-up -- a store watch, a ring breaking, `wake` -- unsettles it, so
        this is a point in time: a test that holds its peer still can wait for it to know
        the device has answered everything so far."""
        stats = self._wake_rx.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0

    # ------------------------------------------------------------------ hooks

    def _attach(self, queue: Queue[ChannelT], channel: ChannelT) -> None:
        """Give `queue` the channel the driver built; a ring shell (`RingChannel`,
        `PipeStream`) that breaks -- the peer died or misbehaved -- wakes the supervisor, so no
        driver has to wire that itself."""
        if isinstance(channel, PeerLink):
            channel.on_broken = partial(self.wake, "ring broken")
        queue.channel = channel

    async def disconnected(self) -> None:
        """Hook: the current connection was torn down (the rings are already released)."""

    async def _hook(self, hook: Callable[..., Awaitable[T]], *args: object) -> T:
        """Call the driver's `hook`, remembering an exception out of it: that one is the
        driver's, whatever its type -- an OSError from a file the hook opened is not the store
        or the transport failing under the supervisor (see `_carry_out`)."""
        try:
            return await hook(*args)
        except BaseException as exc:
            self._hook_failure = exc
            raise

    # ------------------------------------------------------------------ helpers for subclasses

    def wake(self, reason: str, error: BaseException | None = None) -> None:
        """Ask the supervisor to look at the world again (never blocks)."""
        with suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._wake_tx.send_nowait(Wakeup(reason, error))

    def _close_wakeups(self) -> None:
        """Close both ends of the supervisor's wake-up stream: the device is closed and its
        tasks are gone (a `wake` after this is a no-op)."""
        self._wake_tx.close()
        self._wake_rx.close()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _write_state(self, to: XenbusState, store: StoreOps | None = None) -> None:
        """Move the handshake and publish the state (through `store`, e.g. a transaction)."""
        self.handshake.move(to)
        await self.own_nodes.at(store or self.domain.store).write("state", to.to_wire())
        self.log.debug("%s -> %s", self.address, to.xen_name)
        self._signal_change()

    async def _restart_state(self) -> None:
        self.handshake.restart()
        await self.own_nodes.write("state", S.INITIALISING.to_wire())
        self._signal_change()

    async def _read_peer_state(self) -> bytes | None:
        try:
            return await self.domain.store.read_bytes(self.peer_nodes.node("state"))
        except StoreError as exc:
            if exc.code in ("ENOENT", "EACCES"):
                # A removed dir reads ENOENT; EACCES means its permissions are gone with it.
                return None
            raise

    async def _peer_says_closing(self) -> bool:
        """True when the peer's state node says Closing or Closed (untrusted: only a hint
        to take the orderly path; the handshake judges the value itself)."""
        return await self._peer_reads(S.CLOSING, S.CLOSED)

    async def _peer_reads_closed(self) -> bool:
        """True when the peer's state node says Closed right now (a hint, as above)."""
        return await self._peer_reads(S.CLOSED)

    async def _peer_reads(self, *states: XenbusState) -> bool:
        with suppress(*QUIET):
            raw = await self._read_peer_state()
            return raw is not None and raw.strip() in {s.to_wire().encode() for s in states}
        return False

    async def _teardown(self) -> None:
        """Release every queue in order (channel, pages, port), newest first."""
        had = bool(self.queues)
        queues, self.queues = self.queues, []
        if had:
            self._released += 1
        for queue in reversed(queues):
            await queue.aclose()
        if had:
            self._signal_change()
            with anyio.CancelScope(shield=True):
                try:
                    await self.disconnected()
                except Exception as exc:
                    # The driver's bug, in a connection already over: it must not stop the
                    # supervisor (or whatever tore down); the supervisor answers it as it
                    # answers a failed task of a connection that is over.
                    self.log.error("%s: the driver's disconnected hook failed", self.address,
                                   exc_info=exc)
                    self.driver_error = exc
                    self._driver_failures.append((exc, self._released - 1))
                    self.wake("driver failed")

    @property
    def tasks(self) -> DeviceTasks:
        """Where drivers start their background tasks (see `DeviceTasks`)."""
        if self._tg is None:
            raise RuntimeError("the device is not open (use `async with`)")
        return self._tg

    def _task_failed(self, exc: Exception) -> None:
        """A task of the device failed: the peer's doing wakes the supervisor as a broken ring
        does; anything else is the driver's bug, which the supervisor -- the one task that
        decides -- answers by ending the connection in order (`_driver_failure`)."""
        cause = ring_failure(exc)
        if cause is None:
            self.log.error("%s: a driver task failed; ending the connection", self.address,
                           exc_info=exc)
            self.driver_error = exc
            self._driver_failures.append((exc, self._released if self.queues else None))
            self.wake("driver failed")
        elif not isinstance(cause, anyio.ClosedResourceError):
            self.wake("task failed", cause)

    def _finish(self, why: BaseException) -> None:
        if self._finished is None:
            self._finished = why
        self._signal_change()

    # ------------------------------------------------------------------ the supervisor

    async def _watch(self, path: str, reason: str) -> None:
        try:
            async with self.domain.store.watch(path) as watch:
                async for _ in watch:
                    self.wake(reason)
        except StoreError as exc:
            if path.startswith("@"):
                # A store may refuse special watches to an unprivileged domain; the peer's
                # state watch and its event channel still tell us when it goes away.
                self.log.info("%s: no %s watch (%s)", self.address, path, exc)
                return
            self._finish(exc)
        except Exception as exc:  # the store connection failed: nothing more can be decided
            self.log.warning("%s: xenstore failed: %r", self.address, exc)
            self._finish(PeerGoneError(f"{self.address}: the xenstore connection failed: {exc!r}"))
        else:
            self._finish(PeerGoneError(f"{self.address}: the xenstore connection closed"))

    async def _supervise(self) -> None:
        """Take wake-ups (coalescing bursts), decide, act; until the device is finished.  If
        deciding itself fails (the store went away...), the device is finished with that
        error: `wait_finished` returns and the drivers' waits raise."""
        try:
            await self._supervise_loop()
        except Exception as exc:
            self.log.warning("%s: stopped: %r", self.address, exc)
            with anyio.CancelScope(shield=True):
                await self._teardown()
            self._finish(exc)

    async def _supervise_loop(self) -> None:
        async with self._wake_rx:
            while self._finished is None:
                wakeups = [await self._wake_rx.receive()]
                with suppress(anyio.WouldBlock):
                    while True:
                        wakeups.append(self._wake_rx.receive_nowait())
                await self._on_wakeups(wakeups)
                if self._finished is not None:
                    break
                try:
                    raw = await self._read_peer_state()
                    reaction = self.handshake.observe(raw)
                except RemoteProtocolError as exc:
                    self.log.warning("%s: peer broke the handshake: %s", self.address, exc)
                    await self._protocol_failure(exc)
                    continue
                await self._carry_out(reaction)

    async def _carry_out(self, reaction: Reaction) -> None:
        for _ in range(16):  # each step moves our state; the tables converge well within this
            if reaction is Reaction.NONE or self._finished is not None:
                return
            self.log.debug(
                "%s: %s (own %s, peer %s)",
                self.address,
                reaction.value,
                self.handshake.state.xen_name,
                self.handshake.peer_state.xen_name,
            )
            try:
                await self._react(reaction)
            except RemoteProtocolError as exc:
                self.log.warning("%s: peer broke the protocol: %s", self.address, exc)
                await self._protocol_failure(exc)
                return
            except RingkitError as exc:
                await self._local_failure(exc)
                return
            except QUIET as exc:
                if exc is not self._hook_failure or ring_failure(exc) is not None:
                    # The store or the transport failing under the supervisor itself: nothing
                    # more can be decided (`_supervise` ends the device).
                    raise
                # An OSError (say) out of a driver hook: the driver's bug, as below.
                self.log.error("%s: the driver failed to %s; ending the connection",
                               self.address, reaction.value, exc_info=exc)
                await self._driver_failure(exc)
                return
            except Exception as exc:
                # A driver hook (connecting, rings_mapped, negotiate, publish...) failed: its bug
                # ends only this connection, in order, as a failed task of the driver does.
                self.log.error("%s: the driver failed to %s; ending the connection",
                               self.address, reaction.value, exc_info=exc)
                await self._driver_failure(exc)
                return
            reaction = self.handshake.reaction()

    async def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        """React to failed driver tasks and broken rings before looking at the store."""
        failures, self._driver_failures = self._driver_failures, []
        for exc, connection in failures:
            if self._finished is None:
                await self._driver_failure(exc, connection)
        for wakeup in wakeups:
            if wakeup.error is None:
                continue
            cause = wakeup.error
            if isinstance(cause, PeerGoneError):
                if await self._peer_says_closing():
                    # An orderly close: the peer wrote Closing before releasing its end, and
                    # its port or pages went first only as we saw it.  The state read that
                    # follows takes the connection down in order (Closing -> Closed), as the
                    # peer asked, instead of as a death.
                    self.log.info("%s: peer released its ring while closing (%s)",
                                  self.address, cause)
                    continue
                self.log.info("%s: peer went away (%s)", self.address, cause)
                await self._peer_died()
            elif isinstance(cause, RemoteProtocolError):
                self.log.warning("%s: peer broke the ring protocol: %s", self.address, cause)
                await self._protocol_failure(cause)
            else:
                self.log.warning("%s: ring failed: %r", self.address, cause)
                await self._peer_died()

    async def _protocol_failure(self, exc: RemoteProtocolError) -> None:
        """A hostile or broken peer ends the connection, never the device: release the rings,
        report the error, Closing -> Closed, and wait for the peer to start over."""
        await self._refuse(exc)
        if not self.handshake.broken:
            # A ring-level violation: the peer's state node still says what it said before;
            # react only once it changes.  (A broken handshake waits for a restart anyway.)
            self.handshake.peer_lost()
        await self._after_refusal(exc)

    async def _refuse(self, exc: RingkitError) -> None:
        """End the connection as Linux's ``xenbus_dev_fatal`` does: write the error node and
        Closing first -- the peer learns of it as an orderly close, not as this end vanishing
        under it -- then tear down and say Closed (without waiting for the peer: it broke the
        protocol, or there is nothing mapped yet)."""
        await self._report_error(exc)
        await self._end_connection()

    async def _end_connection(self) -> None:
        """Closing, the rings released, Closed: the part of a refusal after the error node."""
        await self._announce_closing()
        await self._teardown()
        await self._close_own()

    async def _driver_failure(self, exc: Exception, connection: int | None = None) -> None:
        """The driver's own code failed (already logged): end the connection it failed in as a
        refusal does -- the error node (EIO, naming the exception), Closing, the rings released,
        Closed -- so the peer sees an orderly close at once instead of waiting on a ring nobody
        serves; then carry on as the end does after such a failure (`_after_driver_failure`).

        `connection` is the `_released` count when it failed, None if no connection was up: a
        connection over since (another of its tasks failed first, the peer closed it...) is
        not ended twice, and a new one is not ended for it."""
        self.driver_error = exc
        if connection is not None and connection != self._released:
            ended = False
            self.log.info("%s: the connection %r happened in is over already", self.address, exc)
        else:
            ended = bool(self.queues) or self.handshake.state is not S.CLOSED
        if ended:
            await self._write_error(
                _errno.EIO, f"the {self.role.value}'s driver failed: {type(exc).__name__}: {exc}"
            )
            await self._end_connection()
            # The peer's state node still says what it said; react only once it changes.
            self.handshake.peer_lost()
        await self._after_driver_failure(exc, ended)

    async def _after_driver_failure(self, exc: Exception, ended: bool) -> None:
        """Hook of the ends: what the driver's bug means beyond the connection it ended (with
        `ended` False there was none left to end: the connection it happened in is over, or
        this end was Closed with no rings)."""

    async def _announce_closing(self) -> None:
        """Say Closing before releasing the rings, as Linux's drivers do: the peer then sees
        its ring go away as part of an orderly close, never before it (a port closed under a
        peer that still reads Connected looks like this end's death)."""
        if self.handshake.state not in (S.CLOSING, S.CLOSED) and self.handshake.can_move(
                S.CLOSING):
            await self._write_state(S.CLOSING)

    async def _close_own(self) -> None:
        """Move this end to Closing, then Closed, skipping what it is already in: rewriting a
        state would only wake our own watch for nothing."""
        for to in (S.CLOSING, S.CLOSED):
            if self.handshake.state is not to and self.handshake.can_move(to):
                await self._write_state(to)

    async def _after_refusal(self, exc: RingkitError) -> None:
        """Hook of the ends: what a refused connection means beyond itself."""

    @property
    def error_path(self) -> str:
        """This end's xenstore error node (see `ringkit.device.paths.error_node`)."""
        return error_node(self.own_nodes.path)

    async def _report_error(self, exc: RingkitError) -> None:
        """Write ``"<errno> <message>"`` to this end's error node, readable by the peer (so a
        frontend learns why its backend refused it).  Best effort: the store may be gone."""
        await self._write_error(getattr(exc, "errno", None) or _errno.EINVAL, str(exc))

    async def _write_error(self, number: int, message: str) -> None:
        """Write ``"<number> <message>"`` (cut to `MAX_ERROR_TEXT`) to this end's error node,
        readable by the peer.  Best effort: the store may be gone."""
        text = f"{number} {message}"[:MAX_ERROR_TEXT]
        store = self.domain.store
        with suppress(*QUIET):
            await store.write(self.error_path, text)
            await store.set_perms(
                self.error_path,
                [Permission(self.domain.domid, Access.NONE), Permission(self.peer_id, Access.READ)],
            )

    async def _clear_error(self) -> None:
        """Remove this end's error report once a connection is up again."""
        with suppress(*QUIET):
            await self.domain.store.rm(self.error_path.rsplit("/", 1)[0])

    async def read_peer_error(self) -> str | None:
        """What the peer wrote to its error node (untrusted text, cut to `MAX_ERROR_TEXT`), or
        None when it wrote none (or the store refuses to say)."""
        with suppress(*QUIET):
            raw = await self.domain.store.read_bytes(error_node(self.peer_nodes.path))
            return raw[:MAX_ERROR_TEXT].decode("utf-8", "replace")
        return None

    async def _peer_died(self) -> None:
        """The peer's process died under us: drop the connection and wait for a fresh peer."""
        if not self.queues:
            return
        await self._teardown()
        self.handshake.peer_lost()
        self._signal_change()
        await self._start_over()

    async def _local_failure(self, exc: RingkitError) -> None:
        raise NotImplementedError

    async def _start_over(self) -> None:
        raise NotImplementedError

    async def _react(self, reaction: Reaction) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ lifetime

    async def wait_finished(self) -> None:
        """Return once the device is gone for good."""
        while self._finished is None:
            await self._changed.wait()

    async def aclose(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ open / close order

    def _opened(self) -> None:
        """Record that the current task opened this device (its task group is entered)."""
        self._owner_task = anyio.get_current_task().id
        _OPEN_DEVICES.set((*_OPEN_DEVICES.get(), self))

    def _check_close_order(self) -> None:
        """A device's task group lives in the task that opened it, nested in whatever that task
        opened before: closing it from another task, or before a device opened after it, would
        fail deep in anyio ("exit a cancel scope that isn't the current task's ...") with the
        device half closed.  Say so first, touching nothing.

        Raises:
            LocalProtocolError: wrong task, or not the most recently opened open device.
        """
        if anyio.get_current_task().id != self._owner_task:
            raise LocalProtocolError(
                f"{self.address}: close a device in the task that opened it (its task group "
                "lives there)"
            )
        opened = _OPEN_DEVICES.get()
        if self in opened and opened[-1] is not self:
            raise LocalProtocolError(
                f"{self.address}: close devices in the reverse order of opening (nested "
                f"`async with`): {opened[-1].address}, opened later, is still open"
            )

    async def _leave(self, stack: AsyncExitStack) -> None:
        """The last step of `aclose` at either end: finish, stop the device's tasks and exit its
        task group -- outside any scope entered since (scopes nest)."""
        try:
            self._finish(PeerGoneError("closed"))
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
        finally:
            try:
                await stack.aclose()
            finally:
                self._closed()

    def _closed(self) -> None:
        _OPEN_DEVICES.set(tuple(dev for dev in _OPEN_DEVICES.get() if dev is not self))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()
