"""The block backend's fast path: a burst's usual requests served in C, off the interpreter.

With persistent grants every page a frontend names is mapped once and kept, so the usual
request -- a READ or WRITE of up to 11 direct segments, or an INDIRECT one of up to the
advertised ``feature-max-indirect-segments``, every ref already mapped -- needs no decision
Python has to make.  `BlkifFastPath` is the `ringkit.requests.FastPath` of one ring's
`BlockService`: it keeps a persistent-grant table in C (`ringkit.persistent_grants`), filled as
the service's `GrantMapper` maps a grant for good and emptied before it unmaps them, and hands
each burst -- the request server's private copy of the slots -- to ``rk_blkif_serve``, which
for each leading slot checks the operation (an INDIRECT's inner one), the segment count and
sector ranges, the disk's bounds and that every ref is in the table (writable, for a READ: the
data goes into the page) -- for an INDIRECT, its indirect pages first, whose segment list it
copies out once and checks on the copy, as the Python path does -- builds the iovecs, does the
I/O and writes the OKAY response, until the first slot it cannot serve so.

What it leaves to the Python path (`BlockService.answer`), untouched: a ref not yet mapped (the
first map of a grant is Python's; for an INDIRECT, its indirect pages' refs too), an INDIRECT
when none are advertised, DISCARD, FLUSH_DISKCACHE, WRITE_BARRIER, anything
malformed or out of range (the Python path decides and reports the error), a READ the page
cache does not hold (``RWF_NOWAIT`` refused or short: the I/O engine reads it), a WRITE unless
the service writes inline (a buffered image served in ring order), and any I/O error.

Ordering: the fast path runs only where requests are served one after the other in ring order
(``io_depth`` 1), and it answers only a burst's prefix: everything before the burst was
answered already, and the first slot it hands back ends its part of the burst, so no request
it answers overtakes one still to be served in Python -- a WRITE never passes an earlier
WRITE, nothing passes a FLUSH_DISKCACHE or WRITE_BARRIER, exactly as in the Python path.

The Python path stays the reference: tests/drivers/block/test_block_fastpath.py serves random
and hostile bursts both ways over copies of one image and compares responses, image and pages.
"""

from __future__ import annotations

from ringkit import persistent_grants
from ringkit.persistent_grants import PersistentGrantTable

from .image import Image
from .stats import ServiceStats

__all__ = ("BlkifFastPath", "unavailable")


def unavailable() -> str:
    """Why the fast path cannot run here ("" when it can): no compiled helper (ABI mode)."""
    return persistent_grants.unavailable()


class BlkifFastPath:
    """Serves the leading plain READs and WRITEs of each burst against `image` in C (see the
    module docstring); `inline_writes`: WRITEs may be served (else only READs); `stats`: the
    service's counters, kept true; `max_indirect`: the ``feature-max-indirect-segments``
    advertised (INDIRECT requests of up to that many segments are served too).  Watches a
    `GrantMapper` (`persisted` / `releasing`).

    Raises (constructor):
        RuntimeError: the compiled helper is unavailable (`unavailable`).
    """

    def __init__(self, image: Image, max_persistent: int, *, inline_writes: bool,
                 stats: ServiceStats, max_indirect: int = 0,
                 table: PersistentGrantTable | None = None) -> None:
        self.image = image
        self.max_indirect = max_indirect
        """The indirect segments advertised (0: every INDIRECT goes to the Python path)."""
        self.table = table if table is not None else PersistentGrantTable(max_persistent)
        """The persistent grants C resolves refs through."""
        self.inline_writes = inline_writes
        self.stats = stats
        self.served = 0
        """Requests this fast path answered."""

    def persisted(self, ref: int, page: memoryview, writable: bool) -> None:
        """The mapper keeps `page` mapped for `ref`: name it in the table."""
        self.table.add(ref, page, writable=writable and not page.readonly)

    def releasing(self) -> None:
        """The mapper is about to unmap every kept page: forget them all first."""
        self.table.clear()

    def flags(self) -> int:
        """What `rk_blkif_serve` may do for this image now."""
        image = self.image
        mode = image.cached_reads
        flags = (persistent_grants.READ_PLAIN if mode == "memory"
                 else persistent_grants.READ_NOWAIT if mode == "nowait" else 0)
        if self.inline_writes and not image.readonly and not image.direct:
            flags |= persistent_grants.WRITE
        return flags

    def __call__(self, burst: bytearray, count: int, out: memoryview) -> int:
        if not len(self.table) or self.image.fd < 0:
            return 0
        served, read, written = self.table.serve(self.image.fd, self.image.sectors,
                                                 self.flags(), burst, count, out,
                                                 max_indirect=self.max_indirect)
        if served:
            self.served += served
            stats = self.stats
            stats.requests += served
            stats.sectors_read += read
            stats.sectors_written += written
        return served
