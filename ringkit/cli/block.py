"""``ringkit block``: serve a disk image to a guest domain, or attach to one from the guest.

Both commands run on a simulated Xen (``--dir SIM_DIR``) or, without ``--dir``, on real Xen
through the ``/dev/xen`` devices of the domain they run in.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import BinaryIO

import anyio
import click

from ..backends.block.config import InvalidSetting, ServiceConfig
from ..backends.block.device import BlockBackend
from ..backends.block.service import ServiceStats
from ..device import DeviceAddress, create_device
from ..frontends.block import ReadOp, WriteOp
from ..frontends.block.device import BlockFrontend
from ._common import DIR_HELP, open_cli_domain, run_command

DEFAULT_DEVID = 51712
"""xvda's device number (202 << 8), what xl gives the first disk."""


@click.group()
@click.option("-v", "--verbose", count=True,
              help="Log the handshake (-v) and more (-vv) on stderr.")
def block(verbose: int) -> None:
    """Virtual block devices (Xen's blkif / vbd): a backend serving a disk image, a frontend
    using it.

    \b
    Typical use on a simulated Xen:
      ringkit sim serve --dir /tmp/xen &
      ringkit sim domain create --dir /tmp/xen guest        # prints the guest's domid, e.g. 1
      truncate -s 64M disk.img
      ringkit block serve disk.img --dir /tmp/xen --frontend 1 &
      ringkit block attach --dir /tmp/xen --domain 1 --check 8M
    """
    if verbose:
        logging.basicConfig(level=logging.INFO if verbose == 1 else logging.DEBUG,
                            format="%(asctime)s %(process)d %(name)s: %(message)s")


@block.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--frontend", "frontend_id", required=True, type=click.IntRange(0, 0x7FEF),
              help="Domid of the guest that gets the disk.")
