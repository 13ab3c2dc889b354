"""Block benchmark: the blkif pair over the simulated Xen vs direct file I/O on the same image.

The image lives on a tmpfs (``/dev/shm`` by default) so the disk is out of the picture and the
figures show ringkit's own cost.  Three measurements, each against its direct baseline in this
process (``os.pwritev`` / ``os.preadv`` on the same file):

1. sequential 1 MiB writes over the image, one request at a time (each 1 MiB write is one
   INDIRECT request of 256 segments), then with 4 requests in flight (4 interleaved streams);
2. sequential 1 MiB reads into a preallocated buffer, the same ways;
3. 4 KiB random reads at queue depth 32 (32 tasks, each with one read in flight), in IOPS;
   the baseline is one process doing the same reads one after the other with ``os.preadv``.

The backend runs in its own process (``python -m ringkit.bench.block backend ...``), the
frontend in this one, the simulator in a third.  It prints numbers and asserts nothing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import click

from ..backends.block.device import BlockBackend
from ..device import DeviceAddress, create_device
from ..frontends.block.device import BlockFrontend

__all__ = ("MIB", "POOL_PAGES", "command")


MIB = 1 << 20
POOL_PAGES = 1000
"""The frontend's granted pages: three 1 MiB requests (256 data pages and one indirect page
each) fit at once, the most under gntalloc's default limit of 1024 grants per process with a
16-page ring; also within the backend's default persistent-grant limit (1056), so no page is
mapped per request after warm-up."""


def _direct_sequential(path: Path, size: int, write: bool, passes: int) -> float:
    """MiB/s of 1 MiB pwritev/preadv over the file, in this process."""
    buf = bytearray(os.urandom(MIB))
    view = [memoryview(buf)]
    fd = os.open(path, os.O_RDWR)
    try:
        start = time.perf_counter()
        for _ in range(passes):
            for offset in range(0, size, MIB):
                if write:
                    os.pwritev(fd, view, offset)
                else:
                    os.preadv(fd, view, offset)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return passes * size / MIB / elapsed


def _direct_random(path: Path, size: int, count: int) -> float:
    """IOPS of 4 KiB random preadv, one at a time, in this process."""
    rng = random.Random(1)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    buf = [memoryview(bytearray(4096))]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.preadv(fd, buf, offset)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return count / elapsed


async def _backend_main(directory: str, frontend_id: int, image: str) -> None:
    from ..sim import connect

    async with connect(directory, 0) as dom0, BlockBackend(dom0, frontend_id, 0,
                                                           image=image) as backend:
        print("ready", flush=True)
        await backend.run(once=True)


async def _measure(size: int, passes: int, random_reads: int, image: Path, order: int
                   ) -> dict[str, float]:
    from ..sim import SimXen

    results: dict[str, float] = {}
    async with SimXen.start() as xen:
        guest = await xen.create_domain("bench-guest")
        async with xen.connect(0) as dom0:
            await create_device(dom0.store, DeviceAddress("vbd", guest, 0, 0),
                                backend_nodes={"params": str(image), "mode": "w"})
        argv = [sys.executable, "-m", "ringkit.bench.block", "backend", str(xen.directory),
                str(guest), str(image)]
        async with await anyio.open_process(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive(1)
            async with xen.connect(guest) as domu, \
                    BlockFrontend(domu, 0, 0, ring_page_order=order,
                                  pool_pages=POOL_PAGES) as disk:
                data = os.urandom(MIB)
                target = memoryview(bytearray(MIB))

                async def sequential(write: bool, depth: int) -> float:
                    async def stream(k: int) -> None:
                        buf = memoryview(bytearray(MIB))
                        for _ in range(passes):
                            for offset in range(k * MIB, size, depth * MIB):
                                if write:
                                    await disk.write(offset, data)
                                else:
                                    await disk.read_into(offset, buf)

                    start = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for k in range(depth):
                            tg.start_soon(stream, k)
                    return passes * size / MIB / (time.perf_counter() - start)

                # warm-up: with several requests in flight every pool page gets used, so the
                # backend maps each persistent grant once, outside the measurements
                await sequential(True, 4)
                results["seq_write"] = await sequential(True, 1)
                results["seq_read"] = await sequential(False, 1)
                results["seq_write_qd4"] = await sequential(True, 4)
                results["seq_read_qd4"] = await sequential(False, 4)
                await disk.read_into(0, target)
                if bytes(target) != data:
                    raise click.ClickException("read-back mismatch: the benchmark is broken")

                rng = random.Random(2)
                offsets = [rng.randrange(size // 4096) * 4096 for _ in range(random_reads)]
                per_task = random_reads // 32

                async def reader(k: int) -> None:
                    for offset in offsets[k * per_task:(k + 1) * per_task]:
                        await disk.read(offset, 4096)

                start = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for k in range(32):
                        tg.start_soon(reader, k)
                results["rand_read_qd32"] = 32 * per_task / (time.perf_counter() - start)
            await proc.wait()
    return results


@click.command("block")
@click.option("--size", default="128M", show_default=True,
              help="Image size (the sequential runs cover all of it).")
@click.option("--passes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Sequential passes over the image.")
@click.option("--random-reads", default=20000, show_default=True,
              type=click.IntRange(min=32), help="4 KiB random reads for the QD32 run.")
@click.option("--tmpfs", default="/dev/shm", show_default=True,
              type=click.Path(file_okay=False, exists=True),
              help="Directory on a tmpfs for the image.")
@click.option("--ring-page-order", default=0, show_default=True, type=click.IntRange(0, 4),
              help="Ring size the frontend asks for (2**order pages).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs of everything; the best figure of each is shown (the machine may be "
                   "shared: the best run is the least disturbed one).")
def command(size: str, passes: int, random_reads: int, tmpfs: str, ring_page_order: int,
            repeat: int) -> None:
    """Block over the simulated Xen vs direct preadv/pwritev of the same tmpfs file."""
    from ..cli.block import _size

    nbytes = _size(size)
    if nbytes < MIB or nbytes % MIB:
        raise click.BadParameter("must be a whole number of MiB", param_hint="--size")
    with tempfile.TemporaryDirectory(dir=tmpfs, prefix="ringkit-bench-") as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(nbytes)
        _direct_sequential(image, nbytes, True, 1)  # allocate the tmpfs pages once
        direct: dict[str, float] = {}
        ring: dict[str, float] = {}
        for _ in range(repeat):
            for key, value in (
                ("seq_write", _direct_sequential(image, nbytes, True, passes)),
                ("seq_read", _direct_sequential(image, nbytes, False, passes)),
                ("rand_read_qd32", _direct_random(image, nbytes, random_reads)),
            ):
                direct[key] = max(direct.get(key, 0.0), value)
            run = anyio.run(_measure, nbytes, passes, random_reads, image, ring_page_order)
            for key, value in run.items():
                ring[key] = max(ring.get(key, 0.0), value)
    load = os.getloadavg()[0]
    click.echo(f"block benchmark: {nbytes // MIB} MiB tmpfs image, {os.cpu_count()} CPUs "
               f"(load {load:.1f}), ring order {ring_page_order}, best of {repeat}")
    click.echo(f"{'':28}{'ringkit/sim':>14}{'direct':>14}{'ratio':>8}")
    direct["seq_write_qd4"] = direct["seq_write"]
    direct["seq_read_qd4"] = direct["seq_read"]
    for key, label, unit in (("seq_write", "sequential 1 MiB writes", "MiB/s"),
                             ("seq_read", "sequential 1 MiB reads", "MiB/s"),
                             ("seq_write_qd4", "  same, 4 in flight", "MiB/s"),
                             ("seq_read_qd4", "  same, 4 in flight", "MiB/s"),
                             ("rand_read_qd32", "4 KiB random reads QD32", "IOPS")):
        click.echo(f"{label:<28}{ring[key]:>10.0f} {unit:<5}{direct[key]:>8.0f} {unit:<5}"
                   f"{ring[key] / direct[key]:>6.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["backend"]:
        anyio.run(_backend_main, sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        command()
