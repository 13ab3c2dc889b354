"""The boundary to the kernel: device files opened on demand, ioctls, errno -> ringkit errors.

Every OSError of a Xen device call is turned into a ringkit error here, once: the limit errnos
(ENOSPC, ENOMEM, EMFILE, ENFILE) into `ResourceLimitError`, everything else into the facility's
own error (`GrantError`, `EventChannelError`), each carrying the errno.

A `DeviceFile` is opened when the first resource needs it and closed when the last one is
released, so that a domain handle holding nothing holds no file descriptor either (leak
accounting counts them).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._errors import ResourceLimitError, TransportError
from ._uapi import Argument

LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
"""Errnos that mean "a limit was reached" rather than "refused"."""


@contextmanager
def map_errors(error: type[TransportError], what: str) -> Iterator[None]:
    """Turn an OSError raised inside the block into `error` (or `ResourceLimitError`)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in LIMIT_ERRNOS:
            raise ResourceLimitError(f"{what}: limit reached", exc.errno) from exc
        raise error(f"{what} failed", exc.errno) from exc


class DeviceFile:
    """A Xen character device (``/dev/xen/...``), opened while at least one user holds it."""

    def __init__(self, path: str, error: type[TransportError], *, nonblocking: bool = False,
                 hint: str = "", opener: Callable[[str, int], int] = os.open) -> None:
        self.path = path
        self._opener = opener
        self._error = error
        self._flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        self._hint = hint
        self._fd = -1
        self._users = 0

    @property
    def fd(self) -> int:
        """The open descriptor (only valid between `acquire` and the matching `release`)."""
        if self._fd < 0:
            raise self._error(f"{self.path} is not open")
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> int:
        """Open the device if nobody holds it yet; count one more user; return the fd."""
        if self._fd < 0:
            try:
                self._fd = self._opener(self.path, self._flags)
            except FileNotFoundError as exc:
                raise self._error(f"{self.path} does not exist{self._hint}", exc.errno) from exc
            except OSError as exc:
                if exc.errno in LIMIT_ERRNOS:
                    raise ResourceLimitError(f"open {self.path}: limit reached",
                                             exc.errno) from exc
                raise self._error(f"cannot open {self.path}", exc.errno) from exc
        self._users += 1
        return self._fd

    def release(self) -> None:
        """One user fewer; close the device when none is left."""
        if self._users <= 0:
            raise AssertionError(f"{self.path}: release() without acquire()")
        self._users -= 1
        if self._users == 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def ioctl(self, request: int, arg: Argument | None, what: str) -> int:
        """Issue `request` with `arg` (filled in place by the kernel); return ioctl's result."""
        with map_errors(self._error, what):
            if arg is None:
                return int(fcntl.ioctl(self.fd, request, 0))
            return int(fcntl.ioctl(self.fd, request, arg.buffer, True))
