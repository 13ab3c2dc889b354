"""How the block backend reaches the disk without blocking its event loop: `IoEngine`.

Two engines, one contract, chosen by `ServiceConfig.io_engine`:

* `UringEngine` -- the kernel's io_uring (`IoRing`): reads, writes, fdatasync and hole
  punching are submitted from the event loop and completed by the kernel, as many at once as
  the ring has requests in service, with no thread hand-off;
* `ThreadEngine` -- each access in a worker thread (``anyio.to_thread``), at most `depth` at
  once: the fallback where io_uring is unavailable (no compiled helper, kernel before 5.6,
  ``kernel.io_uring_disabled``, seccomp).

``"auto"`` (the default) takes io_uring where the kernel gives a ring and threads otherwise;
``"uring"`` insists (`ConfigError` if it cannot be had); ``"threads"`` never tries.

The contract every engine keeps, which the ordering of blkif answers rests on: `read` returns
once the data is in the buffers, `write` once the data is in the file (the page cache; with
O_DIRECT, the device), `flush` once every write that returned before it was called is durable;
each raises OSError on failure.  What io_uring cannot take as it is goes to the threads: an
O_DIRECT transfer that is not aligned (`Image.needs_bounce`: a bounce buffer, read-modify-write),
and a discard that is not a hole punch in a regular file.
"""

from __future__ import annotations

import errno
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import anyio.to_thread

from ringkit import ConfigError
from ringkit.uring import IoRing

from .image import IOV_MAX, Image

log = logging.getLogger(__name__)

ENGINES = ("auto", "uring", "threads")
"""The values of `ServiceConfig.io_engine`."""


class IoEngine(ABC):
    """The disk accesses of one `BlockService` that may wait for the device."""

    name: ClassVar[str]
    """``"uring"`` or ``"threads"``."""

    @abstractmethod
    async def read(self, image: Image, views: Sequence[memoryview], offset: int,
                   length: int) -> None:
        """Fill `views` (`length` bytes in all) from byte `offset` of `image`.
        Raises OSError."""

    @abstractmethod
    async def write(self, image: Image, views: Sequence[memoryview], offset: int,
                    length: int) -> None:
        """Write `views` (`length` bytes) at byte `offset`; return once they are in the file.
        Raises OSError."""

    @abstractmethod
    async def flush(self, image: Image) -> None:
        """Make every write that returned before this call durable.  Raises OSError."""

    @abstractmethod
    async def discard(self, image: Image, offset: int, length: int) -> None:
        """Deallocate a byte range (it reads back as zeros).  Raises OSError."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the engine once nothing is in service any more."""


class ThreadEngine(IoEngine):
    """Each access in a worker thread, `depth` (at least 2) at once."""

    name: ClassVar[str] = "threads"

    def __init__(self, depth: int) -> None:
        self._threads = anyio.CapacityLimiter(max(depth, 2))

    async def _run(self, call: Any, *args: Any) -> None:
        await anyio.to_thread.run_sync(call, *args, limiter=self._threads)

    async def read(self, image: Image, views: Sequence[memoryview], offset: int,
                   length: int) -> None:
        await self._run(image.read_into, views, offset, length)

    async def write(self, image: Image, views: Sequence[memoryview], offset: int,
                    length: int) -> None:
        await self._run(image.write_from, views, offset, length)

    async def flush(self, image: Image) -> None:
        await self._run(image.flush)

    async def discard(self, image: Image, offset: int, length: int) -> None:
        await self._run(image.discard, offset, length)

    async def aclose(self) -> None:
        return None


def _ring_entries(depth: int) -> int:
    return max(8, 1 << (max(depth, 1) - 1).bit_length())


class UringEngine(IoEngine):
    """The accesses through one io_uring sized for `depth` requests, with a `ThreadEngine`
    for what io_uring cannot take as it is (see the module docstring).

    Raises (constructor):
        OSError: the kernel gives no io_uring here.
    """

    name: ClassVar[str] = "uring"

    def __init__(self, depth: int) -> None:
        self.ring = IoRing(_ring_entries(depth))
        """The ring every request of this engine goes through."""
        self._threads = ThreadEngine(depth)

    async def read(self, image: Image, views: Sequence[memoryview], offset: int,
                   length: int) -> None:
        if image.needs_bounce(views, offset):
            await self._threads.read(image, views, offset, length)
            return
        await self._transfer(image, views, offset, write=False)

    async def write(self, image: Image, views: Sequence[memoryview], offset: int,
                    length: int) -> None:
        if image.needs_bounce(views, offset):
            await self._threads.write(image, views, offset, length)
            return
        await self._transfer(image, views, offset, write=True)

    async def _transfer(self, image: Image, views: Sequence[memoryview], offset: int, *,
                        write: bool) -> None:
        """All of `views` at `offset`, IOV_MAX buffers per request, a short transfer continued
        where it stopped (0 bytes: the image ended, EIO)."""
        call = self.ring.writev if write else self.ring.readv
        for start in range(0, len(views), IOV_MAX):
            part = list(views[start:start + IOV_MAX])
            total = sum(len(v) for v in part)
            done = 0
            while done < total:
                n = await call(image.fd, part if done == 0 else _skip(part, done),
                               offset + done)
                if n == 0:
                    raise OSError(errno.EIO, f"unexpected end of image at byte {offset + done}")
                done += n
            offset += total

    async def flush(self, image: Image) -> None:
        await self.ring.fdatasync(image.fd)

    async def discard(self, image: Image, offset: int, length: int) -> None:
        if length <= 0:
            return
        if image.is_block_device or not image.hole_punching:
            await self._threads.discard(image, offset, length)
            return
        try:
            await self.ring.fallocate(image.fd, _PUNCH_HOLE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            await self._threads.discard(image, offset, length)   # it learns and zero-fills

    async def aclose(self) -> None:
        await self.ring.aclose()


_PUNCH_HOLE = 0x02 | 0x01
"""``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``."""


def _skip(views: Sequence[memoryview], skip: int) -> list[memoryview]:
    """`views` without their first `skip` bytes."""
    rest: list[memoryview] = []
    for v in views:
        if skip >= len(v):
            skip -= len(v)
            continue
        rest.append(v[skip:])
        skip = 0
    return rest


def open_engine(kind: str, depth: int) -> IoEngine:
    """The engine `kind` (one of `ENGINES`) for a service of `depth` requests at once.

    Raises:
        ConfigError: `kind` is ``"uring"`` and io_uring is unavailable here, or `kind` is not
            one of `ENGINES`.
    """
    if kind not in ENGINES:
        raise ConfigError(f"io_engine {kind!r}: expected one of {', '.join(ENGINES)}")
    if kind == "threads":
        return ThreadEngine(depth)
    try:
        return UringEngine(depth)
    except OSError as exc:
        if kind == "uring":
            raise ConfigError(f"io_engine = uring: io_uring is unavailable here ({exc})") from exc
        log.info("io_uring unavailable (%s): the block backend uses worker threads", exc)
        return ThreadEngine(depth)


def uring_unavailable() -> str:
    """Why io_uring cannot be had in this process, or ``""`` if it can (a ring is opened and
    closed to find out)."""
    try:
        IoRing(1).close()
    except OSError as exc:
        return str(exc)
    return ""


__all__ = ("ENGINES", "IoEngine", "ThreadEngine", "UringEngine", "open_engine",
           "uring_unavailable")
