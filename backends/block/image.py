"""The storage behind a block backend: a raw image file or a block device.

`Image` does positional vectored I/O straight between the file and the mapped grant pages
(``preadv``/``pwritev`` on memoryview slices: no intermediate copy), makes writes durable with
``fdatasync`` and discards by punching a hole (``fallocate(PUNCH_HOLE|KEEP_SIZE)``) in a file
or ``BLKDISCARD`` on a block device.  A discarded range reads back as zeros; where the file
system cannot punch holes the range is overwritten with zeros, so the answer stays the same.

`read_cached` reads only what the page cache holds (``RWF_NOWAIT``; on tmpfs, which refuses the
flag, everything: its pages are memory), so a caller can serve a cached read in the event loop
and send the rest to a thread.  With ``direct=True`` the image is
opened ``O_DIRECT`` (QEMU's ``cache=none``): I/O goes to the device, bypassing the page cache.
``O_DIRECT`` wants buffers, offsets and lengths aligned to the device's logical block
(`direct_alignment`); a request that is not -- a 512-byte sector of a 4 KiB-sector disk, a
segment in the middle of a page -- goes through an aligned bounce buffer, a write as
read-modify-write of the blocks it touches (one at a time, so two such writes sharing a block
cannot undo each other).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

from cffi import FFI

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
_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_fstatfs.restype = ctypes.c_int
_MEMORY_FS = frozenset({0x01021994, 0x858458F6, 0x958458F6})
"""tmpfs, ramfs and hugetlbfs (``statfs.f_type``): file systems whose reads never wait for a
device, and which do not take ``RWF_NOWAIT`` (EOPNOTSUPP)."""


def _in_memory(fd: int) -> bool:
    """Whether the file lives on a memory file system (`_MEMORY_FS`)."""
    buf = ctypes.create_string_buffer(256)   # struct statfs: f_type (a long) comes first
    if _fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in _MEMORY_FS


class Image:
    """An open raw image (regular file or block device) served in 512-byte sectors.

    Raises (constructor):
        ConfigError: the path does not exist, is neither a regular file nor a block device,
            cannot be opened with the requested access, or its size is not a whole number of
            sectors.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 direct: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.direct = direct
        """Opened ``O_DIRECT``: I/O bypasses the page cache (see the module docstring)."""
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | (os.O_DIRECT if direct else 0))
        except OSError as exc:
            if direct and exc.errno == errno.EINVAL:
                raise ConfigError(f"image {str(self.path)!r}: its file system does not do "
                                  "O_DIRECT (tmpfs does not); serve it without direct") from exc
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
        self.hole_punching = True
        """Whether discards punch holes (until the file system refused: then zeros are
        written)."""
        self._nowait = not direct
        self._in_memory = not self.is_block_device and _in_memory(fd)
        self.direct_alignment = 0
        """With `direct`: the alignment O_DIRECT needs (buffer address, offset, length)."""
        self._rmw = threading.Lock()
        if direct:
            try:
                self.direct_alignment = self._probe_alignment()
            except BaseException:
                os.close(fd)
                raise

    def _probe_alignment(self) -> int:
        """The smallest power of two from 512 that O_DIRECT reads at (EINVAL below it)."""
        if self.is_block_device:
            return max(int(self.logical_sector_size), SECTOR_SIZE)
        if self.size == 0:
            return 4096
        with mmap.mmap(-1, 4096) as page:
            buffer = memoryview(page)
            try:
                for size in (512, 1024, 2048, 4096):
                    try:
                        os.preadv(self.fd, [buffer[:size]], 0)
                        return size
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
            finally:
                buffer.release()
        raise ConfigError(f"image {str(self.path)!r}: O_DIRECT refuses even 4 KiB reads")

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cached_reads(self) -> str:
        """How `read_cached` reads now: ``"memory"`` (an image on a memory file system: a
        plain read), ``"nowait"`` (``RWF_NOWAIT``: only what the page cache holds) or
        ``"none"`` (direct, or the kernel refused the flag: it reads nothing)."""
        if self._in_memory and not self.direct:
            return "memory"
        return "nowait" if self._nowait else "none"

    def read_cached(self, buffers: Sequence[memoryview], offset: int, total: int) -> bool:
        """Fill `buffers` from byte `offset` if the page cache holds all `total` bytes, without
        waiting for the device (``preadv`` with ``RWF_NOWAIT``); False (the buffers' contents
        then undefined) when it does not, or when the image is direct or the kernel cannot say.
        """
        if self._in_memory and not self.direct:
            self.read_into(buffers, offset, total)  # a memory copy: nothing to wait for
            return True
        if not self._nowait or len(buffers) > IOV_MAX:
            return False
        try:
            return bool(os.preadv(self.fd, buffers, offset, os.RWF_NOWAIT) == total)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # this kernel or file system cannot: stop asking
                return False
            raise

    def read_into(self, buffers: Sequence[memoryview], offset: int,
                  total: int | None = None) -> None:
        """Fill `buffers` in order from byte `offset`; short reads are retried, reading past the
        end is an OSError (the caller checked the range).  `total`: their summed length, if
        the caller knows it.  Any number of buffers (IOV_MAX at a time)."""
        if self.direct and not self._aligned(buffers, offset):
            self._bounce(buffers, offset, write=False)
            return
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
        if self.direct and not self._aligned(buffers, offset):
            self._bounce(buffers, offset, write=True)
            return
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

    def needs_bounce(self, buffers: Sequence[memoryview], offset: int) -> bool:
        """Whether I/O on `buffers` at `offset` must go through the bounce buffer: an O_DIRECT
        image and a buffer address, length or the offset not aligned (`direct_alignment`)."""
        return self.direct and not self._aligned(buffers, offset)

    def _aligned(self, buffers: Sequence[memoryview], offset: int) -> bool:
        """Whether O_DIRECT takes these buffers at `offset` as they are."""
        align = self.direct_alignment
        if offset % align:
            return False
        return all(len(b) % align == 0 and _address(b) % align == 0 for b in buffers)

    def _bounce(self, buffers: Sequence[memoryview], offset: int, *, write: bool) -> None:
        """I/O O_DIRECT cannot take as it is, through an aligned buffer covering the blocks
        it touches (a write reads them first, under a lock, and writes them back whole)."""
        align = self.direct_alignment
        total = sum(len(b) for b in buffers)
        start = offset - offset % align
        end = -(-(offset + total) // align) * align
        with mmap.mmap(-1, end - start) as area:
            bounce = memoryview(area)
            try:
                with self._rmw if write else _NO_LOCK:
                    self._direct_io([bounce], start, end - start, write=False)
                    pos = offset - start
                    for b in buffers:
                        if write:
                            bounce[pos:pos + len(b)] = b
                        else:
                            b[:] = bounce[pos:pos + len(b)]
                        pos += len(b)
                    if write:
                        self._direct_io([bounce], start, end - start, write=True)
                        if end > self.size and not self.is_block_device:
                            os.ftruncate(self.fd, self.size)  # the last block went past it
            finally:
                bounce.release()

    def _direct_io(self, buffers: list[memoryview], offset: int, total: int, *,
                   write: bool) -> None:
        done = (os.pwritev(self.fd, buffers, offset) if write
                else os.preadv(self.fd, buffers, offset))
        # a read may end short at the end of the file: the rest of the bounce stays zeros
        if done < total and (write or offset + done < self.size):
            self._finish(buffers, offset, done, total, write=write)

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
        if self.hole_punching:
            if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                          offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, f"fallocate(PUNCH_HOLE) on {self.path}: {os.strerror(err)}")
            self.hole_punching = False
        end = offset + length
        while offset < end:
            chunk = min(len(_ZEROS), end - offset)
            self.write_from([memoryview(_ZEROS)[:chunk]], offset)
            offset += chunk


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


_ffi = FFI()


def _address(view: memoryview) -> int:
    """Where `view`'s first byte is in memory (read-only views too)."""
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer(view)))


__all__ = ("IOV_MAX", "Image")
