"""RingChannel's counters (`LinkStats`) and its opt-in polling.

The counters must show what ring.h's hold-off and batching save: a burst pushed while the peer
sleeps rings one doorbell, not one per item -- and a peer that defeats the hold-off (asking to
be woken for every request) gets one per item, which the counters must show too.  Polling must
spin only when items are expected, and stop the doorbells while it spins.
"""

from __future__ import annotations

import struct

import anyio
import pytest

from ringkit import ConfigError, RemoteProtocolError
from ringkit.channel import MAX_POLL_US, BackRingChannel, FrontRingChannel, PipeStream
from ringkit.proto.console import ConsoleRing, ConsoleSide
from ringkit.proto.layout import SRING_REQ_EVENT, SRING_REQ_PROD, RingLayout
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.testing.memory import memory_event_pair

LAYOUT = RingLayout("test", request_size=16, response_size=8)
BURST = 20

pytestmark = pytest.mark.anyio


def make_pair(poll_us: int = 0) -> tuple[FrontRingChannel, BackRingChannel, bytearray]:
    page = bytearray(4096)
    fe_evt, be_evt = memory_event_pair()
    front = FrontRingChannel(FrontRing.init(page, LAYOUT), fe_evt, poll_us=poll_us)
    back = BackRingChannel(BackRing.attach(page, LAYOUT), be_evt, poll_us=poll_us)
    return front, back, page


def req(n: int) -> bytes:
    return struct.pack("<Q", n)


async def test_a_burst_sent_one_by_one_to_a_sleeping_peer_rings_once() -> None:
    front, back, _ = make_pair()
    for n in range(BURST):
        front.send_nowait(req(n))
    assert front.stats.pushes == BURST
    assert front.stats.notifications == 1  # hold-off: the peer asked only for the first
    assert len(await back.receive_batch(64)) == BURST
    assert back.stats.sleeps == 0  # everything was there: no wait


async def test_negative_control_a_peer_defeating_the_hold_off_gets_a_doorbell_per_item() -> None:
    # The backend asks to be woken at the very next request each time (req_event = prod + 1),
    # as if it went to sleep between every two: the counter must show N doorbells.
    front, _, page = make_pair()
    for n in range(BURST):
        struct.pack_into("<I", page, SRING_REQ_EVENT, front.engine.req_prod_pvt + 1)
        front.send_nowait(req(n))
    assert front.stats.notifications == BURST


async def test_a_batch_is_one_push_and_one_doorbell_each_way() -> None:
    front, back, _ = make_pair()
    front.send_batch_nowait([req(n) for n in range(BURST)])
    assert (front.stats.pushes, front.stats.notifications) == (1, 1)
    got = await back.receive_batch(64)
    back.send_batch_nowait([bytes(r[:8]) for r in got])
    assert (back.stats.pushes, back.stats.notifications) == (1, 1)
    assert len(await front.receive_batch(64)) == BURST


async def test_a_receiver_with_nothing_pending_sleeps_once_per_wake_up() -> None:
    front, back, _ = make_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(back.receive)
        await anyio.wait_all_tasks_blocked()
        assert back.stats.sleeps == 1
        await front.send(req(1))
    assert back.stats.sleeps == 1


async def test_poll_us_is_validated_by_the_constructor_and_read_only() -> None:
    for bad in (-1, MAX_POLL_US + 1, True, 1.5):
        with pytest.raises(ConfigError, match="poll_us"):
            make_pair(poll_us=bad)  # type: ignore[arg-type]
    front, back, _ = make_pair(poll_us=250)
    assert front.poll_us == back.poll_us == 250
    with pytest.raises(AttributeError):
        front.poll_us = 10  # type: ignore[misc]   # no setter: a setting, not a knob
    assert make_pair()[0].poll_us == 0  # off by default


async def test_polling_never_spins_with_nothing_in_flight() -> None:
    # An idle frontend (no request outstanding) and a fresh backend (the ring was never busy)
    # both go straight to sleep: wait_all_tasks_blocked returns, which a spinner would prevent.
    front, back, _ = make_pair(poll_us=MAX_POLL_US)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(front.receive)
            tg.start_soon(back.receive)
            await anyio.wait_all_tasks_blocked()
            assert (front.stats.polls, back.stats.polls) == (0, 0)
            assert (front.stats.sleeps, back.stats.sleeps) == (1, 1)
            tg.cancel_scope.cancel()


