"""`ServerStats.reordered`: the answers a `RequestServer` pushes out of ring order, tallied by
an `AnswerOrder`.

The tracker is checked against a brute-force reference (an answer is out of order when a
request taken before it is still unanswered) over random interleavings of bursts taken and
answers given, its window grown along the way; three broken trackers -- one that never
advances past the first request, one that counts every answer, one that forgets the answers
that came ahead of the oldest -- fail the same check (negative controls).  On a ring: a handler
that answers in a chosen order gives exactly the reference's count, none when the order is the
ring's; a jittery handler at ``concurrency`` 8 reorders, the same load at 1 never does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pair import PLAIN, RESPONSE, IncomingRequest, decode, encode, pair

from ringkit.requests import AnswerOrder


class Tracker(Protocol):
    def taken(self, count: int) -> int: ...
    def answered(self, seq: int) -> bool: ...


def reference(taken: int, answered: set[int], seq: int) -> bool:
    """Brute force: some request taken before `seq` (all of 0 .. `taken` - 1 were) is not in
    `answered`."""
    return any(s not in answered for s in range(min(seq, taken)))


def check_tracker(make: Callable[[], Tracker], seed: int, steps: int = 200) -> int:
    """Drive a tracker with a random interleaving of bursts taken and answers pushed (seeded);
    assert each verdict equals the reference's; return how many answers were out of order."""
    rng = random.Random(seed)
    tracker = make()
    taken = 0
    answered: set[int] = set()
    unanswered: list[int] = []
    out_of_order = 0
    for step in range(steps):
        if not unanswered or rng.random() < 0.3:
            count = rng.choice([0, 1, 1, 2, 3, 5, 8, 40])
            assert tracker.taken(count) == taken, f"step {step}: wrong first sequence number"
            unanswered += range(taken, taken + count)
            taken += count
            continue
        # mostly the oldest few, sometimes any: long runs ahead of a slow one
        pick = rng.randrange(min(len(unanswered), rng.choice([1, 2, 4, len(unanswered)])))
        seq = unanswered.pop(pick)
        want = reference(taken, answered, seq)
        got = tracker.answered(seq)
        assert got == want, (f"step {step}: answer {seq} judged "
                             f"{'out of' if got else 'in'} order; unanswered {unanswered}")
        answered.add(seq)
        out_of_order += want
    return out_of_order


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 32]))
def test_the_tracker_agrees_with_the_reference(seed: int, window: int) -> None:
    check_tracker(lambda: AnswerOrder(window), seed)


def test_the_check_sees_both_verdicts_and_a_grown_window() -> None:
    # the random schedules do reorder (and sometimes not): the reference is not vacuous
    counts = [check_tracker(AnswerOrder, seed) for seed in range(20)]
    assert all(count > 0 for count in counts) and len(set(counts)) > 1, counts
    order = AnswerOrder(2)
    first = order.taken(100)          # 100 unanswered with a window of 2: grown on the way
    assert [order.answered(first + s) for s in (99, 50, 0)] == [True, True, False]
    assert order.oldest == first + 1 and order.taken_count == first + 100
    assert not any(order.answered(first + s) for s in range(1, 50))
    assert order.oldest == first + 51         # stepped over 50, answered ahead of the others


class NeverAdvances:
    """Broken: compares every answer with the first request ever taken."""

    def __init__(self) -> None:
        self.next = 0

    def taken(self, count: int) -> int:
        self.next += count
        return self.next - count

    def answered(self, seq: int) -> bool:
        return seq != 0


class CountsEveryAnswer(NeverAdvances):
    """Broken: every answer counted as out of order."""

    def answered(self, seq: int) -> bool:
        return True


class ForgetsAhead(NeverAdvances):
    """Broken: advances the oldest by one per answer of it, not over the answers that came
    ahead of it."""

    def __init__(self) -> None:
        super().__init__()
        self.oldest = 0

    def answered(self, seq: int) -> bool:
        if seq != self.oldest:
            return True
        self.oldest += 1
        return False


