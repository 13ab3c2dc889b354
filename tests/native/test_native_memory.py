"""Semantics and bounds of `ringkit._native` Memory, run on every available implementation."""

from __future__ import annotations

import ctypes.util
import mmap
import shutil
import struct
from collections.abc import Iterator

import pytest

import ringkit._native as native
from ringkit import ConfigError
from ringkit._native import Memory, NativeImpl

IMPLS = ("compiled", "abi")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> NativeImpl:
    name = str(request.param)
    found = native.implementations()
    if name not in found:
        pytest.skip(f"{name} implementation unavailable: {native.unavailable()[name]}")
    return found[name]


@pytest.fixture
def shm(impl: NativeImpl) -> Iterator[tuple[mmap.mmap, Memory]]:
    m = mmap.mmap(-1, 2 * mmap.PAGESIZE)
    mem = impl.attach(m)
    yield m, mem
    mem.release()
    m.close()


def test_both_implementations_are_available_here() -> None:
    # This machine has gcc and libatomic: a silent fallback would hide a broken build.
    if shutil.which("gcc"):
        assert "compiled" in native.implementations(), native.unavailable()
    if ctypes.util.find_library("atomic"):
        assert "abi" in native.implementations(), native.unavailable()
    assert native.IMPLEMENTATION in native.implementations()


def test_fences_run(impl: NativeImpl) -> None:
    impl.full_fence()
    impl.read_fence()
    impl.write_fence()


def test_load_store_are_native_endian_words(shm: tuple[mmap.mmap, Memory]) -> None:
    m, mem = shm
    mem.store32(0, 0x01020304)
    mem.store32(4096 + 12, 0xFFFFFFFF)
    assert m[0:4] == struct.pack("=I", 0x01020304)
    assert mem.load32(0) == 0x01020304
    assert mem.load32(4096 + 12) == 0xFFFFFFFF
    struct.pack_into("=I", m, 8188, 0xDEADBEEF)
    assert mem.load32(8188) == 0xDEADBEEF
    with pytest.raises(OverflowError):
        mem.store32(0, 1 << 32)
    with pytest.raises(OverflowError):
        mem.store32(0, -1)


def test_byte_atomics_return_the_old_byte(shm: tuple[mmap.mmap, Memory]) -> None:
    m, mem = shm
    m[5] = 0x10
    assert mem.fetch_or8(5, 0x03) == 0x10
    assert m[5] == 0x13
    assert mem.fetch_and8(5, 0xFE) == 0x13
    assert m[5] == 0x12
    assert mem.fetch_and8(5, 0x00) == 0x12
    assert m[5] == 0
    assert m[4] == 0 and m[6] == 0
    with pytest.raises(OverflowError):
        mem.fetch_or8(5, 256)


def test_copies(shm: tuple[mmap.mmap, Memory]) -> None:
    m, mem = shm
    payload = bytes(range(200))
    mem.copy_in(4090, payload)  # straddles the page boundary
    assert m[4090:4290] == payload
    dst = bytearray(210)
    mem.copy_out(4090, dst, 10)
    assert dst[10:] == payload and dst[:10] == bytes(10)
    view = memoryview(bytearray(50))
    mem.copy_out(4100, view, 0, 20)
    assert view[:20] == payload[10:30] and view[20:] == bytes(30)
    mem.copy_in(0, memoryview(b"abc"))
    assert mem.read(0, 3) == b"abc"
    assert mem.read(4090, 200) == payload
    mem.zero(4095, 100)
    assert m[4090:4095] == payload[:5] and m[4095:4195] == bytes(100)
    assert m[4195:4290] == payload[105:]


def test_copies_accept_every_writable_buffer_kind(impl: NativeImpl) -> None:
    for buffer in (bytearray(64), memoryview(bytearray(64))):
        with impl.attach(buffer) as mem:
            mem.store32(60, 7)
            mem.copy_in(1, b"xy")
            assert mem.read(0, 4) == b"\0xy\0"
            assert mem.load32(60) == 7


def test_views_share_memory_not_copies(impl: NativeImpl) -> None:
    data = bytearray(16)
    with impl.attach(memoryview(data)[4:12]) as mem:
        assert mem.size == len(mem) == 8
        mem.store32(4, 0xAABBCCDD)
        assert data[8:12] == struct.pack("=I", 0xAABBCCDD)


