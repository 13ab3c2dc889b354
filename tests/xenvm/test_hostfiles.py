"""Mirroring host files into an initramfs: symlinked directories, link chains, ldd output."""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path

import pytest

from ringkit import ConfigError
from ringkit.xenvm.cpio import CpioWriter, read_entries
from ringkit.xenvm.hostfiles import Mirror, is_static_elf, parse_ldd


def _elf(path: Path, interp: bool) -> None:
    phoff, phentsize = 64, 56
    types = [1, 3] if interp else [1, 1]
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, phentsize, len(types))
    table = b"".join(struct.pack("<I", t) + b"\0" * (phentsize - 4) for t in types)
    path.write_bytes(bytes(header) + table)


def test_static_elf_detection(tmp_path: Path) -> None:
    _elf(tmp_path / "static", interp=False)
    _elf(tmp_path / "dynamic", interp=True)
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert is_static_elf(str(tmp_path / "static"))
    assert not is_static_elf(str(tmp_path / "dynamic"))
    assert not is_static_elf(str(tmp_path / "script"))


LDD = """\
\tlinux-vdso.so.1 (0x00007ffd2b9f1000)
\tlibpython3.11.so.1.0 => /opt/py/lib/libpython3.11.so.1.0 (0x00007f1b2c000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1b2be1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1b2c6a0000)
"""


def test_parse_ldd() -> None:
    assert parse_ldd(LDD) == ["/opt/py/lib/libpython3.11.so.1.0",
                              "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    with pytest.raises(ConfigError, match="libtk"):
        parse_ldd("\tlibtk8.6.so => not found\n")


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A merged-/usr host: /lib -> usr/lib, a library behind a version symlink, a venv."""
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"libc")
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1.2").write_bytes(b"libz")
    (root / "usr/lib/x86_64-linux-gnu/libz.so.1").symlink_to("libz.so.1.2")
    venv = root / "proj/.venv"
    (venv / "bin").mkdir(parents=True)
    (root / "opt/py/bin").mkdir(parents=True)
    (root / "opt/py/bin/python3.11").write_bytes(b"python")
    (root / "opt/py/bin/python3.11").chmod(0o755)
    (venv / "bin/python").symlink_to("/opt/py/bin/python3.11")
    (root / "proj/pkg/__pycache__").mkdir(parents=True)
    (root / "proj/pkg/mod.py").write_text("x = 1\n")
    (root / "proj/pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"pyc")
    os.mkfifo(root / "proj/pkg/fifo")
    return root


def _mirror(root: Path, *paths: str, tree: str | None = None) -> dict[str, tuple[int, bytes]]:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    m = Mirror(w, str(root))
    for p in paths:
        m.add(p)
    if tree:
        m.add_tree(tree, lambda p: p.endswith("__pycache__"))
    w.close()
    return {n: (mode, data) for n, mode, data in read_entries(buf.getvalue())}


def test_file_below_symlinked_dir_is_stored_under_the_real_dir(fake_root: Path) -> None:
    entries = _mirror(fake_root, "/lib/x86_64-linux-gnu/libz.so.1")
    assert stat.S_ISLNK(entries["lib"][0]) and entries["lib"][1] == b"usr/lib"
    assert entries["usr/lib/x86_64-linux-gnu/libz.so.1"][1] == b"libz.so.1.2"
    assert entries["usr/lib/x86_64-linux-gnu/libz.so.1.2"][1] == b"libz"
    assert not any(n.startswith("lib/") for n in entries)


def test_absolute_link_target_is_copied_too(fake_root: Path) -> None:
    entries = _mirror(fake_root, "/proj/.venv/bin/python")
    assert entries["proj/.venv/bin/python"][1] == b"/opt/py/bin/python3.11"
    mode, data = entries["opt/py/bin/python3.11"]
    assert data == b"python" and stat.S_IMODE(mode) == 0o755


def test_tree_skips_and_ignores_special_files(fake_root: Path) -> None:
    entries = _mirror(fake_root, tree="/proj/pkg")
    assert "proj/pkg/mod.py" in entries
    assert not any("__pycache__" in n for n in entries)
    assert "proj/pkg/fifo" not in entries


def test_missing_path_is_named(fake_root: Path) -> None:
    with pytest.raises(ConfigError, match="/nope"):
        _mirror(fake_root, "/nope")
