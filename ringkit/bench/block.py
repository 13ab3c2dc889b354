"""Block benchmark: the blkif pair over the simulated Xen vs direct file I/O on the same image.

The image lives on a tmpfs (``/dev/shm`` by default) so the disk is out of the picture and the
figures show ringkit's own cost.  Three measurements, each against its direct baseline in this
process (``os.pwritev`` / ``os.preadv`` on the same file):

1. sequential 1 MiB writes over the image, one request at a time (each 1 MiB write is one
   INDIRECT request of 256 segments), then with 4 requests in flight (4 interleaved streams);
2. sequential 1 MiB reads into a preallocated buffer, the same ways;
3. 4 KiB random reads at queue depth 32, in IOPS: submitted in batches through
   `BlockFrontend.submit` (32 in flight, one push per burst), and with the one-request-per-task
   API (32 tasks, each with one read in flight); the baseline is one process doing the same
   reads one after the other with ``os.preadv``.

Everything runs twice: with both ends sleeping on the event channel, and with both ends
polling the ring for ``--poll-us`` first.  Beside each figure it prints, per request and for
each side, the doorbells rung, the event-channel sleeps, the polling windows and the process
CPU time (the baseline's CPU time too), so that one sees whether the hold-off and the
batching work.  The backend runs in its own process (``python -m ringkit.bench.block backend
...``; it reports its counters when the parent asks on its stdin), the frontend in this one,
the simulator in a third.  It prints numbers and asserts nothing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.abc
import click

from ..backends.block.config import ServiceConfig
from ..backends.block.device import BlockBackend
from ..channel import MAX_POLL_US
from ..device import DeviceAddress, create_device
from ..frontends.block import ReadOp
from ..frontends.block.device import BlockFrontend
from ._counters import describe, per_request, snapshot

__all__ = ("BATCH", "MIB", "POOL_PAGES", "QD", "Figure", "command")


MIB = 1 << 20
POOL_PAGES = 1000
"""The frontend's granted pages: three 1 MiB requests (256 data pages and one indirect page
each) fit at once, the most under gntalloc's default limit of 1024 grants per process with a
16-page ring; also within the backend's default persistent-grant limit (1056), so no page is
mapped per request after warm-up."""
QD = 32
"""Queue depth of the random-read runs."""
BATCH = 256
"""Reads per `submit` call of the batched random-read run (QD of them in flight at a time)."""


class Figure(NamedTuple):
    """One measurement: its `value` (MiB/s or IOPS), and per request the counters of each side
    (`ringkit.bench._counters`; ``back`` is empty for the direct baseline)."""

    value: float
    front: dict[str, float]
    back: dict[str, float]


def _direct_sequential(path: Path, size: int, write: bool, passes: int) -> Figure:
    """MiB/s of 1 MiB pwritev/preadv over the file, in this process."""
    buf = bytearray(os.urandom(MIB))
    view = [memoryview(buf)]
    fd = os.open(path, os.O_RDWR)
    try:
        before = snapshot()
        start = time.perf_counter()
        for _ in range(passes):
            for offset in range(0, size, MIB):
                if write:
                    os.pwritev(fd, view, offset)
                else:
                    os.preadv(fd, view, offset)
        elapsed = time.perf_counter() - start
        after = snapshot()
    finally:
        os.close(fd)
    requests = passes * size // MIB
    return Figure(requests / elapsed, per_request(before, after, requests), {})


def _direct_random(path: Path, size: int, count: int) -> Figure:
    """IOPS of 4 KiB random preadv, one at a time, in this process."""
    rng = random.Random(1)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    buf = [memoryview(bytearray(4096))]
    fd = os.open(path, os.O_RDONLY)
    try:
        before = snapshot()
        start = time.perf_counter()
        for offset in offsets:
            os.preadv(fd, buf, offset)
        elapsed = time.perf_counter() - start
        after = snapshot()
    finally:
        os.close(fd)
    return Figure(count / elapsed, per_request(before, after, count), {})


async def _backend_main(directory: str, frontend_id: int, image: str, poll_us: int,
                        io_depth: int = 1, io_engine: str = "auto") -> None:
    from ..sim import connect

    config = ServiceConfig(poll_us=poll_us, io_depth=io_depth, io_engine=io_engine)
    async with connect(directory, 0) as dom0, BlockBackend(dom0, frontend_id, 0, image=image,
                                                           config=config) as backend:
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_answer_snapshots, backend)
            await backend.run(once=True)
            tg.cancel_scope.cancel()


async def _answer_snapshots(backend: BlockBackend) -> None:
    """Print a snapshot of the backend's counters for every line the parent writes."""
    fd = sys.stdin.fileno()
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, 4096)
        if not data:
            return
        for _ in range(data.count(b"\n")):
            print(json.dumps(snapshot(queue.channel.stats for queue in backend.queues)),
                  flush=True)


