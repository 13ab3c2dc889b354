"""Framing of the simulator's control protocol: JSON messages that may carry file descriptors.

Each frame is an 8-byte header (body length, number of fds, 2 bytes reserved) followed by a UTF-8
JSON object.  File descriptors ride along with SCM_RIGHTS on the ``sendmsg`` that carries the
frame's first byte, so they reach the receiver no later than the frame's bytes do.  The receiver
therefore reads with ``recvmsg`` only (a plain ``recv`` that crosses a descriptor-carrying chunk
makes the kernel discard the descriptors) and hands descriptors out strictly in arrival order,
`nfds` per frame.
"""

from __future__ import annotations

import json
import os
import struct
from collections import deque
from typing import Any

import anyio
from anyio.abc import UNIXSocketStream

from .._errors import RemoteProtocolError

_HEADER = struct.Struct("<IHxx")
MAX_BODY = 1 << 20
"""Largest frame body accepted; a longer one is a protocol violation."""
MAX_FDS = 253
"""Largest number of descriptors one frame may carry (the kernel's SCM_MAX_FD)."""

Message = dict[str, Any]


def encode(message: Message, nfds: int = 0) -> bytes:
    """One frame holding `message`, announcing `nfds` descriptors."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_BODY:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_BODY}")
    return _HEADER.pack(len(body), nfds) + body


async def send(stream: UNIXSocketStream, message: Message, fds: list[int] | None = None) -> None:
    """Send one frame, with `fds` attached when given."""
    frame = encode(message, len(fds) if fds else 0)
    if fds:
        await stream.send_fds(frame, fds)
    else:
        await stream.send(frame)


class FrameReader:
    """Reassembles frames and their descriptors from a Unix stream socket.

    Descriptors received but not yet claimed by a frame are owned by the reader and closed by
    `close()`.
    """

    def __init__(self, stream: UNIXSocketStream) -> None:
        self._stream = stream
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
                data, fds = await self._stream.receive_fds(65536, MAX_FDS)
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
