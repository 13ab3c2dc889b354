"""Ring engine API: set-up, whole-slot writes, multi-page rings, reconnect, release, misuse."""

from __future__ import annotations

import mmap

import pytest

from ringkit import ConfigError, LocalProtocolError, _native
from ringkit._native import NativeImpl
from ringkit.proto.layout import SRING_HEADER_SIZE, XEN_PAGE_SIZE, ring_area_size
from ringkit.proto.ring import BackRing, FrontRing, RingLayout

BLKIF = RingLayout("blkif", request_size=112, response_size=16)


@pytest.fixture(params=sorted(_native.implementations()))
def native(request: pytest.FixtureRequest) -> NativeImpl:
    return _native.implementations()[request.param]


def test_init_writes_the_header_like_shared_ring_init(native: NativeImpl) -> None:
    page = bytearray(b"\xaa" * 4096)
    front = FrontRing.init(page, BLKIF, native=native)
    assert front.entries == 32
    header = page[:SRING_HEADER_SIZE]
    assert header[:16] == bytes.fromhex("00000000 01000000 00000000 01000000".replace(" ", ""))
    assert header[16:] == bytes(48)  # pvt and __pad zeroed
    assert page[SRING_HEADER_SIZE:] == b"\xaa" * (4096 - SRING_HEADER_SIZE)  # slots untouched


def test_backend_attach_never_writes(native: NativeImpl) -> None:
    page = bytearray(b"\x55" * 4096)
    before = bytes(page)
    back = BackRing.attach(page, BLKIF, native=native)
    assert back.entries == 32
    back.release()
    assert bytes(page) == before


def test_requests_and_responses_are_written_as_whole_slots(native: NativeImpl) -> None:
    page = bytearray(b"\xee" * 4096)
    front = FrontRing.init(page, BLKIF, native=native)
    back = BackRing.attach(page, BLKIF, native=native)
    front.put_request(b"\x01" * 10)
    slot = page[SRING_HEADER_SIZE : SRING_HEADER_SIZE + 112]
    assert slot == b"\x01" * 10 + bytes(102)
    front.push_requests()
    req = back.take_request()
    assert req == bytearray(b"\x01" * 10 + bytes(102))
    back.put_response(b"\x02" * 3)
    # XSA-216: the response is zero-padded to the end of the slot, nothing stale remains.
    assert page[SRING_HEADER_SIZE : SRING_HEADER_SIZE + 112] == b"\x02" * 3 + bytes(109)
    back.push_responses()
    assert front.take_response() == bytearray(b"\x02" * 3 + bytes(13))


def test_local_misuse_is_refused(native: NativeImpl) -> None:
    page = bytearray(4096)
    front = FrontRing.init(page, BLKIF, native=native)
    back = BackRing.attach(page, BLKIF, native=native)
    with pytest.raises(LocalProtocolError, match="113-byte message exceeds the declared 112"):
        front.put_request(bytes(113))
    with pytest.raises(LocalProtocolError, match="no consumed request"):
        back.put_response(bytes(16))
    with pytest.raises(LocalProtocolError, match="do not fit"):
        front.put_requests_from(bytes(112 * 33), 33)
    with pytest.raises(LocalProtocolError, match="fewer than 2 slots"):
        front.put_requests_from(bytes(112), 2)
    for _ in range(32):
        front.put_request(bytes(112))
    assert front.full and front.free_requests() == 0
    with pytest.raises(LocalProtocolError, match="full"):
        front.put_request(bytes(112))
    front.push_requests()
    assert back.take_request() is not None
    with pytest.raises(LocalProtocolError, match="17-byte message exceeds the declared 16"):
        back.put_response(bytes(17))
    with pytest.raises(LocalProtocolError, match="2 responses but only 1"):
        back.put_responses_from(bytes(224), 2)
    assert front.error is None and back.error is None  # local mistakes do not poison


