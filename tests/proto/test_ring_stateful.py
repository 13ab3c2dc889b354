"""Hypothesis stateful test: a FrontRing and a BackRing on one bytearray, driven in any order.

Indices start near 2**32 (and anywhere else), areas span one to several pages, and both native
implementations run.  Invariants checked after every step:

- every request is consumed exactly once and in order, with its bytes intact, and every
  response likewise;
- free slots, pending counts and the indices agree with an independent model;
- each push's notify decision is ring.h's rule, computed by the model from the event index the
  other side last wrote: notify iff (new - event) < (new - old) in uint32 arithmetic;
- no lost wake-up: once a side's final check said "nothing to do" (it would sleep), the next
  push that publishes something new to it returns notify=True.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringkit import LocalProtocolError, _native
from ringkit.proto.ring import BackRing, FrontRing, RingLayout

U32 = 1 << 32
LAYOUT = RingLayout("blkif-like", request_size=112, response_size=16)
AREAS = (4096, 8192, 4096 << 2, 1000)


def request_bytes(seq: int) -> bytes:
    body = seq.to_bytes(8, "little")
    return body + bytes((seq + i) & 0xFF for i in range(LAYOUT.request_size - 8))


def response_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "little") + (seq ^ 0x5A5A5A5A).to_bytes(8, "little")


class RingPair(RuleBasedStateMachine):
    """Both halves of one ring plus a model of what must happen."""

    front: FrontRing
    back: BackRing

    @initialize(
        impl=st.sampled_from(sorted(_native.implementations())),
        area=st.sampled_from(AREAS),
        start=st.one_of(
            st.integers(U32 - 80, U32 - 1),
            st.integers(0, U32 - 1),
            st.just(0),
        ),
    )
    def setup(self, impl: str, area: int, start: int) -> None:
        native = _native.implementations()[impl]
        self.page = bytearray(area)
        if start == 0:
            self.front = FrontRing.init(self.page, LAYOUT, native=native)
        else:
            FrontRing.init(self.page, LAYOUT, native=native).release()
            mem = native.attach(self.page)
            for offset in (0, 8):  # req_prod, rsp_prod
                mem.store32(offset, start)
            for offset in (4, 12):  # req_event, rsp_event
                mem.store32(offset, (start + 1) % U32)
            mem.release()
            self.front = FrontRing.attach(self.page, LAYOUT, index=start, native=native)
        self.back = BackRing.attach(self.page, LAYOUT, index=start, native=native)
        self.entries = self.front.entries
        self.start = start
        # Model.
        self.next_seq = 0  # next request sequence number the front puts
        self.put = 0  # requests put (not necessarily pushed)
        self.pushed = 0  # requests published
        self.taken = 0  # requests the back consumed
        self.answered = 0  # responses the back put
        self.rsp_pushed = 0  # responses published
        self.received = 0  # responses the front consumed
        self.req_event = (start + 1) % U32
        self.rsp_event = (start + 1) % U32
        self.back_sleeping = False
        self.front_sleeping = False

    def idx(self, count: int) -> int:
        return (self.start + count) % U32

    # ------------------------------------------------------------------ frontend

    @precondition(lambda self: self.put - self.received < self.entries)
    @rule(n=st.integers(1, 8))
    def put_requests(self, n: int) -> None:
        for _ in range(min(n, self.entries - (self.put - self.received))):
            self.front.put_request(request_bytes(self.put))
            self.put += 1

    @precondition(lambda self: self.put - self.received < self.entries)
    @rule(n=st.integers(1, 40))
    def put_requests_batch(self, n: int) -> None:
        n = min(n, self.entries - (self.put - self.received))
        src = b"".join(request_bytes(self.put + i) for i in range(n))
        self.front.put_requests_from(src, n)
        self.put += n

    @precondition(lambda self: self.put - self.received == self.entries)
    @rule()
    def put_on_full_ring_is_refused(self) -> None:
        assert self.front.full
        try:
            self.front.put_request(request_bytes(self.put))
        except LocalProtocolError:
            return
        raise AssertionError("put on a full ring was accepted")

    @rule()
    def push_requests(self) -> None:
        old, new = self.idx(self.pushed), self.idx(self.put)
        expected = (new - self.req_event) % U32 < (new - old) % U32
        notify = self.front.push_requests()
        assert notify == expected
        if self.back_sleeping and new != old:
            assert notify, "lost wake-up: the sleeping backend was not notified"
            self.back_sleeping = False
        self.pushed = self.put

    @rule(limit=st.integers(1, 8))
    def take_responses(self, limit: int) -> None:
        for _ in range(limit):
            rsp = self.front.take_response()
            if rsp is None:
                assert self.received == self.rsp_pushed
                return
            assert bytes(rsp) == response_bytes(self.received)
            self.received += 1

    @rule(max_count=st.integers(1, 64))
    def take_responses_batch(self, max_count: int) -> None:
        buf = bytearray(LAYOUT.slot_size * 16)
        got = self.front.take_responses_into(buf, max_count)
        assert got == min(max_count, 16, self.rsp_pushed - self.received)
        for i in range(got):
            slot = buf[i * LAYOUT.slot_size : i * LAYOUT.slot_size + LAYOUT.response_size]
            assert bytes(slot) == response_bytes(self.received)
            self.received += 1

    @rule()
    def final_check_responses(self) -> None:
        work = self.front.final_check_for_responses()
        assert work == (self.received != self.rsp_pushed)
        if not work:
            self.rsp_event = self.idx(self.received + 1)
            self.front_sleeping = True

    # ------------------------------------------------------------------ backend

    @rule(limit=st.integers(1, 8))
    def take_requests(self, limit: int) -> None:
        buf = bytearray(LAYOUT.request_size)
        for _ in range(limit):
            if not self.back.take_request_into(buf):
                assert self.taken == self.pushed
                return
            assert bytes(buf) == request_bytes(self.taken)
            self.taken += 1

    @rule(max_count=st.integers(1, 64))
    def take_requests_batch(self, max_count: int) -> None:
        buf = bytearray(LAYOUT.slot_size * 20)
        got = self.back.take_requests_into(buf, max_count)
        assert got == min(max_count, 20, self.pushed - self.taken)
        for i in range(got):
            slot = buf[i * LAYOUT.slot_size : (i + 1) * LAYOUT.slot_size]
            assert bytes(slot) == request_bytes(self.taken)
            self.taken += 1

    @precondition(lambda self: self.answered < self.taken)
    @rule(n=st.integers(1, 8))
    def put_responses(self, n: int) -> None:
        for _ in range(min(n, self.taken - self.answered)):
            self.back.put_response(response_bytes(self.answered))
            self.answered += 1

    @precondition(lambda self: self.answered < self.taken)
    @rule(n=st.integers(1, 40))
    def put_responses_batch(self, n: int) -> None:
        n = min(n, self.taken - self.answered)
        slot = LAYOUT.slot_size
        src = bytearray(slot * n)
        for i in range(n):
            src[i * slot : i * slot + LAYOUT.response_size] = response_bytes(self.answered + i)
        self.back.put_responses_from(src, n)
        self.answered += n

    @precondition(lambda self: self.answered == self.taken)
    @rule()
    def response_without_request_is_refused(self) -> None:
        try:
            self.back.put_response(response_bytes(self.answered))
        except LocalProtocolError:
            return
        raise AssertionError("a response without a consumed request was accepted")

    @rule()
    def push_responses(self) -> None:
        old, new = self.idx(self.rsp_pushed), self.idx(self.answered)
        expected = (new - self.rsp_event) % U32 < (new - old) % U32
        notify = self.back.push_responses()
        assert notify == expected
        if self.front_sleeping and new != old:
            assert notify, "lost wake-up: the sleeping frontend was not notified"
            self.front_sleeping = False
        self.rsp_pushed = self.answered

    @rule()
    def final_check_requests(self) -> None:
        work = self.back.final_check_for_requests()
        assert work == (self.taken != self.pushed)
        if not work:
            self.req_event = self.idx(self.taken + 1)
            self.back_sleeping = True

    # Pending counts are rules, not invariants: a take must refresh a stale producer by itself.
    @rule()
    def pending_requests(self) -> None:
        assert self.back.pending_requests() == self.pushed - self.taken

    @rule()
    def pending_responses(self) -> None:
        assert self.front.pending_responses() == self.rsp_pushed - self.received

    # ------------------------------------------------------------------ invariants

    @invariant()
    def indices_agree(self) -> None:
        assert self.front.free_requests() == self.entries - (self.put - self.received)
        assert self.front.req_prod_pvt == self.idx(self.put)
        assert self.front.rsp_cons == self.idx(self.received)
        assert self.back.req_cons == self.idx(self.taken)
        assert self.back.rsp_prod_pvt == self.idx(self.answered)

    def teardown(self) -> None:
        if hasattr(self, "front"):
            self.front.release()
            self.back.release()


RingPair.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingPair = RingPair.TestCase