async def test_an_idle_window_sends_the_backend_back_to_sleep() -> None:
    front, back, _ = make_pair(poll_us=2000)
    with anyio.fail_after(5):
        await front.send(req(1))
        await back.receive()  # the ring was busy: the next wait polls first
        async with anyio.create_task_group() as tg:
            tg.start_soon(back.receive)
            await anyio.wait_all_tasks_blocked()  # returns only once the spinner gave up
            # one window, empty; then sleeping only -- the first doorbell, never consumed,
            # makes one extra wake-up that finds nothing and sleeps again without polling
            assert (back.stats.polls, back.stats.poll_hits) == (1, 0)
            assert back.stats.sleeps in (1, 2)
            await front.send(req(2))
        # woken by the doorbell: the final check before sleeping had asked for it
        assert front.stats.notifications == 2


async def run_round_trips(poll_us: int, rounds: int) -> tuple[FrontRingChannel, BackRingChannel]:
    """`rounds` requests one at a time (one in flight), each echoed by a serving task."""
    front, back, _ = make_pair(poll_us)

    async def serve() -> None:
        while True:
            for item in await back.receive_batch(8):
                await back.send(bytes(item[:8]))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            for n in range(rounds):
                await front.send(req(n))
                assert bytes(await front.receive()) == req(n)
            tg.cancel_scope.cancel()
    return front, back


async def test_polling_round_trips_need_almost_no_doorbells_or_sleeps() -> None:
    rounds = 200
    # the window is long enough that only a stall of the whole process could end it empty
    front, back = await run_round_trips(MAX_POLL_US, rounds)
    doorbells = front.stats.notifications + back.stats.notifications
    sleeps = front.stats.sleeps + back.stats.sleeps
    assert doorbells <= 4 and sleeps <= 4, (front.stats, back.stats)
    # every window found its response (some responses were there before a wait was needed)
    assert front.stats.poll_hits == front.stats.polls > 0


async def test_a_receive_loop_in_its_own_task_polls_for_the_next_answer() -> None:
    # The shape of a driver's frontend (FrontQueues): one task receives and hands answers
    # over, another sends the next request once its answer came.  When the receiver finds the
    # ring empty the sender has not sent yet: polling must still catch the next answer.
    front, back, _ = make_pair(MAX_POLL_US)
    rounds = 200
    answered = anyio.Event()

    async def serve() -> None:
        while True:
            for item in await back.receive_batch(8):
                await back.send(bytes(item[:8]))

    async def receive_loop() -> None:
        nonlocal answered
        while True:
            await front.receive()
            answered.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            tg.start_soon(receive_loop)
            for n in range(rounds):
                answered = anyio.Event()
                await front.send(req(n))
                await answered.wait()
            tg.cancel_scope.cancel()
    # (without the settling rounds before sleeping, about every other wait slept on trio)
    assert front.stats.sleeps <= rounds // 10 and front.stats.polls >= rounds - 4, front.stats


async def test_negative_control_sleeping_round_trips_ring_and_sleep_every_time() -> None:
    rounds = 200
    front, back = await run_round_trips(0, rounds)
    assert front.stats.notifications >= rounds and back.stats.notifications >= rounds
    assert front.stats.sleeps >= rounds and front.stats.polls == 0


async def test_hostile_indices_break_a_polling_receiver() -> None:
    front, back, page = make_pair(poll_us=MAX_POLL_US)
    await front.send(req(1))
    await back.receive()

    async def scribble() -> None:
        await anyio.sleep(0.01)
        struct.pack_into("<I", page, SRING_REQ_PROD, 10_000)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scribble)
            with pytest.raises(anyio.BrokenResourceError) as info:
                await back.receive()
    assert isinstance(info.value.__cause__, RemoteProtocolError)
    assert back.stats.polls == 1 and back.stats.sleeps == 0


async def test_closing_stops_a_polling_receiver() -> None:
    front, back, _ = make_pair(poll_us=MAX_POLL_US)
    await front.send(req(1))
    await back.receive()

    async def close() -> None:
        await anyio.sleep(0.01)
        await back.aclose()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(close)
            with pytest.raises(anyio.ClosedResourceError):
                await back.receive()


async def test_a_pipe_stream_counts_its_doorbells_and_sleeps() -> None:
    # The byte-pipe shell shares the counters' home (PeerLink): a console-style stream.
    page = bytearray(4096)
    fe_evt, be_evt = memory_event_pair()
    front = PipeStream(ConsoleRing(page, ConsoleSide.FRONTEND), fe_evt)
    back = PipeStream(ConsoleRing(page, ConsoleSide.BACKEND), be_evt)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(back.receive)
            await anyio.wait_all_tasks_blocked()
            assert back.stats.sleeps == 1
            await front.send(b"hello")
    assert front.stats.notifications == fe_evt.notifications >= 1
