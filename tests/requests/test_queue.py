"""RequestQueue and RequestServer over one in-memory ring (see pair.py): ids, the window, the
pool, batches, cancellation, disconnects, hostile responses and malformed requests."""

from __future__ import annotations

import random

import anyio
import pytest
from pair import (
    BACK,
    CODEC,
    LAYOUT,
    PLAIN,
    READ,
    RESPONSE,
    WRITE,
    IncomingRequest,
    decode,
    encode,
    pair,
)

from ringkit import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from ringkit.proto.ring import BackRing
from ringkit.requests import Field, GrantPool, Request, RequestError, RequestQueue, SlotCodec

pytestmark = pytest.mark.anyio


async def test_many_concurrent_callers_wait_for_the_window_and_the_pool() -> None:
    """300 callers, a window of 8 and 6 pages: everyone is answered, nobody gets a
    ResourceLimitError or a busy channel, and everything is given back."""
    results: dict[int, int] = {}

    async def caller(n: int) -> None:
        async with p.queue.request(pages=1 + n % 2) as req:
            encode(req.slot, READ, req.refs, value=n)
            rid, status, value = decode(await p.queue.call(req))
            assert (rid, status, value) == (req.id, 0, n)
            assert bytes(req.page(0)[:2]) == bytes([n & 0xFF]) * 2
            results[n] = value

    async with pair(pool_pages=6, window=8) as p:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(300):
                    tg.start_soon(caller, n)
        assert results == {n: n for n in range(300)}
        assert p.queue.held == 0 and p.queue.pool is not None
        assert p.queue.pool.free == p.queue.pool.size
        assert p.queue.stats.sent == 300 == p.queue.stats.answered


async def test_a_window_above_the_ring_is_cut_to_the_ring() -> None:
    async with pair(window=10_000) as p:
        assert p.queue.window == LAYOUT.entries(4096)


async def test_a_batch_goes_out_with_one_push_and_is_served_in_one_burst() -> None:
    async with pair() as p:
        requests = [await p.queue.prepare() for _ in range(16)]
        for n, req in enumerate(requests):
            encode(req.slot, PLAIN, (), value=n)
        pushes = p.queue.stats.pushes
        with anyio.fail_after(10):
            await p.queue.call_batch(requests)
        assert p.queue.stats.pushes == pushes + 1
        assert [decode(r.response)[2] for r in requests] == list(range(16))
        assert p.server.stats.pushes == 1 and p.server.stats.requests == 16
        assert p.front_events.notifications == 1  # one doorbell for the batch
        for req in requests:
            p.queue.release(req)


async def test_completions_come_a_wave_at_a_time() -> None:
    async with pair() as p:
        done = p.queue.completions()
        requests = [await p.queue.prepare() for _ in range(5)]
        for req in requests:
            encode(req.slot, PLAIN, ())
        p.queue.send_batch_nowait(requests, done)
        got: list[int] = []
        with anyio.fail_after(10):
            while len(got) < 5:
                got += [r.id for r in await done.get()]
        assert sorted(got) == sorted(r.id for r in requests)
        for req in requests:
            p.queue.release(req)


async def check_orphan_pages(queue_class: type[RequestQueue] = RequestQueue) -> None:
    """A caller cancelled while its request is in flight: its pages stay lent (the backend
    writes into them later) until the late answer, which is dropped."""
    gate = anyio.Event()

    async def slow(request: IncomingRequest) -> bytes:
        await gate.wait()
        for page in await request.pages():
            page[:4] = b"late"
        return RESPONSE.pack(request.id, 0, 0)

    async with pair(slow, pool_pages=4, queue_class=queue_class) as p:
        pool = p.queue.pool
        assert pool is not None
        with anyio.move_on_after(0.2):
            async with p.queue.request(pages=3) as req:
                encode(req.slot, READ, req.refs)
                await p.queue.call(req)
        free_while_in_flight, held = pool.free, p.queue.held
        gate.set()
        with anyio.fail_after(10):
            while p.queue.held or p.queue.stats.answered + len(p.ended) == 0:
                await anyio.sleep(0.01)
        free_at_end, orphans = pool.free, p.queue.stats.orphans
    # (asserted out here: a failure inside would come wrapped in the pair's task group)
    assert free_while_in_flight == 1, "the pages of an unanswered request were given back"
    assert held == 1
    assert free_at_end == 4 and orphans == 1


