"""The kernel objects the simulated machine is made of: sealed memfds and eventfds.

A `PageFile` is the memfd behind the pages of one share: sealed against resizing, and for a
read-only grant against every future write, so the kernel itself enforces what Xen would.  Event
channels are eventfds; `signal` adds to one, and `PEER_GONE` is the mark a closing peer leaves.
"""

from __future__ import annotations

import fcntl
import mmap
import os

from ..abc import PAGE_SIZE

PEER_GONE = 1 << 40
"""Added to a port's eventfd counter when its peer closes: far above any real event count."""

F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_FUTURE_WRITE = 0x10


def new_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def drain(fd: int) -> int:
    """Read and reset eventfd `fd`'s counter (0 if nothing was pending)."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def signal(fd: int, value: int = 1) -> None:
    """Add `value` to eventfd `fd` without blocking; a counter a hostile peer jammed near its
    maximum is drained first so the signal still gets through."""
    try:
        os.eventfd_write(fd, value)
    except BlockingIOError:
        pending = drain(fd)
        os.eventfd_write(fd, min(pending, 1) + value)


class PageFile:
    """A sealed memfd holding the pages of one share, with a count of who still needs it."""

    def __init__(self, npages: int, writable: bool) -> None:
        self.fd = os.memfd_create("ringkit-grant", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, npages * PAGE_SIZE)
            # Nobody, the grantee included, may resize the file under the granter's mapping.
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
        except BaseException:
            os.close(self.fd)
            raise
        self.npages = npages
        self.writable = writable
        self.holders = 0
        self._area: mmap.mmap | None = None

    def seal_read_only(self) -> None:
        """Forbid every future write and writable mapping, for a read-only grant.  The
        granter's own writable mapping, made before, keeps working, and so does the one the
        server keeps for clearing unmap-notify bytes."""
        self._area = mmap.mmap(self.fd, self.npages * PAGE_SIZE)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)

    def clear_byte(self, offset: int) -> None:
        """Zero one byte, as the kernel's unmap-notify does (also in sealed pages)."""
        if self._area is not None:
            self._area[offset] = 0
        else:
            os.pwrite(self.fd, b"\0", offset)

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> bool:
        """Drop one holder; close the memfd with the last.  True when it was closed."""
        self.holders -= 1
        if self.holders == 0:
            if self._area is not None:
                self._area.close()
                self._area = None
            os.close(self.fd)
            self.fd = -1
            return True
        return False

