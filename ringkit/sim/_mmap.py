"""Contiguous mappings stitched from pieces of several files (MAP_FIXED through libc).

Python's `mmap` cannot place a mapping at a chosen address, but a grant mapping of several refs
must be one contiguous buffer even when the pages come from different memfds.  We reserve the
whole range with an anonymous Python `mmap` (which keeps track of exported buffers and unmaps the
range when closed), then replace each piece in place with libc ``mmap(MAP_FIXED)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

MAP_FIXED = 0x10
"""Linux's MAP_FIXED (the `mmap` module does not export it)."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
)
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass(frozen=True, slots=True)
class Piece:
    """`length` bytes of file `fd` from `offset`, to be placed next in the stitched mapping."""

    fd: int
    offset: int
    length: int


class Stitched:
    """A contiguous shared mapping made of `pieces`, readable and optionally writable.

    `view` is a memoryview over all of it (read-only unless `writable`).  `close()` unmaps the
    range once no exported buffer refers to it any more; while the caller still holds slices of
    `view`, the range stays mapped and is unmapped when the last of them is released, so a stale
    view can never touch unmapped memory.
    """

    def __init__(self, pieces: Sequence[Piece], *, writable: bool) -> None:
        total = sum(p.length for p in pieces)
        if total <= 0:
            raise ValueError("nothing to map")
        self._reservation: mmap.mmap | None = mmap.mmap(-1, total)
        anchor = ctypes.c_char.from_buffer(self._reservation)
        base = ctypes.addressof(anchor)
        del anchor
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            cursor = base
            for piece in pieces:
                got = _libc.mmap(
                    cursor, piece.length, prot, mmap.MAP_SHARED | MAP_FIXED, piece.fd,
                    piece.offset,
                )
                if got is None or got == _MAP_FAILED:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mmap(MAP_FIXED) of fd {piece.fd}: {os.strerror(err)}")
                cursor += piece.length
        except BaseException:
            self._reservation.close()
            self._reservation = None
            raise
        self._base = memoryview(self._reservation)
        self.view: memoryview = self._base if writable else self._base.toreadonly()
        self.length = total

    def close(self) -> None:
        """Release our view and unmap the range (now, or when the last export is released)."""
        if self._reservation is None:
            return
        reservation, self._reservation = self._reservation, None
        # If someone still holds a slice or a raw export (cffi's from_buffer) of `view`, the
        # mmap object unmaps the range when the last of them is freed.
        with contextlib.suppress(BufferError):
            self.view.release()
        with contextlib.suppress(BufferError):
            self._base.release()
        with contextlib.suppress(BufferError):
            reservation.close()


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
