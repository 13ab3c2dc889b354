"""The layer's additions for netif, on one in-memory ring: `SharedEventChannel` (one port, two
waiters, every event reaching both) and `PostedRequests` (buffers taken when the backend wants
them, in ring order; whole chains; a chain past what was published is a ring-level error).
Negative control: two plain waiters on one port lose wake-ups (anyio allows one waiter).
And `RequestQueue`'s answers by position for netif's extra-info slots: an rx extra slot
(`ResponseExtra`) and a tx chain's NULL filler, whose ids mean nothing; a filler with no extra
slot in flight fails the queue."""

from __future__ import annotations

import anyio
import pytest

from ringkit import ConfigError, RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto import netif
from ringkit.proto.layout import RingLayout
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import PostedRequests, RequestQueue, SharedEventChannel, SlotCodec
from ringkit.testing.memory import memory_event_pair

pytestmark = pytest.mark.anyio


async def test_every_view_of_a_shared_port_wakes_on_one_notify() -> None:
    front, back = memory_event_pair()
    shared = SharedEventChannel(back)
    views = [shared.view(), shared.view()]
    woken: list[int] = []

    async def waiter(i: int) -> None:
        for _ in range(3):
            await views[i].wait()
            woken.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, 0)
            tg.start_soon(waiter, 1)
            for _ in range(3):
                await anyio.wait_all_tasks_blocked()
                front.notify()
                await anyio.wait_all_tasks_blocked()
    assert sorted(woken) == [0, 0, 0, 1, 1, 1]


async def test_negative_control_two_plain_waiters_on_one_port_do_not_both_wake() -> None:
    front, back = memory_event_pair()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        try:
            await back.wait()
            woken.append(i)
        except anyio.BusyResourceError:
            woken.append(-1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 0)
        tg.start_soon(waiter, 1)
        await anyio.wait_all_tasks_blocked()
        front.notify()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert sorted(woken) != [0, 1]


def _rings() -> tuple[FrontRingChannel, PostedRequests, bytearray]:
    page = bytearray(4096)
    front_ev, back_ev = memory_event_pair()
    front = FrontRingChannel(FrontRing.init(page, netif.TX_RING), front_ev)
    back = BackRingChannel(BackRing.attach(page, netif.TX_RING), back_ev)
    return front, PostedRequests(back, netif.TX_CODEC), page


async def test_posted_requests_come_in_ring_order_when_asked_for() -> None:
    front, posted, _ = _rings()
    front.send_batch_nowait([netif.encode_tx_request(100 + i, 0, 0, i, 60) for i in range(5)])
    with anyio.fail_after(5):
        first = await posted.take(2)
        assert [r.id for r in first] == [0, 1] and [r.refs for r in first] == [[100], [101]]
        assert posted.pending == 3
        assert posted.take_nowait(4) is None
        rest = await posted.take(3)
    assert [r.id for r in rest] == [2, 3, 4]
    await posted.respond(first, [netif.encode_tx_response(r.id, 0) for r in first])
    assert [netif.parse_tx_response(r)[0] for r in front.receive_batch_nowait()] == [0, 1]


async def test_chains_with_extras_come_whole_and_are_answered_with_fillers() -> None:
    front, posted, _ = _rings()
    more, extra = netif.TxFlag.MORE_DATA, netif.TxFlag.EXTRA_INFO
    front.send_batch_nowait([
        netif.encode_tx_request(1, 0, extra | more, 7, 5000),
        netif.encode_extra_info(netif.ExtraType.GSO, netif.EXTRA_FLAG_MORE),
        netif.encode_extra_info(netif.ExtraType.HASH, 0),
        netif.encode_tx_request(2, 0, 0, 8, 904),
        netif.encode_tx_request(3, 0, 0, 9, 60),
    ])
    with anyio.fail_after(5):
        chain = await posted.take_chain()
        assert [r.id for r in chain.requests] == [7, 8] and len(chain.extras) == 2
        assert chain.fault is None and chain.slots == 4
        await posted.respond_chain(chain, None)
        answers = [netif.parse_tx_response(r) for r in front.receive_batch_nowait()]
        assert answers == [(7, -1), (0, 1), (0, 1), (8, -1)]
        single = await posted.take_chain()
    assert [r.id for r in single.requests] == [9]


async def test_a_chain_past_what_was_published_is_a_ring_level_error() -> None:
    front, posted, _ = _rings()
    front.send_batch_nowait([netif.encode_tx_request(1, 0, netif.TxFlag.MORE_DATA, i, 100)
                             for i in range(3)])
    with anyio.fail_after(5), pytest.raises(RemoteProtocolError, match="runs past"):
        await posted.take_chain()


