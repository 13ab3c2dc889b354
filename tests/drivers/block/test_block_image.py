"""`Image`: the raw file behind the block backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ringkit.backends.block.image import Image

from ringkit import ConfigError


def test_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        Image(tmp_path / "missing.img")
    with pytest.raises(ConfigError, match="Is a directory"):
        Image(tmp_path)
    with pytest.raises(ConfigError, match="neither a regular file"):
        Image(tmp_path, readonly=True)
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(1000))
    with pytest.raises(ConfigError, match="not a multiple of 512"):
        Image(odd)


def test_read_write_discard_flush(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xff" * 65536)
    with Image(path) as image:
        assert (image.sectors, image.size, image.readonly) == (128, 65536, False)
        a, b = bytearray(b"A" * 512), bytearray(b"B" * 4096)
        image.write_from([memoryview(a), memoryview(b)], 1024)
        image.flush()
        out = [memoryview(bytearray(512)), memoryview(bytearray(4096))]
        image.read_into(out, 1024)
        assert bytes(out[0]) == bytes(a) and bytes(out[1]) == bytes(b)
        image.discard(8192, 16384)
        image.discard(0, 0)
    data = path.read_bytes()
    assert len(data) == 65536  # discard keeps the size
    assert data[8192:8192 + 16384] == bytes(16384)
    assert data[1024:1536] == b"A" * 512 and data[-1] == 0xFF


def test_read_past_the_end_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4096))
    with Image(path) as image, pytest.raises(OSError):
        image.read_into([memoryview(bytearray(1024))], 3584)


def test_read_only_image_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4096))
    os.chmod(path, 0o444)
    with Image(path, readonly=True) as image:
        assert image.readonly
        with pytest.raises(OSError):
            image.write_from([memoryview(b"x" * 512)], 0)


def test_more_buffers_than_iov_max(tmp_path: Path) -> None:
    # preadv/pwritev refuse more than IOV_MAX buffers (EINVAL); Image splits the list
    count = os.sysconf("SC_IOV_MAX") * 2 + 3
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(512 * (count + 1)))
    data = [memoryview(bytes([i % 251]) * 512) for i in range(count)]
    with Image(path) as image:
        image.write_from(data, 512)
        out = [memoryview(bytearray(512)) for _ in range(count)]
        image.read_into(out, 512)
    assert [bytes(b) for b in out] == [bytes(b) for b in data]
    assert path.read_bytes()[512:] == b"".join(data)
