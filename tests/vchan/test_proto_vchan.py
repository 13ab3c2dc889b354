"""The sans-I/O vchan (ringkit.proto.vchan) on plain bytearrays: libxenvchan's ring placement,
the control page a server writes and a client checks, the notify-byte handshake, the live bytes,
and a hostile peer (orders, grant lists, indices, notify and live bytes) -- a typed error and a
poisoned end, never a silent stall.  Every check has a negative control: the same operation
on a well-formed page succeeds."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkit import ConfigError, RemoteProtocolError, _native
from ringkit._native import NativeImpl
from ringkit.proto import layout as L
from ringkit.proto.vchan import (
    Live,
    VchanEnd,
    VchanOrders,
    VchanRole,
    check_orders,
    choose_orders,
    read_header,
    write_header,
)

PAGE = 4096


@pytest.fixture(params=sorted(_native.implementations()))
def native(request: pytest.FixtureRequest) -> NativeImpl:
    return _native.implementations()[request.param]


class Pair:
    """A server and a client end over one control page (and separate ring buffers)."""

    def __init__(self, orders: VchanOrders, native: NativeImpl) -> None:
        self.page = bytearray(PAGE)
        self.left = bytearray(1 << orders.left) if orders.left_pages else None
        self.right = bytearray(1 << orders.right) if orders.right_pages else None
        grants = tuple(range(100, 100 + orders.grant_count))
        write_header(self.page, orders, grants, native=native)
        self.header = read_header(self.page, native=native)
        self.server = VchanEnd(self.page, VchanRole.SERVER, orders, left_data=self.left,
                               right_data=self.right, native=native)
        self.client = VchanEnd(self.page, VchanRole.CLIENT, orders, left_data=self.left,
                               right_data=self.right, native=native)
        self.client.connect_client()

    def byte(self, offset: int) -> int:
        return self.page[offset]


# ----------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    ("read_min", "write_min", "expected"),
    [
        (0, 0, (10, 11)),            # vchan-socket-proxy's request: both in the page
        (1024, 2048, (10, 11)),
        (2048, 1024, (11, 10)),
        (2048, 2048, (11, 12)),      # only one may take the 2 KiB slot
        (4096, 0, (12, 11)),
        (0, 65536, (11, 16)),
        (65536, 65536, (16, 16)),
        (65537, 1, (17, 11)),
        (1 << 20, 1 << 20, (20, 20)),
    ],
)
def test_ring_placement_is_libxenvchans(read_min: int, write_min: int,
                                        expected: tuple[int, int]) -> None:
    orders = choose_orders(read_min, write_min)
    assert (orders.left, orders.right) == expected
    check_orders(orders.left, orders.right)  # a libxenvchan client accepts what we choose


@given(st.integers(0, 1 << 20), st.integers(0, 1 << 20))
def test_placement_always_fits_and_is_accepted(read_min: int, write_min: int) -> None:
    orders = choose_orders(read_min, write_min)
    assert 1 << orders.left >= read_min and 1 << orders.right >= write_min
    assert check_orders(orders.left, orders.right) == orders


@pytest.mark.parametrize("size", [-1, (1 << 20) + 1])
def test_sizes_beyond_libxenvchans_are_refused(size: int) -> None:
    with pytest.raises(ConfigError):
        choose_orders(size, 0)


# ----------------------------------------------------------------------------- the page


def test_server_header_bytes(native: NativeImpl) -> None:
    pair = Pair(choose_orders(65536, 1024), native)   # left 16 (16 pages), right 11 in-page
    page = pair.page
    assert struct.unpack_from("=HH", page, L.VCHAN_LEFT_ORDER) == (16, 11)
    assert struct.unpack_from("=16I", page, L.VCHAN_GRANTS) == tuple(range(100, 116))
    assert page[L.VCHAN_SRV_LIVE] == Live.CONNECTED
    # the server asked for the client's first write; the client for the server's
    assert page[L.VCHAN_CLI_NOTIFY] == L.VCHAN_NOTIFY_WRITE
    assert page[L.VCHAN_SRV_NOTIFY] == L.VCHAN_NOTIFY_WRITE
    assert page[L.VCHAN_CLI_LIVE] == Live.CONNECTED
    assert pair.header.left_grants == tuple(range(100, 116)) and pair.header.right_grants == ()


def test_fresh_page_says_the_client_has_not_connected(native: NativeImpl) -> None:
    page = bytearray(PAGE)
    write_header(page, VchanOrders(10, 11), (), native=native)
    assert page[L.VCHAN_CLI_LIVE] == Live.WAITING
    server = VchanEnd(page, VchanRole.SERVER, VchanOrders(10, 11), native=native)
    assert server.peer_live() is Live.WAITING
    page[L.VCHAN_CLI_LIVE] = Live.CONNECTED
    assert server.peer_live() is Live.CONNECTED


@pytest.mark.parametrize(
    ("left", "right", "why"),
    [
        (9, 11, "outside"),
        (10, 21, "outside"),
        (0, 0, "outside"),
        (0xFFFF, 12, "outside"),
        (10, 10, "in-page slot"),
        (11, 11, "in-page slot"),
    ],
)
def test_client_refuses_hostile_orders(native: NativeImpl, left: int, right: int,
                                       why: str) -> None:
    page = bytearray(PAGE)
    write_header(page, VchanOrders(10, 11), (), native=native)
    read_header(page, native=native)          # control: the genuine page parses
    struct.pack_into("=HH", page, L.VCHAN_LEFT_ORDER, left, right)
    with pytest.raises(RemoteProtocolError, match=why):
        read_header(page, native=native)


@pytest.mark.parametrize("srv_live", [0, 2, 3, 0xFF])
def test_client_refuses_a_server_that_is_not_live(native: NativeImpl, srv_live: int) -> None:
    page = bytearray(PAGE)
    write_header(page, VchanOrders(12, 12), (1, 2), native=native)
    page[L.VCHAN_SRV_LIVE] = srv_live
    with pytest.raises(RemoteProtocolError, match="srv_live"):
        read_header(page, native=native)


def test_grant_list_matches_the_orders(native: NativeImpl) -> None:
    page = bytearray(PAGE)
    with pytest.raises(ConfigError):
        write_header(page, VchanOrders(12, 13), (1, 2), native=native)  # needs 1 + 2
    write_header(page, VchanOrders(12, 13), (1, 2, 3), native=native)
    header = read_header(page, native=native)
    assert header.left_grants == (1,) and header.right_grants == (2, 3)


def test_header_is_read_from_one_copy(native: NativeImpl) -> None:
    """Orders and grants come from the same snapshot: changing the page after the read does
    not change what the client maps."""
    page = bytearray(PAGE)
    write_header(page, VchanOrders(12, 12), (7, 8), native=native)
    header = read_header(page, native=native)
    struct.pack_into("=HHII", page, L.VCHAN_LEFT_ORDER, 20, 20, 99, 99)
    assert header.orders == VchanOrders(12, 12) and header.left_grants == (7,)


# ----------------------------------------------------------------------------- data + notify


@pytest.mark.parametrize("sizes", [(0, 0), (2048, 1024), (65536, 4096)])
def test_bytes_cross_both_rings(native: NativeImpl, sizes: tuple[int, int]) -> None:
    pair = Pair(choose_orders(*sizes), native)
    sent = bytes(range(256)) * 1000
    got = bytearray()
    pos = 0
    while len(got) < len(sent):
        count, _ = pair.client.write(memoryview(sent)[pos:])
        pos += count
        data, _ = pair.server.read(1 << 20)
        got += data
    assert bytes(got) == sent
    count, _ = pair.server.write(b"reply")
    assert pair.client.read(100)[0] == b"reply"


def test_notify_only_when_the_peer_asked(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    # the server asked (at setup) to hear of the client's first write: one notify, then none
    assert pair.client.write(b"a") == (1, True)
    assert pair.byte(L.VCHAN_CLI_NOTIFY) & L.VCHAN_NOTIFY_WRITE == 0
    assert pair.client.write(b"b") == (1, False)
    # the server drains, finds the ring empty and asks again: the next write notifies
    assert pair.server.read(10)[0] == b"ab"
    assert pair.server.read(10) == (b"", False)
    assert pair.byte(L.VCHAN_CLI_NOTIFY) & L.VCHAN_NOTIFY_WRITE
    assert pair.client.write(b"c") == (1, True)


def test_full_ring_asks_for_a_read_notification(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    pair.server.read(1)                                # consume the initial request
    count, _ = pair.client.write(b"x" * 5000)
    assert count == 1024                               # the left ring is 1 KiB
    assert pair.byte(L.VCHAN_SRV_NOTIFY) & L.VCHAN_NOTIFY_READ   # "tell me when you read"
    data, notify = pair.server.read(100)
    assert len(data) == 100 and notify                 # so the server's read rings us
    data, notify = pair.server.read(100)
    assert not notify                                  # once


def test_stray_notify_bits_cost_at_most_an_event(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(12, 12), native)
    pair.page[L.VCHAN_SRV_NOTIFY] = 0xFF               # the client scribbles on our byte
    assert pair.server.write(b"hello") == (5, True)
    assert pair.client.read(10)[0] == b"hello"         # nothing lost, nothing broken
    assert pair.server.error is None and pair.client.error is None


def test_packets_are_all_or_nothing(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    assert pair.client.write_all_or_nothing(b"x" * 1000)[0]
    assert pair.client.write_all_or_nothing(b"y" * 100) == (False, False)   # 24 bytes free
    assert pair.server.read_exactly(1001) == (None, False)
    data, _ = pair.server.read_exactly(1000)
    assert data == b"x" * 1000
    with pytest.raises(ConfigError):
        pair.client.write_all_or_nothing(b"z" * 1025)
    with pytest.raises(ConfigError):
        pair.server.read_exactly(1025)


# ----------------------------------------------------------------------------- hostile peer


def test_hostile_producer_index_poisons_the_reader(native: NativeImpl) -> None:
    """libxenvchan would return 0 forever here (a silent hang); we raise and stay broken."""
    pair = Pair(VchanOrders(10, 11), native)
    struct.pack_into("=I", pair.page, L.VCHAN_LEFT_PROD, 5000)   # 5000 bytes in a 1 KiB ring
    with pytest.raises(RemoteProtocolError, match="prod=5000"):
        pair.server.read(100)
    with pytest.raises(RemoteProtocolError, match="unusable"):
        pair.server.write(b"x")            # the whole end is poisoned, not just one ring
    with pytest.raises(RemoteProtocolError):
        pair.server.peer_live()


def test_hostile_consumer_index_poisons_the_writer(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    pair.client.write(b"ok")                                     # control
    struct.pack_into("=I", pair.page, L.VCHAN_RIGHT_CONS, 77)   # consumed what was never sent
    with pytest.raises(RemoteProtocolError, match="cons=77"):
        pair.server.write(b"x")
    assert pair.server.error is not None


@pytest.mark.parametrize("value", [3, 0x80, 0xFF])
def test_unknown_live_byte_is_a_protocol_error(native: NativeImpl, value: int) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    assert pair.server.peer_live() is Live.CONNECTED             # control
    pair.page[L.VCHAN_CLI_LIVE] = value
    with pytest.raises(RemoteProtocolError, match=f"live byte {value}"):
        pair.server.peer_live()
    with pytest.raises(RemoteProtocolError):
        pair.server.read(1)


def test_live_byte_flipping_back_to_waiting(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    assert pair.server.peer_live() is Live.CONNECTED
    pair.page[L.VCHAN_CLI_LIVE] = Live.WAITING
    with pytest.raises(RemoteProtocolError, match="went back"):
        pair.server.peer_live()
    # a server's byte never says "waiting"
    pair2 = Pair(VchanOrders(10, 11), native)
    pair2.page[L.VCHAN_SRV_LIVE] = Live.WAITING
    with pytest.raises(RemoteProtocolError, match="went back"):
        pair2.client.peer_live()


def test_exit_is_latched_and_the_ring_drains_after_it(native: NativeImpl) -> None:
    pair = Pair(VchanOrders(10, 11), native)
    pair.client.write(b"last words")
    pair.client.set_live(Live.EXITED)
    assert pair.server.peer_live() is Live.EXITED
    pair.page[L.VCHAN_CLI_LIVE] = Live.CONNECTED                 # a flip back is ignored
    assert pair.server.peer_live() is Live.EXITED
    assert pair.server.read(100)[0] == b"last words"             # what it wrote is still there
