"""A persistent-grant table in C, and the blkif burst servers over it: `PersistentGrantTable`,
`UringBurstServer`.

A backend that keeps its frontend's grants mapped (blkif ``feature-persistent``) names each
mapped page in this table -- grant ref -> the page's address and whether it is mapped writable
-- and `serve` hands a burst of request slots to ``rk_blkif_serve`` (_build.py), which serves
the burst's leading plain READs and WRITEs, direct or INDIRECT, whose refs (an INDIRECT's
indirect pages and every data page its segment list names) are all in the table: the segment
list copied out once and checked on the copy, iovecs into the pages, one
``preadv``/``preadv2``/``pwritev`` per ``IOV_MAX`` of them, the response written in place.
It stops at the first slot it cannot serve so; that one and every later one are the caller's.

`UringBurstServer` serves the same usual requests (direct segments) for a ring served at depth:
``rk_blkif_aio_submit`` submits each to an io_uring of its own instead of doing the I/O in place,
and ``rk_blkif_aio_reap`` answers the completions in the order the device finished them (a
request that failed or moved fewer bytes than asked is handed back whole instead).  Every slot
carries a sequence number the caller gives, returned with its answer or hand-back.

Lifetime: the table holds a cffi buffer export of each page it names, so the page's memory
stays valid (an mmap cannot be closed under it: BufferError) until `discard` or `clear` drops
the entry from the C table first and only then releases the export.  Not thread-safe: one
owner (the event loop that serves the ring) adds, drops and serves.

Unavailable (`unavailable` says why) without the compiled helper: ABI mode, chosen or forced
with ``RINGKIT_NATIVE=abi``, where the Python path serves every request.
"""

from __future__ import annotations

import os
from typing import Any

from ._native import compiled_part

_PAGE_SIZE = 4096
SLOT_SIZE = 112
"""A blkif request slot (x86_64), the stride of the bursts `serve` takes."""
READ_PLAIN = 1
"""`serve` flag: serve READs with a plain ``preadv`` (an image in memory: nothing waits)."""
READ_NOWAIT = 2
"""`serve` flag: serve READs the page cache holds (``preadv2`` with ``RWF_NOWAIT``)."""
WRITE = 4
"""`serve` flag: serve WRITEs with ``pwritev`` (a buffered image written inline)."""

STOP_NONE = 0
"""`UringBurstServer.submit`: the whole burst was consumed."""
STOP_ORDER = 1
"""`UringBurstServer.submit` stopped at a WRITE_BARRIER, which waits for every request before it:
that slot and the rest of the burst are the caller's."""
STOP_FULL = 2
"""`UringBurstServer.submit` stopped because every entry is in flight: reap, then go on."""

_ffi, _lib, _MISSING = compiled_part("RK_FAST_MAX_INDIRECT", "the blkif fast path")


def unavailable() -> str:
    """Why `PersistentGrantTable` cannot be made here, or "" when it can."""
    return _MISSING


