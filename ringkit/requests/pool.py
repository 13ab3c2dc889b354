"""`GrantPool`: data pages granted to the backend once per connection, lent to requests.

A frontend that grants pages per request pays a grant (and, without persistent grants, a
backend map) per request, and can run out of grants under load.  The pool grants a fixed
number of pages when the connection comes up and lends them to requests: the grant refs stay
valid, so a backend that keeps its mappings (blkif's ``feature-persistent``) maps each page
once, and the number of grants is bounded by construction -- a request that finds too few
free pages waits for them, it never gets `ResourceLimitError`.

Pages are found in a byte map with ``bytearray.find`` (C speed), contiguous runs first, so a
request's buffer is usually one slice of the pool and its data moves with one copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from .._errors import ConfigError, PeerGoneError, RemoteProtocolError, RingkitError
from ..abc import PAGE_SIZE, GrantTable, SharedPages

__all__ = ("GrantPool", "fresh_error")


def fresh_error(error: BaseException) -> RingkitError:
    """A new exception of `error`'s kind for one more waiter, chained to it (one exception
    object must not be raised in several tasks: each raise extends its traceback).
    `RemoteProtocolError` stays one; anything else reads as `PeerGoneError`."""
    if isinstance(error, RemoteProtocolError):
        fresh: RingkitError = RemoteProtocolError(str(error))
    elif isinstance(error, PeerGoneError):
        fresh = PeerGoneError(str(error))
    else:
        fresh = PeerGoneError(f"the connection is unusable: {error!r}")
    fresh.__cause__ = error
    return fresh


class GrantPool:
    """`count` pages of `memory` (a writable view of at least ``count * PAGE_SIZE`` bytes),
    granted to the peer as `refs` (one per page, in order).

    Build one with `GrantPool.share` (grants fresh pages to `peer`), or from pages granted
    some other way (a test's fake grants).  `take` / `take_run` lend pages, `give` returns
    them; `close` fails every waiter (the connection is gone).
    """

    def __init__(self, memory: memoryview, refs: Sequence[int],
                 pages: SharedPages | None = None) -> None:
        if not refs:
            raise ConfigError("a grant pool holds at least one page")
        if memory.nbytes < len(refs) * PAGE_SIZE:
            raise ConfigError(f"the pool's memory holds {memory.nbytes} bytes, fewer than "
                              f"{len(refs)} pages")
        self.memory = memory
        """The pool's pages, contiguous: page i is ``memory[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]``."""
        self.refs = tuple(refs)
        """The grant ref of each page."""
        self._shared = pages
        self._freemap = bytearray(b"\x01") * len(refs)
        self._free = len(refs)
        self._ones = b"\x01" * len(refs)
        self._zeros = bytes(len(refs))
        self._waiters: list[anyio.Event] = []
        self._error: RingkitError | None = None

    @classmethod
    async def share(cls, grants: GrantTable, peer: int, count: int) -> GrantPool:
        """Grant `count` fresh writable pages to domain `peer` and pool them."""
        if count < 1:
            raise ConfigError(f"a grant pool holds at least one page, not {count}")
        pages = await grants.share(peer, count, writable=True)
        return cls(pages.buffer, pages.refs, pages)

    @property
    def size(self) -> int:
        """Pages in the pool."""
        return len(self.refs)

    @property
    def free(self) -> int:
        """Pages free right now."""
        return self._free

    @property
    def free_map(self) -> bytes:
        """A copy of the free map: one byte per page, 1 while it is free.  For tests and
        debugging (a compiled fast path, `ringkit.requests.shadow`, shares the map)."""
        return bytes(self._freemap)

    def page(self, index: int) -> memoryview:
        """A writable view of pool page `index`."""
        return self.memory[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]

    def take_nowait(self, count: int, *, contiguous: bool = False) -> Sequence[int] | None:
        """`count` free pages (a `range` when they are contiguous, else a list of indices), or
        None when there are not enough (or, with `contiguous`, no run of that length)."""
        self._check()
        if count == 0:
            return range(0)
        if self._free < count:
            return None
        freemap = self._freemap
        start = freemap.find(memoryview(self._ones)[:count])
        if start >= 0:
            freemap[start:start + count] = memoryview(self._zeros)[:count]
            self._free -= count
            return range(start, start + count)
        if contiguous:
            return None
        pages: list[int] = []
        pos = 0
        while len(pages) < count:
            pos = freemap.find(1, pos)
            freemap[pos] = 0
            pages.append(pos)
            pos += 1
        self._free -= count
        return pages

    async def take(self, count: int, *, contiguous: bool = False) -> Sequence[int]:
        """`count` pages, waiting until they are free (see `take_nowait`).

        Raises:
            ConfigError: `count` is more than the pool holds.
            PeerGoneError (or the error the pool was closed with): the connection is gone.
        """
        if not 0 <= count <= self.size:
            raise ConfigError(f"{count} pages asked of a {self.size}-page grant pool")
        while True:
            pages = self.take_nowait(count, contiguous=contiguous)
            if pages is not None:
                return pages
            waiter = anyio.Event()
            self._waiters.append(waiter)
            await waiter.wait()

    def give(self, pages: Sequence[int]) -> None:
        """Return lent pages (exactly those `take` lent; each once)."""
        freemap = self._freemap
        if isinstance(pages, range):
            if pages.step != 1:
                raise ValueError("a page range must be contiguous")
            freemap[pages.start:pages.stop] = memoryview(self._ones)[:len(pages)]
        else:
            for page in pages:
                freemap[page] = 1
        self._free += len(pages)
        self._wake()

    def close(self, error: RingkitError | None = None) -> None:
        """Fail every waiter and every later `take` with `error` (default `PeerGoneError`)."""
        if self._error is None:
            self._error = error or PeerGoneError("the grant pool is closed")
        self._wake()

    async def aclose(self) -> None:
        """`close`, then revoke the grants (if the pool granted them itself)."""
        self.close()
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.aclose()

    def _check(self) -> None:
        if self._error is not None:
            raise fresh_error(self._error)

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()
