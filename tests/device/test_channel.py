"""RingChannel: the anyio shell over FrontRing/BackRing, with in-process event channels.

Every test runs in both receive modes, sleeping on the event channel (``poll_us`` 0, the
default) and polling the ring first (``poll_us`` > 0), on asyncio and trio."""

from __future__ import annotations

import struct

import anyio
import pytest

from ringkit import LocalProtocolError, PeerGoneError, RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto.layout import SRING_REQ_PROD, RingLayout
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.testing.memory import MemoryEventChannel, memory_event_pair

LAYOUT = RingLayout("test", request_size=16, response_size=8)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[0, 300], ids=["sleeping", "polling"])
def poll_us(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def make_pair(poll_us: int = 0) -> tuple[FrontRingChannel, BackRingChannel, bytearray]:
    page = bytearray(4096)
    fe_evt, be_evt = memory_event_pair()
    front = FrontRingChannel(FrontRing.init(page, LAYOUT), fe_evt, poll_us=poll_us)
    back = BackRingChannel(BackRing.attach(page, LAYOUT), be_evt, poll_us=poll_us)
    return front, back, page


async def test_round_trip_many_more_than_ring_entries(poll_us: int) -> None:
    front, back, _ = make_pair(poll_us)
    count = front.engine.entries * 5 + 3
    got: list[int] = []

    async def serve() -> None:
        for _ in range(count):
            for req in await back.receive_batch(7):
                (n,) = struct.unpack_from("<Q", req)
                await back.send(struct.pack("<Q", n * 2))

    async def collect() -> None:
        while len(got) < count:
            rsp = await front.receive()
            got.append(struct.unpack("<Q", rsp)[0])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            tg.start_soon(collect)
            for i in range(count):
                await front.send(struct.pack("<Q", i))
            # stop the server once all responses are in
            while len(got) < count:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert got == [2 * i for i in range(count)]


async def test_batches_push_once(poll_us: int) -> None:
    front, back, _ = make_pair(poll_us)
    await front.send_batch([struct.pack("<Q", i) for i in range(10)])
    assert isinstance(front.event, MemoryEventChannel)
    assert front.event.notifications == 1
    reqs = await back.receive_batch(100)
    assert [struct.unpack_from("<Q", r)[0] for r in reqs] == list(range(10))
    assert all(len(r) == LAYOUT.request_size for r in reqs)


async def test_full_ring_send_nowait_would_block(poll_us: int) -> None:
    front, _, _ = make_pair(poll_us)
    for i in range(front.engine.entries):
        front.send_nowait(struct.pack("<Q", i))
    with pytest.raises(anyio.WouldBlock):
        front.send_nowait(b"x")


async def test_hostile_request_producer_breaks_backend_channel(poll_us: int) -> None:
    _, back, page = make_pair(poll_us)
    struct.pack_into("<I", page, SRING_REQ_PROD, 10_000)
    with pytest.raises(anyio.BrokenResourceError) as info:
        with anyio.fail_after(5):
            await back.receive()
    assert isinstance(info.value.__cause__, RemoteProtocolError)
    assert "req_prod=10000" in str(info.value.__cause__)
    with pytest.raises(anyio.BrokenResourceError):  # stays broken
        back.receive_nowait()


async def test_peer_gone_breaks_waiting_receiver(poll_us: int) -> None:
    front, back, _ = make_pair(poll_us)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def close_front() -> None:
                await anyio.sleep(0.01)
                await front.event.aclose()

            tg.start_soon(close_front)
            with pytest.raises(anyio.BrokenResourceError) as info:
                await back.receive()
    assert isinstance(info.value.__cause__, PeerGoneError)


async def test_response_without_request_is_local_error(poll_us: int) -> None:
    _, back, _ = make_pair(poll_us)
    with pytest.raises(LocalProtocolError):
        await back.send(b"12345678")


async def test_two_receivers_conflict_and_close(poll_us: int) -> None:
    front, back, _ = make_pair(poll_us)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(back.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await back.receive()
            await front.send(b"hello")
    await back.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        back.receive_nowait()


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_bad_item_mid_batch_still_sends_the_ones_before_it(use_async: bool,
                                                                  poll_us: int) -> None:
    front, back, page = make_pair(poll_us)
    good = [struct.pack("<Q", n) for n in (1, 2)]
    batch = [*good, b"x" * (LAYOUT.request_size + 1), struct.pack("<Q", 3)]
    with anyio.fail_after(10):
        with pytest.raises(LocalProtocolError) as info:
            if use_async:
                await front.send_batch(batch)
            else:
                front.send_batch_nowait(batch)
        assert "2 item(s) before it" in "".join(getattr(info.value, "__notes__", []))
        # Pushed: no private-producer drift, and the backend sees exactly the first two.
        assert front.engine.req_prod_pvt == struct.unpack_from("<I", page, SRING_REQ_PROD)[0] == 2
        got = await back.receive_batch(8)
        assert [bytes(r[:8]) for r in got] == good
        # The channel is still usable.
        await front.send(struct.pack("<Q", 4))
        assert bytes((await back.receive())[:8]) == struct.pack("<Q", 4)


async def test_received_items_are_private_copies_that_later_bursts_do_not_touch(
        poll_us: int) -> None:
    # The channel reuses one buffer for copying bursts out of the ring; what it handed out
    # must not change when the next burst lands there, nor when the ring page is rewritten.
    front, back, page = make_pair(poll_us)
    for n in range(3):
        await front.send(struct.pack("<Q", n))
    first = back.receive_batch_nowait(8)
    for n in (7, 8, 9):
        await front.send(struct.pack("<Q", n))
    second = back.receive_batch_nowait(8)
    page[:] = b"\xee" * len(page)
    assert [struct.unpack_from("<Q", r)[0] for r in first] == [0, 1, 2]
    assert [struct.unpack_from("<Q", r)[0] for r in second] == [7, 8, 9]
    assert all(type(r) is bytearray and len(r) == LAYOUT.request_size for r in first + second)