class PersistentGrantTable:
    """Grant ref -> mapped page, kept in C, for up to `max_refs` refs (`add` refuses more).

    `module`: the cffi module whose C to use (default: `ringkit._native._compiled`; tests pass
    a differently built one).

    Raises (constructor):
        RuntimeError: the compiled helper is unavailable (see `unavailable`).
    """

    def __init__(self, max_refs: int, *, module: Any = None) -> None:
        if module is not None:
            ffi, lib = module.ffi, module.lib
        elif _lib is None:
            raise RuntimeError(_MISSING)
        else:
            ffi, lib = _ffi, _lib
        self._ffi, self._lib = ffi, lib
        capacity = 2
        while capacity < 2 * max(max_refs, 1):
            capacity *= 2
        self.max_refs = capacity // 2
        """Most refs the table names at once (`max_refs` rounded up)."""
        self._entries = ffi.new("rk_pgrant[]", capacity)
        self._table = ffi.new("rk_pgrant_table *")
        self._table.entries = self._entries
        self._table.capacity = capacity
        self._pages: dict[int, Any] = {}  # ref -> the export that keeps its address valid
        self._stats = ffi.new("uint64_t[2]")

    def __len__(self) -> int:
        return int(self._table.count)

    def __contains__(self, ref: object) -> bool:
        return ref in self._pages

    def add(self, ref: int, page: memoryview, *, writable: bool) -> bool:
        """Name `page` (one whole page, writable if `writable`) for grant `ref`, replacing
        what it named before; False when the table is full.

        Raises:
            ValueError: `page` is not a whole page, or `writable` and it is read-only.
        """
        if page.nbytes < _PAGE_SIZE:
            raise ValueError(f"a grant's page is {_PAGE_SIZE} bytes, got {page.nbytes}")
        if writable and page.readonly:
            raise ValueError(f"grant {ref}: a read-only page named writable")
        ffi = self._ffi
        export = ffi.from_buffer("char[]", page)
        address = int(ffi.cast("uintptr_t", export))
        code = self._lib.rk_pgrant_put(self._table, ref, address, int(writable))
        if code == -2:
            ffi.release(export)
            return False
        if code < 0:  # pragma: no cover - the table is built valid above
            raise AssertionError(f"rk_pgrant_put returned {code}")
        old = self._pages.pop(ref, None)
        self._pages[ref] = export
        if old is not None:
            ffi.release(old)
        return True

    def discard(self, ref: int) -> None:
        """Forget `ref` (nothing if it is not there); its page may be unmapped afterwards."""
        if self._lib.rk_pgrant_drop(self._table, ref) < 0:  # pragma: no cover
            raise AssertionError("rk_pgrant_drop refused a valid table")
        export = self._pages.pop(ref, None)
        if export is not None:
            self._ffi.release(export)

    def clear(self) -> None:
        """Forget every ref; their pages may be unmapped afterwards."""
        self._lib.rk_pgrant_clear(self._table)
        pages, self._pages = self._pages, {}
        for export in pages.values():
            self._ffi.release(export)

    def serve(self, fd: int, sectors: int, flags: int, burst: bytearray, count: int,
              out: bytearray | memoryview, *, max_indirect: int = 0) -> tuple[int, int, int]:
        """Serve the leading slots of the `count` blkif requests in `burst` (a private copy,
        `SLOT_SIZE` bytes each) against the image `fd` of `sectors` sectors, as `flags`
        allows; each served slot's response is written whole at its position in `out`.
        `max_indirect`: the indirect segments the backend advertised (0: INDIRECT requests
        are handed back; more than 4096, the most 8 indirect pages name, means 4096).
        Returns ``(served, sectors_read, sectors_written)``.

        Raises:
            ValueError: `burst` or `out` holds fewer than `count` slots.
        """
        ffi = self._ffi
        src = ffi.from_buffer("char[]", burst)
        dst = ffi.from_buffer("char[]", out, require_writable=True)
        stats = self._stats
        served = self._lib.rk_blkif_serve(self._table, fd, sectors, flags,
                                          min(max(max_indirect, 0), 0xFFFFFFFF), src,
                                          len(src), count, dst, len(dst), stats)
        if served < 0:
            raise ValueError(f"{count} slots do not fit a {len(src)}-byte burst and a "
                             f"{len(dst)}-byte output")
        return served, int(stats[0]), int(stats[1])