@pytest.mark.parametrize("offset", [-4, -1, 8189, 8192, 1 << 40])
def test_word_bounds(shm: tuple[mmap.mmap, Memory], offset: int) -> None:
    _, mem = shm
    with pytest.raises((IndexError, ConfigError)):
        mem.load32(offset)
    with pytest.raises((IndexError, ConfigError)):
        mem.store32(offset, 1)


def test_word_bounds_are_indexerrors_when_aligned(shm: tuple[mmap.mmap, Memory]) -> None:
    _, mem = shm
    for offset in (-4, 8192, 1 << 40):
        with pytest.raises(IndexError, match=str(offset)):
            mem.load32(offset)
    assert mem.load32(8188) == 0


@pytest.mark.parametrize("offset", [1, 2, 3, 4095])
def test_misaligned_words_are_refused(shm: tuple[mmap.mmap, Memory], offset: int) -> None:
    _, mem = shm
    with pytest.raises(ConfigError, match="aligned"):
        mem.load32(offset)
    with pytest.raises(ConfigError, match="aligned"):
        mem.store32(offset, 0)


def test_misaligned_buffer_refuses_word_access_but_not_bytes(impl: NativeImpl) -> None:
    backing = mmap.mmap(-1, 4096)
    with memoryview(backing) as whole, impl.attach(whole[1:]) as mem:
        with pytest.raises(ConfigError, match="aligned"):
            mem.load32(3)
        assert mem.fetch_or8(0, 1) == 0
        assert backing[1] == 1
    backing.close()


def test_byte_and_range_bounds(shm: tuple[mmap.mmap, Memory]) -> None:
    _, mem = shm
    for bad in (-1, 8192):
        with pytest.raises(IndexError):
            mem.fetch_or8(bad, 1)
        with pytest.raises(IndexError):
            mem.fetch_and8(bad, 1)
    with pytest.raises(IndexError):
        mem.copy_in(8190, b"abc")
    with pytest.raises(IndexError):
        mem.copy_out(8190, bytearray(3))
    with pytest.raises(IndexError):
        mem.copy_out(0, bytearray(3), 2, 2)
    with pytest.raises(IndexError):
        mem.copy_out(0, bytearray(3), -1, 1)
    with pytest.raises(IndexError):
        mem.read(-1, 2)
    with pytest.raises(IndexError):
        mem.zero(8000, 193)
    with pytest.raises(ConfigError, match="negative"):
        mem.zero(0, -1)
    mem.zero(8192, 0)
    assert mem.read(8192, 0) == b""
    mem.copy_in(8190, b"ab")


def test_read_only_buffers_refuse_every_store(impl: NativeImpl) -> None:
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    mem = impl.attach(m)
    assert not mem.writable
    assert mem.load32(0) == 0
    assert mem.read(0, 8) == bytes(8)
    with pytest.raises(ConfigError, match="read-only"):
        mem.store32(0, 1)
    with pytest.raises(ConfigError, match="read-only"):
        mem.fetch_or8(0, 1)
    with pytest.raises(ConfigError, match="read-only"):
        mem.fetch_and8(0, 1)
    with pytest.raises(ConfigError, match="read-only"):
        mem.copy_in(0, b"x")
    with pytest.raises(ConfigError, match="read-only"):
        mem.zero(0, 1)
    mem.release()
    m.close()
    with impl.attach(b"\1\0\0\0") as ro:
        assert ro.load32(0) == 1
        with pytest.raises(ConfigError, match="read-only"):
            ro.store32(0, 2)


def test_release_lets_the_mmap_close(impl: NativeImpl) -> None:
    m = mmap.mmap(-1, 4096)
    mem = impl.attach(m)
    with pytest.raises(BufferError):
        m.close()
    mem.release()
    mem.release()  # idempotent
    m.close()
    for call in (lambda: mem.load32(0), lambda: mem.store32(0, 1),
                 lambda: mem.fetch_or8(0, 1), lambda: mem.read(0, 0),
                 lambda: mem.copy_out(0, bytearray(0)), lambda: mem.zero(0, 0)):
        with pytest.raises(ConfigError, match="release"):
            call()


def test_context_manager_releases(impl: NativeImpl) -> None:
    m = mmap.mmap(-1, 4096)
    with impl.attach(memoryview(m)) as mem:
        mem.store32(0, 1)
    m.close()
    assert "released" in repr(mem)


def test_attach_refuses_non_buffers(impl: NativeImpl) -> None:
    with pytest.raises(ConfigError, match="buffer"):
        impl.attach("text")  # type: ignore[arg-type]