async def test_the_chains_published_whole_are_taken_together_and_answered_with_one_push() -> None:
    front, posted, _ = _rings()
    more, extra = netif.TxFlag.MORE_DATA, netif.TxFlag.EXTRA_INFO
    front.send_batch_nowait([
        netif.encode_tx_request(1, 0, more, 1, 3000),
        netif.encode_tx_request(2, 0, 0, 2, 1000),
        netif.encode_tx_request(3, 0, extra, 3, 60),
        netif.encode_extra_info(netif.ExtraType.GSO, 0),
        netif.encode_tx_request(4, 0, 0, 4, 60),
        netif.encode_tx_request(5, 0, more, 5, 200),            # unfinished: left alone
    ])
    assert posted.take_ready_chains(limit=0) == []
    with anyio.fail_after(5):
        first = await posted.take_chain()
    ready = posted.take_ready_chains()
    assert [[r.id for r in c.requests] for c in [first, *ready]] == [[1, 2], [3], [4]]
    assert len(ready[0].extras) == 1
    assert posted.pending == 1                                   # the unfinished chain's head
    await posted.respond_chains([(first, [netif.encode_tx_response(i, 0) for i in (1, 2)]),
                                 (ready[0], None),
                                 (ready[1], [netif.encode_tx_response(4, 0)])])
    answers = [netif.parse_tx_response(r) for r in front.receive_batch_nowait()]
    assert answers == [(1, 0), (2, 0), (3, -1), (0, 1), (4, 0)]
    # the unfinished chain is still take_chain's to refuse
    with anyio.fail_after(5), pytest.raises(RemoteProtocolError, match="runs past"):
        await posted.take_chain()


async def test_negative_control_responses_counted_wrong_for_a_chain_are_refused() -> None:
    front, posted, _ = _rings()
    front.send_batch_nowait([netif.encode_tx_request(1, 0, netif.TxFlag.MORE_DATA, 1, 3000),
                             netif.encode_tx_request(2, 0, 0, 2, 1000)])
    with anyio.fail_after(5):
        chain = await posted.take_chain()
    with pytest.raises(ConfigError, match="1 responses to a chain of 2"):
        await posted.respond_chains([(chain, [netif.encode_tx_response(1, 0)])])
def _front_queue(layout: RingLayout, codec: SlotCodec) -> tuple[RequestQueue, BackRingChannel]:
    page = bytearray(4096)
    front_ev, back_ev = memory_event_pair()
    front = FrontRingChannel(FrontRing.init(page, layout), front_ev)
    back = BackRingChannel(BackRing.attach(page, layout), back_ev)
    return RequestQueue([front], codec), back


async def test_an_rx_extra_slot_answers_the_next_posted_buffer_by_position() -> None:
    # netif rx (ResponseExtra): the first response says extra-info; the slot after it is a GSO
    # extra with no id, answering the buffer posted after the first; the third is by id again
    queue, back = _front_queue(netif.RX_RING, netif.RX_CODEC)
    done = queue.completions()
    held = [queue.prepare_nowait() for _ in range(3)]
    assert all(r is not None for r in held)
    requests = [r for r in held if r is not None]
    for r in requests:
        netif.RX_REQUEST.pack_into(r.slot, 0, r.id, 0)
    queue.send_batch_nowait(requests, done)
    got = back.receive_batch_nowait()
    ids = [netif.parse_rx_request(s)[0] for s in got]
    extra = netif.encode_gso(1448, netif.GsoType.TCPV4)
    back.send_batch_nowait([
        netif.encode_rx_response(ids[0], 0, netif.RxFlag.EXTRA_INFO | netif.RxFlag.MORE_DATA,
                                 4096),
        extra,
        netif.encode_rx_response(ids[2], 0, 0, 100)])
    with anyio.fail_after(5):
        assert queue.poll() == 3
        answered = await done.get()
    assert [r.id for r in answered] == ids
    assert [r.extra for r in answered] == [False, True, False]
    assert bytes(answered[1].response) == extra


async def test_a_tx_filler_answers_the_extra_slot_whatever_its_id() -> None:
    # netif tx: the NULL answer to a GSO extra slot carries a stale id (Linux's netback writes
    # only its status); it is matched to the oldest extra slot in flight, never by id
    queue, back = _front_queue(netif.TX_RING, netif.TX_CODEC)
    done = queue.completions()
    first, slot, second = (queue.prepare_nowait() for _ in range(3))
    assert first is not None and slot is not None and second is not None
    more, extra = netif.TxFlag.MORE_DATA, netif.TxFlag.EXTRA_INFO
    netif.TX_REQUEST.pack_into(first.slot, 0, 1, 0, extra | more, 0, 5000)
    slot.slot[:8] = netif.encode_gso(1448, netif.GsoType.TCPV4)
    netif.TX_REQUEST.pack_into(second.slot, 0, 2, 0, 0, 0, 904)
    queue.send_batch_nowait([first, slot, second], done)
    assert [slot.extra, first.extra, second.extra] == [True, False, False]
    back.receive_batch_nowait()
    back.send_batch_nowait([netif.encode_tx_response(first.id, 0),
                            netif.encode_tx_response(0xBEEF, netif.Status.NULL),
                            netif.encode_tx_response(second.id, 0)])
    with anyio.fail_after(5):
        assert queue.poll() == 3
        answered = await done.get()
    assert answered == [first, slot, second]


async def test_a_filler_with_no_extra_slot_in_flight_fails_the_queue() -> None:
    queue, back = _front_queue(netif.TX_RING, netif.TX_CODEC)
    request = queue.prepare_nowait()
    assert request is not None
    netif.TX_REQUEST.pack_into(request.slot, 0, 1, 0, 0, 0, 60)
    queue.send_batch_nowait([request], queue.completions())
    back.receive_batch_nowait()
    back.send_batch_nowait([netif.encode_tx_response(request.id, netif.Status.NULL)])
    with pytest.raises(RemoteProtocolError, match="answering no extra-info slot"):
        queue.poll()
    assert isinstance(queue.error, RemoteProtocolError)