async def test_a_cancelled_request_keeps_its_pages_until_its_late_answer() -> None:
    await check_orphan_pages()


class CarelessQueue(RequestQueue):
    """Gives a request's pages back as soon as its caller leaves (the bug the check is for)."""

    def release(self, request: Request) -> None:
        self._give_back(request)


async def test_negative_control_a_queue_that_frees_pages_in_flight_is_caught() -> None:
    with pytest.raises(AssertionError, match="were given back"):
        await check_orphan_pages(CarelessQueue)


async def test_disconnect_fails_every_waiter_with_a_typed_error() -> None:
    gate = anyio.Event()

    async def stuck(request: IncomingRequest) -> bytes:
        await gate.wait()
        return RESPONSE.pack(request.id, 0, 0)

    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            async with p.queue.request(pages=4) as req:
                encode(req.slot, READ, req.refs)
                await p.queue.call(req)
        except PeerGoneError as exc:
            errors.append(exc)

    async with pair(stuck, pool_pages=8, window=3) as p:
        async with anyio.create_task_group() as tg:
            for _ in range(6):  # 2 in flight, 4 waiting for an id or for pages
                tg.start_soon(caller)
            await anyio.sleep(0.1)
            await p.back_events.aclose()  # the backend's end goes away
            with anyio.fail_after(10):
                while len(errors) < 6:
                    await anyio.sleep(0.01)
        assert len(errors) == 6
        with pytest.raises(PeerGoneError):
            await p.queue.prepare()
        assert any(isinstance(e, PeerGoneError) for e in p.ended)
        gate.set()


@pytest.mark.parametrize("lie", ["never-issued", "twice", "free-id"])
async def test_hostile_responses_fail_the_queue(lie: str) -> None:
    """A backend that answers an id never issued, answers one request twice, or answers an id
    nobody holds: RemoteProtocolError for the waiters and out of run()."""
    async with pair(serve=False) as p:
        back = BackRing.attach(p.ring, LAYOUT)
        first, second = await p.queue.prepare(), await p.queue.prepare()
        for req in (first, second):
            encode(req.slot, PLAIN, ())
        p.queue.send_batch_nowait([first, second])
        assert back.take_request() is not None and back.take_request() is not None
        lied = {"never-issued": 12345, "twice": first.id, "free-id": second.id + 1}[lie]
        for rid in (first.id, lied):
            back.put_response(RESPONSE.pack(rid, 0, 0))
        back.push_responses()
        p.back_events.notify()
        with anyio.fail_after(10):
            await p.queue.wait(first)  # the first answer is a good one
            with pytest.raises(RemoteProtocolError,
                               match=r"not an id this queue issued|answered twice|not in flight"):
                await p.queue.wait(second)
        assert isinstance(p.queue.error, RemoteProtocolError)
        with pytest.raises(RemoteProtocolError):
            await p.queue.prepare()
        assert [type(e) for e in p.ended] == [RemoteProtocolError]


async def test_a_check_hook_failing_poisons_the_queue() -> None:
    def refuse(request: object) -> None:
        raise RemoteProtocolError("test: impossible status")

    async with pair(check=refuse) as p:
        req = await p.queue.prepare()
        encode(req.slot, PLAIN, ())
        with anyio.fail_after(10), pytest.raises(RemoteProtocolError, match="impossible"):
            await p.queue.call(req)


async def test_misuse_is_a_local_error() -> None:
    async with pair() as p:
        req = await p.queue.prepare()
        encode(req.slot, PLAIN, ())
        p.queue.send_nowait(req)
        with pytest.raises(LocalProtocolError, match="not prepared"):
            p.queue.send_nowait(req)
        await p.queue.wait(req)
        p.queue.release(req)
        with pytest.raises(ConfigError, match="pages asked"):
            await p.queue.prepare(pages=1000)


async def test_out_of_order_answers_are_matched() -> None:
    async def shuffled(request: IncomingRequest) -> bytes:
        value = int.from_bytes(request.slot[8:16], "little")
        await anyio.sleep((20 - value) * 0.005)  # later requests are answered first
        return RESPONSE.pack(request.id, 0, value)

    async with pair(shuffled, concurrency=8) as p:
        order: list[int] = []

        async def caller(n: int) -> None:
            async with p.queue.request() as req:
                encode(req.slot, PLAIN, (), value=n)
                assert decode(await p.queue.call(req))[2] == n
                order.append(n)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(caller, n)
        assert sorted(order) == list(range(20))
        assert order != sorted(order), "the server answered in ring order"


