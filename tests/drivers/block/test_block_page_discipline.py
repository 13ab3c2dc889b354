"""BlockClient's page discipline against a backend that does all it may, at the worst moment.

A read that completes OKAY must return exactly what the backend wrote into that request's
pages: the frontend may hand a pool page to a new request only once the previous one was
answered and its data copied out; a cancelled caller's pages stay out of the pool until their
answer comes, since the backend may still be writing into them; a request never names a page
twice, and its indirect segment list never shares a page with data.  `HostilePeer` records any
breach (see its docstring); every read is compared with the disk.  These were written while
hunting a stale read seen against Linux's blkback under emulated Xen (docs/real-xen.md): they
rule out the frontend's pool bookkeeping as its cause.
"""

from __future__ import annotations

import random

import anyio
import pytest
from hostile_peer import BASE_REF, PAGE, SCRIBBLE, HostilePeer, free_pages
from ringkit.frontends.block.client import ReadOp

from ringkit import PeerGoneError, RemoteProtocolError

pytestmark = pytest.mark.anyio

DISK = 8 << 20
SIZES = [1, 3, 8, 9, 88, 300, 2048, 2100, 4096]  # sectors: partial pages to 2 MiB


def random_disk(seed: int) -> bytearray:
    return bytearray(random.Random(seed).randbytes(DISK))


@pytest.mark.parametrize(("pool_pages", "indirect"),
                         [(11, 0), (20, 256), (64, 0), (257, 256), (300, 256), (512, 256),
                          (40, 16)])
