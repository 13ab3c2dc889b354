"""Transport benchmark: two processes over the simulated Xen vs two over a Unix socketpair.

Two measurements, each run once per transport with the same anyio backend, printed side by
side with the ratio:

1. ping-pong: one side notifies, the other waits and notifies back; round-trip latency.  On
   the simulator that is an eventfd write and an eventfd wait each way; on the socketpair a
   one-byte send and receive each way.
2. pipelined echo of 112-byte requests (blkif-sized).  On the simulator the front end keeps an
   io/ring.h ring (`ringkit.proto.ring`, one granted page, 32 slots) full, publishing requests
   in batches with the event hold-off of ring.h, and the back end echoes each batch as
   responses; on the socketpair the same window of 32 requests travels as one ``send`` per
   batch and is echoed the same way.  Throughput in requests per second.

Each side runs in its own process (``python -m ringkit.bench.transport <role> ...``); the
parent only sets up and collects the figures.  This prints numbers; it asserts nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import click

__all__ = ("REQUEST_SIZE", "command", "run")


REQUEST_SIZE = 112
"""Size of one echoed request and response (a blkif request)."""


# --------------------------------------------------------------------------- workers (children)


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _pattern(seq: int) -> bytes:
    return seq.to_bytes(8, "little") * (REQUEST_SIZE // 8)


async def _sim_ping(directory: str, domid: int, peer: int, rounds: int) -> None:
    from ..sim import connect

    async with connect(directory, domid) as dom:
        channel = await dom.events.alloc_unbound(peer)
        _say(port=channel.port)
        await channel.wait()  # the peer bound and said hello
        start = time.perf_counter()
        for _ in range(rounds):
            channel.notify()
            await channel.wait()
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, rounds=rounds)
        await channel.aclose()


async def _sim_pong(directory: str, domid: int, peer: int, port: int) -> None:
    from .._errors import PeerGoneError
    from ..sim import connect

    async with connect(directory, domid) as dom:
        channel = await dom.events.bind_interdomain(peer, port)
        # Xen leaves the binder's new port pending once (notifications lost while it was
        # unbound); take that event first so every later wake-up is a real ping.
        await channel.wait()
        channel.notify()
        try:
            while True:
                await channel.wait()
                channel.notify()
        except PeerGoneError:
            pass
        await channel.aclose()


async def _socket_ping(fd: int, rounds: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        start = time.perf_counter()
        for _ in range(rounds):
            await stream.send(b"!")
            await stream.receive(1)
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, rounds=rounds)


async def _socket_pong(fd: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        try:
            while True:
                data = await stream.receive(1)
                await stream.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


def _layout() -> Any:
    from ..proto.ring import RingLayout

    return RingLayout("echo", request_size=REQUEST_SIZE, response_size=REQUEST_SIZE)


async def _sim_echo_front(
    directory: str, domid: int, peer: int, count: int, npages: int
) -> None:
    from ..proto.ring import FrontRing
    from ..sim import connect

    async with connect(directory, domid) as dom:
        pages = await dom.grants.share(peer, npages)
        channel = await dom.events.alloc_unbound(peer)
        ring = FrontRing.init(pages.buffer, _layout())
        _say(refs=",".join(map(str, pages.refs)), port=channel.port)
        await channel.wait()  # the back end mapped, attached and bound
        entries = ring.entries
        batch = bytearray(REQUEST_SIZE * entries)
        for i in range(entries):
            batch[i * REQUEST_SIZE : (i + 1) * REQUEST_SIZE] = _pattern(i)
        responses = bytearray(REQUEST_SIZE * entries)
        sent = received = 0
        start = time.perf_counter()
        while received < count:
            free = min(ring.free_requests(), count - sent)
            if free:
                ring.put_requests_from(batch, free)
                sent += free
                if ring.push_requests():
                    channel.notify()
            got = ring.take_responses_into(responses)
            if got:
                if responses[:8] != responses[8:16]:
                    raise AssertionError("a response came back corrupted")
                received += got
                continue
            if not ring.final_check_for_responses():
                await channel.wait()
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=count, entries=entries)
        ring.release()
        await channel.aclose()
        await pages.aclose()


async def _sim_echo_back(
    directory: str, domid: int, peer: int, refs: list[int], port: int
) -> None:
    from .._errors import PeerGoneError
    from ..proto.ring import BackRing
    from ..sim import connect

    async with connect(directory, domid) as dom:
        mapped = await dom.grants.map(peer, refs)
        ring = BackRing.attach(mapped.buffer, _layout())
        channel = await dom.events.bind_interdomain(peer, port)
        channel.notify()
        buffer = bytearray(REQUEST_SIZE * ring.entries)
        try:
            while True:
                got = ring.take_requests_into(buffer)
                if got:
                    ring.put_responses_from(buffer, got)
                    if ring.push_responses():
                        channel.notify()
                    continue
                if not ring.final_check_for_requests():
                    await channel.wait()
        except PeerGoneError:
            pass
        ring.release()
        await channel.aclose()
        await mapped.aclose()


async def _socket_echo_front(fd: int, count: int, window: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    batch = b"".join(_pattern(i) for i in range(window))
    async with stream:
        sent = received = 0
        pending = bytearray()
        start = time.perf_counter()
        while received < count:
            free = min(window - (sent - received), count - sent)
            if free:
                await stream.send(batch[: free * REQUEST_SIZE])
                sent += free
            pending += await stream.receive(65536)
            whole = len(pending) // REQUEST_SIZE
            if whole:
                if pending[:8] != pending[8:16]:
                    raise AssertionError("a response came back corrupted")
                received += whole
                del pending[: whole * REQUEST_SIZE]
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=count, entries=window)


async def _socket_echo_back(fd: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        pending = bytearray()
        try:
            while True:
                pending += await stream.receive(65536)
                whole = len(pending) // REQUEST_SIZE
                if whole:
                    # copy each request out, as the ring side does, then answer the batch
                    responses = bytes(pending[: whole * REQUEST_SIZE])
                    del pending[: whole * REQUEST_SIZE]
                    await stream.send(responses)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


_WORKERS: dict[str, Any] = {
    "sim-ping": lambda a: _sim_ping(a[0], int(a[1]), int(a[2]), int(a[3])),
    "sim-pong": lambda a: _sim_pong(a[0], int(a[1]), int(a[2]), int(a[3])),
    "socket-ping": lambda a: _socket_ping(int(a[0]), int(a[1])),
    "socket-pong": lambda a: _socket_pong(int(a[0])),
    "sim-echo-front": lambda a: _sim_echo_front(a[0], int(a[1]), int(a[2]), int(a[3]),
                                                int(a[4])),
    "sim-echo-back": lambda a: _sim_echo_back(a[0], int(a[1]), int(a[2]),
                                              [int(r) for r in a[3].split(",")], int(a[4])),
    "socket-echo-front": lambda a: _socket_echo_front(int(a[0]), int(a[1]), int(a[2])),
    "socket-echo-back": lambda a: _socket_echo_back(int(a[0])),
}


def _worker_main(argv: Sequence[str]) -> None:
    backend, role, *args = argv
    anyio.run(lambda: _WORKERS[role](args), backend=backend)


# --------------------------------------------------------------------------- parent


class _Child:
    def __init__(self, backend: str, role: str, *args: object, pass_fds: Sequence[int] = ()):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringkit.bench.transport", backend, role,
             *(str(a) for a in args)],
            stdout=subprocess.PIPE, text=True, pass_fds=tuple(pass_fds),
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise click.ClickException(f"benchmark worker exited ({self.process.wait()})")
        result = json.loads(line)
        assert isinstance(result, dict)
        return result

    def finish(self) -> None:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _pair(backend: str, first: tuple[str, ...], second: tuple[str, ...],
          relay: Sequence[str]) -> dict[str, Any]:
    """Run the sim pair: `first` prints setup fields, `second` gets them (keys `relay`)."""
    a = _Child(backend, *first)
    setup = a.read()
    b = _Child(backend, *second, *(setup[key] for key in relay))
    try:
        return a.read()
    finally:
        a.finish()
        b.finish()


def _socket_pair(backend: str, first: tuple[str, ...], second: tuple[str, ...]) -> dict[str, Any]:
    left, right = socket.socketpair()
    with left, right:
        a = _Child(backend, first[0], left.fileno(), *first[1:], pass_fds=[left.fileno()])
        b = _Child(backend, second[0], right.fileno(), *second[1:], pass_fds=[right.fileno()])
    try:
        return a.read()
    finally:
        a.finish()
        b.finish()


def run(
    backend: str, rounds: int, requests: int, ring_pages: int = 1
) -> dict[str, dict[str, float]]:
    """Run both measurements on both transports; returns the figures."""
    from ..sim import SimXen

    figures: dict[str, dict[str, float]] = {}

    async def sim_domains() -> tuple[str, int, int]:
        async with SimXen.attach(directory) as xen:
            return str(xen.directory), await xen.create_domain("bench-a"), await xen.create_domain(
                "bench-b")

    import tempfile

    with tempfile.TemporaryDirectory(prefix="rk-bench-", dir="/tmp") as directory:
        server = subprocess.Popen(
            [sys.executable, "-m", "ringkit.sim", "serve", "--dir", directory,
             "--backend", backend],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            if not server.stdout.readline().startswith("ready"):
                raise click.ClickException("the simulated Xen did not start")
            d, a_id, b_id = anyio.run(sim_domains)
            ping = _pair(backend, ("sim-ping", d, str(a_id), str(b_id), str(rounds)),
                         ("sim-pong", d, str(b_id), str(a_id)), ["port"])
            echo = _pair(backend,
                         ("sim-echo-front", d, str(a_id), str(b_id), str(requests),
                          str(ring_pages)),
                         ("sim-echo-back", d, str(b_id), str(a_id)), ["refs", "port"])
        finally:
            server.terminate()
            server.wait(timeout=30)
            if server.stdout is not None:
                server.stdout.close()
    socket_ping = _socket_pair(backend, ("socket-ping", str(rounds)), ("socket-pong",))
    socket_echo = _socket_pair(
        backend, ("socket-echo-front", str(requests), str(echo["entries"])), ("socket-echo-back",)
    )
    figures["ping-pong round trip (us)"] = {
        "sim": ping["seconds"] / ping["rounds"] * 1e6,
        "socketpair": socket_ping["seconds"] / socket_ping["rounds"] * 1e6,
    }
    figures[f"112-byte echo, {echo['entries']} slots (req/s)"] = {
        "sim": echo["requests"] / echo["seconds"],
        "socketpair": socket_echo["requests"] / socket_echo["seconds"],
    }
    return figures


@click.command("transport")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio",
              show_default=True, help="anyio backend of every process.")
@click.option("--rounds", default=20000, show_default=True, type=click.IntRange(min=1),
              help="Ping-pong round trips.")
@click.option("--requests", default=200000, show_default=True, type=click.IntRange(min=1),
              help="Requests echoed through the ring / the socketpair.")
@click.option("--ring-pages", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Pages of the echo ring (blkif allows 1, 2, 4, 8, 16); the socketpair gets "
                   "the same window of requests in flight.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Run everything this many times and keep each column's best figure.")
def command(backend: str, rounds: int, requests: int, ring_pages: int, repeat: int) -> None:
    """Simulated Xen vs a Unix socketpair: event-channel ping-pong latency and pipelined
    112-byte echo throughput through an io/ring.h ring, side by side with the ratio."""
    figures = run(backend, rounds, requests, ring_pages)
    for _ in range(repeat - 1):
        again = run(backend, rounds, requests, ring_pages)
        for name, pair in again.items():
            better = min if "(us)" in name else max
            for column, value in pair.items():
                figures[name][column] = better(figures[name][column], value)
    click.echo(f"transport benchmark, anyio backend {backend}, {os.cpu_count()} CPUs, "
               f"best of {repeat}")
    click.echo(f"{'':36} {'sim':>12} {'socketpair':>12} {'sim/socketpair':>15}")
    for name, pair in figures.items():
        ratio = pair["sim"] / pair["socketpair"]
        click.echo(f"{name:36} {pair['sim']:>12.1f} {pair['socketpair']:>12.1f} {ratio:>15.2f}")


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