class UringBurstServer:
    """Serves the usual blkif requests of a ring served at depth through an io_uring of its
    own, answering them as they complete (see the module docstring); up to `capacity`
    requests in flight, their grants resolved through `table`.

    Lifetime: the pages `table` names must stay mapped while requests are in flight: `close`
    (cancel and wait for them) before the table is cleared and the pages unmapped.  One owner,
    like the table.

    Raises (constructor):
        OSError: io_uring is unavailable here (its errno says why).
        ValueError: `capacity` is not 1..4096.
    """

    def __init__(self, table: PersistentGrantTable, capacity: int) -> None:
        if not 1 <= capacity <= 4096:
            raise ValueError(f"capacity must be 1..4096, got {capacity}")
        self.table = table
        ffi, lib = table._ffi, table._lib
        self._ffi, self._lib = ffi, lib
        err = ffi.new("int *")
        handle = lib.rk_blkif_aio_open(capacity, err)
        if handle == ffi.NULL:
            code = err[0]
            raise OSError(code, f"io_uring for the blkif burst server: {os.strerror(code)}")
        self._handle: Any = handle
        self.capacity = capacity
        """Most requests in flight."""
        self._fd = int(lib.rk_blkif_aio_eventfd(handle))
        self._info = ffi.new("uint64_t[6]")

    @property
    def closed(self) -> bool:
        """Whether `close` ran."""
        return self._handle is None

    def fileno(self) -> int:
        """An eventfd that becomes readable when completions wait to be reaped."""
        return self._fd

    @property
    def in_flight(self) -> int:
        """Requests submitted and not reaped yet."""
        return 0 if self._handle is None else int(self._lib.rk_blkif_aio_in_flight(self._handle))

    def submit(self, fd: int, sectors: int, flags: int, align: int, seq: int,
               burst: bytearray | memoryview, count: int, rest: bytearray,
               rest_seqs: Any) -> tuple[int, int, int, int, int]:
        """Submit the usual requests among the `count` slots of `burst` (a private copy,
        `SLOT_SIZE` apart) against the image `fd` of `sectors` sectors, as `flags` allows
        (`READ_PLAIN` or `READ_NOWAIT`: reads; `WRITE`: writes); `align`: the alignment an
        O_DIRECT image needs of buffers, lengths and offsets (1: none).  Slot i is numbered
        `seq` + i.  Slots it does not take go to `rest` (and their numbers to `rest_seqs`, a
        cffi ``uint64_t[]`` of at least `count`) for the Python path.  Returns ``(consumed,
        rest, stop, sectors_read, sectors_written)``: the leading slots consumed, how many of
        them went to `rest`, why it stopped (`STOP_NONE`, `STOP_ORDER`, `STOP_FULL`) and the
        sectors the submitted requests will move.

        Raises:
            ValueError: the buffers hold fewer than `count` slots, or `align` is not a power
                of two up to 4096.
            RuntimeError: the server is closed.
        """
        if self._handle is None:
            raise RuntimeError("the blkif burst server is closed")
        ffi, info = self._ffi, self._info
        src = ffi.from_buffer("char[]", burst)
        dst = ffi.from_buffer("char[]", rest, require_writable=True)
        if len(rest_seqs) < count:
            raise ValueError(f"{count} slots need {count} sequence numbers, "
                             f"got room for {len(rest_seqs)}")
        consumed = self._lib.rk_blkif_aio_submit(
            self._handle, self.table._table, fd, sectors, flags, align, seq, src, len(src),
            count, dst, len(dst), rest_seqs, info)
        if consumed < 0:
            raise ValueError(f"{count} slots do not fit a {len(src)}-byte burst and a "
                             f"{len(dst)}-byte rest, or alignment {align} is not a power of "
                             f"two up to 4096")
        return consumed, int(info[0]), int(info[1]), int(info[4]), int(info[5])

    def reap(self, cap: int, out: bytearray | memoryview, seqs: Any, back: bytearray,
             back_seqs: Any) -> tuple[int, int, int, int]:
        """Answer up to `cap` completed requests: OKAY responses into `out` (their numbers
        into `seqs`), failed or short ones' slots into `back` (numbers into `back_seqs`) for
        the Python path to serve again.  Returns ``(answered, handed_back, sectors_read,
        sectors_written)``.

        Raises:
            ValueError: a buffer holds fewer than `cap` slots or numbers.
            RuntimeError: the server is closed.
        """
        if self._handle is None:
            raise RuntimeError("the blkif burst server is closed")
        if len(seqs) < cap or len(back_seqs) < cap:
            raise ValueError(f"reaping {cap} needs room for {cap} sequence numbers")
        ffi, info = self._ffi, self._info
        dst = ffi.from_buffer("char[]", out, require_writable=True)
        bck = ffi.from_buffer("char[]", back, require_writable=True)
        answered = self._lib.rk_blkif_aio_reap(self._handle, cap, dst, len(dst), seqs, bck,
                                               len(bck), back_seqs, info)
        if answered < 0:
            raise ValueError(f"reaping {cap} does not fit a {len(dst)}-byte output and a "
                             f"{len(bck)}-byte hand-back")
        return int(answered), int(info[0]), int(info[1]), int(info[2])

    def close(self) -> None:
        """Cancel what is in flight and wait for it (blocking, briefly), then release the
        ring; afterwards the table's pages may be unmapped.  Idempotent.

        Raises:
            RuntimeError: the kernel could not be waited for: the ring is leaked and the pages
                must stay mapped.
        """
        handle, self._handle = self._handle, None
        if handle is not None and self._lib.rk_blkif_aio_close(handle) < 0:
            raise RuntimeError("the blkif burst server's io_uring could not be drained; "
                               "its ring is leaked")


__all__ = ("READ_NOWAIT", "READ_PLAIN", "SLOT_SIZE", "STOP_FULL", "STOP_NONE", "STOP_ORDER",
           "WRITE", "PersistentGrantTable", "UringBurstServer", "unavailable")
