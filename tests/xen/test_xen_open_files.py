"""Each real-transport mapping holds a file descriptor (Python's mmap keeps a duplicate): the
first EMFILE raises the soft open-files limit to the hard one and maps again, and running out
for good is a typed error that names the limit.  Runs anywhere: a memfd stands in for gntdev.
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
from collections.abc import Iterator
from typing import Any

import pytest

from ringkit import ResourceLimitError
from ringkit.xen import grants

PAGE = 4096


@pytest.fixture
def device_fd() -> Iterator[int]:
    fd = os.memfd_create("fake-gntdev")
    os.ftruncate(fd, PAGE)
    yield fd
    os.close(fd)


@pytest.fixture
def restore_limit() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def _emfile_first(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the next `failures` mmap calls fail with EMFILE; returns the call log."""
    real = mmap.mmap
    calls: list[int] = []

    def fake(*args: Any, **kwargs: Any) -> mmap.mmap:
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(*args, **kwargs)

    monkeypatch.setattr(grants.mmap, "mmap", fake)
    return calls


def test_emfile_raises_the_soft_limit_and_maps_again(device_fd: int,
                                                     restore_limit: tuple[int, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _soft, hard = restore_limit
    if hard != resource.RLIM_INFINITY and hard < 64:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room to lower the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    calls = _emfile_first(monkeypatch, 1)
    mapping = grants._Mapping(device_fd, 0, PAGE, True, "test mapping")
    try:
        mapping.view[:5] = b"hello"
        assert os.pread(device_fd, 5, 0) == b"hello"      # the same pages, really mapped
        assert len(calls) == 2
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 32
    finally:
        mapping.close()


def test_out_of_descriptors_for_good_is_a_typed_error(device_fd: int,
                                                      restore_limit: tuple[int, int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, hard = restore_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard open-files limit to run into")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # nothing left to raise
    _emfile_first(monkeypatch, 5)
    with pytest.raises(ResourceLimitError, match=r"test mapping: out of file descriptors.*"
                       rf"limit is {hard}.*ulimit -n") as info:
        grants._Mapping(device_fd, 0, PAGE, True, "test mapping")
    assert info.value.errno == errno.EMFILE


def test_a_second_emfile_after_raising_is_the_same_typed_error(
        device_fd: int, restore_limit: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    _soft, hard = restore_limit
    if hard != resource.RLIM_INFINITY and hard < 64:
        pytest.skip(f"the hard open-files limit ({hard}) leaves no room to lower the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))
    calls = _emfile_first(monkeypatch, 2)
    with pytest.raises(ResourceLimitError, match="out of file descriptors"):
        grants._Mapping(device_fd, 0, PAGE, True, "test mapping")
    assert len(calls) == 2


def test_other_mmap_errors_pass_through(device_fd: int) -> None:
    read_only = os.open(f"/proc/self/fd/{device_fd}", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:      # a writable shared map of a read-only fd
            grants._Mapping(read_only, 0, PAGE, True, "x")
        assert info.value.errno == errno.EACCES
    finally:
        os.close(read_only)