@pytest.mark.parametrize("cancel", [False, True], ids=["answered", "cancelled"])
async def test_reads_exact_and_pages_never_shared(pool_pages: int, indirect: int,
                                                  cancel: bool) -> None:
    """Many concurrent reads and writes (of the bytes already there, so every read has one
    right answer) answered in random order; with `cancel`, a third of the callers give up at
    a random moment, most while their request is in flight."""
    seed = pool_pages * 1000 + indirect + cancel
    peer = HostilePeer(pool_pages, random_disk(seed), indirect=indirect, seed=seed)
    client = peer.new_client()
    rng = random.Random(seed)
    wrong: list[str] = []
    cancelled = 0

    async def caller(index: int) -> None:
        nonlocal cancelled
        sectors = rng.choice(SIZES)
        offset = rng.randrange(0, DISK // 512 - sectors) * 512
        length = sectors * 512
        want = bytes(peer.disk[offset:offset + length])
        with anyio.CancelScope() as scope:
            if cancel and rng.random() < 0.33:
                rounds = rng.randrange(1, 40)

                async def give_up() -> None:
                    for _ in range(rounds):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()

                callers.start_soon(give_up)
            if rng.random() < 0.3:
                await client.write(offset, want)
            else:
                got = await client.read(offset, length)
                if got != want:
                    bad = [p for p in range(-(-length // PAGE))
                           if got[p * PAGE:(p + 1) * PAGE] != want[p * PAGE:(p + 1) * PAGE]]
                    wrong.append(f"read of {length} bytes at {offset}: pages {bad} differ")
        cancelled += scope.cancel_called

    with anyio.fail_after(60):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            async with anyio.create_task_group() as callers:
                for index in range(40):
                    callers.start_soon(caller, index)
            await peer.drain()
            server.cancel_scope.cancel()
    assert not peer.violations
    assert not wrong
    assert client.in_flight == 0
    # every page is back in the pool: one request of the whole pool gets them all
    assert free_pages(client) == pool_pages
    if cancel:
        assert cancelled


async def test_cancelled_read_keeps_its_pages_until_answered() -> None:
    """A caller cancelled while its read is in flight does not return the pages: a second read
    that needs them waits for the first one's answer, and gets its own data, not the data the
    backend was still writing for the first."""
    disk = random_disk(7)
    peer = HostilePeer(20, disk, indirect=0, hold=1.0)  # answers only when told to
    client = peer.new_client()
    first_length = 11 * PAGE
    second_offset = 1 << 20

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()

            async def read_first() -> None:
                with first:
                    await client.read(0, first_length)

            tg.start_soon(read_first)
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            first.cancel()
            (first_id,) = peer.in_flight
            second: list[bytes] = []

            async def read_second() -> None:
                second.append(await client.read(second_offset, first_length))

            tg.start_soon(read_second)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            # 9 pages free, 11 needed: the second read waits instead of taking the first's
            assert list(peer.in_flight) == [first_id]
            assert peer.requests == 1
            await peer.answer(first_id)    # the backend writes the first read's data, late
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            await peer.drain()
    assert second == [bytes(disk[second_offset:second_offset + first_length])]
    assert not peer.violations
    assert free_pages(client) == 20


async def test_read_data_is_copied_after_the_answer() -> None:
    """The pages of a read hold the backend's scribble until it answers; what the caller gets
    is what was written by the time of the answer, whatever the pages held before."""
    disk = random_disk(9)
    peer = HostilePeer(40, disk, indirect=16, hold=1.0)
    client = peer.new_client()
    peer.memory[:] = b"\x11" * len(peer.memory)   # "previous contents" of the whole pool
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            result: list[bytes] = []

            async def read() -> None:
                result.append(await client.read(4096, 16 * PAGE))

            tg.start_soon(read)
            while not peer.in_flight:
                await anyio.lowlevel.checkpoint()
            (rid,) = peer.in_flight
            held = peer.in_flight[rid]
            assert all(bytes(peer.page(g)) == SCRIBBLE for g in held.segments.grefs)
            # the indirect segment list lives in a pool page of its own
            assert len(held.grefs) == 17 and min(held.grefs) >= BASE_REF
            await peer.answer(rid)
    assert result == [bytes(disk[4096:4096 + 16 * PAGE])]


@pytest.mark.parametrize("batched", [False, True], ids=["read", "submit"])
async def test_cancelling_at_every_point_of_a_send_over_a_real_ring(batched: bool) -> None:
    """The request queue takes a request as sent only once it is pushed; a cancellation that
    freed its pages after the push would free pages the backend still writes into (and its
    answer would then be "not in flight").  The caller is cancelled after 0, 1, 2, ...
    scheduling rounds, so every point of the send path is hit, with the client's own receive
    loop running and a backend that answers in random order; no answer is ever unexpected and
    no page shared.  With `batched`, the same for `submit` of two reads."""
    disk = random_disk(11)
    peer = HostilePeer(33, disk, indirect=0, seed=11)
    client = peer.new_client()
    ring_errors: list[BaseException] = []

    async def receive() -> None:
        try:
            await client.run()
        except (RemoteProtocolError, PeerGoneError) as exc:
            ring_errors.append(exc)

    answered = 0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            tg.start_soon(peer.serve)
            for rounds in range(60):
                offset = rounds * 11 * PAGE
                with anyio.CancelScope() as scope:
                    async def give_up(scope: anyio.CancelScope = scope,
                                      rounds: int = rounds) -> None:
                        for _ in range(rounds):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()

                    tg.start_soon(give_up)
                    if batched:
                        offset *= 2
                        got = bytearray(22 * PAGE)
                        view = memoryview(got)
                        assert await client.submit([ReadOp(offset, view[:11 * PAGE]),
                                                    ReadOp(offset + 11 * PAGE, view[11 * PAGE:])]
                                                   ) == [None, None]
                        assert got == disk[offset:offset + 22 * PAGE]
                    else:
                        got = await client.read(offset, 11 * PAGE)
                        assert got == disk[offset:offset + 11 * PAGE]
                    answered += 1
            while client.in_flight or peer.in_flight:
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
    assert not ring_errors and not peer.violations
    assert 0 < answered < 60
    assert free_pages(client) == 33
