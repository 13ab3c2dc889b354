"""The kernel's io_uring through the compiled helper: `Uring`, a synchronous ring object.

The C (``rk_uring_*`` in _build.py) speaks the raw system calls, so neither liburing nor its
headers are needed.  `Uring` is the thin, synchronous face of one kernel ring: submit vectored
reads and writes, fsync and fallocate, each tagged with a 64-bit cookie; reap completions as
``(cookie, result)`` pairs, a result being a byte count or ``-errno`` (a request's error never
fails the ring).  The ring's eventfd becomes readable when completions are there, so an event
loop can wait for it; `ringkit.uring.IoRing` is that async layer.

Buffers passed to a submission must stay alive, unmoved, until its completion is reaped: the
kernel writes into them (a read) or reads them (a write) at any time until then.  `Uring`
keeps a reference to each request's buffers and iovec array, keyed by cookie, until the
completion is reaped, and `close` cancels what is in flight and waits for every completion
before the rings are unmapped.

Unavailable -- `Uring` raises OSError with ``ENOSYS`` -- without the compiled helper (ABI mode,
chosen or forced with ``RINGKIT_NATIVE=abi``),
where it was built without <linux/io_uring.h>, or where the kernel lacks what it needs
(Linux 5.6); with ``EPERM`` / ``ENOSYS`` / ``ENOMEM`` where the kernel refuses
(``kernel.io_uring_disabled``, seccomp, memlock limits).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

from . import compiled_part

_ffi, _lib, _MISSING = compiled_part("rk_uring_open", "io_uring")

_LEAKED: list[object] = []
"""Buffers of rings whose close could not wait for their completions (kept forever)."""

IOV_MAX = 1024
"""Most buffers one vectored request takes (Linux's UIO_MAXIOV)."""
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _check(code: int, what: str) -> None:
    if code < 0:
        raise OSError(-code, f"io_uring {what}: {os.strerror(-code)}")


class Uring:
    """One kernel io_uring with `entries` submission slots and an eventfd for completions.

    At most `capacity` requests are in flight at once (the completion queue's size; a
    submission beyond it raises OSError ``EBUSY``).  Not thread-safe: one owner submits and
    reaps.

    Raises (constructor):
        OSError: io_uring is unavailable here (see the module docstring); ``errno`` says why.
    """

    def __init__(self, entries: int) -> None:
        if _lib is None:
            raise OSError(errno.ENOSYS, _MISSING)
        err = _ffi.new("int *")
        ring = _lib.rk_uring_open(entries, err)
        if ring == _ffi.NULL:
            raise OSError(err[0], f"io_uring_setup: {os.strerror(err[0])}")
        self._ring: Any = _ffi.gc(ring, _lib.rk_uring_close)
        self.entries: int = _lib.rk_uring_entries(ring)
        """Submission slots the kernel gave (a power of two, at least the `entries` asked)."""
        self.capacity: int = 2 * self.entries
        """Most requests in flight at once (the completion queue's size)."""
        self.eventfd: int = _lib.rk_uring_eventfd(ring)
        """Non-blocking eventfd the kernel signals for each completion."""
        self._keep: dict[int, object] = {}
        self._cookies = _ffi.new("uint64_t[]", self.capacity)
        self._results = _ffi.new("int32_t[]", self.capacity)

    @property
    def in_flight(self) -> int:
        """Requests submitted whose completion was not reaped yet (the kernel's count)."""
        return int(_lib.rk_uring_in_flight(self._live()))

    @property
    def closed(self) -> bool:
        """Whether `close` ran."""
        return self._ring is None

    def _live(self) -> Any:
        if self._ring is None:
            raise OSError(errno.EBADF, "io_uring closed")
        return self._ring

    def _iovec(self, buffers: Sequence[memoryview], writable: bool) -> tuple[Any, list[Any]]:
        n = len(buffers)
        if not 1 <= n <= IOV_MAX:
            raise OSError(errno.EINVAL, f"{n} buffers: 1..{IOV_MAX} per request")
        iov = _ffi.new("struct iovec[]", n)
        handles = []
        for i, buf in enumerate(buffers):
            try:
                handle = _ffi.from_buffer(buf, require_writable=writable)
            except BufferError as exc:
                raise TypeError(f"buffer {i} of a read is read-only") from exc
            handles.append(handle)
            iov[i].iov_base = handle
            iov[i].iov_len = len(handle)
        return iov, handles

    def readv(self, fd: int, buffers: Sequence[memoryview], offset: int, cookie: int) -> None:
        """Submit a read of `fd` at byte `offset` into `buffers` (writable), in order.

        Raises:
            OSError: the kernel took no request (``EBUSY``: `capacity` in flight; ``EINVAL``:
                no buffers or more than IOV_MAX); nothing was submitted then.
            TypeError: a buffer is read-only.
        """
        iov, handles = self._iovec(buffers, True)
        _check(_lib.rk_uring_readv(self._live(), fd, iov, len(handles), offset, cookie),
               "readv")
        self._keep[cookie] = (iov, handles, buffers)

    def writev(self, fd: int, buffers: Sequence[memoryview], offset: int, cookie: int) -> None:
        """Submit a write of `buffers` to `fd` at byte `offset`.  Raises as `readv`."""
        iov, handles = self._iovec(buffers, False)
        _check(_lib.rk_uring_writev(self._live(), fd, iov, len(handles), offset, cookie),
               "writev")
        self._keep[cookie] = (iov, handles, buffers)

    def fsync(self, fd: int, cookie: int, *, datasync: bool = True) -> None:
        """Submit an fdatasync (or fsync) of `fd`.  Raises OSError as `readv`."""
        _check(_lib.rk_uring_fsync(self._live(), fd, int(datasync), cookie), "fsync")

    def fallocate(self, fd: int, mode: int, offset: int, length: int, cookie: int) -> None:
        """Submit ``fallocate(fd, mode, offset, length)``.  Raises OSError as `readv`."""
        _check(_lib.rk_uring_fallocate(self._live(), fd, mode, offset, length, cookie),
               "fallocate")

    def cancel(self, target: int, cookie: int) -> None:
        """Ask the kernel to cancel the request submitted as `target`.  Both complete: the
        target with its result or ``-ECANCELED``, this request with 0, ``-ENOENT`` or
        ``-EALREADY``.  Raises OSError as `readv`."""
        _check(_lib.rk_uring_cancel(self._live(), target, cookie), "cancel")

    def reap(self) -> list[tuple[int, int]]:
        """The completions posted so far, as ``(cookie, result)``; their buffers are
        released."""
        n = _lib.rk_uring_reap(self._live(), self._cookies, self._results, self.capacity)
        done = list(zip(_ffi.unpack(self._cookies, n), _ffi.unpack(self._results, n),
                        strict=True))
        keep = self._keep
        for cookie, _ in done:
            keep.pop(cookie, None)
        return done

    def close(self) -> None:
        """Cancel what is in flight, wait (blocking) for every completion, then release the
        ring and its eventfd.  Idempotent."""
        ring, self._ring = self._ring, None
        if ring is not None:
            _ffi.gc(ring, None)              # detach the finaliser: closed here, once
            if _lib.rk_uring_close(ring) != 0:
                _LEAKED.append(self._keep)   # the kernel may still use them: never free
            self._keep = {}


def unavailable() -> str:
    """Why `Uring` cannot be built in this process, or ``""`` if it may be (the kernel can
    still refuse: try it)."""
    return _MISSING


__all__ = ("FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "IOV_MAX", "Uring", "unavailable")