class _Backend:
    """The backend process, seen from the parent: its readiness and counter snapshots."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self._buffer:
            self._buffer += await self._stdout.receive()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def snapshot(self) -> dict[str, float]:
        await self._stdin.send(b"snapshot\n")
        result: dict[str, float] = json.loads(await self.line())
        return result


async def _measure(size: int, passes: int, random_reads: int, image: Path, order: int,
                   poll_us: int) -> dict[str, Figure]:
    from ..sim import SimXen

    results: dict[str, Figure] = {}
    async with SimXen.start() as xen:
        guest = await xen.create_domain("bench-guest")
        async with xen.connect(0) as dom0:
            await create_device(dom0.store, DeviceAddress("vbd", guest, 0, 0),
                                backend_nodes={"params": str(image), "mode": "w"})
        argv = [sys.executable, "-m", "ringkit.bench.block", "backend", str(xen.directory),
                str(guest), str(image), str(poll_us)]
        async with await anyio.open_process(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE) as proc:
            back = _Backend(proc)
            await back.line()  # ready
            async with xen.connect(guest) as domu, \
                    BlockFrontend(domu, 0, 0, ring_page_order=order, pool_pages=POOL_PAGES,
                                  poll_us=poll_us) as disk:
                data = os.urandom(MIB)
                target = memoryview(bytearray(MIB))

                async def measured(key: str, requests: int,
                                   body: Callable[[], Awaitable[None]]) -> None:
                    front_before = snapshot(queue.channel.stats for queue in disk.queues)
                    back_before = await back.snapshot()
                    start = time.perf_counter()
                    await body()
                    elapsed = time.perf_counter() - start
                    front_after = snapshot(queue.channel.stats for queue in disk.queues)
                    back_after = await back.snapshot()
                    results[key] = Figure(requests / elapsed,
                                          per_request(front_before, front_after, requests),
                                          per_request(back_before, back_after, requests))

                def sequential(write: bool, depth: int) -> Callable[[], Awaitable[None]]:
                    async def stream(k: int) -> None:
                        buf = memoryview(bytearray(MIB))
                        for _ in range(passes):
                            for offset in range(k * MIB, size, depth * MIB):
                                if write:
                                    await disk.write(offset, data)
                                else:
                                    await disk.read_into(offset, buf)

                    async def run() -> None:
                        async with anyio.create_task_group() as tg:
                            for k in range(depth):
                                tg.start_soon(stream, k)
                    return run

                # warm-up: with several requests in flight every pool page gets used, so the
                # backend maps each persistent grant once, outside the measurements
                await sequential(True, 4)()
                mib = passes * size // MIB  # one request per MiB (256 indirect segments)
                await measured("seq_write", mib, sequential(True, 1))
                await measured("seq_read", mib, sequential(False, 1))
                await measured("seq_write_qd4", mib, sequential(True, 4))
                await measured("seq_read_qd4", mib, sequential(False, 4))
                await disk.read_into(0, target)
                if bytes(target) != data:
                    raise click.ClickException("read-back mismatch: the benchmark is broken")

                def lent(write: bool) -> Callable[[], Awaitable[None]]:
                    # zero-copy: the data is made in (or read from) the granted pages
                    async def run() -> None:
                        async with disk.lend(MIB) as buffer:
                            buffer.view[:] = data
                            for _ in range(passes):
                                for offset in range(0, size, MIB):
                                    if write:
                                        await disk.write_lent(offset, buffer)
                                    else:
                                        await disk.read_lent(offset, buffer)
                    return run

                await measured("seq_write_lent", mib, lent(True))
                await measured("seq_read_lent", mib, lent(False))
                await disk.read_into(size - MIB, target)
                if bytes(target) != data:
                    raise click.ClickException("lent write-back mismatch: the benchmark is "
                                               "broken")

                rng = random.Random(2)
                offsets = [rng.randrange(size // 4096) * 4096 for _ in range(random_reads)]
                per_task = random_reads // QD

                async def batched() -> None:
                    # io_uring style: one submit per BATCH reads, QD of them kept in flight
                    buffers = [bytearray(4096) for _ in range(BATCH)]
                    for first in range(0, QD * per_task, BATCH):
                        part = offsets[first:first + BATCH]
                        await disk.submit([ReadOp(offset, buffers[i])
                                           for i, offset in enumerate(part)], depth=QD)

                async def tasks() -> None:
                    async def reader(k: int) -> None:
                        for offset in offsets[k * per_task:(k + 1) * per_task]:
                            await disk.read(offset, 4096)

                    async with anyio.create_task_group() as tg:
                        for k in range(QD):
                            tg.start_soon(reader, k)

                await measured("rand_read_qd32", QD * per_task, batched)
                await measured("rand_read_qd32_tasks", QD * per_task, tasks)
            await proc.stdin.aclose()  # type: ignore[union-attr]
            await proc.wait()
    return results


_ROWS = (("seq_write", "sequential 1 MiB writes", "MiB/s"),
        ("seq_read", "sequential 1 MiB reads", "MiB/s"),
        ("seq_write_qd4", "  writes, 4 in flight", "MiB/s"),
        ("seq_read_qd4", "  reads, 4 in flight", "MiB/s"),
        ("seq_write_lent", "  writes, lent pages", "MiB/s"),
        ("seq_read_lent", "  reads, lent pages", "MiB/s"),
        ("rand_read_qd32", "4 KiB random reads QD32", "IOPS"),
        ("rand_read_qd32_tasks", "  same, a task per read", "IOPS"))
_DIRECT = {"seq_write": "seq_write", "seq_read": "seq_read", "seq_write_qd4": "seq_write",
          "seq_read_qd4": "seq_read", "seq_write_lent": "seq_write",
          "seq_read_lent": "seq_read", "rand_read_qd32": "rand_read_qd32",
          "rand_read_qd32_tasks": "rand_read_qd32"}
"""The direct baseline each figure is compared with (direct I/O has no queue depth here)."""


def _best(runs: list[dict[str, Figure]]) -> dict[str, Figure]:
    """Each figure's best run (the least disturbed on a shared machine), with its counters."""
    return {key: max((run[key] for run in runs), key=lambda f: f.value) for key in runs[0]}


