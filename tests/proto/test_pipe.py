"""Byte pipes (console page, libxenvchan rings): streams arrive intact across 2**32, hostile
indices raise the typed error and poison the end."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringkit import ConfigError, RemoteProtocolError, _native
from ringkit._native import NativeImpl
from ringkit.proto import layout
from ringkit.proto.pipe import (
    CONSOLE_IN_PIPE,
    CONSOLE_OUT_PIPE,
    PipeConsumer,
    PipeLayout,
    PipeProducer,
    console_backend,
    console_frontend,
    vchan_client,
    vchan_ring,
    vchan_server,
)

U32 = 1 << 32


@pytest.fixture(params=sorted(_native.implementations()))
def native(request: pytest.FixtureRequest) -> NativeImpl:
    return _native.implementations()[request.param]


def set_indices(
    page: bytearray, native: NativeImpl, pipe: PipeLayout, cons: int, prod: int
) -> None:
    mem = native.attach(page)
    mem.store32(pipe.cons_offset, cons % U32)
    mem.store32(pipe.prod_offset, prod % U32)
    mem.release()


def test_console_ends_use_the_console_h_offsets(native: NativeImpl) -> None:
    page = bytearray(4096)
    guest_tx, guest_rx = console_frontend(page, native=native)
    back_tx, back_rx = console_backend(page, native=native)
    assert guest_tx.write(b"to backend") == 10
    assert page[1024:1034] == b"to backend"  # out[] at 1024
    assert int.from_bytes(page[3084:3088], "little") == 10  # out_prod
    assert back_rx.read(100) == b"to backend"
    assert int.from_bytes(page[3080:3084], "little") == 10  # out_cons
    assert back_tx.write(b"to guest") == 8
    assert page[0:8] == b"to guest"  # in[] at 0
    assert int.from_bytes(page[3076:3080], "little") == 8  # in_prod
    assert guest_rx.read(100) == b"to guest"
    assert int.from_bytes(page[3072:3076], "little") == 8  # in_cons
    assert (guest_tx.size, guest_rx.size) == (2048, 1024)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.one_of(st.integers(U32 - 3000, U32 - 1), st.integers(0, U32 - 1)),
    steps=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), max_size=40),
)
def test_streams_arrive_intact_across_wraparound(
    native: NativeImpl, start: int, steps: list[tuple[int, int]]
) -> None:
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_OUT_PIPE, start, start)
    tx = PipeProducer(page, CONSOLE_OUT_PIPE, native=native)  # resumes at the page's indices
    rx = PipeConsumer(page, CONSOLE_OUT_PIPE, native=native)
    assert tx.prod == rx.cons == start
    sent = bytearray()
    received = bytearray()
    buf = bytearray(4096)
    for write_len, read_len in steps:
        chunk = bytes((len(sent) + i) * 7 & 0xFF for i in range(write_len))
        space = tx.space()
        n = tx.write(chunk)
        assert n == min(space, write_len)
        sent += chunk[:n]
        assert rx.available() == len(sent) - len(received)
        got = rx.read_into(buf, 0, read_len)
        assert got == min(read_len, len(sent) - len(received))
        received += buf[:got]
        assert received == sent[: len(received)]
    while rx.available():
        received += rx.read(1000)
    assert received == sent
    assert tx.prod == rx.cons == (start + len(sent)) % U32


def test_read_into_offset_and_limits(native: NativeImpl) -> None:
    page = bytearray(4096)
    tx, _ = console_backend(page, native=native)
    _, rx = console_frontend(page, native=native)
    assert tx.write(b"x" * 2000) == 1024  # `in` holds 1024 bytes
    assert tx.write(b"more") == 0 and tx.space() == 0
    buf = bytearray(10)
    assert rx.read_into(buf, 4) == 6 and buf == bytes(4) + b"x" * 6
    assert rx.read_into(buf, 10) == 0
    assert rx.read_into(buf, 0, 3) == 3
    assert tx.space() == 9
    assert rx.read(2000) == b"x" * 1015
    assert rx.read(10) == b""


@pytest.mark.parametrize(("left", "right"), [(10, 11), (11, 10), (12, 10), (10, 13), (14, 12)])
def test_vchan_server_and_client_talk_both_ways(native: NativeImpl, left: int, right: int) -> None:
    control = mmap.mmap(-1, 4096)
    left_data = mmap.mmap(-1, 1 << left) if left >= 12 else None
    right_data = mmap.mmap(-1, 1 << right) if right >= 12 else None
    kw = dict(left_order=left, right_order=right, left_data=left_data, right_data=right_data)
    s_tx, s_rx = vchan_server(control, native=native, **kw)  # type: ignore[arg-type]
    c_tx, c_rx = vchan_client(control, native=native, **kw)  # type: ignore[arg-type]
    assert (c_tx.size, s_tx.size) == (1 << left, 1 << right)
    payload = bytes(range(256)) * 300
    for tx, rx in ((c_tx, s_rx), (s_tx, c_rx)):
        out = bytearray()
        pos = 0
        while pos < len(payload):
            pos += tx.write(payload[pos : pos + 5000])
            out += rx.read(3000)
        while rx.available():
            out += rx.read(3000)
        assert out == payload
    if left < 12:
        assert control[layout.VCHAN_INPAGE_RING_OFFSET[left] + 1] == 1  # data went in-page
    for end in (s_tx, s_rx, c_tx, c_rx):
        end.release()
    for m in (control, left_data, right_data):
        if m is not None:
            m.close()


def test_vchan_layout_errors() -> None:
    assert vchan_ring("left", 10).data_offset == 1024
    assert vchan_ring("right", 11).data_offset == 2048
    assert vchan_ring("right", 12).data_offset == 0
    with pytest.raises(ConfigError, match="side"):
        vchan_ring("up", 10)
    with pytest.raises(ConfigError, match="power of two"):
        PipeLayout("bad", 0, 1000, 0, 4)
    with pytest.raises(ConfigError, match="own pages"):
        PipeConsumer(bytearray(4096), vchan_ring("left", 12))  # data needs its own buffer
    with pytest.raises(ConfigError, match="must be None"):
        PipeConsumer(bytearray(4096), vchan_ring("left", 10), data_buffer=bytearray(1024))
    with pytest.raises(ConfigError, match="do not fit"):
        PipeConsumer(bytearray(4096), vchan_ring("left", 13), data_buffer=bytearray(4096))
    with pytest.raises(ConfigError, match="aligned"):
        PipeLayout("bad", 0, 1024, 2, 8)


# ---------------------------------------------------------------------- hostile indices


@pytest.mark.parametrize("start", [0, U32 - 5, 1 << 31])
def test_consumer_index_beyond_the_producer(native: NativeImpl, start: int) -> None:
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_OUT_PIPE, start, start)
    tx = PipeProducer(page, CONSOLE_OUT_PIPE, native=native)
    assert tx.write(b"abc") == 3
    bad = (start + 10) % U32
    mem = native.attach(page)
    mem.store32(CONSOLE_OUT_PIPE.cons_offset, bad)  # the backend claims to have read 10 of 3
    with pytest.raises(RemoteProtocolError, match=rf"cons={bad} is ahead of prod") as info:
        tx.write(b"more")
    assert tx.error is info.value
    mem.store32(CONSOLE_OUT_PIPE.cons_offset, start)  # too late: poisoned
    for call in (tx.space, lambda: tx.write(b"x")):
        with pytest.raises(RemoteProtocolError, match="unusable") as again:
            call()
        assert again.value.__cause__ is info.value
    mem.release()


@pytest.mark.parametrize("start", [0, U32 - 5])
def test_consumer_index_leaving_more_than_the_ring(native: NativeImpl, start: int) -> None:
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_IN_PIPE, start, start)
    tx = PipeProducer(page, CONSOLE_IN_PIPE, native=native)
    mem = native.attach(page)
    bad = (start - 2000) % U32
    mem.store32(CONSOLE_IN_PIPE.cons_offset, bad)
    with pytest.raises(RemoteProtocolError, match=rf"cons={bad} is 2000 bytes behind"):
        tx.space()
    mem.release()


@pytest.mark.parametrize("ahead", [1025, 5000, U32 // 2 - 1])
def test_producer_index_beyond_the_ring(native: NativeImpl, ahead: int) -> None:
    start = U32 - 100
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_IN_PIPE, start, start)
    rx = PipeConsumer(page, CONSOLE_IN_PIPE, native=native)
    bad = (start + ahead) % U32
    mem = native.attach(page)
    mem.store32(CONSOLE_IN_PIPE.prod_offset, bad)
    with pytest.raises(RemoteProtocolError, match=rf"prod={bad} is {ahead} bytes ahead") as info:
        rx.read(10)
    for call in (rx.available, lambda: rx.read_into(bytearray(4))):
        with pytest.raises(RemoteProtocolError, match="unusable") as again:
            call()
        assert again.value.__cause__ is info.value
    mem.release()


def test_producer_index_moving_backwards(native: NativeImpl) -> None:
    page = bytearray(4096)
    tx, rx = PipeProducer(page, CONSOLE_IN_PIPE, native=native), PipeConsumer(
        page, CONSOLE_IN_PIPE, native=native
    )
    tx.write(b"0123456789")
    assert rx.read(10) == b"0123456789"
    mem = native.attach(page)
    mem.store32(CONSOLE_IN_PIPE.prod_offset, 4)
    with pytest.raises(RemoteProtocolError, match="prod=4 is behind cons=10"):
        rx.available()
    mem.release()


def test_attaching_to_a_hostile_page_is_refused(native: NativeImpl) -> None:
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_OUT_PIPE, 0, 4096)  # 4096 bytes in a 2048-byte ring
    with pytest.raises(RemoteProtocolError, match="prod=4096"):
        PipeConsumer(page, CONSOLE_OUT_PIPE, native=native)
    with pytest.raises(RemoteProtocolError, match="cons=0"):
        PipeProducer(page, CONSOLE_OUT_PIPE, native=native)
    # Given explicit indices, nothing is read at attach; the first use validates.
    rx = PipeConsumer(page, CONSOLE_OUT_PIPE, index=0, native=native)
    with pytest.raises(RemoteProtocolError):
        rx.available()


@settings(max_examples=150, deadline=None)
@given(
    impl=st.sampled_from(sorted(_native.implementations())),
    start=st.integers(0, U32 - 1),
    actions=st.lists(st.tuples(st.integers(0, 5), st.integers(0, U32 - 1)), max_size=50),
)
def test_random_peer_indices_never_crash(
    impl: str, start: int, actions: list[tuple[int, int]]
) -> None:
    native = _native.implementations()[impl]
    page = bytearray(4096)
    set_indices(page, native, CONSOLE_OUT_PIPE, start, start)
    tx = PipeProducer(page, CONSOLE_OUT_PIPE, native=native)
    rx = PipeConsumer(page, CONSOLE_OUT_PIPE, native=native)
    mem = native.attach(page)
    buf = bytearray(3000)
    for which, value in actions:
        try:
            if which == 0:
                mem.store32(CONSOLE_OUT_PIPE.cons_offset, value)
            elif which == 1:
                mem.store32(CONSOLE_OUT_PIPE.prod_offset, value)
            elif which == 2:
                assert 0 <= tx.write(bytes(value % 3000)) <= 2048
            elif which == 3:
                assert 0 <= rx.read_into(buf, 0, value % 3000) <= 2048
            elif which == 4:
                assert 0 <= tx.space() <= 2048
            else:
                assert 0 <= rx.available() <= 2048
        except RemoteProtocolError:
            pass
    mem.release()
