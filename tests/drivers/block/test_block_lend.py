"""`BlockClient.lend`: granted pool pages lent to the caller, so that reads land in them and
writes leave from them without a copy -- against `HostilePeer`, which scribbles over a read's
pages as soon as it has the request, answers in random order and reports any page used by two
requests at once."""

from __future__ import annotations

import random

import anyio
import pytest
from hostile_peer import PAGE, HostilePeer, free_pages
from ringkit.frontends.block import PoolBuffer, StaleReadError

from ringkit import ConfigError
from ringkit.proto import blkif
from ringkit.requests import Request

pytestmark = pytest.mark.anyio

DISK = 8 << 20


def no_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make a copy of data into or out of a request's pages (`Request.write_data` /
    `read_data`, how the client's copying calls move data) fail the test; return the list of
    calls."""
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append("copy")
        raise AssertionError("data copied through the pool")

    monkeypatch.setattr(Request, "write_data", refuse)
    monkeypatch.setattr(Request, "read_data", refuse)
    return calls


@pytest.mark.parametrize(("pool_pages", "indirect", "length"),
                         [(16, 0, 512), (16, 0, 11 * PAGE), (40, 16, 32 * PAGE + 1024),
                          (300, 256, 280 * PAGE)])
async def test_lent_reads_and_writes_move_no_bytes_through_a_copy(
        pool_pages: int, indirect: int, length: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(length)
    disk = bytearray(rng.randbytes(DISK))
    peer = HostilePeer(pool_pages, disk, indirect=indirect, seed=length)
    client = peer.new_client()
    copies = no_copies(monkeypatch)
    offset = 3 * PAGE + 512
    data = rng.randbytes(length)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            async with client.lend(length) as buffer:
                assert isinstance(buffer, PoolBuffer) and len(buffer.view) == length
                buffer.view[:] = data
                await client.write_lent(offset, buffer)
                buffer.view[:] = bytes(length)
                await client.read_lent(offset + PAGE, buffer)
                expected = bytes(disk[offset + PAGE:offset + PAGE + length])
                assert buffer.view == expected
                # ... and those are the granted pages themselves, not a copy of them
                start = buffer.pages.start * PAGE
                assert peer.memory[start:start + length] == expected
            server.cancel_scope.cancel()
    assert disk[offset:offset + length] == data
    assert copies == [] and peer.violations == [] and not peer.in_flight
    assert free_pages(client) == pool_pages
    assert buffer.released


async def test_negative_control_the_copying_calls_do_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same peer with `read`/`write`: the copy guard catches them (so it would catch a
    lent call that copied).  On the Python path, whose copies the guard sees (the C shadow
    table's copies are in C)."""
    peer = HostilePeer(16, bytearray(DISK), indirect=0)
    client = peer.new_client(fast_path=False)
    copies = no_copies(monkeypatch)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            server.start_soon(peer.serve)
            with pytest.raises(AssertionError, match="copied through the pool"):
                await client.write(0, bytes(PAGE))
            server.cancel_scope.cancel()
    assert copies == ["copy"]


async def test_a_cancelled_lent_read_keeps_its_pages_until_answered() -> None:
    """The caller gives up on a lent read in flight and leaves the block: the pages must not
    go back to the pool before the backend answers (it may still write into them), then must."""
    peer = HostilePeer(16, bytearray(DISK), indirect=0, hold=1.0)  # never answers by itself
    client = peer.new_client()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async def reader() -> None:
                async with client.lend(4 * PAGE) as buffer:
                    await client.read_lent(0, buffer)

            tg.start_soon(reader)
            while not peer.in_flight:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert free_pages(client) == 12, "the lent pages went back while the read was in flight"
    # a second lend now gets other pages: the peer would report reuse
    async with anyio.create_task_group() as tg:
        async def second() -> None:
            async with client.lend(12 * PAGE) as buffer:
                await client.read_lent(PAGE, buffer)
        tg.start_soon(second)
        while len(peer.in_flight) < 2:
            await anyio.sleep(0.001)
        await peer.drain()
    assert peer.violations == []
    assert free_pages(client) == 16


async def test_a_lent_read_the_backend_did_not_write_is_stale() -> None:
    """verify_reads covers lent reads too: an OKAY answer that left the pages alone."""
    peer = HostilePeer(16, bytearray(DISK), indirect=0, scribble=False)
    client = peer.new_client(verify_reads=True)

    async def answer_without_writing() -> None:
        while True:
            await anyio.sleep(0.001)
            for rid, held in list(peer.in_flight.items()):
                del peer.in_flight[rid]
                await peer.respond(blkif.Response(rid, held.operation, blkif.Status.OKAY))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_without_writing)
            async with client.lend(2 * PAGE) as buffer:
                with pytest.raises(StaleReadError):
                    await client.read_lent(0, buffer)
            tg.cancel_scope.cancel()
    assert free_pages(client) == 16


async def test_bad_lends_are_refused_with_what_was_wrong() -> None:
    peer = HostilePeer(16, bytearray(DISK), indirect=0)
    client = peer.new_client()
    for length in (0, -512, 100, 17 * PAGE):
        with pytest.raises(ConfigError, match="lend of"):
            async with client.lend(length):
                pass
    async with client.lend(PAGE) as buffer:
        pass
    with pytest.raises(ConfigError, match="given back already"):
        await client.read_lent(0, buffer)
    other = HostilePeer(16, bytearray(DISK), indirect=0).new_client()
    async with other.lend(PAGE) as foreign:
        with pytest.raises(ConfigError, match="another block client"):
            await client.write_lent(0, foreign)
    with pytest.raises(ConfigError, match="past the end"):
        async with client.lend(PAGE) as buffer:
            await client.write_lent(DISK, buffer)
    assert free_pages(client) == 16
