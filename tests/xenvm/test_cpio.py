"""The initramfs writer produces archives the kernel (and GNU cpio) unpack as intended."""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ringkit import ConfigError
from ringkit.xenvm.cpio import CpioWriter, gzip_cpio, read_entries


def _archive(build: object) -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    build(w)  # type: ignore[operator]
    w.close()
    return buf.getvalue()


def test_round_trip_with_parents_added_first() -> None:
    def build(w: CpioWriter) -> None:
        w.add_file("/usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o755, mtime=1234)
        w.add_symlink("bin", "usr/bin")
        w.add_dir("usr/bin")          # already there: no second entry
    entries = read_entries(_archive(build))
    names = [n for n, _, _ in entries]
    assert names == ["usr", "usr/bin", "usr/bin/tool", "bin"]
    modes = {n: m for n, m, _ in entries}
    assert stat.S_ISDIR(modes["usr"]) and stat.S_IMODE(modes["usr/bin/tool"]) == 0o755
    assert stat.S_ISLNK(modes["bin"])
    data = {n: d for n, _, d in entries}
    assert data["usr/bin/tool"] == b"#!/bin/sh\necho hi\n" and data["bin"] == b"usr/bin"


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 4097])
def test_every_entry_starts_4_byte_aligned(size: int) -> None:
    raw = _archive(lambda w: (w.add_file("a" * (size % 7 + 1), b"x" * size),
                              w.add_file("b", b"y")))
    assert len(raw) % 4 == 0
    entries = read_entries(raw)
    assert [len(d) for _, _, d in entries] == [size, 1]


def test_bad_names_and_use_after_close_are_refused() -> None:
    w = CpioWriter(io.BytesIO())
    with pytest.raises(ConfigError):
        w.add_file("/", b"")
    w.close()
    with pytest.raises(ConfigError):
        w.add_file("x", b"")


def test_host_file_keeps_mode_and_mtime(tmp_path: Path) -> None:
    src = tmp_path / "prog"
    src.write_bytes(b"\x7fELF...")
    src.chmod(0o750)
    raw = _archive(lambda w: w.add_host_file("opt/prog", src))
    (_name, mode, data), = [e for e in read_entries(raw) if e[0] == "opt/prog"]
    assert stat.S_IMODE(mode) == 0o750 and data == b"\x7fELF..."
    header_mtime = int(raw[raw.index(b"opt/prog") - 110 + 6 + 5 * 8:][:8], 16)
    assert header_mtime == int(src.stat().st_mtime)


def test_gzip_cpio_is_atomic_and_compressed(tmp_path: Path) -> None:
    out = tmp_path / "img.cpio.gz"
    with pytest.raises(RuntimeError), gzip_cpio(out) as w:
        w.add_file("init", b"x")
        raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with gzip_cpio(out) as w:
        w.add_file("init", b"#!/bin/sh\n", 0o755)
    assert read_entries(gzip.decompress(out.read_bytes()))[0][0] == "init"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_gnu_cpio_extracts_it(tmp_path: Path) -> None:
    raw = _archive(lambda w: (w.add_file("d/e/f.txt", b"payload", 0o640),
                              w.add_symlink("d/link", "e/f.txt")))
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=raw, cwd=dest, check=True)
    assert (dest / "d/e/f.txt").read_bytes() == b"payload"
    assert (dest / "d/link").is_symlink() and (dest / "d/link").read_bytes() == b"payload"
