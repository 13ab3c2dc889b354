"""`BlockClient.submit`: a batch of reads and writes published together, answers gathered
together, against a backend that answers in random order (`HostilePeer`), and on the simulated
Xen where the rings' counters show one push for a burst each way."""

from __future__ import annotations

import random

import anyio
import pytest
from hostile_peer import PAGE, HostilePeer, free_pages
from ringkit.frontends.block import BlockIOError, ReadOp, WriteOp

from ringkit import ConfigError, RemoteProtocolError
from ringkit.proto import blkif

pytestmark = pytest.mark.anyio

DISK = 8 << 20


@pytest.mark.parametrize(("pool_pages", "indirect"), [(11, 0), (40, 16), (300, 256)])
async def test_a_batch_of_mixed_ops_answered_in_random_order(pool_pages: int,
                                                             indirect: int) -> None:
    seed = pool_pages + indirect
    rng = random.Random(seed)
    disk = bytearray(rng.randbytes(DISK))
    model = bytearray(disk)
    peer = HostilePeer(pool_pages, disk, indirect=indirect, seed=seed)
    peer.room = 7  # a ring with few free slots: the batch goes out in several pushes
    client = peer.new_client()
    # disjoint 64 KiB areas, so that no op of the batch depends on another
    areas = rng.sample(range(DISK // (64 << 10)), 24)
    ops: list[ReadOp | WriteOp] = []
    reads: list[tuple[bytearray, bytes]] = []
    for area in areas:
        sectors = rng.choice([1, 8, 9, 24, 128])
        offset = area * (64 << 10) + rng.randrange(0, 129 - sectors) * 512
        length = sectors * 512
        if rng.random() < 0.4:
            data = rng.randbytes(length)
            model[offset:offset + length] = data
            ops.append(WriteOp(offset, data))
        else:
            buffer = bytearray(length)
            reads.append((buffer, bytes(disk[offset:offset + length])))
            ops.append(ReadOp(offset, buffer))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            results = await client.submit(ops)
            server.cancel_scope.cancel()
    assert results == [None] * len(ops)
    assert all(got == want for got, want in reads)
    assert disk == model
    assert not peer.violations
    assert client.in_flight == 0 and free_pages(client) == pool_pages
    assert sum(peer.batches) == peer.requests
    assert max(peer.batches) > 1  # several requests per push


async def test_one_push_for_a_batch_that_fits() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, hold=1.0)  # answers when told to
    client = peer.new_client()
    buffers = [bytearray(4096) for _ in range(16)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.submit, [ReadOp(i * 8192, b) for i, b in enumerate(buffers)])
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            assert peer.batches == [16] and len(peer.in_flight) == 16
            await peer.drain()


async def test_negative_control_at_depth_one_a_batch_goes_one_by_one() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, seed=3)
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            results = await client.submit([ReadOp(i * 8192, bytearray(4096)) for i in range(16)],
                                          depth=1)
            server.cancel_scope.cancel()
    assert results == [None] * 16
    assert peer.batches == [1] * 16 and peer.requests == 16


async def test_an_error_answer_fails_only_its_op() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, seed=5)
    peer.failing = {16}  # the request starting at sector 16 (byte 8192)
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            results = await client.submit([ReadOp(i * 8192, bytearray(4096)) for i in range(4)])
            server.cancel_scope.cancel()
    assert [r is None for r in results] == [True, False, True, True]
    assert isinstance(results[1], BlockIOError) and results[1].sector == 16
    assert free_pages(client) == 64


async def test_bad_ops_are_refused_before_anything_is_sent() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0)
    client = peer.new_client()
    good = ReadOp(0, bytearray(4096))
    for bad in (ReadOp(DISK, bytearray(512)), WriteOp(100, b"x" * 512),
                ReadOp(0, b"\0" * 512), "read"):
        with pytest.raises(ConfigError):
            await client.submit([good, bad])  # type: ignore[list-item]
    assert peer.requests == 0 and free_pages(client) == 64


async def test_a_cancelled_batch_keeps_its_pages_until_answered() -> None:
    peer = HostilePeer(20, bytearray(DISK), indirect=0, hold=1.0)
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def run() -> None:
                with scope:
                    await client.submit([ReadOp(i * PAGE, bytearray(PAGE)) for i in range(30)])

            tg.start_soon(run)
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            assert len(peer.in_flight) == 20  # the pool's worth; the rest waits for pages
            scope.cancel()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert free_pages(client) == 0  # out and unanswered: still the backend's
            await peer.drain()
    assert free_pages(client) == 20 and client.in_flight == 0
    assert not peer.violations


async def test_a_hostile_answer_fails_the_batch() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, hold=1.0)
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async def run() -> None:
                with pytest.raises(RemoteProtocolError):
                    await client.submit([ReadOp(i * PAGE, bytearray(PAGE)) for i in range(4)])

            tg.start_soon(run)
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            with pytest.raises(RemoteProtocolError):
                await peer.respond(blkif.Response(0xBAD, blkif.Op.READ, blkif.Status.OKAY))
    assert free_pages(client) == 64


async def test_depth_bounds_the_requests_in_flight() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, seed=9)
    client = peer.new_client()
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(peer.in_flight))
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.serve)
            tg.start_soon(watch)
            results = await client.submit([ReadOp(i * 8192, bytearray(4096)) for i in range(50)],
                                          depth=4)
            tg.cancel_scope.cancel()
    assert results == [None] * 50
    assert 1 < most <= 4  # negative control below: without depth, all 50 go out
    assert max(peer.batches) <= 4
    with pytest.raises(ConfigError, match="depth"):
        await client.submit([], depth=0)


async def test_negative_control_without_depth_the_pool_bounds_it() -> None:
    peer = HostilePeer(64, bytearray(DISK), indirect=0, hold=1.0)
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.submit, [ReadOp(i * 8192, bytearray(4096)) for i in range(50)])
            while len(peer.in_flight) < 32:  # nothing answered: only the window stops it
                await anyio.lowlevel.checkpoint()
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert peer.batches == [32]  # the ring's 32 slots in one push, then it waits
            await peer.drain()
            while len(peer.in_flight) < 18:
                await anyio.lowlevel.checkpoint()
            await peer.drain()
    assert peer.batches == [32, 18]


async def test_a_batch_reuses_its_request_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """`submit` allocates no request record (nor slot, nor response buffer) per request: the
    request queue made one per id when it was built, and reuses them.  Negative control: building
    a client does allocate them (the counter counts)."""
    from ringkit.requests import front as front_module

    created = 0
    original = front_module.Request.__init__

    def counting(self: front_module.Request, *args: object) -> None:
        nonlocal created
        created += 1
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(front_module.Request, "__init__", counting)
    peer = HostilePeer(64, bytearray(DISK), indirect=0, seed=9)
    client = peer.new_client()
    at_start = created
    ops = [ReadOp(i * 8192, bytearray(4096)) for i in range(200)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            assert await client.submit(ops, depth=16) == [None] * 200
            assert await client.submit(ops, depth=16) == [None] * 200
            server.cancel_scope.cancel()
    assert at_start == client.queue.window == 32    # one per id, when the client was built
    assert created == at_start, f"{created - at_start} records allocated per request"