@click.option("--domain", "domid", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid this backend runs in.")
@click.option("--devid", default=DEFAULT_DEVID, show_default=True,
              type=click.IntRange(0, 2**31 - 1), help="Device id (51712 = xvda).")
@click.option("--read-only", is_flag=True, help="Serve the disk read-only.")
@click.option("--no-persistent", is_flag=True, help="Do not offer persistent grants.")
@click.option("--max-indirect", default=256, show_default=True, type=int,
              help="feature-max-indirect-segments to offer, 0..4096 (0: no indirect requests).")
@click.option("--max-ring-page-order", default=4, show_default=True, type=int,
              help="Largest ring to accept, as 2**ORDER pages, 0..4 (0: one page).")
@click.option("--max-queues", default=4, show_default=True, type=int,
              help="Most rings (multi-queue) to accept, 1..64.")
@click.option("--discard-granularity", default=4096, show_default=True, type=int,
              help="discard-granularity to advertise in bytes (a power of two, >= 512).")
@click.option("--poll-us", default=0, show_default=True, type=int,
              help="Microseconds each ring's server spins for more requests while the guest "
                   "keeps it busy, before sleeping on the event channel (0: never spin).")
@click.option("--io-depth", default=1, show_default=True, type=int,
              help="Requests of one ring served at once, each answered as it completes, "
                   "1..256 (1: in ring order; a real disk wants 32).")
@click.option("--direct", is_flag=True,
              help="Open the image O_DIRECT (QEMU's cache=none): I/O bypasses the page cache.")
@click.option("--io-engine", type=click.Choice(["auto", "uring", "threads"]), default="auto",
              show_default=True,
              help="How disk accesses wait for the device: the kernel's io_uring, worker "
                   "threads, or auto (io_uring where the kernel gives one).")
@click.option("--once", is_flag=True, help="Exit after the first frontend disconnects.")
@click.option("--no-create", is_flag=True,
              help="Do not create the device's xenstore entries (a toolstack already did).")
def serve(image: str, directory: str | None, frontend_id: int, domid: int, devid: int,
          read_only: bool, no_persistent: bool, max_indirect: int, max_ring_page_order: int,
          max_queues: int, discard_granularity: int, poll_us: int, io_depth: int,
          direct: bool, io_engine: str, once: bool, no_create: bool) -> None:
    """Serve IMAGE (a raw file or block device) as a virtual disk to the guest --frontend.

    Like `xl block-attach`, it first writes both ends' xenstore entries (unless --no-create),
    then serves until the device is removed (or, with --once, the frontend leaves).  Prints
    "ready" once it waits for the frontend.
    """
    options = {"read_only": "--read-only", "persistent": "--no-persistent",
               "max_indirect_segments": "--max-indirect",
               "max_ring_page_order": "--max-ring-page-order", "max_queues": "--max-queues",
               "discard_granularity": "--discard-granularity", "poll_us": "--poll-us",
               "io_depth": "--io-depth", "direct": "--direct", "io_engine": "--io-engine"}
    try:
        config = ServiceConfig(read_only=read_only, persistent=not no_persistent,
                               max_indirect_segments=max_indirect,
                               max_ring_page_order=max_ring_page_order, max_queues=max_queues,
                               discard_granularity=discard_granularity, poll_us=poll_us,
                               io_depth=io_depth, direct=direct, io_engine=io_engine)
    except InvalidSetting as exc:
        raise click.BadParameter(f"{exc.value!r} is not allowed: must be {exc.allowed}",
                                 param_hint=options.get(exc.field, exc.field)) from None

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            if not no_create:
                address = DeviceAddress("vbd", frontend_id, dom.domid, devid)
                await create_device(
                    dom.store, address,
                    backend_nodes={"params": os.path.abspath(image),
                                   "mode": "r" if read_only else "w", "type": "raw"},
                    frontend_nodes={"virtual-device": devid, "device-type": "disk"},
                )
            async with BlockBackend(dom, frontend_id, devid, image=image,
                                    config=config) as backend:
                click.echo(f"ready: serving {image} ({backend.image.size} bytes"
                           f"{', read-only' if backend.image.readonly else ''}) to domain "
                           f"{frontend_id} as vbd/{devid}", nl=True)
                await backend.run(once=once)
            click.echo(f"done: {backend.generation} connection(s); {_stats(backend.totals)}")

    run_command(main)


def _stats(stats: ServiceStats) -> str:
    return (f"{stats.requests} requests, {stats.sectors_read * 512} bytes read, "
            f"{stats.sectors_written * 512} bytes written, {stats.flushes} flushes, "
            f"{stats.discards} discards, {stats.errors + stats.unsupported} refused, "
            f"{stats.reordered} answered out of ring order")


def parse_size(text: str) -> int:
    """A byte count from text such as ``4096``, ``64k``, ``1.5MiB`` or ``2G`` (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


@block.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--domain", "domid", type=click.IntRange(0, 0x7FEF),
              help="Domid this frontend runs in (the guest).")
@click.option("--backend", "backend_id", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid of the backend.")
@click.option("--devid", default=DEFAULT_DEVID, show_default=True,
              type=click.IntRange(0, 2**31 - 1), help="Device id (51712 = xvda).")
@click.option("--check", "check_size", metavar="SIZE",
              help="Write a pattern over the first SIZE bytes (e.g. 8M), flush, read it back, "
                   "verify it, and print the throughput.  Overwrites the disk!")
@click.option("--read", "read_range", metavar="OFFSET:LENGTH",
              help="Read LENGTH bytes at OFFSET (byte units, sector-aligned) to --output.")
@click.option("--write", "write_offset", type=int, metavar="OFFSET",
              help="Write --input at byte OFFSET (sector-aligned).")
@click.option("--input", "input_file", type=click.File("rb"), help="Data for --write.")
@click.option("--output", "output_file", type=click.File("wb"), default="-",
              help="Where --read writes (default: stdout).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for the backend to connect.")
def attach(directory: str | None, domid: int | None, backend_id: int, devid: int,
           check_size: str | None, read_range: str | None, write_offset: int | None,
           input_file: BinaryIO | None, output_file: BinaryIO, timeout: float) -> None:
    """Connect to a virtual disk from the guest and use it.

    Without an action, prints the disk's size and the features the backend offers.
    """
    if write_offset is not None and input_file is None:
        raise click.UsageError("--write needs --input")

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                async with BlockFrontend(dom, backend_id, devid) as disk:
                    scope.deadline = math.inf  # connected: the timeout no longer applies
                    await _use(disk)
        if scope.cancelled_caught:
            raise click.ClickException(
                f"no backend connected vbd/{devid} within {timeout:g} s (is `ringkit "
                "block serve` running for this domain?)")

    async def _use(disk: BlockFrontend) -> None:
        info = disk.info
        assert info is not None
        if check_size is not None:
            await _check(disk, min(parse_size(check_size), info.size))
        elif read_range is not None:
            offset, _, length = read_range.partition(":")
            output_file.write(await disk.read(int(offset), int(length)))
        elif write_offset is not None:
            assert input_file is not None
            await disk.write(write_offset, input_file.read())
            await disk.flush()
        else:
            features = [name for name, on in (
                ("read-only", info.readonly), ("flush", info.flush),
                ("barrier", info.barrier), ("discard", info.discard),
                ("persistent-grants", info.persistent)) if on]
            if info.max_indirect_segments:
                features.append(f"indirect({info.max_indirect_segments})")
            click.echo(f"vbd/{devid}: {info.size} bytes ({info.sectors} sectors of 512), "
                       f"{len(disk.queues)} queue(s), ring order {disk.ring_page_order}; "
                       f"{', '.join(features) or 'no optional features'}")

    run_command(main)


CHECK_DEPTH = 4
"""Requests in flight for `--check`: its 1 MiB writes and reads go out through `submit`."""


async def _check(disk: BlockFrontend, size: int) -> None:
    size -= size % (1 << 20) if size >= (1 << 20) else size % 512
    chunk = min(1 << 20, size)
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(chunk))
    offsets = range(0, size, chunk)
    start = time.perf_counter()
    failed = [e for e in await disk.submit([WriteOp(o, pattern) for o in offsets],
                                           depth=CHECK_DEPTH) if e is not None]
    if failed:
        raise click.ClickException(f"write failed: {failed[0]}")
    await disk.flush()
    wrote = time.perf_counter() - start
    buffers = [bytearray(chunk) for _ in range(CHECK_DEPTH)]
    start = time.perf_counter()
    for first in range(0, len(offsets), CHECK_DEPTH):
        batch = list(zip(offsets[first:first + CHECK_DEPTH], buffers, strict=False))
        failed = [e for e in await disk.submit([ReadOp(o, b) for o, b in batch],
                                               depth=CHECK_DEPTH) if e is not None]
        if failed:
            raise click.ClickException(f"read failed: {failed[0]}")
        for offset, buffer in batch:
            if buffer != pattern:
                raise click.ClickException(f"read-back mismatch at byte {offset}")
    read = time.perf_counter() - start
    mib = size / (1 << 20)
    click.echo(f"verified {size} bytes: write {mib / wrote:.1f} MiB/s, "
               f"read {mib / read:.1f} MiB/s")


__all__ = ("CHECK_DEPTH", "DEFAULT_DEVID", "attach", "block", "parse_size", "serve")
