"""Writing initramfs archives (the "newc" cpio format the Linux kernel unpacks at boot).

Why our own writer: the harness builds three kinds of initramfs (dom0's stage 1, a domU's base
image, and a small per-domU job archive built inside dom0), and doing that in Python keeps the
output deterministic, needs no `cpio` binary, and lets the layout be tested without booting.

The kernel accepts several archives concatenated (each optionally gzip-compressed); a later
entry for the same path replaces an earlier one.  Parent directories must precede their
children, so `CpioWriter` adds missing parents itself.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .._errors import ConfigError

__all__ = ("CpioWriter", "Sink", "gzip_cpio", "read_entries")


_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _normalise(path: str) -> str:
    """Archive names are relative ("usr/bin/x"); accept "/usr/bin/x" too."""
    clean = os.path.normpath("/" + path).lstrip("/")
    if not clean or clean == ".":
        raise ConfigError(f"initramfs entry name {path!r} names the archive root")
    return clean


class Sink(Protocol):
    """Where archive bytes go: an open binary file, a GzipFile, a BytesIO."""

    def write(self, data: bytes, /) -> object:
        """Write all of `data`."""


class CpioWriter:
    """Append entries to a newc cpio stream; `close()` writes the trailer.

    Entry names are paths inside the booted root.  Each entry gets a fresh inode number, so no
    two entries are ever taken for hard links by the kernel's unpacker.
    """

    def __init__(self, out: Sink) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = set()
        self._names: set[str] = set()
        self._closed = False

    @property
    def names(self) -> frozenset[str]:
        """Every entry name written so far (directories included)."""
        return frozenset(self._names)

    def _header(self, name: str, mode: int, size: int, mtime: int, nlink: int) -> None:
        if self._closed:
            raise ConfigError("cpio archive already closed")
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(encoded), 0)
        self._ino += 1
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + _pad4(len(header) + len(encoded)))
        self._names.add(name)

    def _parents(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent and parent not in self._dirs:
            self.add_dir(parent)

    def add_dir(self, path: str, mode: int = 0o755, mtime: int = 0) -> None:
        """Add a directory (and its missing parents); adding it twice is a no-op."""
        name = _normalise(path)
        if name in self._dirs:
            return
        self._parents(name)
        self._header(name, stat.S_IFDIR | (mode & 0o7777), 0, mtime, 2)
        self._dirs.add(name)

    def add_file(self, path: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        """Add a regular file with the given contents."""
        name = _normalise(path)
        self._parents(name)
        self._header(name, stat.S_IFREG | (mode & 0o7777), len(data), mtime, 1)
        self._out.write(data)
        self._out.write(_pad4(len(data)))

    def add_symlink(self, path: str, target: str, mtime: int = 0) -> None:
        """Add a symbolic link `path` -> `target` (target stored verbatim)."""
        name = _normalise(path)
        self._parents(name)
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data), mtime, 1)
        self._out.write(data)
        self._out.write(_pad4(len(data)))

    def add_host_file(self, path: str, host_path: str | Path) -> None:
        """Add a copy of a host file, keeping its permission bits and mtime.

        The mtime matters: Python checks a cached .pyc against its source's mtime, so copied
        stdlib sources keep their caches valid.
        """
        st = os.stat(host_path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{host_path} is not a regular file")
        with open(host_path, "rb") as f:
            data = f.read()
        self.add_file(path, data, stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def close(self) -> None:
        """Write the trailer entry; the archive is complete afterwards."""
        if not self._closed:
            self._header(_TRAILER, 0, 0, 0, 1)
            self._closed = True


@contextmanager
def gzip_cpio(path: Path, level: int = 1) -> Iterator[CpioWriter]:
    """Write a gzip-compressed newc archive to `path` (atomically: temp file, then rename)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                    compresslevel=level, mtime=0) as gz:
            writer = CpioWriter(gz)
            yield writer
            writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_entries(data: bytes) -> list[tuple[str, int, bytes]]:
    """Parse an uncompressed newc archive into (name, mode, data) tuples, trailer excluded.

    For tests and diagnostics; raises ConfigError on a malformed archive.
    """
    entries: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != _MAGIC:
            raise ConfigError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        if name == _TRAILER:
            return entries
        entries.append((name, mode, data[pos:pos + size]))
        pos += size
        pos += -pos % 4