@pytest.mark.parametrize("broken", [NeverAdvances, CountsEveryAnswer, ForgetsAhead])
def test_negative_control_a_broken_tracker_fails_the_check(broken: type[Tracker]) -> None:
    with pytest.raises(AssertionError, match="judged"):
        for seed in range(20):
            check_tracker(broken, seed)


def test_an_answer_never_taken_or_told_twice_is_the_callers_bug() -> None:
    order = AnswerOrder()
    first = order.taken(3)
    with pytest.raises(ValueError, match="not taken"):
        order.answered(first + 3)
    assert order.answered(first + 1)
    with pytest.raises(ValueError, match="answered already"):
        order.answered(first + 1)
    assert not order.answered(first)
    with pytest.raises(ValueError, match="answered already"):
        order.answered(first)          # behind the oldest now
    assert not order.answered(first + 2) and order.oldest == first + 3


# ---------------------------------------------------------------- on a ring

BLOCKS_REVERSED = [*range(7, -1, -1), *range(15, 7, -1), *range(19, 15, -1)]
"""An answer order a server keeping 8 in service can follow (each block of 8 is in service
by the time its last member is answered)."""


def expected_reordered(answers: Sequence[int]) -> int:
    done: set[int] = set()
    count = 0
    for seq in answers:
        count += reference(len(answers), done, seq)
        done.add(seq)
    return count


@pytest.mark.anyio
@pytest.mark.parametrize(("answers", "expected"),
                         [(BLOCKS_REVERSED, 17), (list(range(20)), 0)])
async def test_the_server_counts_the_answers_pushed_out_of_ring_order(
        answers: list[int], expected: int) -> None:
    """20 requests put on the ring in one push (ring order = their values); the handler answers
    them in the order `answers` gives, one after the other; each answer is checked."""
    assert expected_reordered(answers) == expected
    turn = 0
    moved = anyio.Event()

    async def in_given_order(request: IncomingRequest) -> bytes:
        nonlocal turn, moved
        value = int.from_bytes(request.slot[8:16], "little")
        while answers[turn] != value:
            await moved.wait()
        turn += 1
        moved.set()
        moved = anyio.Event()
        return RESPONSE.pack(request.id, 0, value * 3)

    async with pair(in_given_order, concurrency=8) as p:
        requests = []
        for n in range(20):
            req = await p.queue.prepare()
            encode(req.slot, PLAIN, (), value=n)
            requests.append(req)
        with anyio.fail_after(20):
            p.queue.send_batch_nowait(requests)
            for n, req in enumerate(requests):
                assert decode(await p.queue.wait(req)) == (req.id, 0, n * 3)
                p.queue.release(req)
        assert p.server.stats.requests == 20
        assert p.server.stats.reordered == expected


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [8, 1])
async def test_a_jittery_handler_reorders_only_with_concurrency(concurrency: int) -> None:
    """The same load -- 40 callers, answers after a random short while -- at concurrency 8
    reorders; at 1 (the negative control) the server answers in ring order: none counted."""
    rng = random.Random(5)

    async def jittery(request: IncomingRequest) -> bytes:
        value = int.from_bytes(request.slot[8:16], "little")
        await anyio.sleep(rng.uniform(0.001, 0.01))
        return RESPONSE.pack(request.id, 0, value + 1)

    async with pair(jittery, concurrency=concurrency) as p:
        async def caller(n: int) -> None:
            async with p.queue.request() as req:
                encode(req.slot, PLAIN, (), value=n)
                assert decode(await p.queue.call(req))[2] == n + 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(caller, n)
        stats = p.server.stats
        assert stats.requests == 40
        if concurrency == 1:
            assert stats.reordered == 0
        else:
            assert 0 < stats.reordered < 40, stats
