"""`IoRing`: io_uring requests awaited from anyio, for the block backend's disk I/O.

The kernel ring (`ringkit._native._uring.Uring`, raw system calls in the compiled helper) takes
vectored reads and writes, fdatasync and fallocate; each coroutine here submits one request
and returns its result once the kernel completed it.  No task of its own: whichever waiting
task finds nobody watching the ring's eventfd becomes the *reaper* -- it waits for the eventfd
to be readable (`anyio.wait_readable`, so the event loop never blocks), reaps every completion
and wakes the tasks they belong to -- and hands the role to another waiter when its own request
is done.  So completions come back in whatever order the device finishes them.

Cancellation never leaves the kernel holding a buffer nobody owns: a task cancelled while its
request is in flight asks the kernel to cancel it (``IORING_OP_ASYNC_CANCEL``) and then waits,
shielded, until the request's completion is reaped -- with ``-ECANCELED`` or its real result --
before the cancellation goes on.  When the awaiting call returns or raises, the kernel is done
with the buffers.  (`Uring` also keeps every buffer referenced until its completion is reaped,
and its close waits for them all.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from ._native._uring import IOV_MAX, Uring

CLOSE_WAIT = 5.0
"""Seconds `IoRing.aclose` lets the tasks of requests in flight reap them before it cancels
and waits for them itself."""
_CANCEL = 1 << 63
"""Cookies of cancel requests: their completions wake nobody."""


@dataclass(slots=True, eq=False)
class _Request:
    cookie: int
    result: int | None = None
    wake: anyio.Event | None = None


class IoRing:
    """A kernel io_uring whose requests are awaited from anyio (asyncio or trio).

    `entries` bounds the requests in flight (more wait for a free slot).  Results are byte
    counts (reads and writes may be short: the caller continues) or raise OSError with the
    request's errno.

    Raises (constructor):
        OSError: io_uring is unavailable here (no compiled helper, old kernel, refused by
            ``kernel.io_uring_disabled`` or seccomp); ``errno`` says why.
    """

    def __init__(self, entries: int = 64) -> None:
        self._uring = Uring(entries)
        self.entries = self._uring.entries
        """Requests in flight at most (cancel requests aside)."""
        self._slots = anyio.Semaphore(self.entries)
        self._requests: dict[int, _Request] = {}
        self._next = 0
        self._reaper = False

    @property
    def in_flight(self) -> int:
        """Requests the kernel holds (completions not reaped yet)."""
        return self._uring.in_flight

    @property
    def closed(self) -> bool:
        """Whether `aclose` ran."""
        return self._uring.closed

    def _cookie(self) -> _Request:
        self._next = (self._next + 1) & (_CANCEL - 1)
        request = _Request(self._next)
        self._requests[request.cookie] = request
        return request

    async def readv(self, fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        """Read from `fd` at byte `offset` into `buffers` (writable, 1..IOV_MAX of them);
        return the bytes read (short at the end of the file).

        Raises:
            OSError: the read failed (its errno: EBADF, EINVAL for a misaligned O_DIRECT
                request, EIO...), or the ring is closed (EBADF).
        """
        async with self._slots:
            request = self._cookie()
            self._submit(request, self._uring.readv, fd, buffers, offset, request.cookie)
            return await self._complete(request)

    async def writev(self, fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        """Write `buffers` (1..IOV_MAX) to `fd` at byte `offset`; return the bytes written.
        Raises OSError as `readv`."""
        async with self._slots:
            request = self._cookie()
            self._submit(request, self._uring.writev, fd, buffers, offset, request.cookie)
            return await self._complete(request)

    async def fdatasync(self, fd: int) -> None:
        """``fdatasync(fd)``: every write completed before is durable.  Raises OSError."""
        async with self._slots:
            request = self._cookie()
            self._submit(request, self._uring.fsync, fd, request.cookie)
            await self._complete(request)

    async def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """``fallocate(fd, mode, offset, length)``.  Raises OSError (EOPNOTSUPP where the
        file system cannot)."""
        async with self._slots:
            request = self._cookie()
            self._submit(request, self._uring.fallocate, fd, mode, offset, length,
                         request.cookie)
            await self._complete(request)

    def _submit(self, request: _Request, call: object, *args: object) -> None:
        try:
            call(*args)  # type: ignore[operator]
        except BaseException:
            del self._requests[request.cookie]   # nothing reached the kernel
            raise

    async def _complete(self, request: _Request) -> int:
        try:
            await self._wait(request)
        except BaseException:
            # cancelled (or worse) with the request maybe still in the kernel, which may
            # still write into its buffers: have it cancelled, and wait until it is over
            with anyio.CancelScope(shield=True):
                if request.result is None:
                    with contextlib.suppress(OSError):   # it completes on its own then
                        self._uring.cancel(request.cookie, _CANCEL | request.cookie)
                    await self._wait(request)
            raise
        result = request.result
        assert result is not None
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        return result

    async def _wait(self, request: _Request) -> None:
        while request.result is None:
            if self._reaper:
                request.wake = anyio.Event()
                await request.wake.wait()
                request.wake = None
                continue
            self._reaper = True
            try:
                efd = self._uring.eventfd
                while True:
                    self._reap()
                    if request.result is not None:
                        break
                    await anyio.wait_readable(efd)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(efd)
            finally:
                self._reaper = False
                self._hand_over()

    def _reap(self) -> None:
        requests = self._requests
        for cookie, result in self._uring.reap():
            request = requests.pop(cookie, None)
            if request is None:        # a cancel request's own completion
                continue
            request.result = result
            if request.wake is not None:
                request.wake.set()

    def _hand_over(self) -> None:
        """Wake one task still waiting, to become the reaper."""
        for request in self._requests.values():
            if request.wake is not None and request.result is None:
                request.wake.set()
                return

    async def aclose(self) -> None:
        """Wait for the requests in flight (their tasks are cancelled or finishing), then
        release the ring.  Idempotent."""
        if self._uring.closed:
            return
        # each request's own task reaps it (cancelled ones included, shielded); should they
        # be gone, close() below cancels and waits for the rest, blocking
        with anyio.move_on_after(CLOSE_WAIT, shield=True):
            while self._requests:
                await anyio.sleep(0.001)
        self._uring.close()

    def close(self) -> None:
        """Release the ring now; whatever is in flight is cancelled and waited for, blocking
        (see `Uring.close`)."""
        self._uring.close()


__all__ = ("CLOSE_WAIT", "IOV_MAX", "IoRing")
