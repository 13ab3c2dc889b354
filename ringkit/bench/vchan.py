"""vchan benchmark: stream bandwidth of a ringkit vchan on the simulated Xen vs a Unix
socketpair, two processes each, same anyio backend, 64 KiB writes, printed side by side.

The sender writes `--mib` MiB in `--write-size` writes; the receiver reads until end of stream
and reports the seconds from its first byte to the last.  The vchan's rings are `--ring` bytes
each way (libxenvchan's placement, so 64 KiB rings are 16 granted pages each).  Each side runs
in its own process (``python -m ringkit.bench.vchan <backend> <role> ...``).  Figures are
printed, never asserted; on a busy machine they say little.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import click

# --------------------------------------------------------------------------- workers (children)


async def _send(stream: anyio.abc.ByteStream, total: int, write_size: int) -> None:
    chunk = bytes(range(256)) * (write_size // 256) + bytes(write_size % 256)
    sent = 0
    while sent < total:
        piece = chunk if total - sent >= write_size else chunk[:total - sent]
        await stream.send(piece)
        sent += len(piece)
    await stream.send_eof()


async def _receive(stream: anyio.abc.ByteReceiveStream) -> None:
    count, start = 0, 0.0
    try:
        while True:
            data = await stream.receive(1 << 20)
            if not count:
                start = time.perf_counter()
            count += len(data)
    except anyio.EndOfStream:
        pass
    print(json.dumps({"bytes": count, "seconds": time.perf_counter() - start}), flush=True)


async def _vchan_worker(role: str, directory: str, domid: int, peer: int, ring: int,
                        total: int, write_size: int, poll_us: int) -> None:
    from ..sim import connect
    from ..vchan import VchanServer, vchan_path
    from ..vchan import connect as vchan_connect

    path = vchan_path(domid if role == "vchan-send" else peer,
                      peer if role == "vchan-send" else domid, 1)
    async with connect(directory, domid) as dom:
        if role == "vchan-send":       # the server writes its right ring
            offer = await VchanServer.offer(dom, peer, path, read_min=ring, write_min=ring,
                                            poll_us=poll_us)
            async with await offer.accept() as stream:
                await _send(stream, total, write_size)
        else:
            async with await vchan_connect(dom, peer, path, poll_us=poll_us) as stream:
                await _receive(stream)


async def _socket_worker(role: str, fd: int, total: int, write_size: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        if role == "socket-send":
            await _send(stream, total, write_size)
        else:
            await _receive(stream)


def _worker_main(argv: Sequence[str]) -> None:
    backend, role, *args = argv
    if role.startswith("vchan"):
        d, domid, peer, ring, total, size, poll_us = args
        anyio.run(_vchan_worker, role, d, int(domid), int(peer), int(ring), int(total),
                  int(size), int(poll_us), backend=backend)
    else:
        fd, total, size = args
        anyio.run(_socket_worker, role, int(fd), int(total), int(size), backend=backend)


# --------------------------------------------------------------------------- parent


def _spawn(backend: str, role: str, *args: object, pass_fds: Sequence[int] = ()
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ringkit.bench.vchan", backend, role,
                             *(str(a) for a in args)], stdout=subprocess.PIPE, text=True,
                            pass_fds=tuple(pass_fds))


def _collect(sender: subprocess.Popen[str], receiver: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
        if not line:
            raise click.ClickException(f"benchmark receiver exited ({receiver.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result
    finally:
        for proc in (sender, receiver):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def run(backend: str, total: int, write_size: int, ring: int, poll_us: int = 0
        ) -> dict[str, float]:
    """One measurement per column (the vchan sleeping, with `poll_us` also polling, and the
    socketpair); MB/s by column."""
    from ..sim import SimXen

    async def sim_domains(directory: str, run: str) -> tuple[int, int]:
        async with SimXen.attach(directory) as xen:
            return (await xen.create_domain(f"send-{run}"),
                    await xen.create_domain(f"receive-{run}"))

    with tempfile.TemporaryDirectory(prefix="rk-bench-vchan-", dir="/tmp") as directory:
        server = subprocess.Popen([sys.executable, "-m", "ringkit.sim", "serve", "--dir",
                                   directory, "--backend", backend],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            if not server.stdout.readline().startswith("ready"):
                raise click.ClickException("the simulated Xen did not start")
            results: dict[str, dict[str, Any]] = {}
            for name, us in (("vchan", 0), ("vchan polling", poll_us)):
                if name != "vchan" and not us:
                    continue
                a, b = anyio.run(sim_domains, directory, name.replace(" ", "-"))
                results[name] = _collect(
                    _spawn(backend, "vchan-send", directory, a, b, ring, total, write_size, us),
                    _spawn(backend, "vchan-receive", directory, b, a, ring, total, write_size,
                           us))
        finally:
            server.terminate()
            server.wait(timeout=30)
            if server.stdout is not None:
                server.stdout.close()
    left, right = socket.socketpair()
    with left, right:
        sender = _spawn(backend, "socket-send", left.fileno(), total, write_size,
                        pass_fds=[left.fileno()])
        receiver = _spawn(backend, "socket-receive", right.fileno(), total, write_size,
                          pass_fds=[right.fileno()])
    results["socketpair"] = _collect(sender, receiver)
    for name, result in results.items():
        if result["bytes"] != total:
            raise click.ClickException(f"{name}: {result['bytes']} of {total} bytes arrived")
    return {name: result["bytes"] / result["seconds"] / 1e6 for name, result in results.items()}


@click.command("vchan")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio",
              show_default=True, help="anyio backend of every process.")
@click.option("--mib", default=256, show_default=True, type=click.IntRange(min=1),
              help="MiB to stream.")
@click.option("--write-size", default=65536, show_default=True,
              type=click.IntRange(1, 1 << 24), help="Bytes per send().")
@click.option("--ring", default=65536, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Bytes each vchan ring must hold.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Keep each column's best of this many runs.")
@click.option("--poll-us", default=0, show_default=True, type=click.IntRange(0, 1_000_000),
              help="Also measure the vchan with both ends polling this long before sleeping "
                   "(0: sleeping only).")
def command(backend: str, mib: int, write_size: int, ring: int, repeat: int,
            poll_us: int) -> None:
    """ringkit vchan on the simulated Xen vs a Unix socketpair: one-way stream bandwidth in
    --write-size writes, two processes each, side by side with the ratio."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, value in run(backend, mib << 20, write_size, ring, poll_us).items():
            best[name] = max(best.get(name, 0.0), value)
    load = os.getloadavg()[0]
    click.echo(f"vchan benchmark, anyio backend {backend}, {os.cpu_count()} CPUs (load "
               f"{load:.1f}), {mib} MiB in {write_size}-byte writes, {ring}-byte rings, best "
               f"of {repeat}")
    click.echo(f"{'':24} {'vchan (sim)':>12} {'socketpair':>12} {'vchan/socketpair':>17}")
    click.echo(f"{'stream bandwidth (MB/s)':24} {best['vchan']:>12.1f} "
               f"{best['socketpair']:>12.1f} {best['vchan'] / best['socketpair']:>17.2f}")
    if "vchan polling" in best:
        click.echo(f"{f'  polling {poll_us} us':24} {best['vchan polling']:>12.1f} "
                   f"{best['socketpair']:>12.1f} "
                   f"{best['vchan polling'] / best['socketpair']:>17.2f}")


__all__ = ("command", "run")


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
