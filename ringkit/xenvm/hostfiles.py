"""Copying host files into an initramfs at the same absolute paths ("mirroring").

A domU has no view of the host's filesystem, so the harness gives it a sparse copy of exactly
the host paths it needs: the Python interpreter, its shared libraries, the standard library, the
project's virtualenv and the project itself.  Because every file keeps its host path, the
virtualenv's `pyvenv.cfg`, its `bin/python` symlink and the editable install's path mapping all
work unchanged inside the domU.

Symbolic links are kept as links (and their targets copied too), and a file below a symlinked
directory (``/lib -> usr/lib`` on merged-/usr systems) is stored under the real directory with
the link added beside it, because the kernel's initramfs unpacker does not create files through
symlinks reliably.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import subprocess
from collections.abc import Callable, Iterable

from .._errors import ConfigError
from .cpio import CpioWriter

__all__ = ("Mirror", "is_elf", "is_static_elf", "parse_ldd", "shared_libraries")


_PT_INTERP = 3


def is_static_elf(path: str) -> bool:
    """True if `path` is a 64-bit little-endian ELF executable without a program interpreter.

    The initramfs has no dynamic loader of its own, so its busybox must be static.
    """
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff = struct.unpack_from("<Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        if struct.unpack_from("<I", table, i * phentsize)[0] == _PT_INTERP:
            return False
    return True


_LDD_ARROW = re.compile(r"^\s*\S+\s+=>\s+(/\S+)\s+\(0x[0-9a-f]+\)\s*$")
_LDD_PLAIN = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def parse_ldd(text: str) -> list[str]:
    """The absolute library paths in `ldd` output (the vDSO and "not found" lines excluded).

    Raises ConfigError when ldd reports a library it cannot find: the copy would not run.
    """
    libs: list[str] = []
    for line in text.splitlines():
        if "=> not found" in line:
            raise ConfigError(f"a shared library is missing on the host: {line.strip()}")
        m = _LDD_ARROW.match(line) or _LDD_PLAIN.match(line)
        if m and m.group(1) not in libs:
            libs.append(m.group(1))
    return libs


def is_elf(path: str) -> bool:
    """True if the file starts with the ELF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def shared_libraries(paths: Iterable[str],
                     on_missing: Callable[[str, str], None] | None = None) -> list[str]:
    """Every shared library (and the dynamic loader) the ELF files `paths` load, via ldd.

    A file whose libraries are not all on the host raises ConfigError, unless `on_missing` is
    given: then it is called with (path, reason) and that file's libraries are skipped (an
    optional extension module the project never imports should not block the image).
    """
    libs: list[str] = []
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            continue    # "not a dynamic executable": static, nothing to add
        try:
            found = parse_ldd(proc.stdout)
        except ConfigError as exc:
            if on_missing is None:
                raise ConfigError(f"{path}: {exc}") from None
            on_missing(path, str(exc))
            continue
        for lib in found:
            if lib not in libs:
                libs.append(lib)
    return libs


class Mirror:
    """Add host paths to a `CpioWriter` at their own absolute paths.

    `root` is where "/" of the host is (a temporary tree in tests); archive names are the paths
    as seen from inside that root.
    """

    def __init__(self, writer: CpioWriter, root: str = "/") -> None:
        self.writer = writer
        self.root = os.path.abspath(root)
        self._done: set[str] = set()
        self.copied: list[str] = []
        """Host paths (as seen from `root`) of the regular files added, in order."""

    def _host(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def real_dir(self, path: str) -> str:
        """Add directory `path` like the host has it (symlinked parts as links); return the
        symlink-free path under which files for it must be stored."""
        return self._real_dir(os.path.normpath("/" + path.lstrip("/")))

    def _real_dir(self, path: str, depth: int = 0) -> str:
        """Make sure directory `path` exists in the archive; return its symlink-free form."""
        if depth > 40:
            raise ConfigError(f"too many levels of symbolic links at {path}")
        if path == "/":
            return "/"
        parent = self._real_dir(os.path.dirname(path), depth + 1)
        here = os.path.join(parent, os.path.basename(path))
        host = self._host(here)
        if os.path.islink(host):
            target = os.readlink(host)
            if here not in self._done:
                self._done.add(here)
                self.writer.add_symlink(here, target)
            resolved = target if target.startswith("/") else os.path.join(parent, target)
            return self._real_dir(os.path.normpath(resolved), depth + 1)
        if here not in self._done:
            self._done.add(here)
            try:
                st = os.stat(host)
                self.writer.add_dir(here, stat.S_IMODE(st.st_mode), int(st.st_mtime))
            except FileNotFoundError:
                self.writer.add_dir(here)
        return here

    def add(self, path: str, depth: int = 0) -> None:
        """Copy one host path (file, symlink and its target, or an empty directory)."""
        if depth > 40:
            raise ConfigError(f"too many levels of symbolic links at {path}")
        path = os.path.normpath("/" + path.lstrip("/"))
        parent = self._real_dir(os.path.dirname(path))
        here = os.path.join(parent, os.path.basename(path))
        if here in self._done:
            return
        host = self._host(here)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            raise ConfigError(f"host path {path} does not exist") from None
        self._done.add(here)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            self.writer.add_symlink(here, target)
            resolved = target if target.startswith("/") else os.path.join(parent, target)
            self.add(os.path.normpath(resolved), depth + 1)
        elif stat.S_ISDIR(st.st_mode):
            self.writer.add_dir(here, stat.S_IMODE(st.st_mode), int(st.st_mtime))
        elif stat.S_ISREG(st.st_mode):
            self.writer.add_host_file(here, host)
            self.copied.append(here)
        # sockets, fifos and devices are never needed by a domU: skip them

    def add_tree(self, path: str, skip: Callable[[str], bool] = lambda _p: False) -> None:
        """Copy a directory tree; `skip(path)` leaves out a file or a whole subdirectory."""
        top = self._host(path)
        self.add(path)
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.normpath(os.path.join("/", os.path.relpath(dirpath, self.root)))
            kept = []
            for d in sorted(dirnames):
                sub = os.path.join(rel, d)
                if skip(sub):
                    continue
                if os.path.islink(os.path.join(dirpath, d)):
                    self.add(sub)      # a link to a directory: keep the link, copy its target
                    continue
                kept.append(d)
                self.add(sub)
            dirnames[:] = kept
            for name in sorted(filenames):
                sub = os.path.join(rel, name)
                if not skip(sub):
                    self.add(sub)
