"""``ringkit bench block --disk DIR``: random 4 KiB reads from a cold image on a real disk.

The tmpfs runs of ``ringkit bench block`` show ringkit's own cost; this mode shows whether the
backend keeps a real disk busy.  The image is a file in DIR (on a disk, not a tmpfs), written
once with data (a sparse file would be read without touching the disk), and before every run
its pages are evicted from the page cache (``fdatasync`` then ``posix_fadvise(DONTNEED)``), so
every read goes to the device.  For a fixed time each, it measures random 4 KiB reads:

* **direct**: ``os.preadv`` from this process at the same depth -- one thread at QD1, 32 threads
  at QD32 (the disk's own figure at that depth);
* **ringkit**: `BlockFrontend.submit` on the simulated Xen (the frontend in this process, the
  backend in its own, the simulator in a third) at the same depth, with the backend serving
  `io_depth` requests of the ring at once, once per I/O engine asked for (``io_engine``
  uring and threads by default); and, as the comparison that shows what the depth buys, the
  backend serving in ring order (``io_depth`` 1) at QD32; and, with ``poll_us`` > 0, the QD32
  run once more with both ends polling the ring that long before they sleep (what the
  event-channel wake-ups of a round trip cost).

It prints IOPS side by side with the ratios, the load average before and after, and asserts
nothing.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import anyio
import click

from ..device import DeviceAddress, create_device
from ..frontends.block import ReadOp
from ..frontends.block.device import BlockFrontend

MIB = 1 << 20
READ = 4096
QD = 32
BATCH = 256


def fill(path: Path, size: int) -> None:
    """Write `size` bytes of data (not zeros: a compressing or thin disk could skip them)."""
    chunk = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    """Drop the image's pages from the page cache: the next reads go to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _offsets(size: int, seed: int, count: int) -> list[int]:
    """`count` random 4 KiB-aligned offsets in the image (made before any timing starts)."""
    rng = random.Random(seed)
    blocks = size // READ
    words = array("Q", rng.randbytes(8 * count))
    return [word % blocks * READ for word in words]


def direct(path: Path, size: int, depth: int, seconds: float) -> float:
    """IOPS of `depth` threads doing random 4 KiB preadv on the cold image."""
    offsets = _offsets(size, 1000 + depth, 1 << 20)
    share = len(offsets) // depth
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    done = [0] * depth
    stop = time.monotonic() + seconds

    def reader(k: int) -> None:
        buf = [memoryview(bytearray(READ))]
        for offset in offsets[k * share:(k + 1) * share]:
            os.preadv(fd, buf, offset)
            done[k] += 1
            if done[k] % 16 == 0 and time.monotonic() >= stop:
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(depth)]
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    return sum(done) / (time.monotonic() - start)


async def _ringkit(path: Path, size: int, depth: int, io_depth: int, seconds: float,
                   engine: str = "auto", poll_us: int = 0) -> float:
    from ..sim import SimXen

    evict(path)
    async with SimXen.start() as xen:
        guest = await xen.create_domain("bench-disk-guest")
        async with xen.connect(0) as dom0:
            await create_device(dom0.store, DeviceAddress("vbd", guest, 0, 0),
                                backend_nodes={"params": str(path), "mode": "w"})
        argv = [sys.executable, "-m", "ringkit.bench.block", "backend", str(xen.directory),
                str(guest), str(path), str(poll_us), str(io_depth), engine]
        async with await anyio.open_process(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            buffer = b""
            while b"\n" not in buffer:
                buffer += await proc.stdout.receive()
            async with (xen.connect(guest) as domu,
                        BlockFrontend(domu, 0, 0, poll_us=poll_us) as disk):
                offsets = _offsets(size, 7, 1 << 20)
                buffers = [bytearray(READ) for _ in range(BATCH)]
                count = 0
                start = time.monotonic()
                while time.monotonic() - start < seconds:
                    part = offsets[count:count + BATCH]
                    results = await disk.submit(
                        [ReadOp(offset, buffers[i]) for i, offset in enumerate(part)],
                        depth=depth)
                    if any(results):
                        raise click.ClickException(f"a read failed: {results}")
                    count += len(part)
                elapsed = time.monotonic() - start
            await proc.stdin.aclose()
            await proc.wait()
    return count / elapsed


def run(directory: str, size: int, seconds: float,
        engines: Sequence[str] = ("auto",), poll_us: int = 0) -> None:
    """The whole disk mode (see the module docstring), the ringkit rows once per io_engine in
    `engines`; `poll_us` > 0: a QD32 row with both ends polling that long."""
    load_before = os.getloadavg()
    path = Path(directory) / f"ringkit-bench-disk-{os.getpid()}.img"
    try:
        click.echo(f"writing a {size // MIB} MiB image in {directory} ...")
        fill(path, size)
        rows = [("QD1", "direct preadv, 1 thread", direct(path, size, 1, seconds))]
        rows += [("QD1", f"ringkit (io_depth 1, {e})",
                  anyio.run(_ringkit, path, size, 1, 1, seconds, e)) for e in engines]
        rows.append(("QD32", f"direct preadv, {QD} threads", direct(path, size, QD, seconds)))
        rows += [("QD32", f"ringkit (io_depth {QD}, {e})",
                  anyio.run(_ringkit, path, size, QD, QD, seconds, e)) for e in engines]
        rows.append(("QD32", f"ringkit (io_depth 1: ring order, {engines[0]})",
                     anyio.run(_ringkit, path, size, QD, 1, seconds, engines[0])))
        if poll_us:
            rows.append(("QD32", f"ringkit (io_depth {QD}, {engines[0]}, polling {poll_us}us)",
                         anyio.run(_ringkit, path, size, QD, QD, seconds, engines[0],
                                   poll_us)))
    finally:
        path.unlink(missing_ok=True)
    load = os.getloadavg()
    click.echo(f"block on a cold disk: random 4 KiB reads, {size // MIB} MiB image in "
               f"{directory}, pages evicted before each run, {seconds:g} s each, "
               f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
               f"{load[0]:.2f} at the end")
    base = {depth: value for depth, label, value in rows if label.startswith("direct")}
    for depth, label, value in rows:
        click.echo(f"  {depth:<5} {label:<44} {value:>10,.0f} IOPS {value / base[depth]:>8.2f}x")
