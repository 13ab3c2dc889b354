"""A process's connection to its domain's hypervisor socket.

Requests are numbered and answered in order; a reader task matches replies to callers and
passes unsolicited events (a port was bound, a port's peer closed) to a handler, which owns the
descriptors an event carries.  Sending never
awaits: frames are appended to a buffer and written at once when the socket has room, the rest
by a writer task, so that synchronous calls like ``set_unmap_notify`` can reach the server in
order with the asynchronous ones.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketAttribute, UNIXSocketStream

from .. import _errors
from .._errors import PeerGoneError, RemoteProtocolError, TransportError
from . import _wire

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[Exception]] = {
    name: getattr(_errors, name)
    for name in ("ConfigError", "GrantError", "EventChannelError", "ResourceLimitError",
                 "TransportError")
}


def error_from_wire(error: dict[str, Any]) -> Exception:
    """The exception a server error reply describes (TransportError for unknown kinds)."""
    cls = _ERRORS.get(str(error.get("type")), TransportError)
    message = str(error.get("message"))
    if issubclass(cls, TransportError):
        code = error.get("errno")
        return cls(message, code if isinstance(code, int) else None)
    return cls(message)


@dataclass(slots=True)
class _Pending:
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: dict[str, Any] | None = None
    fds: list[int] = field(default_factory=list)
    error: BaseException | None = None


class Link:
    """Request/reply channel to the simulated hypervisor; run `run()` in a task group."""

    def __init__(
        self,
        stream: UNIXSocketStream,
        on_event: Callable[[dict[str, Any], list[int]], None],
    ) -> None:
        self._stream = stream
        self._sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self._on_event = on_event
        self._out = bytearray()
        self._out_ready = anyio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lost: BaseException | None = None
        self._closed = False

    @property
    def lost(self) -> bool:
        """Whether the connection is gone (server stopped or the domain destroyed)."""
        return self._lost is not None

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Queue a request that needs no reply; errors come back as ``error`` events."""
        self._check()
        self._queue(message)

    async def call(self, op: str, **args: Any) -> tuple[dict[str, Any], list[int]]:
        """Send a request and return its reply and the descriptors it carried (the caller
        owns them).  A cancelled caller is stopped before the request is sent (so a loop of
        calls can be cancelled at all); once sent, the wait for the reply is shielded from
        cancellation, so the server and this side never disagree about what was created.
        Releasing calls (unshare, unmap, close_port) must therefore be made in a shielded scope.

        Raises:
            TransportError, ConfigError: the hypervisor refused (its errno preserved).
            PeerGoneError: the connection is lost.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check()
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        self._queue({"id": request_id, "op": op, **args})
        with anyio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply, pending.fds

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._lost is not None:
            raise PeerGoneError(
                "the connection to the simulated Xen is gone (domain destroyed or server "
                "stopped)"
            ) from self._lost

    def _queue(self, message: dict[str, Any]) -> None:
        self._out += _wire.encode(message)
        self._flush()
        if self._out:
            self._out_ready.set()

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(exc)
                return
            del self._out[:sent]

    async def run(self) -> None:
        """Read replies and events until the connection ends; flush queued frames."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            try:
                await self._reader()
            finally:
                tg.cancel_scope.cancel()

    async def _writer(self) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready = anyio.Event()
            while self._out and self._lost is None:
                try:
                    await anyio.wait_writable(self._sock)
                except (anyio.ClosedResourceError, OSError):
                    return
                self._flush()

    async def _reader(self) -> None:
        reader = _wire.FrameReader(self._stream)
        try:
            while True:
                try:
                    message, fds = await reader.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError) as exc:
                    self._lose(exc)
                    return
                except RemoteProtocolError as exc:
                    self._lose(exc)
                    return
                self._deliver(message, fds)
        finally:
            reader.close()
            if self._lost is None:
                self._lose(anyio.ClosedResourceError())

    def _deliver(self, message: dict[str, Any], fds: list[int]) -> None:
        request_id = message.get("id")
        if request_id is None:
            try:
                self._on_event(message, fds)  # the handler owns the descriptors
            except Exception:  # a bug in a handler must not kill the connection
                log.exception("event handler failed for %r", message)
            return
        pending = self._pending.pop(request_id, None)
        if pending is None:
            for fd in fds:
                os.close(fd)
            return
        if "error" in message:
            for fd in fds:
                os.close(fd)
            pending.error = error_from_wire(message["error"])
        else:
            pending.reply = message.get("ok") or {}
            pending.fds = fds
        pending.done.set()

    def _lose(self, exc: BaseException) -> None:
        if self._lost is not None:
            return
        self._lost = exc
        for pending in self._pending.values():
            pending.error = PeerGoneError(
                "the connection to the simulated Xen was lost (domain destroyed or server "
                "stopped)"
            )
            pending.done.set()
        self._pending.clear()
        self._out.clear()
        self._out_ready.set()
        try:
            self._on_event({"ev": "lost"}, [])
        except Exception:
            log.exception("event handler failed for the lost connection")

    async def aclose(self) -> None:
        """Close the connection; the server then releases whatever is still held."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            # Let queued fire-and-forget requests reach the server first.
            with anyio.move_on_after(5):
                while self._out and self._lost is None:
                    await anyio.wait_writable(self._sock)
                    self._flush()
            anyio.notify_closing(self._sock)  # wakes the reader task waiting on it
            await self._stream.aclose()