@pytest.mark.parametrize("fault", ["count", "revoked", "foreign", "read-only"])
async def test_a_malformed_request_gets_an_error_response_and_the_ring_goes_on(
        fault: str) -> None:
    async with pair() as p:
        async with p.queue.request(pages=2) as req:
            refs = list(req.refs)
            if fault == "revoked":
                p.front_grants.revoke(refs[1])
            elif fault == "foreign":
                other = await p.front_grants.share(BACK + 7, 1)
                refs[1] = other.refs[0]
            elif fault == "read-only":
                ro = await p.front_grants.share(BACK, 1, writable=False)
                refs[1] = ro.refs[0]
            encode(req.slot, READ, refs, count=200 if fault == "count" else None)
            with anyio.fail_after(10):
                rid, status, _ = decode(await p.queue.call(req))
            assert (rid, status) == (req.id, -1)
            if fault == "foreign":
                await other.aclose()
            elif fault == "read-only":
                await ro.aclose()
        assert p.server.stats.refused == 1
        async with p.queue.request(pages=4) as req:  # the connection goes on
            encode(req.slot, WRITE, req.refs[2:])  # (pages a revoked ref left alone)
            req.page(2)[0], req.page(3)[0] = 5, 7
            assert decode(await p.queue.call(req))[1:] == (0, 12)


async def test_a_handler_bug_ends_run_with_its_exception() -> None:
    async def buggy(request: IncomingRequest) -> bytes:
        raise RuntimeError("driver bug")

    async with pair(buggy, serve=False) as p:
        req = await p.queue.prepare()
        encode(req.slot, PLAIN, ())
        p.queue.send_nowait(req)
        with anyio.fail_after(10), pytest.raises(RuntimeError, match="driver bug"):
            await p.server.run()


async def test_without_an_error_status_a_refusal_ends_the_connection() -> None:
    codec = SlotCodec(LAYOUT, request_id=Field(0, 4), response_id=Field(0, 4))

    async def refuse(request: IncomingRequest) -> bytes:
        raise RequestError("no such thing")

    async with pair(serve=False) as p:
        p.server.codec = codec
        p.server.handler = refuse
        req = await p.queue.prepare()
        encode(req.slot, PLAIN, ())
        p.queue.send_nowait(req)
        with anyio.fail_after(10), pytest.raises(RemoteProtocolError, match="no such thing"):
            await p.server.run()


async def test_random_traffic_with_cancellations_leaves_nothing_behind() -> None:
    rng = random.Random(18)

    async def jittery(request: IncomingRequest) -> bytes:
        await anyio.sleep(rng.random() * 0.003)
        return await _echo(request)

    async with pair(jittery, pool_pages=10, window=6, concurrency=3) as p:
        async def caller(n: int) -> None:
            with anyio.move_on_after(rng.random() * 0.05):
                async with p.queue.request(pages=rng.randint(0, 3)) as req:
                    encode(req.slot, READ if req.refs else PLAIN, req.refs, value=n)
                    assert decode(await p.queue.call(req))[2] == n

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(200):
                    tg.start_soon(caller, n)
            while p.queue.held:
                await anyio.sleep(0.01)
        assert p.queue.pool is not None and p.queue.pool.free == 10


async def _echo(request: IncomingRequest) -> bytes:
    from pair import echo_handler

    return await echo_handler(request)


async def test_a_queue_refuses_a_codec_of_another_ring() -> None:
    async with pair() as p:
        other = SlotCodec(type(LAYOUT)("other", request_size=32, response_size=8),
                          request_id=Field(0, 4), response_id=Field(0, 4))
        with pytest.raises(ConfigError, match="does not match"):
            RequestQueue([p.front_channel], other)
        pool = p.queue.pool
        assert isinstance(pool, GrantPool)


async def test_ids_must_fit_the_id_field() -> None:
    codec = SlotCodec(LAYOUT, request_id=Field(0, 1), response_id=Field(0, 1))
    async with pair(pages=16) as p:  # 512 slots: ids up to 511
        with pytest.raises(ConfigError, match="id field"):
            RequestQueue([p.front_channel], codec)
        assert CODEC.request_id.size == 4