def _report(modes: dict[str, dict[str, Figure]], direct: dict[str, Figure]) -> None:
    names = list(modes)
    click.echo(f"{'':28}" + "".join(f"{name:>16}" for name in names) + f"{'direct':>16}"
               + "".join(f"{'ratio ' + name.split()[0]:>16}" for name in names))
    for key, label, unit in _ROWS:
        base = direct[_DIRECT[key]]
        values = [modes[name][key].value for name in names]
        click.echo(f"{label:<28}" + "".join(f"{v:>10.0f} {unit:<5}" for v in values)
                   + f"{base.value:>10.0f} {unit:<5}"
                   + "".join(f"{v / base.value:>15.2f}x" for v in values))
    click.echo("per request (doorbells rung, event-channel sleeps, polling windows, CPU time):")
    for key, label, _ in _ROWS:
        click.echo(f"  {label.strip()}: " + describe("direct", direct[_DIRECT[key]].front)
                   .replace(" 0.00 doorbells 0.00 sleeps 0.00 polls", ""))
        for name in names:
            figure = modes[name][key]
            click.echo(f"    {name:<14}{describe('front', figure.front)} | "
                       f"{describe('back', figure.back)}")


@click.command("block")
@click.option("--size", default="128M", show_default=True,
              help="Image size (the sequential runs cover all of it).")
@click.option("--passes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Sequential passes over the image.")
@click.option("--random-reads", default=20000, show_default=True,
              type=click.IntRange(min=QD), help="4 KiB random reads for the QD32 runs.")
@click.option("--tmpfs", default="/dev/shm", show_default=True,
              type=click.Path(file_okay=False, exists=True),
              help="Directory on a tmpfs for the image.")
@click.option("--ring-page-order", default=0, show_default=True, type=click.IntRange(0, 4),
              help="Ring size the frontend asks for (2**order pages).")
