"""The xenstore wire protocol (Xen's ``io/xs_wire.h``), sans I/O.

Every message on a xenstore connection -- a Unix socket to xenstored, the ``/dev/xen/xenbus``
character device, or a guest's shared ring -- is a 16-byte header followed by a payload::

    struct xsd_sockmsg {
        uint32_t type;    /* XS_??? */
        uint32_t req_id;  /* Request identifier, echoed in daemon's response. */
        uint32_t tx_id;   /* Transaction id (0 if not related to a transaction). */
        uint32_t len;     /* Length of data following this. */
    };

in the host's byte order.  The payload is at most ``XENSTORE_PAYLOAD_MAX`` (4096) bytes and is
usually a sequence of NUL-terminated strings; ``XS_WRITE`` carries the path then the raw value.
Errors travel as ``XS_ERROR`` replies whose payload is the errno *name* (``"ENOENT\\0"``).

This module only turns bytes into `Message` objects and back; it never reads or writes anything
and is shared by the client (`ringkit.store`) and the simulated xenstored (`ringkit.sim.xenstored`).
A peer that sends a header announcing more than ``XENSTORE_PAYLOAD_MAX`` bytes breaks the protocol
(xenstored drops such a connection): `MessageParser` raises `RemoteProtocolError` and stays
poisoned.
"""

from __future__ import annotations

import enum
import errno as _errno
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .._errors import ConfigError, RemoteProtocolError

HEADER = struct.Struct("=IIII")
"""``struct xsd_sockmsg``: type, req_id, tx_id, len, native byte order."""

HEADER_SIZE = HEADER.size
"""16 bytes."""

XENSTORE_PAYLOAD_MAX = 4096
"""Largest payload either side may send ("Violating this is very bad", xs_wire.h)."""

XENSTORE_ABS_PATH_MAX = 3072
"""Longest absolute path ("Violating these just gets you an error back")."""

XENSTORE_REL_PATH_MAX = 2048
"""Longest path relative to a domain's home."""


class SockmsgType(enum.IntEnum):
    """``enum xsd_sockmsg_type``: what a message asks for or answers."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from Xen.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    INVALID = 0xFFFF


XS_TYPE_COUNT = 23
"""Number of valid message types (types >= this are unknown to xenstored)."""

XS_WATCH_PATH = 0
"""Index of the path in an ``XS_WATCH_EVENT`` payload."""
XS_WATCH_TOKEN = 1
"""Index of the token in an ``XS_WATCH_EVENT`` payload."""

XSD_ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)
"""The ``xsd_errors[]`` table of Xen 4.17's xs_wire.h, in order: the error names xenstored may
answer.  A name outside it is mapped to EINVAL by libxenstore (``get_error()`` in xs.c)."""


def error_errno(name: str) -> int:
    """The POSIX errno of a xenstore error name, EINVAL for names outside `XSD_ERRORS` (as
    libxenstore's ``get_error()`` does)."""
    if name in XSD_ERRORS:
        return int(getattr(_errno, name))
    return _errno.EINVAL


@dataclass(frozen=True, slots=True)
class Message:
    """One xenstore message: header fields plus the raw payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        """Header and payload as they go on the wire.

        Raises:
            ValueError: payload over `XENSTORE_PAYLOAD_MAX` or a field outside uint32.
        """
        if len(self.payload) > XENSTORE_PAYLOAD_MAX:
            raise ValueError(
                f"xenstore payload of {len(self.payload)} bytes exceeds {XENSTORE_PAYLOAD_MAX}"
            )
        try:
            header = HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload))
        except struct.error as exc:
            raise ValueError(f"xenstore header field out of range: {exc}") from None
        return header + self.payload

    def strings(self) -> list[str]:
        """The payload as NUL-terminated strings (see `split_strings`)."""
        return split_strings(self.payload)


def join_strings(*parts: str | bytes) -> bytes:
    """Encode each part (UTF-8 for str) followed by a NUL: the usual request payload.

    Raises:
        ConfigError: a part contains a NUL byte (it would split into two strings).
    """
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        if b"\0" in raw:
            raise ConfigError(f"xenstore string {raw!r} contains a NUL byte")
        out += raw
        out += b"\0"
    return bytes(out)


def split_strings(payload: bytes) -> list[str]:
    """Split a payload of NUL-terminated UTF-8 strings (a directory listing, a permission list,
    a watch event).  An empty payload is an empty list.

    Raises:
        RemoteProtocolError: the payload does not end with NUL or is not UTF-8.
    """
    if not payload:
        return []
    if not payload.endswith(b"\0"):
        raise RemoteProtocolError("xenstore string list is not NUL-terminated")
    try:
        return payload[:-1].decode().split("\0")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"xenstore string list is not UTF-8: {exc}") from None


def error_payload(name: str) -> bytes:
    """The payload of an ``XS_ERROR`` reply for error `name`."""
    return join_strings(name)


def parse_error(payload: bytes) -> str:
    """The error name carried by an ``XS_ERROR`` payload ("EINVAL" if it is garbled)."""
    name = payload.split(b"\0", 1)[0]
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return "EINVAL"
    return text if text.isalnum() and text.isupper() else "EINVAL"


class MessageParser:
    """Incremental parser for a byte stream of xenstore messages (either direction).

    `feed` bytes as they arrive, then drain complete messages with `next_message` (or iterate
    `messages`).  A header announcing a payload over `XENSTORE_PAYLOAD_MAX` raises
    `RemoteProtocolError`; the parser is then poisoned and raises again on every call, because
    the stream can no longer be framed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: oversized payload announced (now or earlier).
        """
        if self._error is not None:
            raise self._error
        if len(self._buffer) < HEADER_SIZE:
            return None
        type_, req_id, tx_id, length = HEADER.unpack_from(self._buffer)
        if length > XENSTORE_PAYLOAD_MAX:
            self._error = RemoteProtocolError(
                f"xenstore message announces {length} payload bytes (max {XENSTORE_PAYLOAD_MAX})"
            )
            self._buffer.clear()
            raise self._error
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return Message(type_, req_id, tx_id, payload)

    def messages(self) -> Iterator[Message]:
        """Iterate over the complete messages buffered so far."""
        while (message := self.next_message()) is not None:
            yield message


def encode_all(messages: Iterable[Message]) -> bytes:
    """Concatenate the encodings of several messages."""
    return b"".join(m.encode() for m in messages)


__all__ = (
    "HEADER",
    "HEADER_SIZE",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_REL_PATH_MAX",
    "XSD_ERRORS",
    "XS_TYPE_COUNT",
    "XS_WATCH_PATH",
    "XS_WATCH_TOKEN",
    "Message",
    "MessageParser",
    "SockmsgType",
    "encode_all",
    "error_errno",
    "error_payload",
    "join_strings",
    "parse_error",
    "split_strings",
)
