"""A slow, reordering disk for the block backend's tests: `SlowDevice`, an `IoEngine` in front
of the real one that waits a random while before each access, and `Watch`, which sees what it
has in service at once and the order things finish in.  Shared by the sim's depth tests
(tests/drivers/block/test_block_depth.py) and the real-Xen interop with Linux's blkfront
(tests/xen/test_interop_blkfront.py)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
from ringkit.backends.block.engine import IoEngine
from ringkit.backends.block.image import Image

SLOW = 0.05
"""Seconds: the slow device's usual access time."""


class Watch:
    """Counts what the slow device has in service at once, the order things finish in, and
    the event loop's ticks (`ticks`, advanced by a ticker task of the test).

    With `gather` > 1 an access that entered waits until that many are in service at once
    before it goes on (the server must keep them all in service: if it did not, the access
    would wait until the test's deadline); with `check_loop` it also waits until the event
    loop ticked while it was in service -- impossible if the access blocked the loop.  Neither
    depends on how fast the machine is."""

    def __init__(self, *, gather: int = 1, check_loop: bool = False) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.finished: list[str] = []
        self.gather = gather
        self.check_loop = check_loop
        self.ticks = 0
        self.gathered = False

    def enter(self) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            if self.running >= self.gather:
                self.gathered = True
            return self.ticks

    def ready(self, ticks_at_entry: int) -> bool:
        """Whether an access that entered at `ticks_at_entry` may go on."""
        with self.lock:
            return self.gathered and (not self.check_loop or self.ticks > ticks_at_entry)

    def leave(self, name: str) -> None:
        with self.lock:
            self.running -= 1
            self.finished.append(name)

    def slow(self, name: str, call: object) -> object:
        """`call` made slow in the thread that runs it (the thread engine's own device)."""
        def run(*args: object) -> None:
            entered = self.enter()
            try:
                while not self.ready(entered):
                    time.sleep(SLOW / 50)
                time.sleep(SLOW)
                call(*args)  # type: ignore[operator]
            finally:
                self.leave(name)
        return run


class SlowDevice(IoEngine):
    """A slow, reordering device in front of a real engine: each access waits a random while
    (seeded; `delay`: its range in seconds) before the engine does it, so requests in service
    at once finish in an order of their own.  With `copy_at_flush`, at the start of each flush
    it copies the image (`at_flush`): what that fdatasync makes durable (off by default: a
    whole image per flush).  With `early_ack_tg` it is the broken device the ordering tests
    must catch: a write returns at once and lands in the file only later, in that task
    group."""

    name = "slow"

    def __init__(self, inner: IoEngine, image: Image, watch: Watch, *, seed: int = 7,
                 delay: tuple[float, float] = (SLOW / 2, 1.5 * SLOW),
                 copy_at_flush: bool = False,
                 early_ack_tg: anyio.abc.TaskGroup | None = None) -> None:
        self.inner = inner
        self.delay = delay
        self.copy_at_flush = copy_at_flush
        self.path = image.path
        self.watch = watch
        self.rng = random.Random(seed)
        self.early_ack_tg = early_ack_tg
        self.at_flush: list[bytes] = []
        self.flushed = anyio.Event()
        """Set once a flush began (and took its copy of the image, with `copy_at_flush`)."""
        self.held: set[int] = set()
        """Byte offsets of writes that wait for `release` before they go to the device."""
        self.release = anyio.Event()

    async def _slow(self, name: str, call: Any, *args: Any) -> None:
        entered = self.watch.enter()
        try:
            while not self.watch.ready(entered):
                await anyio.sleep(SLOW / 50)
            await anyio.sleep(self.rng.uniform(*self.delay))
            await call(*args)
        finally:
            self.watch.leave(name)

    async def read(self, image: Image, views: Sequence[memoryview], offset: int,
                   length: int) -> None:
        await self._slow("read", self.inner.read, image, views, offset, length)

    async def write(self, image: Image, views: Sequence[memoryview], offset: int,
                    length: int) -> None:
        if self.early_ack_tg is None:
            if offset in self.held:
                await self.release.wait()
            await self._slow("write", self.inner.write, image, views, offset, length)
            return
        data = [memoryview(bytes(v)) for v in views]     # the pages go back with the answer

        async def later() -> None:
            await self.flushed.wait()                    # lands only after the flush began
            await self.inner.write(image, data, offset, length)
        self.early_ack_tg.start_soon(later)

    async def flush(self, image: Image) -> None:
        async def flush() -> None:
            if self.copy_at_flush:
                self.at_flush.append(self.path.read_bytes())
            self.flushed.set()
            await self.inner.flush(image)
        await self._slow("flush", flush)

    async def discard(self, image: Image, offset: int, length: int) -> None:
        await self._slow("discard", self.inner.discard, image, offset, length)

    async def aclose(self) -> None:
        await self.inner.aclose()
