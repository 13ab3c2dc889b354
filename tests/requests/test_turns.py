"""`Turns`: work taken in order and done at once is finished in the order it was taken."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

from ringkit.requests import Turns

pytestmark = pytest.mark.anyio


async def _finish_order(turns: Turns, count: int) -> list[int]:
    finished: list[int] = []
    delays = random.Random(7).sample(range(count), count)   # later tickets often done first

    async def worker(ticket: int, delay: int) -> None:
        await anyio.sleep(delay / 1000)
        await turns.wait(ticket)
        try:
            finished.append(ticket)
        finally:
            turns.done()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for delay in delays:
                tg.start_soon(worker, turns.take(), delay)
    return finished


async def test_tickets_finish_in_the_order_they_were_taken() -> None:
    turns = Turns()
    assert await _finish_order(turns, 30) == list(range(30))
    assert turns.next == 30
    await turns.wait(30)   # its turn: no wait


async def test_negative_control_without_waiting_the_order_is_the_work_s() -> None:
    class NoTurns(Turns):
        async def wait(self, ticket: int) -> None:
            await anyio.lowlevel.checkpoint()

    assert await _finish_order(NoTurns(), 30) != list(range(30))
