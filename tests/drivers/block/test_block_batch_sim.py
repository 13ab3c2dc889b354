"""The batched block path on the simulated Xen, both ends in this process: a ring-full submitted
together is one push (at most one doorbell) from the frontend, and the backend answers it with
one push; the per-task API pushes once per request (the negative control).  Polling
(``poll_us`` on both ends) serves the same I/O correctly."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from ringkit.backends.block.service import ServiceConfig
from ringkit.frontends.block import BlockFrontend, ReadOp, WriteOp
from test_block_sim import DISK, backend, world

from ringkit import ConfigError
from ringkit.channel import MAX_POLL_US, LinkStats

pytestmark = pytest.mark.anyio

QD = 64
"""A whole two-page ring (64 slots): the backend takes it in one burst."""


def snapshot(stats: LinkStats) -> tuple[int, int, int]:
    return stats.pushes, stats.notifications, stats.sleeps


async def test_a_submitted_burst_is_one_push_each_way(tmp_path: Path) -> None:
    async with world(tmp_path) as w, backend(w) as be, \
            BlockFrontend(w.domu, 0, w.address.devid, ring_page_order=1) as disk:
        data = random.Random(1).randbytes(QD * 4096)
        await disk.write(0, data)
        front = disk.channel.stats
        back = be.queues[0].channel.stats
        await anyio.sleep(0.05)  # the backend is asleep on its event channel by now
        before_front, before_back = snapshot(front), snapshot(back)
        buffers = [bytearray(4096) for _ in range(QD)]
        results = await disk.submit([ReadOp(i * 4096, b) for i, b in enumerate(buffers)])
        assert results == [None] * QD
        assert b"".join(buffers) == data
        pushes, doorbells, _ = (a - b for a, b in zip(snapshot(front), before_front, strict=True))
        assert (pushes, doorbells) == (1, 1)
        back_pushes, back_doorbells, _ = (
            a - b for a, b in zip(snapshot(back), before_back, strict=True))
        assert back_pushes == 1 and back_doorbells <= 1, back

        # negative control: the same reads, one task each, push once per request
        before_front = snapshot(front)
        async with anyio.create_task_group() as tg:
            for i in range(QD):
                tg.start_soon(disk.read, i * 4096, 4096)
        assert front.pushes - before_front[0] == QD


async def test_writes_and_reads_submitted_together_land(tmp_path: Path) -> None:
    rng = random.Random(2)
    async with world(tmp_path) as w, backend(w), \
            BlockFrontend(w.domu, 0, w.address.devid, pool_pages=64) as disk:
        chunks = [rng.randbytes(rng.choice([512, 4096, 65536, 300 * 512])) for _ in range(16)]
        offsets = [i * (256 << 10) for i in range(len(chunks))]
        # the pool (64 pages) cannot hold them all at once: several waves
        assert await disk.submit([WriteOp(o, c) for o, c in zip(offsets, chunks, strict=True)]
                                 ) == [None] * len(chunks)
        buffers = [bytearray(len(c)) for c in chunks]
        assert await disk.submit([ReadOp(o, b) for o, b in zip(offsets, buffers, strict=True)]
                                 ) == [None] * len(chunks)
        assert buffers == chunks
    with open(w.image, "rb") as f:
        for offset, chunk in zip(offsets, chunks, strict=True):
            f.seek(offset)
            assert f.read(len(chunk)) == chunk


async def test_lent_pages_carry_reads_and_writes_on_a_real_ring(tmp_path: Path) -> None:
    """`lend` through the driver on the simulated Xen: a write leaves from the lent granted
    pages and a read lands in them (the backend maps them; nothing is copied on our side)."""
    rng = random.Random(3)
    async with world(tmp_path) as w, backend(w), \
            BlockFrontend(w.domu, 0, w.address.devid, pool_pages=64) as disk:
        data = rng.randbytes(40 * 4096)          # more than 11 segments: indirect requests
        async with disk.lend(len(data)) as buffer:
            buffer.view[:] = data
            await disk.write_lent(8192, buffer)
            buffer.view[:] = bytes(len(data))
            await disk.read_lent(8192, buffer)
            assert buffer.view == data
        assert await disk.read(8192, len(data)) == data
    with open(w.image, "rb") as f:
        f.seek(8192)
        assert f.read(len(data)) == data


@pytest.mark.parametrize("queues", [1, 2])
async def test_polling_on_both_ends_serves_the_same_io(tmp_path: Path, queues: int) -> None:
    rng = random.Random(queues)
    model = bytearray(DISK)
    config = ServiceConfig(poll_us=500)
    async with world(tmp_path) as w, backend(w, config) as be, \
            BlockFrontend(w.domu, 0, w.address.devid, queues=queues, poll_us=500) as disk:
        assert all(q.channel.poll_us == 500 for q in disk.queues)
        assert all(q.channel.poll_us == 500 for q in be.queues)

        region = DISK // 8

        async def worker(k: int) -> None:
            # each worker in its own region: its ops are ordered, the workers' are not
            for _ in range(30):
                offset = k * region + rng.randrange(0, region // 4096 - 4) * 4096
                length = rng.choice([512, 4096, 16384])
                if rng.random() < 0.5:
                    data = rng.randbytes(length)
                    model[offset:offset + length] = data
                    await disk.write(offset, data)
                else:
                    await disk.read(offset, length)

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(worker, k)
        got = await disk.read(0, DISK)
        polls = sum(q.channel.stats.polls for q in disk.queues)
        back_polls = sum(q.channel.stats.polls for q in be.queues)
    assert got == model
    assert polls > 0 and back_polls > 0


async def test_poll_us_is_checked_where_it_comes_in() -> None:
    with pytest.raises(ConfigError, match="poll_us"):
        ServiceConfig(poll_us=-1)
    with pytest.raises(ConfigError, match="poll_us"):
        ServiceConfig(poll_us=MAX_POLL_US + 1)
    assert ServiceConfig().poll_us == 0
    domain = SimpleNamespace(domid=1)  # the setting is checked before the domain is used
    for bad in (-1, MAX_POLL_US + 1, 2.5):
        with pytest.raises(ConfigError, match="poll_us"):
            BlockFrontend(domain, poll_us=bad)  # type: ignore[arg-type]
