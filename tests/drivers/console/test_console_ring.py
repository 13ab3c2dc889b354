"""The console page engine (io/console.h xencons_interface), on a bytearray."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkit import RemoteProtocolError
from ringkit.proto.console import ConsoleRing, ConsoleSide
from ringkit.proto.layout import (
    CONSOLE_CONNECTION,
    CONSOLE_IN_CONS,
    CONSOLE_IN_PROD,
    CONSOLE_OUT,
    CONSOLE_OUT_CONS,
    CONSOLE_OUT_PROD,
)


def pair(page: bytearray | None = None) -> tuple[ConsoleRing, ConsoleRing, bytearray]:
    page = page if page is not None else bytearray(4096)
    return ConsoleRing(page, ConsoleSide.FRONTEND), ConsoleRing(page, ConsoleSide.BACKEND), page


def test_guest_output_lands_in_out_ring_at_its_offsets() -> None:
    guest, back, page = pair()
    assert guest.write(b"hello") == (5, True)
    assert page[CONSOLE_OUT : CONSOLE_OUT + 5] == b"hello"
    assert struct.unpack_from("<I", page, CONSOLE_OUT_PROD)[0] == 5
    assert back.read(100) == (b"hello", True)
    assert struct.unpack_from("<I", page, CONSOLE_OUT_CONS)[0] == 5


def test_backend_input_goes_through_in_ring() -> None:
    guest, back, page = pair()
    assert back.write(b"ls\n")[0] == 3
    assert page[0:3] == b"ls\n"
    assert struct.unpack_from("<I", page, CONSOLE_IN_PROD)[0] == 3
    assert guest.read(2) == (b"ls", True)
    assert guest.read(10) == (b"\n", True)
    assert guest.read(10) == (b"", False)
    assert struct.unpack_from("<I", page, CONSOLE_IN_CONS)[0] == 3


def test_full_rings_take_only_what_fits() -> None:
    guest, back, _ = pair()
    assert guest.tx_size == 2048 and back.tx_size == 1024
    assert guest.write(b"x" * 5000)[0] == 2048
    assert guest.write(b"y") == (0, False)
    assert back.write(b"z" * 5000)[0] == 1024
    assert len(back.read(10_000)[0]) == 2048
    assert guest.writable() == 2048


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(min_value=2**32 - 3000, max_value=2**32 - 1),
    chunks=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=20),
)
def test_wraparound_of_ring_and_index_keeps_bytes_in_order(start: int, chunks: list[int]) -> None:
    page = bytearray(4096)
    for off in (CONSOLE_IN_CONS, CONSOLE_IN_PROD, CONSOLE_OUT_CONS, CONSOLE_OUT_PROD):
        struct.pack_into("<I", page, off, start)
    guest, back, _ = pair(page)
    sent, got = bytearray(), bytearray()
    counter = 0
    for size in chunks:
        data = bytes((counter + i) % 251 for i in range(size))
        counter += size
        pending = memoryview(data)
        while pending:
            n, _ = guest.write(pending)
            sent += pending[:n]
            pending = pending[n:]
            got += back.read(size // 2 + 1)[0]
    got += back.read(10_000)[0]
    assert got == sent
    assert struct.unpack_from("<I", page, CONSOLE_OUT_PROD)[0] == (start + len(sent)) % 2**32


def test_hostile_producer_poisons_the_reader() -> None:
    _guest, back, page = pair()
    struct.pack_into("<I", page, CONSOLE_OUT_PROD, 4000)  # more than the 2048-byte ring
    with pytest.raises(RemoteProtocolError, match="console out: prod=4000"):
        back.read(10)
    struct.pack_into("<I", page, CONSOLE_OUT_PROD, 0)
    with pytest.raises(RemoteProtocolError):  # stays poisoned
        back.read(10)


def test_hostile_consumer_poisons_the_writer() -> None:
    guest, _back, page = pair()
    guest.write(b"abc")
    struct.pack_into("<I", page, CONSOLE_OUT_CONS, 10)  # consumed bytes never written
    with pytest.raises(RemoteProtocolError, match="console out: cons=10"):
        guest.write(b"d")
    _guest2, back2, page2 = pair()
    struct.pack_into("<I", page2, CONSOLE_IN_CONS, 2**32 - 5000)  # far behind the producer
    with pytest.raises(RemoteProtocolError, match="console in: cons="):
        back2.writable()


def test_our_own_indices_are_never_read_back() -> None:
    guest, _back, page = pair()
    guest.write(b"12")
    struct.pack_into("<I", page, CONSOLE_OUT_PROD, 999)  # the backend scribbles on ours
    guest.write(b"3")
    assert struct.unpack_from("<I", page, CONSOLE_OUT_PROD)[0] == 3


def test_connection_byte_is_the_backends() -> None:
    guest, back, page = pair()
    assert guest.peer_connected()
    back.set_connected(False)
    assert page[CONSOLE_CONNECTION] == 1 and not guest.peer_connected()
    back.set_connected(True)
    assert guest.peer_connected()
    with pytest.raises(ValueError):
        guest.set_connected(True)
