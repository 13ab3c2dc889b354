"""Page mappings that hold no file descriptor (`ringkit._pagemap`), on any Linux: a memfd
stands in for gntdev/gntalloc.  Under real Xen, test_xen_loopback.py maps real grants the same
way; the simulator's multi-piece mappings are covered by its own tests.
"""

from __future__ import annotations

import errno
import gc
import mmap
import os
from collections.abc import Iterator

import pytest

from ringkit import _pagemap
from ringkit._pagemap import PageMap, Piece

PAGE = 4096
PAGES = 64
MANY = 2048


@pytest.fixture
def device_fd() -> Iterator[int]:
    fd = os.memfd_create("fake-gntdev")
    os.ftruncate(fd, PAGES * PAGE)
    yield fd
    os.close(fd)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Descriptor counts must not move by themselves: garbage left by earlier tests, collected
    mid-test, would close its files under the count."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mapped_at(addr: int) -> bool:
    with open("/proc/self/maps") as maps:
        return any(int(line.split("-", 1)[0], 16) == addr for line in maps)


def test_mappings_hold_no_descriptor_and_see_the_device(device_fd: int, no_gc: None) -> None:
    before = _open_fds()
    # more mappings than the usual soft limit of 1024 descriptors: none of them may need one
    maps = [_pagemap.map_pieces([Piece(device_fd, (i % PAGES) * PAGE, PAGE)], writable=True)
            for i in range(MANY)]
    try:
        assert _open_fds() <= before
        maps[3][:5] = b"hello"                        # through one mapping ...
        assert os.pread(device_fd, 5, 3 * PAGE) == b"hello"           # ... into the device
        assert maps[3 + PAGES][:5] == b"hello"        # ... and out of another of that page
        os.pwrite(device_fd, b"back", 7 * PAGE + 100)
        assert maps[7][100:104] == b"back"
    finally:
        for m in maps:
            m.close()
    assert _open_fds() <= before


def test_the_mapping_outlives_the_descriptor() -> None:
    fd = os.memfd_create("fake-gntdev")
    os.ftruncate(fd, PAGE)
    m = _pagemap.map_pieces([Piece(fd, 0, PAGE)], writable=True)
    os.pwrite(fd, b"still there", 0)
    os.close(fd)
    try:
        assert m[:11] == b"still there"
        m[0:5] = b"STILL"
        assert m[:11] == b"STILL there"
    finally:
        m.close()


def test_read_only_mapping_has_a_read_only_buffer(device_fd: int) -> None:
    os.pwrite(device_fd, b"ro", PAGE)
    m = _pagemap.map_pieces([Piece(device_fd, PAGE, PAGE)], writable=False)
    try:
        view = memoryview(m)
        assert view.readonly and view[:2] == b"ro"
        with pytest.raises(TypeError):
            view[0] = 1
        view.release()
    finally:
        m.close()


def test_views_keep_python_s_export_tracking(device_fd: int) -> None:
    m = _pagemap.map_pieces([Piece(device_fd, 0, PAGE)], writable=True)
    view = memoryview(m)[:16]
    with pytest.raises(BufferError):
        m.close()                     # Python refuses to unmap under a live view
    view.release()
    m.close()
    assert m.closed


def _unstrand_last() -> int:
    """Take back the reservation a test stranded (the test knows the range is its own) and free
    it; return its address."""
    reservation = _pagemap._STRANDED.pop()
    addr = _pagemap.address_of(reservation)
    reservation.close()
    return addr


def _fill(addr: int, length: int, *, prot: int = _pagemap.PROT_NONE,
          flags: int = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, fd: int = -1) -> None:
    assert _pagemap._mmap(addr, length, prot, flags | _pagemap.MAP_FIXED_NOREPLACE, fd, 0) == addr


def test_a_refusal_before_the_range_was_touched_keeps_the_reservation(device_fd: int) -> None:
    """Linux refuses a writable shared map of a read-only file before touching the range: the
    reservation is still there, but nothing proves it is ours, so it is kept, never closed."""
    read_only = os.open(f"/proc/self/fd/{device_fd}", os.O_RDONLY)
    before = _pagemap.stranded()
    try:
        with pytest.raises(OSError) as info:
            _pagemap.map_pieces([Piece(read_only, 0, PAGE)], writable=True)
        assert info.value.errno == errno.EACCES   # the kernel's own error, unchanged
    finally:
        os.close(read_only)
    assert _pagemap.stranded() == before + 1
    assert not _pagemap._STRANDED[-1].closed
    assert not _mapped_at(_unstrand_last())


