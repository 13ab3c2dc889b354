"""`GrantMapper`: how a backend reaches the pages a request names, optionally persistently.

Without persistent grants every request maps its pages in one call and unmaps them before it
is answered, as Xen requires of a backend that promised nothing.  With them (blkif's
``feature-persistent``: both ends agreed that the frontend reuses a fixed set of grants), a page
is mapped writable the first time its ref is seen and kept mapped until the connection ends,
like xen-blkback's persistent grant tree; past `max_persistent` refs, further pages fall back to
per-request mapping, so a frontend cannot make the backend hold unbounded mappings.

A driver that resolves refs itself outside Python (the block backend's C fast path) `watch`es
the mapper: it is told of each page kept mapped, and told before they are all unmapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..abc import PAGE_SIZE, GrantTable, MappedPages

__all__ = ("DEFAULT_MAX_PERSISTENT", "GrantMapper", "PageSet", "PersistentGrantWatcher")

DEFAULT_MAX_PERSISTENT = 1056
"""Refs a mapper keeps mapped by default: xen-blkback's default for one ring (32 requests of
up to 32 + 1 pages)."""


class PersistentGrantWatcher(Protocol):
    """What `GrantMapper.watch` tells of the pages it keeps mapped."""

    def persisted(self, ref: int, page: memoryview, writable: bool) -> None:
        """`page` is kept mapped for `ref` (writable or not) until `releasing`."""

    def releasing(self) -> None:
        """Every kept page is about to be unmapped: drop every reference to them now."""


class PageSet:
    """The pages of one request, in the order its refs were named; `release()` unmaps the
    ones mapped for this request only."""

    __slots__ = ("_owned", "pages")

    def __init__(self, pages: list[memoryview], owned: MappedPages | None) -> None:
        self.pages = pages
        """One writable (or read-only) view per ref named."""
        self._owned = owned

    @property
    def persistent(self) -> bool:
        """Whether every page is kept mapped beyond the request (nothing to unmap)."""
        return self._owned is None

    async def release(self) -> None:
        """Unmap what was mapped for this request only (idempotent)."""
        owned, self._owned = self._owned, None
        self.pages = []
        if owned is not None:
            await owned.aclose()


class GrantMapper:
    """Maps the refs requests name, through `grants`, from domain `peer`.

    Raises (from `map`):
        GrantError: a ref is unknown, revoked, not granted to us, or read-only while we need to
            write into it; the request gets an error response, the connection goes on.
    """

    def __init__(self, grants: GrantTable, peer: int, *, persistent: bool,
                 max_persistent: int = DEFAULT_MAX_PERSISTENT) -> None:
        self._grants = grants
        self._peer = peer
        self.persistent = persistent
        """Whether pages are kept mapped (both ends agreed to persistent grants)."""
        self.max_persistent = max_persistent
        self._cache: dict[int, MappedPages] = {}
        self._views: dict[int, memoryview] = {}  # ref -> its cached page, for the fast path
        self._watcher: PersistentGrantWatcher | None = None

    @property
    def persistent_count(self) -> int:
        """Refs currently kept mapped."""
        return len(self._cache)

    def watch(self, watcher: PersistentGrantWatcher) -> None:
        """Tell `watcher` of every page kept mapped -- those already, then each as it is
        mapped -- and, before `aclose` unmaps them, that they go (one watcher at a time)."""
        self._watcher = watcher
        for ref, page in self._views.items():
            watcher.persisted(ref, page, True)

    async def map(self, refs: Sequence[int], *, writable: bool) -> PageSet:
        """The pages named by `refs`, in order (`writable`: we will write into them).  A ref
        named twice is mapped once."""
        if self.persistent:
            views = self._views
            try:
                return PageSet([views[r] for r in refs], None)  # all mapped already
            except KeyError:
                pass
        unique = list(dict.fromkeys(refs))
        found: dict[int, memoryview] = {}
        if self.persistent:
            for ref in unique:
                cached = self._cache.get(ref)
                if cached is None and len(self._cache) < self.max_persistent:
                    cached = self._cache[ref] = await self._grants.map(
                        self._peer, [ref], writable=True)
                    self._views[ref] = cached.buffer
                    if self._watcher is not None:
                        self._watcher.persisted(ref, cached.buffer, True)
                if cached is not None:
                    found[ref] = cached.buffer
            unique = [r for r in unique if r not in found]
        owned = None
        if unique:
            owned = await self._grants.map(self._peer, unique, writable=writable)
            buf = owned.buffer
            for i, ref in enumerate(unique):
                found[ref] = buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        return PageSet([found[r] for r in refs], owned)

    async def copy_out(self, refs: Sequence[int], length: int) -> bytes:
        """A private copy of the first `length` bytes of the pages `refs` (a list the peer
        keeps in pages, such as blkif's indirect segments: read once, then parsed)."""
        pageset = await self.map(refs, writable=False)
        try:
            out = bytearray(length)
            pos = 0
            for page in pageset.pages:
                n = min(PAGE_SIZE, length - pos)
                if n <= 0:
                    break
                out[pos:pos + n] = page[:n]
                pos += n
            return bytes(out)
        finally:
            await pageset.release()

    async def aclose(self) -> None:
        """Unmap every persistent page (the watcher told first)."""
        if self._watcher is not None:
            self._watcher.releasing()
        cache, self._cache = self._cache, {}
        self._views = {}
        for mapped in cache.values():
            await mapped.aclose()
