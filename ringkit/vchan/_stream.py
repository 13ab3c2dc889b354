"""`VchanStream`: an anyio byte stream over one end of a vchan (`ringkit.proto.vchan.VchanEnd`).

It is `PipeStream` (the console's stream: write what fits, sleep on the event channel, one
sleeper per port) plus what the vchan wire adds: the peer's live byte.  Once the peer exited
(its byte cleared by itself or by the kernel's unmap-notify, or its event channel closed),
`receive` first hands out what the peer wrote before leaving, then raises `anyio.EndOfStream`;
`send` raises `anyio.BrokenResourceError` from `PeerGoneError`.

vchan has no half-close on the wire: `send_eof` waits until the peer took every byte we sent,
then clears our live byte -- the peer reads to the end of our data, then `EndOfStream`; its
later sends fail, and we can still receive what it had already written.  `aclose` does the same
drain (bounded by `close_timeout`), then releases the pages and the event channel.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

import anyio
import anyio.lowlevel
from anyio.abc import AsyncResource

from .._async._poll import poll_seconds, poll_until
from .._async.stream import PipeStream
from .._errors import (
    EventChannelError,
    PeerGoneError,
    RemoteProtocolError,
    TransportError,
)
from ..abc import EventChannel
from ..proto.vchan import Live, VchanEnd

CLOSE_TIMEOUT = 10.0
"""Seconds `aclose` waits for the peer to take the bytes still in our ring."""

_log = logging.getLogger(__name__)


class VchanStream(PipeStream):
    """One connected end of a vchan; see the module docstring.

    Besides the `anyio.abc.ByteStream` methods: `send_packet` / `receive_packet` (all or
    nothing), `drain`, `peer_exited`.
    """

    def __init__(
        self,
        engine: VchanEnd,
        event: EventChannel,
        resources: Sequence[AsyncResource],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        close_timeout: float = CLOSE_TIMEOUT,
        poll_us: int = 0,
    ) -> None:
        poll = poll_seconds(poll_us)  # checked before anything is taken over
        super().__init__(engine, event)
        self._vchan = engine
        self._resources = tuple(resources)
        self._on_close = on_close
        self._gone: PeerGoneError | None = None
        self._live_cleared = False
        self.close_timeout = close_timeout
        self._poll_seconds = poll

    @property
    def poll_us(self) -> int:
        """Microseconds a waiting end spins on the rings before it sleeps on the event channel
        (0: never; the default), as given when the vchan was offered or connected.  A small
        ring makes writer and reader take turns, a wake-up each per ring-full; polling both ends
        keeps them awake (each needs a CPU of its own)."""
        return round(self._poll_seconds * 1e6)

    async def _wait_event(self) -> None:
        """With `poll_us`, first spin (yielding to the event loop between looks) until the
        peer moves either ring or the window ends; then, if it did not, sleep as usual.  The
        callers look again either way."""
        if self._poll_seconds and not self._waiting:
            self.stats.polls += 1
            # The other task of this stream may sleep on the port meanwhile and take the event
            # the peer sent for us -- it wakes only tasks already waiting, and a poller is not:
            # if it woke at all during our window, we look again instead of sleeping (an event
            # the peer sent as it moved, in parallel, just before our first look, would
            # otherwise be gone, and we would sleep with the ring ready: both ends asleep).
            wakeups = self._port_wakeups
            try:
                before = self._vchan.progress()
            except RemoteProtocolError:
                return  # the caller's own look reports it

            def moved() -> bool:
                try:
                    return self._vchan.progress() != before
                except RemoteProtocolError:
                    return True  # the caller's own look reports it

            if await poll_until(self._poll_seconds, moved):
                self.stats.poll_hits += 1
                return
            if self._port_wakeups != wakeups:
                return
        await super()._wait_event()

    @property
    def engine(self) -> VchanEnd:
        """The sans-I/O end."""
        return self._vchan

    # ------------------------------------------------------------------ the peer's exit

    def _peer_gone(self, exc: PeerGoneError) -> None:
        self._gone = exc  # its port closed: what it wrote is still in the ring, drain it

    def peer_exited(self) -> bool:
        """Whether the peer has left (live byte cleared or event channel closed).

        Raises:
            anyio.BrokenResourceError: the peer's live byte is impossible.
        """
        if self._gone is not None:
            return True
        try:
            return self._vchan.peer_live() is Live.EXITED
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc

    def _refuse_send(self) -> None:
        if self.peer_exited():
            cause = self._gone or PeerGoneError(f"the vchan {self._vchan.role.value}'s peer exited")
            raise anyio.BrokenResourceError(str(cause)) from cause

    # ------------------------------------------------------------------ receive

    def receive_nowait(self, max_bytes: int = 65536) -> bytes:
        """Bytes waiting now (at most `max_bytes`); `anyio.WouldBlock` if none yet,
        `anyio.EndOfStream` once the peer exited and all it wrote was taken."""
        try:
            return super().receive_nowait(max_bytes)
        except anyio.WouldBlock:
            if not self.peer_exited():
                raise
        # The peer exited: what it published before clearing its byte is visible now.
        try:
            return super().receive_nowait(max_bytes)
        except anyio.WouldBlock:
            raise anyio.EndOfStream from None

    async def receive_packet(self, count: int) -> bytes:
        """Exactly `count` bytes (at most the ring's size), waiting until all are there.

        Raises:
            anyio.EndOfStream: the peer exited with fewer than `count` bytes left.
            ConfigError: `count` exceeds the ring.
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                self._check()
                exited = self.peer_exited()
                try:
                    data, notify = self._vchan.read_exactly(count)
                except RemoteProtocolError as exc:
                    raise self._break(exc) from exc
                if data is not None:
                    if notify:
                        self._notify()
                    return data
                if exited:
                    raise anyio.EndOfStream
                await self._wait_event()
        finally:
            self._receiving = False

    # ------------------------------------------------------------------ send

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what fits now; the count written (0: the ring is full).

        Raises:
            anyio.BrokenResourceError: the peer exited or broke the protocol.
        """
        self._check()
        self._refuse_send()
        return super().send_nowait(data)

    async def send_packet(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data` at once (at most the ring's size), waiting for room.

        Raises:
            ConfigError: `data` exceeds the ring.
            anyio.BrokenResourceError: the peer exited or broke the protocol.
        """
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                self._check()
                if self._eof_sent:
                    raise anyio.ClosedResourceError
                self._refuse_send()
                try:
                    done, notify = self._vchan.write_all_or_nothing(data)
                except RemoteProtocolError as exc:
                    raise self._break(exc) from exc
                if notify:
                    self._notify()
                if done:
                    return
                await self._wait_event()
        finally:
            self._sending = False

    async def drain(self) -> None:
        """Wait until the peer took every byte we sent.

        Raises:
            anyio.BrokenResourceError: the peer exited first, or broke the protocol.
        """
        while True:
            self._check()
            self._refuse_send()
            try:
                if self._vchan.writable() >= self._vchan.tx_size:
                    return
            except RemoteProtocolError as exc:
                raise self._break(exc) from exc
            await self._wait_event()

    def _clear_live(self) -> None:
        """Tell the peer we left: clear our live byte and ring its doorbell (once)."""
        if self._live_cleared:
            return
        self._live_cleared = True
        self._vchan.set_live(Live.EXITED)
        with suppress(EventChannelError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._event.notify()

    async def send_eof(self) -> None:
        """Wait until the peer took all we sent, then clear our live byte: the peer reads our
        data, then `anyio.EndOfStream` (vchan has no half-close: its sends fail from then on).

        Raises:
            anyio.BrokenResourceError: the peer exited before taking all our data.
        """
        if self._eof_sent:
            return
        await self.drain()
        self._eof_sent = True
        self._clear_live()

    # ------------------------------------------------------------------ close

    async def aclose(self) -> None:
        """Drain (up to `close_timeout`, not when the peer already left), clear our live byte,
        then release the rings, the control page and the event channel."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        with anyio.CancelScope(shield=True):
            try:
                if self._broken is None and not self._eof_sent:
                    with (anyio.move_on_after(self.close_timeout),
                          suppress(anyio.BrokenResourceError)):
                        await self.drain()
                if self._vchan.error is None:
                    self._clear_live()
            finally:
                await super().aclose()
                for resource in self._resources:
                    try:
                        await resource.aclose()
                    except TransportError as exc:  # keep releasing the rest
                        _log.warning("vchan close: %r", exc)
                if self._on_close is not None:
                    await self._on_close()