def test_configuration_errors(native: NativeImpl) -> None:
    with pytest.raises(ConfigError, match="holds no"):
        FrontRing.init(bytearray(100), BLKIF, native=native)
    with pytest.raises(ConfigError, match="does not fit"):
        FrontRing.init(bytearray(4096), BLKIF, size=8192, native=native)
    with pytest.raises(ConfigError, match="writable"):
        BackRing.attach(bytes(4096), BLKIF, native=native)


def test_area_smaller_than_the_buffer(native: NativeImpl) -> None:
    buf = bytearray(3 * 4096)
    front = FrontRing.init(buf, BLKIF, size=4096, native=native)
    assert front.entries == 32


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_multi_page_rings_with_straddling_slots(native: NativeImpl, order: int) -> None:
    """2**order contiguous pages (an mmap, as gntalloc/gntdev give them); with 100-byte slots
    many slots cross a page boundary, and their bytes must arrive intact."""
    layout = RingLayout("odd", request_size=100, response_size=100)
    size = ring_area_size(order)
    area = mmap.mmap(-1, size)
    front = FrontRing.init(area, layout, native=native)
    back = BackRing.attach(area, layout, native=native)
    entries = front.entries
    assert entries == 1 << ((size - 64) // 100).bit_length() - 1
    straddlers = [
        i for i in range(entries)
        if (64 + i * 100) // XEN_PAGE_SIZE != (64 + i * 100 + 99) // XEN_PAGE_SIZE
    ]
    assert len(straddlers) >= (1 if order else 0)
    buf = bytearray(100)
    for lap in range(3):
        for i in range(entries):
            front.put_request(bytes((lap * 7 + i + k) & 0xFF for k in range(100)))
        front.push_requests()
        for i in range(entries):
            assert back.take_request_into(buf)
            assert buf == bytes((lap * 7 + i + k) & 0xFF for k in range(100))
            back.put_response(buf)
        back.push_responses()
        for i in range(entries):
            rsp = front.take_response()
            assert rsp == bytes((lap * 7 + i + k) & 0xFF for k in range(100))
    front.release()
    back.release()
    area.close()  # possible only because both halves released their cffi views


def test_reconnect_resumes_at_the_given_indices(native: NativeImpl) -> None:
    page = bytearray(4096)
    front = FrontRing.init(page, BLKIF, native=native)
    back = BackRing.attach(page, BLKIF, native=native)
    for i in range(40):
        front.put_request(bytes([i]) * 112)
        front.push_requests()
        assert back.take_request() == bytearray(bytes([i]) * 112)
        back.put_response(bytes([i]) * 16)
        back.push_responses()
        assert front.take_response() is not None
    index = front.req_prod_pvt
    assert index == 40 == back.req_cons == back.rsp_prod_pvt == front.rsp_cons
    front.release()
    back.release()
    # Both sides come back (e.g. after a backend restart) at the indices they agreed on.
    front = FrontRing.attach(page, BLKIF, index=index, native=native)
    back = BackRing.attach(page, BLKIF, index=index, native=native)
    assert back.pending_requests() == 0 and front.pending_responses() == 0
    front.put_request(b"z" * 112)
    front.push_requests()
    assert back.take_request() == bytearray(b"z" * 112)


def test_release_makes_the_half_unusable(native: NativeImpl) -> None:
    area = mmap.mmap(-1, 4096)
    with FrontRing.init(area, BLKIF, native=native) as front:
        front.put_request(bytes(112))
    with pytest.raises(ConfigError, match="release"):
        front.push_requests()
    area.close()


def test_default_native_implementation_is_the_chosen_one() -> None:
    page = bytearray(4096)
    front = FrontRing.init(page, BLKIF)
    back = BackRing.attach(page, BLKIF)
    front.put_request(b"d" * 112)
    assert front.push_requests() is True
    assert back.take_request() == bytearray(b"d" * 112)
