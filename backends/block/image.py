"""The storage behind a block backend: a raw image file or a block device.

`Image` does positional vectored I/O straight between the file and the mapped grant pages
(``preadv``/``pwritev`` on memoryview slices: no intermediate copy), makes writes durable with
``fdatasync`` and discards by punching a hole (``fallocate(PUNCH_HOLE|KEEP_SIZE)``) in a file
or ``BLKDISCARD`` on a block device.  A discarded range reads back as zeros; where the file
system cannot punch holes the range is overwritten with zeros, so the answer stays the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path

from ringkit import ConfigError
from ringkit.proto.blkif import SECTOR_SIZE

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLKGETSIZE64 = 0x80081272
_BLKDISCARD = 0x1277
_BLKSSZGET = 0x1268
_ZEROS = bytes(1 << 20)
IOV_MAX: int = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
"""Most buffers one ``preadv``/``pwritev`` takes (more is EINVAL); longer lists are split."""

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class Image:
    """An open raw image (regular file or block device) served in 512-byte sectors.

    Raises (constructor):
        ConfigError: the path does not exist, is neither a regular file nor a block device,
            cannot be opened with the requested access, or its size is not a whole number of
            sectors.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            fd = os.open(self.path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open image {str(self.path)!r}: {exc.strerror}") from exc
        self.fd = fd
        try:
            mode = os.fstat(fd).st_mode
            self.is_block_device = stat.S_ISBLK(mode)
            if self.is_block_device:
                size = struct.unpack("Q", fcntl.ioctl(fd, _BLKGETSIZE64, bytes(8)))[0]
                self.logical_sector_size = struct.unpack(
                    "i", fcntl.ioctl(fd, _BLKSSZGET, bytes(4)))[0]
            elif stat.S_ISREG(mode):
                size = os.fstat(fd).st_size
                self.logical_sector_size = SECTOR_SIZE
            else:
                raise ConfigError(f"image {str(self.path)!r} is neither a regular file nor a "
                                  "block device")
            if size % SECTOR_SIZE:
                raise ConfigError(f"image {str(self.path)!r} is {size} bytes, not a multiple "
                                  f"of {SECTOR_SIZE}")
        except BaseException:
            os.close(fd)
            raise
        self.size = size
        self.sectors = size // SECTOR_SIZE
        self._punch_works = True

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, buffers: Sequence[memoryview], offset: int,
                  total: int | None = None) -> None:
        """Fill `buffers` in order from byte `offset`; short reads are retried, reading past the
        end is an OSError (the caller checked the range).  `total`: their summed length, if
        the caller knows it.  Any number of buffers (IOV_MAX at a time)."""
        if len(buffers) > IOV_MAX:
            self._chunked(buffers, offset, write=False)
            return
        if total is None:
            total = sum(len(b) for b in buffers)
        done = os.preadv(self.fd, buffers, offset)
        if done < total:
            self._finish(buffers, offset, done, total, write=False)

    def write_from(self, buffers: Sequence[memoryview], offset: int,
                   total: int | None = None) -> None:
        """Write `buffers` in order at byte `offset`, entirely (short writes are retried).
        `total`: their summed length, if the caller knows it.  Any number of buffers (IOV_MAX
        at a time)."""
        if len(buffers) > IOV_MAX:
            self._chunked(buffers, offset, write=True)
            return
        if total is None:
            total = sum(len(b) for b in buffers)
        done = os.pwritev(self.fd, buffers, offset)
        if done < total:
            self._finish(buffers, offset, done, total, write=True)

    def _chunked(self, buffers: Sequence[memoryview], offset: int, *, write: bool) -> None:
        """One call per IOV_MAX buffers, each at the offset where the previous one ended."""
        call = self.write_from if write else self.read_into
        for start in range(0, len(buffers), IOV_MAX):
            part = buffers[start:start + IOV_MAX]
            length = sum(len(b) for b in part)
            call(part, offset, length)
            offset += length

    def _finish(self, buffers: Sequence[memoryview], offset: int, done: int, total: int,
                *, write: bool) -> None:
        flat = [b for b in buffers]
        while done < total:
            skip = done
            rest: list[memoryview] = []
            for b in flat:
                if skip >= len(b):
                    skip -= len(b)
                    continue
                rest.append(b[skip:])
                skip = 0
            n = (os.pwritev(self.fd, rest, offset + done) if write
                 else os.preadv(self.fd, rest, offset + done))
            if n == 0:
                raise OSError(errno.EIO, f"unexpected end of image at byte {offset + done}")
            done += n

    def flush(self) -> None:
        """Make every write completed so far durable (``fdatasync``)."""
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a byte range; it reads back as zeros afterwards."""
        if length <= 0:
            return
        if self.is_block_device:
            fcntl.ioctl(self.fd, _BLKDISCARD, struct.pack("QQ", offset, length))
            return
        if self._punch_works:
            if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                          offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, f"fallocate(PUNCH_HOLE) on {self.path}: {os.strerror(err)}")
            self._punch_works = False
        end = offset + length
        while offset < end:
            chunk = min(len(_ZEROS), end - offset)
            self.write_from([memoryview(_ZEROS)[:chunk]], offset)
            offset += chunk


__all__ = ("IOV_MAX", "Image")
