"""The whole exception tree of ringkit.

```
RingkitError
├── ConfigError (.problems)  a user's argument or configuration is wrong (names what)
├── TransportError (.errno)  a Xen facility refused or failed
│   ├── GrantError           gntalloc, gntdev: unknown or revoked ref, wrong domid, RO mapped RW
│   ├── EventChannelError    evtchn (unbound port, bind refused)
│   ├── StoreError (.code)   xenstore answered an error string (ENOENT, EACCES, EAGAIN, E2BIG, ...)
│   └── ResourceLimitError   a limit was hit (grant count, quota, ...)
├── ProtocolError            a ring or handshake rule was broken
│   ├── LocalProtocolError   we asked for something illegal (push to a full ring, bad transition)
│   └── RemoteProtocolError  the peer wrote hostile indices, requests or responses
└── PeerGoneError            the peer went away: unmap-notify, XenbusState.Closed, @releaseDomain,
    │                        its event channel closed
    └── PeerRefusedError     the peer closed the connection before it was up (its error node)
```

Only code that reads peer-controlled memory or messages raises `RemoteProtocolError`; an engine
that raised it is poisoned and refuses any further use.  Async channels follow anyio's contract
and raise `anyio.BrokenResourceError` chained ``from`` the protocol error.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence
from typing import NamedTuple


class RingkitError(Exception):
    """Base class of every error ringkit raises on purpose."""


class InvalidValue(NamedTuple):
    """One value a setting may not have: `field` (under the name the user knows it by, e.g. a
    command-line option), the `value` given, and what is `allowed`, to follow "must be" (e.g.
    ``"an integer in 0..4"``)."""

    field: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r} is not allowed: must be {self.allowed}"


class ConfigError(RingkitError, ValueError):
    """A user-supplied argument or configuration value is invalid; the message names it.

    `problems` lists each refused value as an `InvalidValue` where the error comes from
    validating settings (`ringkit.config.config_error`); it is empty otherwise."""

    def __init__(self, message: str, problems: Sequence[InvalidValue] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class TransportError(RingkitError):
    """A Xen facility (grants, event channels, store) refused or failed.

    `errno` is the POSIX error number where the kernel or the store gave one, else None.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        base = super().__str__()
        if self.errno is not None:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            return f"{base} [{name}: {os.strerror(self.errno)}]"
        return base


class GrantError(TransportError):
    """Sharing or mapping grant references failed or was refused."""


class EventChannelError(TransportError):
    """An event-channel operation failed or was refused (e.g. notify on an unbound port)."""


class StoreError(TransportError):
    """Xenstore answered an error.

    `code` is the xenstore error string (``"ENOENT"``, ``"EACCES"``, ``"EAGAIN"``...), `path`
    the node concerned when known.
    """

    def __init__(
        self, message: str, code: str, errno: int | None = None, path: str | None = None
    ) -> None:
        if errno is None:
            errno = getattr(_errno, code, None)
        super().__init__(message, errno)
        self.code = code
        self.path = path


class ResourceLimitError(TransportError):
    """A resource limit was reached (grant count, xenstore quota, ...)."""


class ProtocolError(RingkitError):
    """A ring, pipe or handshake rule was broken.  Not raised directly: see the subclasses."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: hostile indices, malformed requests or responses.

    The engine that raised it is poisoned; every later call raises again.
    """


class PeerGoneError(RingkitError):
    """The peer went away: its process unmapped or died, it closed, or its domain was destroyed."""


class PeerRefusedError(PeerGoneError):
    """The peer closed a connection before it was up -- a backend that could not map what the
    frontend published, or that found it malformed.  `peer_error` is what the peer wrote in its
    xenstore error node (``"<errno> <message>"``, as Linux's ``xenbus_dev_fatal``), or None."""

    def __init__(self, message: str, peer_error: str | None = None) -> None:
        super().__init__(message)
        self.peer_error = peer_error


__all__ = (
    "ConfigError",
    "InvalidValue",
    "EventChannelError",
    "GrantError",
    "LocalProtocolError",
    "PeerGoneError",
    "PeerRefusedError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceLimitError",
    "RingkitError",
    "StoreError",
    "TransportError",
)
