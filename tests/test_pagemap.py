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


def test_a_refusal_before_the_range_was_touched_frees_the_reservation(device_fd: int) -> None:
    read_only = os.open(f"/proc/self/fd/{device_fd}", os.O_RDONLY)
    before = _pagemap.stranded()
    try:
        with pytest.raises(OSError) as info:      # a writable shared map of a read-only fd:
            _pagemap.map_pieces([Piece(read_only, 0, PAGE)], writable=True)    # refused up front
        assert info.value.errno == errno.EACCES
    finally:
        os.close(read_only)
    assert _pagemap.stranded() == before          # recognised as ours and closed


def test_a_refusal_that_left_a_hole_fills_it_and_frees_it(device_fd: int) -> None:
    """What a driver's refusal (gntdev's mmap handler) leaves: the reservation unmapped."""
    libc = _pagemap._libc()
    reservation = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    addr = _pagemap.address_of(reservation)
    assert libc.munmap(_pagemap._ffi.cast("void *", addr), 2 * PAGE) == 0
    before = _pagemap.stranded()
    _pagemap._abandon(reservation, addr, 2 * PAGE, addr, 2 * PAGE, writable=False)
    assert reservation.closed and _pagemap.stranded() == before
    assert not _mapped_at(addr)


def test_reservation_is_recognised_only_as_itself(device_fd: int) -> None:
    anon = mmap.mmap(-1, 3 * PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    shared = mmap.mmap(device_fd, PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        addr = _pagemap.address_of(anon)
        assert _pagemap._reservation_intact(addr, 3 * PAGE, writable=False)
        assert _pagemap._reservation_intact(addr + PAGE, PAGE, writable=False)
        assert not _pagemap._reservation_intact(addr, PAGE, writable=True)    # other perms
        assert not _pagemap._reservation_intact(_pagemap.address_of(shared), PAGE, False)
    finally:
        anon.close()
        shared.close()
    assert not _pagemap._reservation_intact(addr, PAGE, writable=False)        # unmapped


def test_a_hole_taken_meanwhile_is_not_unmapped(device_fd: int) -> None:
    """If another thread maps into the hole a refused MAP_FIXED left, the reservation is kept
    rather than closed: closing it would unmap the other thread's memory."""
    libc = _pagemap._libc()
    ffi = _pagemap._ffi
    reservation = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    addr = _pagemap.address_of(reservation)
    # the refused MAP_FIXED's hole, then somebody else's mapping in it
    assert libc.munmap(ffi.cast("void *", addr), PAGE) == 0
    other = _pagemap._mmap(addr, PAGE, mmap.PROT_READ, mmap.MAP_SHARED
                                  | _pagemap.MAP_FIXED_NOREPLACE, device_fd, 0)
    assert other == addr
    before = _pagemap.stranded()
    _pagemap._abandon(reservation, addr, PAGE, addr, PAGE, writable=False)
    assert _pagemap.stranded() == before + 1 and not reservation.closed
    assert _mapped_at(addr)                       # the other mapping is still there
    # clean up as the other thread would, then give the reservation its range back to free
    assert libc.munmap(ffi.cast("void *", addr), PAGE) == 0
    _pagemap._mmap(addr, PAGE, _pagemap.PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                          | _pagemap.MAP_FIXED_NOREPLACE, -1, 0)
    _pagemap._STRANDED.remove(reservation)
    reservation.close()
    assert not _mapped_at(addr)


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
    assert _pagemap.stranded() == stranded
    with open("/proc/self/maps") as maps:         # the first piece is unmapped again
        assert maps.read().count("memfd:fake-gntdev") == before


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
