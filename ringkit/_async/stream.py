"""`PipeStream`: an anyio byte stream over a byte-ring engine (the console page) and its event
channel.

Theory of operation
-------------------
The engine (`ringkit.proto.console.ConsoleRing`) copies bytes in and out of the shared page and
says whether the peer must be notified.  The stream waits:

* `receive` returns whatever is waiting (at most `max_bytes`); when nothing is, it sleeps on the
  event channel and looks again.  Events are latched by the transport, so a byte written between
  the look and the sleep still wakes us.
* `send` writes what fits, notifies, and while bytes remain (the ring is full: the peer is not
  reading) sleeps until the peer's notification says it consumed some.  That is the flow
  control: a writer never outruns a reader by more than the ring.

Both directions share one event channel, and a transport allows one waiter per port, so one
task at a time sleeps on the port and wakes the other (`_wait_event`).  Peer errors follow
anyio's contract: `anyio.BrokenResourceError` chained from `RemoteProtocolError` (hostile
indices) or `PeerGoneError` (the peer's port closed).
"""

from __future__ import annotations

from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream

from .._errors import PeerGoneError, RemoteProtocolError
from ..abc import EventChannel
from ._link import PeerLink

__all__ = ("BytePipe", "PipeStream")


class BytePipe(Protocol):
    """What `PipeStream` needs from a byte-ring engine."""

    def write(self, data: bytes | bytearray | memoryview) -> tuple[int, bool]:
        """Copy as much of `data` as fits and publish it; return (bytes written, notify?)."""
        ...

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Take up to `max_bytes` waiting bytes as a private copy; return (data, notify?)."""
        ...

    def readable(self) -> int:
        """Bytes waiting in the ring this end reads."""
        ...

    def writable(self) -> int:
        """Free bytes in the ring this end writes."""
        ...

    @property
    def tx_size(self) -> int:
        """Size in bytes of the ring this end writes."""
        ...

    def release(self) -> None:
        """Let go of the shared page, so that its mapping can be closed."""
        ...


class PipeStream(PeerLink, ByteStream):
    """A byte stream over one side of a shared byte ring."""

    def __init__(self, engine: BytePipe, event: EventChannel) -> None:
        PeerLink.__init__(self, event)
        self._engine = engine
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        self._waiting = False
        self._woken = anyio.Event()
        self._port_wakeups = 0
        """How many times the task sleeping on the port woke up (an event, which may have been
        meant for the other task: see `VchanStream`'s polling)."""

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    @property
    def engine(self) -> BytePipe:
        """The sans-I/O engine."""
        return self._engine

    @property
    def event(self) -> EventChannel:
        """The event channel this stream's doorbells go through, both ways."""
        return self._event

    # ------------------------------------------------------------------ plumbing

    def _wake_sleepers(self) -> None:
        self._woken.set()

    async def _wait_event(self) -> None:
        """Sleep until the peer notifies (or the task sleeping on the port wakes us)."""
        if self._waiting:
            await self._woken.wait()
            return
        self._waiting = True
        self.stats.sleeps += 1
        try:
            await self._event.wait()
        except PeerGoneError as exc:
            self._peer_gone(exc)
        finally:
            self._waiting = False
            self._port_wakeups += 1
            self._woken.set()
            self._woken = anyio.Event()

    def _peer_gone(self, exc: PeerGoneError) -> None:
        """The peer's end of the event channel closed while we slept: the stream breaks.
        (A subclass whose wire says more about the peer's exit may record it and return.)"""
        raise self._break(exc) from exc

    # ------------------------------------------------------------------ receive

    def receive_nowait(self, max_bytes: int = 65536) -> bytes:
        """Bytes waiting now (at most `max_bytes`), else `anyio.WouldBlock`."""
        self._check()
        try:
            data, notify = self._engine.read(max_bytes)
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if not data:
            raise anyio.WouldBlock
        if notify:
            self._notify()
        return data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """At least one byte, waiting for the peer as needed.

        Raises:
            anyio.BrokenResourceError: hostile indices or the peer went away.
            anyio.ClosedResourceError: closed locally.
            anyio.BusyResourceError: another task is receiving.
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                try:
                    return self.receive_nowait(max_bytes)
                except anyio.WouldBlock:
                    await self._wait_event()
                    self._check()
        finally:
            self._receiving = False

    # ------------------------------------------------------------------ send

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what fits now; return how many bytes were written (0 if the ring is full)."""
        self._check()
        if self._eof_sent:
            raise anyio.ClosedResourceError
        try:
            count, notify = self._engine.write(data)
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if notify:
            self._notify()
        return count

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Write all of `item`, waiting for the peer to make room as needed (flow control)."""
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint()
            view = memoryview(item).cast("B")
            while view.nbytes:
                sent = self.send_nowait(view)
                view = view[sent:]
                if view.nbytes:
                    await self._wait_event()
                    self._check()
        finally:
            self._sending = False

    async def wait_writable(self) -> int:
        """Wait until the ring we write has room and return how many bytes fit now (at least
        1).  Only this side writes that ring, so the room can only grow until we send.

        Raises:
            anyio.BrokenResourceError: hostile indices or the peer went away.
            anyio.ClosedResourceError: closed locally.
        """
        while True:
            self._check()
            try:
                room = self._engine.writable()
            except RemoteProtocolError as exc:
                raise self._break(exc) from exc
            if room:
                return room
            await self._wait_event()

    async def drain(self) -> None:
        """Wait until the peer has taken every byte we sent (before closing, so nothing is lost
        in the ring)."""
        while True:
            self._check()
            try:
                if self._engine.writable() >= self._engine.tx_size:
                    return
            except RemoteProtocolError as exc:
                raise self._break(exc) from exc
            await self._wait_event()

    async def send_eof(self) -> None:
        """Refuse further sends (the console has no end-of-stream marker)."""
        self._eof_sent = True

    async def aclose(self) -> None:
        """Stop using the page; the event channel and the pages are closed by their owner."""
        if not self._closed:
            self._closed = True
            self._woken.set()
            self._engine.release()
        await anyio.lowlevel.checkpoint()
