"""Framing of the simulator's control protocol: JSON messages that may carry file descriptors.

Each frame is an 8-byte header (body length, number of fds, 2 bytes reserved) followed by a UTF-8
JSON object.  File descriptors ride along with SCM_RIGHTS on the ``sendmsg`` that carries the
frame's first byte, so they reach the receiver no later than the frame's bytes do.  The receiver
therefore reads with ``recvmsg`` only (a plain ``recv`` that crosses a descriptor-carrying chunk
makes the kernel discard the descriptors) and hands descriptors out strictly in arrival order,
`nfds` per frame.

Reading, writing and accepting go through ``anyio.wait_readable`` / ``wait_writable`` and the raw
socket, not through anyio's Unix stream and listener methods: on asyncio those register the
waiting future's own ``set_result`` as the selector callback, so when a task is cancelled (a
domain destroyed, a client cancelled) in the same loop iteration in which its socket became
ready, the queued callback resolves a cancelled future and asyncio logs ``InvalidStateError``
("Exception in callback Future.set_result(None)").  ``wait_readable``'s callback tolerates that.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, UNIXSocketStream

from .._errors import RemoteProtocolError

_HEADER = struct.Struct("<IHxx")
MAX_BODY = 1 << 20
"""Largest frame body accepted; a longer one is a protocol violation."""
MAX_FDS = 253
"""Largest number of descriptors one frame may carry (the kernel's SCM_MAX_FD)."""

COPY_CHUNK = 256 * 4096
"""Most bytes one grant-copy request moves (one slot of a client's copy area): a burst of
netif's largest packets in one request, since each request waits for the simulator process
to be scheduled."""
COPY_SEGMENTS = 1024
"""Most segments one grant-copy request names (keeping its frame far below `MAX_BODY`)."""
COPY_AREA_SIZE = 4 * COPY_CHUNK
"""Bytes of a client's copy area (`ringkit.sim._state.CopyArea`): four copies at once."""

Message = dict[str, Any]


def encode(message: Message, nfds: int = 0) -> bytes:
    """One frame holding `message`, announcing `nfds` descriptors."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_BODY:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_BODY}")
    return _HEADER.pack(len(body), nfds) + body


def raw_socket(stream: UNIXSocketStream | socket.socket) -> socket.socket:
    """The socket under `stream` (anyio's attribute lookup builds a dict of every attribute
    on each call: hot loops look it up once and pass the socket)."""
    if isinstance(stream, socket.socket):
        return stream
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
    return sock


async def send(stream: UNIXSocketStream | socket.socket, message: Message,
               fds: list[int] | None = None) -> None:
    """Send one frame, with `fds` attached when given."""
    await send_frame(stream, encode(message, len(fds) if fds else 0), fds or [])


async def send_frame(stream: UNIXSocketStream | socket.socket, frame: bytes,
                     fds: list[int]) -> None:
    """Send an encoded frame whole, `fds` riding on its first byte.

    Raises:
        anyio.ClosedResourceError: the stream was closed here.
        anyio.BrokenResourceError: the peer is gone.
    """
    sock = raw_socket(stream)
    await anyio.lowlevel.checkpoint()
    view = memoryview(frame)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while view:
        if sock.fileno() < 0:
            raise anyio.ClosedResourceError
        try:
            sent = sock.sendmsg([view], rights) if rights else sock.send(view)
        except (BlockingIOError, InterruptedError):
            await anyio.wait_writable(sock)
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        rights = []
        view = view[sent:]


async def receive_chunk(stream: UNIXSocketStream | socket.socket) -> tuple[bytes, list[int]]:
    """What one ``recvmsg`` returns: bytes and the descriptors that came with them.

    Raises:
        anyio.EndOfStream: the peer closed the connection.
        anyio.ClosedResourceError: the stream was closed here.
        anyio.BrokenResourceError: the connection failed.
        RemoteProtocolError: more descriptors arrived than a chunk may carry.
    """
    sock = raw_socket(stream)
    await anyio.lowlevel.checkpoint()
    while True:
        if sock.fileno() < 0:
            raise anyio.ClosedResourceError
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(sock)
            continue
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        break
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise RemoteProtocolError("control connection sent more descriptors than a frame holds")
    if not data and not fds:
        raise anyio.EndOfStream
    return data, fds


async def serve_unix(
    listener: anyio.abc.SocketListener,
    handler: Callable[[UNIXSocketStream], Coroutine[Any, Any, None]],
    task_group: anyio.abc.TaskGroup,
) -> None:
    """Accept connections on `listener` forever, serving each with `handler` in `task_group`
    (what ``listener.serve`` does, with a cancellation-safe wait; see the module docstring)."""
    sock: socket.socket = listener.extra(SocketAttribute.raw_socket)
    while True:
        await anyio.wait_readable(sock)
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        try:
            conn.setblocking(False)
            stream = await UNIXSocketStream.from_socket(conn)
        except BaseException:
            conn.close()
            raise
        task_group.start_soon(handler, stream)


class FrameReader:
    """Reassembles frames and their descriptors from a Unix stream socket.

    Descriptors received but not yet claimed by a frame are owned by the reader and closed by
    `close()`.
    """

    def __init__(self, stream: UNIXSocketStream) -> None:
        self._sock = raw_socket(stream)
        self._buffer = bytearray()
        self._fds: deque[int] = deque()

    async def receive(self) -> tuple[Message, list[int]]:
        """The next message and the descriptors it carries (the caller owns them).

        Raises:
            anyio.EndOfStream: the peer closed the connection between frames.
            RemoteProtocolError: a malformed frame, or the connection ended inside one.
        """
        while True:
            if len(self._buffer) >= _HEADER.size:
                length, nfds = _HEADER.unpack_from(self._buffer)
                if length > MAX_BODY or nfds > MAX_FDS:
                    raise RemoteProtocolError(
                        f"control frame announces {length} bytes and {nfds} fds"
                    )
                end = _HEADER.size + length
                if len(self._buffer) >= end:
                    if len(self._fds) < nfds:
                        raise RemoteProtocolError(
                            f"control frame announces {nfds} fds but {len(self._fds)} arrived"
                        )
                    body = bytes(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    fds = [self._fds.popleft() for _ in range(nfds)]
                    try:
                        message = json.loads(body)
                        if not isinstance(message, dict):
                            raise ValueError("not an object")
                    except ValueError as exc:
                        for fd in fds:
                            os.close(fd)
                        raise RemoteProtocolError(f"malformed control message: {exc}") from exc
                    return message, fds
            try:
                data, fds = await receive_chunk(self._sock)
            except anyio.EndOfStream:
                if self._buffer:
                    raise RemoteProtocolError("control connection ended inside a frame") from None
                raise
            self._fds.extend(fds)
            if not data:
                continue
            self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet returned as a frame."""
        return len(self._buffer)

    def close(self) -> None:
        """Close descriptors that arrived without being claimed."""
        while self._fds:
            os.close(self._fds.popleft())
