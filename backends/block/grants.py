"""How the block backend reaches the frontend's data pages: grant mappings, optionally persistent.

Without ``feature-persistent`` every request maps its segment pages in one call and unmaps them
before it is answered, as Xen requires of a backend that promised nothing.  With it (both ends
wrote ``feature-persistent = 1``), a page is mapped writable the first time its grant is seen and
kept mapped until the device disconnects, like xen-blkback's persistent grant tree; past
`max_persistent` grants, further pages fall back to per-request mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

from ringkit.abc import PAGE_SIZE, GrantTable, MappedPages


class PageSet:
    """The pages of one request, in segment order; `release()` unmaps the non-persistent ones."""

    __slots__ = ("_owned", "pages")

    def __init__(self, pages: list[memoryview], owned: MappedPages | None) -> None:
        self.pages = pages
        self._owned = owned

    async def release(self) -> None:
        """Unmap what was mapped for this request only (idempotent)."""
        owned, self._owned = self._owned, None
        self.pages = []
        if owned is not None:
            await owned.aclose()


class SegmentMapper:
    """Maps the grants a request names, through `grants`, from domain `peer`.

    Raises (from `map`):
        GrantError: a ref is unknown, revoked, not granted to us or read-only while we need to
            write into it; the caller answers the request with BLKIF_RSP_ERROR.
    """

    def __init__(self, grants: GrantTable, peer: int, *, persistent: bool,
                 max_persistent: int = 1056) -> None:
        self._grants = grants
        self._peer = peer
        self.persistent = persistent
        self.max_persistent = max_persistent
        self._cache: dict[int, MappedPages] = {}
        self._views: dict[int, memoryview] = {}  # ref -> its cached page, for the fast path

    @property
    def persistent_count(self) -> int:
        """Grants currently kept mapped."""
        return len(self._cache)

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
        """A private copy of the first `length` bytes of the pages `refs` (indirect segment
        pages: read once, then parsed)."""
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
        """Unmap every persistent grant."""
        cache, self._cache = self._cache, {}
        self._views = {}
        for mapped in cache.values():
            await mapped.aclose()


__all__ = ("PageSet", "SegmentMapper")