@click.option("--poll-us", default=50, show_default=True, type=click.IntRange(0, MAX_POLL_US),
              help="Polling window of both ends for the polling runs (0: sleeping runs only; "
                   "with --disk, a QD32 row polling that long).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs of everything; the best figure of each is shown (the machine may be "
                   "shared: the best run is the least disturbed one).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the figures, counters and load averages to this JSON file "
                   "(docs/bench/plot_block.py draws it).")
@click.option("--disk", "disk_dir", type=click.Path(file_okay=False, exists=True),
              help="Instead: random 4 KiB reads at QD1 and QD32 from a cold image in this "
                   "directory on a real disk, against direct preadv at the same depths.")
@click.option("--disk-size", default="1G", show_default=True,
              help="With --disk: the image size (written in full first).")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --disk: how long each figure reads.")
@click.option("--io-engine", type=click.Choice(["auto", "uring", "threads", "both"]),
              default="both", show_default=True,
              help="With --disk: the backend's io_engine for the ringkit figures (both: a row "
                   "for each of uring and threads).")
def command(size: str, passes: int, random_reads: int, tmpfs: str, ring_page_order: int,
            poll_us: int, repeat: int, json_path: str | None, disk_dir: str | None,
            disk_size: str, seconds: float, io_engine: str) -> None:
    """Block over the simulated Xen vs direct preadv/pwritev of the same tmpfs file, with the
    doorbells, sleeps and CPU time per request of each side (or, with --disk, random reads from
    a cold image on a real disk)."""
    from ..cli.block import parse_size

    if disk_dir is not None:
        from ._disk import run as run_disk

        disk_bytes = parse_size(disk_size)
        if disk_bytes < 64 * MIB or disk_bytes % MIB:
            raise click.BadParameter("must be a whole number of MiB, at least 64 MiB",
                                     param_hint="--disk-size")
        engines = ["uring", "threads"] if io_engine == "both" else [io_engine]
        run_disk(disk_dir, disk_bytes, seconds, engines, poll_us)
        return
    nbytes = parse_size(size)
    if nbytes < MIB or nbytes % MIB:
        raise click.BadParameter("must be a whole number of MiB", param_hint="--size")
    polls = {"sleeping": 0} | ({f"polling {poll_us}us": poll_us} if poll_us else {})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=tmpfs, prefix="ringkit-bench-") as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(nbytes)
        _direct_sequential(image, nbytes, True, 1)  # allocate the tmpfs pages once
        direct_runs: list[dict[str, Figure]] = []
        runs: dict[str, list[dict[str, Figure]]] = {name: [] for name in polls}
        for _ in range(repeat):
            direct_runs.append({
                "seq_write": _direct_sequential(image, nbytes, True, passes),
                "seq_read": _direct_sequential(image, nbytes, False, passes),
                "rand_read_qd32": _direct_random(image, nbytes, random_reads),
            })
            for name, us in polls.items():
                runs[name].append(anyio.run(_measure, nbytes, passes, random_reads, image,
                                            ring_page_order, us))
    load = os.getloadavg()
    click.echo(f"block benchmark: {nbytes // MIB} MiB tmpfs image, {os.cpu_count()} CPUs "
               f"(load average {load_before[0]:.2f} before, {load[0]:.2f} at the end), "
               f"ring order {ring_page_order}, best of {repeat}")
    modes = {name: _best(mode_runs) for name, mode_runs in runs.items()}
    direct = _best(direct_runs)
    _report(modes, direct)
    if json_path:
        record = {
            "benchmark": "block", "cpus": os.cpu_count(), "image_mib": nbytes // MIB,
            "ring_page_order": ring_page_order, "repeat": repeat,
            "load_average_before": load_before, "load_average_after": load,
            "rows": [{"key": key, "label": label.strip(), "unit": unit,
                      "direct": direct[_DIRECT[key]].value,
                      "modes": {name: modes[name][key]._asdict() for name in modes}}
                     for key, label, unit in _ROWS]}
        Path(json_path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["backend"]:
        anyio.run(_backend_main, sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                  int(sys.argv[6]) if len(sys.argv) > 6 else 1,
                  sys.argv[7] if len(sys.argv) > 7 else "auto")
    else:
        command()
