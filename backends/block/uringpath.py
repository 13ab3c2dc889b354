"""The block backend's fast path at depth: a ring served ``io_depth`` at a time, its usual
requests submitted to io_uring and answered in C as the device completes them.

With ``io_depth`` > 1 a ring's requests are answered in any order, as blkif allows and Linux's
blkback does, so that a real disk's queue stays full.  `BlkifUringPath` is the
`ringkit.requests.ConcurrentFastPath` of such a ring's `BlockService`: it keeps the same
persistent-grant table in C as the in-order fast path (`backends.block.fastpath`), filled as
the service's `GrantMapper` maps a grant for good, and hands each burst to a
`ringkit.persistent_grants.UringBurstServer`, which takes the burst's READs and WRITEs of direct
segments whose refs are all in the table and whose sectors lie inside the disk, and submits
them to an io_uring of its own -- no task, no coroutine, no Python per request.  The request
server watches the ring's eventfd and pushes the OKAY answers the C reaps, in the order the
device finished them.  A read the page cache holds completes inside the submission.

What goes to the Python path (`BlockService.answer`), by way of the burst's `rest`: a ref not
yet mapped (the first map of a grant is Python's), INDIRECT requests, DISCARD, FLUSH_DISKCACHE,
anything malformed or out of range, a READ into a page the frontend granted read-only, a write
to a read-only disk, an O_DIRECT request not aligned as the device needs; and, handed back after
the fact, any request that failed or moved fewer bytes than asked (Python does it again, whole,
and reports the error).

Ordering, as at depth in the Python path:

* a WRITE is answered only once the kernel completed it (it is in the file, or on the device
  with O_DIRECT), so a FLUSH_DISKCACHE taken off the ring after it covers it;
* a WRITE_BARRIER waits for everything before it: the C stops at it, and it and everything
  after it go to the Python path, whose drain waits for the requests in flight here too
  (`in_flight`); until every barrier handed over is answered, whole bursts go to Python, so
  nothing taken after a barrier overtakes it.

Lifetime: requests in flight point into persistently mapped pages, so `releasing` (the mapper is
about to unmap them) and `close` cancel and wait for them first.
"""

from __future__ import annotations

from collections.abc import Callable

from ringkit import persistent_grants
from ringkit.persistent_grants import PersistentGrantTable, UringBurstServer
from ringkit.proto.blkif import Op

from .image import Image
from .stats import ServiceStats

__all__ = ("BlkifUringPath", "unavailable")

_SLOT = persistent_grants.SLOT_SIZE
_ORDER = 1


def unavailable() -> str:
    """Why the fast path at depth cannot run here ("" when it can): no compiled helper (ABI
    mode); io_uring itself is tried when the path is made."""
    return persistent_grants.unavailable()


class BlkifUringPath:
    """Serves the usual blkif requests of a ring at depth through io_uring, in C (see the
    module docstring); up to `capacity` in flight; `burst`: the request server's burst (its
    buffers' size); `stats`: the service's counters, kept true; `on_reaped`: called after each
    reap that answered or handed back something (the service's barrier drain watches it);
    `table`: the persistent-grant table to use (default: a new one of `max_persistent` refs;
    tests pass one built on a differently compiled C).  Watches a `GrantMapper` (`persisted` /
    `releasing`).

    Raises (constructor):
        RuntimeError: the compiled helper is unavailable (`unavailable`).
        OSError: io_uring is unavailable here.
    """

    def __init__(self, image: Image, max_persistent: int, *, capacity: int, burst: int,
                 stats: ServiceStats, on_reaped: Callable[[], None] | None = None,
                 table: PersistentGrantTable | None = None) -> None:
        self.image = image
        self.table = table if table is not None else PersistentGrantTable(max_persistent)
        """The persistent grants C resolves refs through."""
        self.server = UringBurstServer(self.table, capacity)
        self.stats = stats
        self.on_reaped = on_reaped
        ffi = self.table._ffi
        self.rest = bytearray(_SLOT * burst)
        self.rest_seqs = ffi.new("uint64_t[]", burst)
        self.out = bytearray(_SLOT * burst)
        self.seqs = ffi.new("uint64_t[]", burst)
        self.back = bytearray(_SLOT * burst)
        self.back_seqs = ffi.new("uint64_t[]", burst)
        self.barriers = 0
        """WRITE_BARRIERs handed to the Python path and not answered yet: while there are
        any, every request goes to the Python path."""
        self.served = 0
        """Requests this path answered."""

    @property
    def in_flight(self) -> int:
        """Requests submitted here and not answered yet."""
        return self.server.in_flight

    def fileno(self) -> int:
        """The eventfd the request server watches for completions."""
        return self.server.fileno()

    def persisted(self, ref: int, page: memoryview, writable: bool) -> None:
        """The mapper keeps `page` mapped for `ref`: name it in the table."""
        self.table.add(ref, page, writable=writable and not page.readonly)

    def releasing(self) -> None:
        """The mapper is about to unmap every kept page: wait for what is in flight, then
        forget them all."""
        self.close()
        self.table.clear()

    def close(self) -> None:
        """Cancel and wait for the requests in flight (blocking, briefly); nothing is submitted
        afterwards.  Idempotent."""
        self.server.close()

    def barrier_answered(self) -> None:
        """The Python path answered a WRITE_BARRIER."""
        if self.barriers:
            self.barriers -= 1

    def flags(self) -> int:
        """What the C may submit for this image now."""
        flags = persistent_grants.READ_NOWAIT
        if not self.image.readonly:
            flags |= persistent_grants.WRITE
        return flags

    def submit(self, burst: bytearray, count: int, seq: int) -> tuple[int, int, int]:
        """`ringkit.requests.ConcurrentFastPath.submit`."""
        image = self.image
        if self.barriers or not len(self.table) or image.fd < 0 or self.server.closed:
            self._count_barriers(burst, 0, count)
            return 0, 0, _ORDER
        align = image.direct_alignment if image.direct else 1
        consumed, rest, stop, _, _ = self.server.submit(
            image.fd, image.sectors, self.flags(), align, seq, burst, count, self.rest,
            self.rest_seqs)
        if stop == _ORDER:
            self._count_barriers(burst, consumed, count)
        return consumed, rest, stop

    def _count_barriers(self, burst: bytearray, start: int, stop: int) -> None:
        for i in range(start, stop):
            if burst[i * _SLOT] == Op.WRITE_BARRIER:
                self.barriers += 1

    def reap(self, cap: int) -> tuple[int, int]:
        """`ringkit.requests.ConcurrentFastPath.reap`."""
        if self.server.closed:
            return 0, 0
        answered, back, read, written = self.server.reap(cap, self.out, self.seqs, self.back,
                                                         self.back_seqs)
        if answered:
            self.served += answered
            stats = self.stats
            stats.requests += answered
            stats.sectors_read += read
            stats.sectors_written += written
        if (answered or back) and self.on_reaped is not None:
            self.on_reaped()
        return answered, back