def test_a_refusal_that_left_a_hole_fills_it_and_frees_it() -> None:
    """What a driver's refusal (gntdev's mmap handler) leaves: the reservation unmapped."""
    reservation = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    addr = _pagemap.address_of(reservation)
    _pagemap._munmap(addr, 2 * PAGE)
    before = _pagemap.stranded()
    _pagemap._abandon(reservation, addr, 2 * PAGE, addr, 2 * PAGE)
    assert reservation.closed and _pagemap.stranded() == before
    assert not _mapped_at(addr)


@pytest.mark.parametrize("intruder", ["anonymous, the reservation's protection", "a file"])
def test_a_hole_taken_meanwhile_is_not_unmapped(device_fd: int, intruder: str) -> None:
    """Another thread maps into the hole a refused piece left (here: the second of three):
    that mapping survives, the pieces around it are unmapped, the reservation is kept."""
    reservation = mmap.mmap(-1, 3 * PAGE, flags=mmap.MAP_PRIVATE,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = _pagemap.address_of(reservation)
    hole = base + PAGE
    _pagemap._munmap(hole, PAGE)
    if intruder.startswith("anonymous"):
        _fill(hole, PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    else:
        _fill(hole, PAGE, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED, fd=device_fd)
    before = _pagemap.stranded()
    _pagemap._abandon(reservation, base, 3 * PAGE, hole, PAGE)
    assert _pagemap.stranded() == before + 1 and not reservation.closed
    assert _mapped_at(hole)                       # the other thread's mapping is still there
    assert not _mapped_at(base) and not _mapped_at(hole + PAGE)
    # clean up as the other thread would, then let the reservation free its range
    _pagemap._munmap(hole, PAGE)
    _fill(base, 3 * PAGE)
    assert _unstrand_last() == base
    assert not _mapped_at(base)


def test_pieces_of_several_files_are_one_buffer(device_fd: int, no_gc: None) -> None:
    other = os.memfd_create("other")
    os.ftruncate(other, PAGE)
    os.pwrite(device_fd, b"first", 5 * PAGE)
    os.pwrite(other, b"second", 0)
    before = _open_fds()
    pages = PageMap([Piece(device_fd, 5 * PAGE, PAGE), Piece(other, 0, PAGE)], writable=False)
    os.close(other)
    try:
        assert _open_fds() <= before - 1 and pages.length == 2 * PAGE
        assert pages.view.readonly
        assert pages.view[:5] == b"first" and pages.view[PAGE:PAGE + 6] == b"second"
    finally:
        pages.close()


def test_a_refused_later_piece_undoes_the_earlier_ones(device_fd: int) -> None:
    read_only = os.open(f"/proc/self/fd/{device_fd}", os.O_RDONLY)
    stranded = _pagemap.stranded()
    with open("/proc/self/maps") as maps:
        before = maps.read().count("memfd:fake-gntdev")
    try:
        with pytest.raises(OSError) as info:
            PageMap([Piece(device_fd, 0, PAGE), Piece(read_only, PAGE, PAGE)], writable=True)
        assert info.value.errno == errno.EACCES
    finally:
        os.close(read_only)
    assert _pagemap.stranded() == stranded + 1    # refused up front: kept, see above
    with open("/proc/self/maps") as maps:         # the first piece is unmapped again
        assert maps.read().count("memfd:fake-gntdev") == before
    _unstrand_last()


def test_a_slice_held_past_close_keeps_the_pages_mapped(device_fd: int) -> None:
    pages = PageMap([Piece(device_fd, 0, PAGE)], writable=True)
    kept = pages.view[10:20]
    pages.close()                                 # no error, and no dangling slice
    kept[:4] = b"late"
    assert os.pread(device_fd, 4, 10) == b"late"
    kept.release()


def test_nothing_to_map_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to map"):
        _pagemap.map_pieces([], writable=True)


def test_a_raw_export_held_past_close_unmaps_when_released(device_fd: int) -> None:
    """cffi's from_buffer exports the view itself (not a slice): the range stays mapped while it
    is held and goes as soon as it is released, although the PageMap object lives on."""
    pages = PageMap([Piece(device_fd, 3 * PAGE, PAGE)], writable=True)
    addr = pages.address
    assert addr != 0
    raw = _pagemap._ffi.from_buffer(pages.view)
    pages.close()
    assert pages.address == 0
    raw[0:4] = b"held"                           # still mapped, still the device's page
    assert os.pread(device_fd, 4, 3 * PAGE) == b"held" and _mapped_at(addr)
    _pagemap._ffi.release(raw)
    assert not _mapped_at(addr)
    assert len(pages.view) == 0
