"""A hostile peer against the ring engine: impossible indices, wrap tricks, slots that change.

Every case must end in RemoteProtocolError naming the index and its value (never a hang, never
another exception, never garbage returned), after which the half is poisoned: every later call
raises RemoteProtocolError chained to the first one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkit import LocalProtocolError, RemoteProtocolError, _native
from ringkit._native import Buffer, Memory, NativeImpl
from ringkit.proto.layout import (
    SRING_HEADER_SIZE,
    SRING_REQ_EVENT,
    SRING_REQ_PROD,
    SRING_RSP_EVENT,
    SRING_RSP_PROD,
)
from ringkit.proto.ring import BackRing, FrontRing, RingLayout

U32 = 1 << 32
LAYOUT = RingLayout("blkif-like", request_size=112, response_size=16)
ENTRIES = 32


@pytest.fixture(params=sorted(_native.implementations()))
def native(request: pytest.FixtureRequest) -> NativeImpl:
    return _native.implementations()[request.param]


def ring_pair(native: NativeImpl, start: int = 0) -> tuple[bytearray, FrontRing, BackRing, Memory]:
    """A fresh ring whose shared indices all start at `start`, plus a raw view for the 'peer'."""
    page = bytearray(4096)
    FrontRing.init(page, LAYOUT, native=native).release()
    peer = native.attach(page)
    for off in (SRING_REQ_PROD, SRING_RSP_PROD):
        peer.store32(off, start)
    for off in (SRING_REQ_EVENT, SRING_RSP_EVENT):
        peer.store32(off, (start + 1) % U32)
    front = FrontRing.attach(page, LAYOUT, index=start, native=native)
    back = BackRing.attach(page, LAYOUT, index=start, native=native)
    return page, front, back, peer


def back_calls(back: BackRing) -> list[Callable[[], Any]]:
    buf = bytearray(LAYOUT.slot_size * 4)
    return [
        back.pending_requests,
        back.take_request,
        lambda: back.take_request_into(buf),
        lambda: back.take_requests_into(buf),
        back.final_check_for_requests,
        lambda: back.put_response(b"\0" * 16),
        lambda: back.put_responses_from(buf, 1),
        back.push_responses,
    ]


def front_calls(front: FrontRing) -> list[Callable[[], Any]]:
    buf = bytearray(LAYOUT.slot_size * 4)
    return [
        front.pending_responses,
        front.take_response,
        lambda: front.take_response_into(buf),
        lambda: front.take_responses_into(buf),
        front.final_check_for_responses,
        lambda: front.put_request(b"\0" * 112),
        lambda: front.put_requests_from(buf, 1),
        front.push_requests,
        front.free_requests,
    ]


def assert_poisoned(calls: list[Callable[[], Any]], first: RemoteProtocolError) -> None:
    for call in calls:
        with pytest.raises(RemoteProtocolError, match="unusable after an earlier") as info:
            call()
        assert info.value.__cause__ is first


# ---------------------------------------------------------------------- backend sees a bad front


@pytest.mark.parametrize("start", [0, 5, U32 - 3, U32 - ENTRIES, 1 << 31])
@pytest.mark.parametrize("ahead", [ENTRIES + 1, ENTRIES + 2, 1000, U32 // 2, U32 - ENTRIES - 1])
def test_request_producer_beyond_the_ring(native: NativeImpl, start: int, ahead: int) -> None:
    _, _, back, peer = ring_pair(native, start)
    bad = (start + ahead) % U32
    peer.store32(SRING_REQ_PROD, bad)
    with pytest.raises(RemoteProtocolError, match=rf"req_prod={bad}\b") as info:
        back.take_request()
    assert back.error is info.value
    assert "RING_REQUEST_PROD_OVERFLOW" in str(info.value)
    # Even a corrected index does not revive the half.
    peer.store32(SRING_REQ_PROD, start)
    assert_poisoned(back_calls(back), info.value)


@pytest.mark.parametrize("start", [0, U32 - 2, 100])
def test_request_producer_moving_backwards(native: NativeImpl, start: int) -> None:
    _, front, back, peer = ring_pair(native, start)
    for i in range(6):
        front.put_request(bytes([i]) * 112)
    front.push_requests()
    for _ in range(3):
        assert back.take_request() is not None
    back.put_response(b"r" * 16)  # rsp_prod_pvt = start+1, req_cons = start+3
    bad = (start + 2) % U32  # behind req_cons, yet within ring.h's own bound from rsp_prod_pvt
    peer.store32(SRING_REQ_PROD, bad)
    with pytest.raises(RemoteProtocolError, match=rf"req_prod={bad} moved behind req_cons") as e:
        back.pending_requests()
    assert_poisoned(back_calls(back), e.value)


def test_request_producer_exactly_full_is_fine(native: NativeImpl) -> None:
    start = U32 - 10
    _, front, back, peer = ring_pair(native, start)
    for i in range(ENTRIES):
        front.put_request(bytes([i]) * 112)
    front.push_requests()
    assert back.pending_requests() == ENTRIES  # a full ring across 2**32 is legal
    for i in range(ENTRIES):
        req = back.take_request()
        assert req is not None and req[0] == i
    assert back.take_request() is None
    # Now that the back holds ENTRIES unanswered requests, one more is impossible.
    peer.store32(SRING_REQ_PROD, (start + ENTRIES + 1) % U32)
    with pytest.raises(RemoteProtocolError, match="RING_REQUEST_PROD_OVERFLOW"):
        back.take_request()


def test_consumer_side_cannot_run_past_the_producer(native: NativeImpl) -> None:
    """A req_prod that lands exactly on req_cons + 2**31 (the wrap midpoint) is refused too."""
    start = U32 - 1
    _, _, back, peer = ring_pair(native, start)
    peer.store32(SRING_REQ_PROD, (start + (1 << 31)) % U32)
    with pytest.raises(RemoteProtocolError):
        back.final_check_for_requests()


# ---------------------------------------------------------------------- frontend sees a bad back


@pytest.mark.parametrize("start", [0, U32 - 1, U32 - 7])
def test_responses_to_requests_never_sent(native: NativeImpl, start: int) -> None:
    _, front, _, peer = ring_pair(native, start)
    front.put_request(b"q" * 112)
    front.put_request(b"q" * 112)
    front.push_requests()
    front.put_request(b"q" * 112)  # put but not pushed: the back cannot have answered it
    bad = (start + 3) % U32
    peer.store32(SRING_RSP_PROD, bad)
    with pytest.raises(RemoteProtocolError, match=rf"rsp_prod={bad}\b.*only 2 requests") as e:
        front.take_response()
    assert front.error is e.value
    assert_poisoned(front_calls(front), e.value)


@pytest.mark.parametrize("ahead", [ENTRIES + 1, U32 - 1, U32 // 2])
def test_response_producer_beyond_the_ring(native: NativeImpl, ahead: int) -> None:
    start = U32 - 4
    _, front, _, peer = ring_pair(native, start)
    bad = (start + ahead) % U32
    peer.store32(SRING_RSP_PROD, bad)
    with pytest.raises(RemoteProtocolError, match=rf"rsp_prod={bad}\b") as e:
        front.final_check_for_responses()
    if ahead > ENTRIES:
        assert "RING_RESPONSE_PROD_OVERFLOW" in str(e.value)
    assert_poisoned(front_calls(front), e.value)


# ---------------------------------------------------------------------- harmless hostility


def test_garbage_event_indices_only_change_notify_decisions(native: NativeImpl) -> None:
    _, front, back, peer = ring_pair(native, U32 - 5)
    rng = random.Random(7)
    for _ in range(500):
        peer.store32(SRING_REQ_EVENT, rng.randrange(U32))
        peer.store32(SRING_RSP_EVENT, rng.randrange(U32))
        front.put_request(b"x" * 112)
        assert isinstance(front.push_requests(), bool)
        assert back.take_request() == bytearray(b"x" * 112)
        back.put_response(b"y" * 16)
        assert isinstance(back.push_responses(), bool)
        assert front.take_response() == bytearray(b"y" * 16)
    assert front.error is None and back.error is None


def test_peer_scribbling_our_own_producer_changes_nothing(native: NativeImpl) -> None:
    """The front never reads req_prod back: its private copy is the truth."""
    _, front, back, peer = ring_pair(native, 0)
    front.put_request(b"a" * 112)
    front.push_requests()
    peer.store32(SRING_REQ_PROD, 12345)  # the back corrupts the front's index...
    front.put_request(b"b" * 112)
    front.push_requests()  # ...and the front republishes its own value
    assert peer.load32(SRING_REQ_PROD) == 2
    assert back.pending_requests() == 2


# ---------------------------------------------------------------------- XSA-155: copy once


class ScribblingMemory:
    """A `Memory` stand-in that records every read of the slot area and, like a racing peer,
    overwrites a slot with hostile bytes right after it has been copied out."""

    def __init__(self, inner: Memory) -> None:
        self.inner = inner
        self.slot_reads: list[tuple[int, int]] = []
        self.size = inner.size
        self.writable = inner.writable

    def load32(self, offset: int) -> int:
        assert offset < SRING_HEADER_SIZE, "an index load inside the slot area"
        return self.inner.load32(offset)

    def store32(self, offset: int, value: int) -> None:
        self.inner.store32(offset, value)

    def copy_out(
        self, offset: int, dst: Any, dst_offset: int = 0, length: int | None = None
    ) -> None:
        assert length is not None
        self.inner.copy_out(offset, dst, dst_offset, length)
        self.slot_reads.append((offset, length))
        self.inner.copy_in(offset, b"\xff" * length)  # the peer changes the slot right away

    def copy_in(self, offset: int, src: Any) -> None:
        self.inner.copy_in(offset, src)

    def zero(self, offset: int, length: int) -> None:
        self.inner.zero(offset, length)

    def release(self) -> None:
        self.inner.release()


class ScribblingImpl:
    def __init__(self, inner: NativeImpl) -> None:
        self.inner = inner
        self.name = inner.name
        self.full_fence = inner.full_fence
        self.read_fence = inner.read_fence
        self.write_fence = inner.write_fence
        self.memories: list[ScribblingMemory] = []

    def attach(self, buffer: Buffer) -> Any:
        mem = ScribblingMemory(self.inner.attach(buffer))
        self.memories.append(mem)
        return mem


def parse(copy: bytes | bytearray) -> tuple[int, bytes]:
    """A toy request codec: a length byte then that many payload bytes (at most 100)."""
    length = copy[0]
    if length > 100:
        raise RemoteProtocolError(f"request length {length} exceeds 100")
    return length, bytes(copy[1 : 1 + length])


def test_each_slot_is_read_exactly_once_and_parsed_from_the_copy(native: NativeImpl) -> None:
    page = bytearray(4096)
    front = FrontRing.init(page, LAYOUT, native=native)
    spy = ScribblingImpl(native)
    back = BackRing.attach(page, LAYOUT, native=spy)  # type: ignore[arg-type]
    mem = spy.memories[0]
    sent = []
    for i in range(3 * ENTRIES):
        body = bytes([i % 251]) * (i % 100)
        front.put_request(bytes([len(body)]) + body)
        sent.append((len(body), body))
        front.push_requests()
        buf = bytearray(112)
        assert back.take_request_into(buf)
        # The peer turned the slot into 0xff (length 255) right after the copy: the copy is
        # what we parse, so the hostile length is never seen.
        assert parse(buf) == sent[-1]
        back.put_response(b"\0" * 16)
        back.push_responses()
        assert front.take_response() is not None
    offsets = [off for off, _ in mem.slot_reads]
    assert len(offsets) == 3 * ENTRIES
    # One read per request, of exactly that request's slot, cycling through the ring in order.
    assert offsets == [SRING_HEADER_SIZE + (i % ENTRIES) * 112 for i in range(3 * ENTRIES)]


def test_batch_take_reads_each_slot_once(native: NativeImpl) -> None:
    page = bytearray(4096)
    front = FrontRing.init(page, LAYOUT, native=native)
    spy = ScribblingImpl(native)
    back = BackRing.attach(page, LAYOUT, index=0, native=spy)  # type: ignore[arg-type]
    buf = bytearray(112 * ENTRIES)
    taken = 0
    for round_ in range(5):
        n = 7 + round_ * 5
        for i in range(n):
            front.put_request(bytes([taken + i & 0xFF]) * 112)
        front.push_requests()
        assert back.take_requests_into(buf) == n
        for i in range(n):
            assert buf[i * 112] == (taken + i) & 0xFF
        taken += n
        back.put_responses_from(bytes(112 * n), n)
        back.push_responses()
        assert front.take_responses_into(bytearray(112 * ENTRIES)) == n
    covered = sorted(
        SRING_HEADER_SIZE + ((off - SRING_HEADER_SIZE) // 112 + k) % ENTRIES * 112
        for off, length in spy.memories[0].slot_reads
        for k in range(length // 112)
    )
    expected = sorted(SRING_HEADER_SIZE + (i % ENTRIES) * 112 for i in range(taken))
    assert covered == expected


def test_a_slot_changed_before_the_copy_is_caught_by_the_parser(native: NativeImpl) -> None:
    """The peer rewrites a published slot before we copy it: the copy holds the hostile bytes
    and validating the copy raises the typed error (the ring itself stays healthy)."""
    _, front, back, peer = ring_pair(native, U32 - 1)
    front.put_request(bytes([3]) + b"abc" + bytes(108))
    front.push_requests()
    assert back.pending_requests() == 1
    slot = SRING_HEADER_SIZE + ((U32 - 1) % ENTRIES) * 112
    peer.copy_in(slot, bytes([200]))  # the length byte turns hostile
    buf = bytearray(112)
    assert back.take_request_into(buf)
    with pytest.raises(RemoteProtocolError, match="length 200"):
        parse(buf)
    assert back.error is None


# ---------------------------------------------------------------------- anything goes


@settings(max_examples=200, deadline=None)
@given(
    impl=st.sampled_from(sorted(_native.implementations())),
    start=st.integers(0, U32 - 1),
    actions=st.lists(
        st.tuples(st.integers(0, 11), st.integers(0, U32 - 1)), min_size=1, max_size=60
    ),
)
def test_random_peer_writes_never_crash(
    impl: str, start: int, actions: list[tuple[int, int]]
) -> None:
    """Random header writes interleaved with normal use: only ringkit's typed errors come out,
    a poisoned half stays poisoned, and nothing loops."""
    native = _native.implementations()[impl]
    _, front, back, peer = ring_pair(native, start)
    buf = bytearray(112 * 8)
    ops: list[Callable[[int], Any]] = [
        lambda v: peer.store32((SRING_REQ_PROD, SRING_RSP_PROD)[v % 2], v),
        lambda v: peer.store32((SRING_REQ_EVENT, SRING_RSP_EVENT)[v % 2], v),
        lambda v: front.put_request(bytes(112)),
        lambda v: front.push_requests(),
        lambda v: front.take_response(),
        lambda v: front.take_responses_into(buf, v % 9),
        lambda v: front.final_check_for_responses(),
        lambda v: back.take_request(),
        lambda v: back.take_requests_into(buf, v % 9),
        lambda v: back.put_response(bytes(16)),
        lambda v: back.push_responses(),
        lambda v: back.final_check_for_requests(),
    ]
    for which, value in actions:
        front_was, back_was = front.error, back.error
        try:
            ops[which](value)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            assert re.search(r"\w+=\d+|unusable|full|exceeds|waiting|fit", str(exc)), str(exc)
        if front_was is not None:
            assert front.error is front_was
        if back_was is not None:
            assert back.error is back_was
