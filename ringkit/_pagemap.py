"""Shared mappings of file ranges, placed side by side at one address, that hold no descriptor.

Both transports map pages this way: the real one maps a gntdev or gntalloc range, the simulated
one stitches a grant mapping together from pieces of several memfds.  Python's ``mmap.mmap(fd,
...)`` cannot do either well: it cannot place a mapping at a chosen address, and it keeps a
duplicate of ``fd`` for as long as the mapping lives (Python 3.13's ``trackfd=False`` is the
first way out).  The kernel needs no descriptor once a range is mapped -- the mapping holds its
own reference to the open file -- so a backend keeping Linux blkfront's persistent grants (up to
1056 single-page mappings per ring) would spend a descriptor on each for nothing and run into
the open-files limit.

So a mapping is made in two steps.  Python reserves the whole address range with an anonymous
``mmap.mmap(-1, ...)`` of the final protection: no descriptor, a read-only buffer unless
writable, and Python's export tracking (closing refuses while views exist).  Then each piece is
mapped over its part of the reservation with libc's ``mmap(MAP_FIXED)``, which replaces what is
there in one step.  Closing the Python object munmaps the whole range, just as if Python had
mapped it itself.

When a piece is refused, its part of the reservation may be gone.  Linux checks the file's mode
and the process's limits before it touches the range (the reservation stays), but calls the
driver's mmap -- where gntdev does all its checking and mapping, so every refusal of a grant
mapping -- only after dropping what was there, leaving a hole.  The hole is filled again
(``MAP_FIXED_NOREPLACE``) and the reservation closed.  If something is mapped there already,
it may be the intact reservation or whatever another thread (native calls run without the GIL)
mapped into the hole meanwhile; nothing tells the two apart for sure, so the rest of the range
is unmapped by hand and the reservation is kept for good, never closed (`stranded`): a little
address space lost, never someone else's memory unmapped.

A forked child does not inherit gntdev mappings (the driver marks them do-not-copy): a child
must not touch, nor close, the parent's mappings.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cffi import FFI

PROT_NONE = 0x0
"""No access (the `mmap` module lacks it)."""
MAP_FIXED = 0x10
"""Place the mapping exactly at the given address, replacing what is there."""
MAP_FIXED_NOREPLACE = 0x100000
"""As MAP_FIXED, but fail with EEXIST rather than replace anything (Linux 4.17+)."""

_ffi: Any = FFI()
# off_t is a long wherever the plain `mmap` symbol is the one a program links against.
_ffi.cdef("""
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
""")
_MAP_FAILED = -1

_STRANDED: list[mmap.mmap] = []
"""Reservations kept for good after a refused piece whose range was not a hole: never closed
(the range may hold another thread's memory)."""


@functools.cache
def _libc() -> Any:
    return _ffi.dlopen(None)


@dataclass(frozen=True, slots=True)
class Piece:
    """`length` bytes of file `fd` from `offset`, to be placed next in the mapping."""

    fd: int
    offset: int
    length: int


def coalesce(pieces: Sequence[Piece]) -> list[Piece]:
    """Merge neighbouring pieces that continue the same file, to save mmap calls."""
    merged: list[Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if last and last.fd == piece.fd and last.offset + last.length == piece.offset:
            merged[-1] = Piece(last.fd, last.offset, last.length + piece.length)
        else:
            merged.append(piece)
    return merged


def _mmap(addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    """libc mmap; the mapped address, or OSError."""
    result = _libc().mmap(_ffi.cast("void *", addr), length, prot, flags, fd, offset)
    address = int(_ffi.cast("intptr_t", result))
    if address == _MAP_FAILED:
        err = _ffi.errno
        raise OSError(err, os.strerror(err))
    return address


def _munmap(addr: int, length: int) -> None:
    if length > 0:
        _libc().munmap(_ffi.cast("void *", addr), length)


def address_of(area: mmap.mmap) -> int:
    """Where `area` is mapped (leaves no export behind: `area` can still be closed)."""
    pointer = _ffi.from_buffer(area)
    try:
        return int(_ffi.cast("uintptr_t", pointer))
    finally:
        _ffi.release(pointer)


def _strand(reservation: mmap.mmap) -> None:
    """Keep `reservation` for good: never closed, not even when the interpreter exits (its range
    may hold someone else's memory by now)."""
    _STRANDED.append(reservation)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(reservation))


def _abandon(reservation: mmap.mmap, base: int, total: int, addr: int, length: int) -> None:
    """After the piece at [addr, addr + length) was refused: if that part of the range is a
    hole, fill it and free the reservation; otherwise unmap the rest by hand and strand it."""
    try:
        filler: int | None = _mmap(addr, length, PROT_NONE, mmap.MAP_PRIVATE
                                   | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    except OSError:                                  # EEXIST: something is mapped there
        filler = None
    except BaseException:
        _strand(reservation)
        raise
    if filler == addr:
        reservation.close()                          # unmaps the filler and the rest
        return
    if filler is not None:                           # a kernel before 4.17 took it as a hint
        _munmap(filler, length)
    _munmap(base, addr - base)
    _munmap(addr + length, base + total - addr - length)
    _strand(reservation)


def map_pieces(pieces: Sequence[Piece], *, writable: bool) -> mmap.mmap:
    """One contiguous shared mapping of `pieces`, in order, as an `mmap.mmap` that holds no
    descriptor (the pieces' files may be closed while it lives).

    Its buffer is read-only unless `writable`.  Raises the kernel's OSError for a refused piece,
    after undoing the others.
    """
    total = sum(piece.length for piece in pieces)
    if total <= 0:
        raise ValueError("nothing to map")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    reservation = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE, prot=prot)
    base = cursor = address_of(reservation)
    for piece in pieces:
        try:
            _mmap(cursor, piece.length, prot, mmap.MAP_SHARED | MAP_FIXED, piece.fd, piece.offset)
        except OSError:
            _abandon(reservation, base, total, cursor, piece.length)
            raise
        except BaseException:                        # not from mmap: the range is all ours
            reservation.close()
            raise
        cursor += piece.length
    return reservation


def stranded() -> int:
    """How many reservations were kept for good after a refused piece (see the module)."""
    return len(_STRANDED)


_CLOSED_VIEW = memoryview(b"")
"""What `PageMap.view` is once closed."""


class PageMap:
    """Pages mapped with `map_pieces` and our view of them.

    `view` is a memoryview over all of it (read-only unless `writable`).  `close()` unmaps the
    range once no exported buffer refers to it any more: while the caller still holds slices of
    `view`, the range stays mapped and is unmapped when the last of them is released, so a stale
    view can never touch unmapped memory.
    """

    def __init__(self, pieces: Sequence[Piece], *, writable: bool) -> None:
        self._area: mmap.mmap | None = map_pieces(pieces, writable=writable)
        self.view: memoryview = memoryview(self._area)
        self.length = len(self._area)

    @property
    def address(self) -> int:
        """Where the pages are mapped in this process; 0 once closed."""
        return 0 if self._area is None else address_of(self._area)

    def close(self) -> None:
        """Release our view and unmap the range (now, or when the last export is released)."""
        if self._area is None:
            return
        area, self._area = self._area, None
        # If someone still holds a slice or a raw export (cffi's from_buffer) of `view`, the
        # mmap object unmaps the range when the last of them is freed.
        with contextlib.suppress(BufferError):
            self.view.release()
        with contextlib.suppress(BufferError):
            area.close()
        # ... and nothing here keeps it: not the view either (it is still exported, e.g. by
        # cffi's from_buffer, if it could not be released), so the unmap happens when the
        # caller lets go, not when this object is collected
        self.view = _CLOSED_VIEW
