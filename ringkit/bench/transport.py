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

3. the same two through `ringkit.channel.RingChannel`, the shell drivers use (a ring
   ping-pong is one request in flight), once with both ends sleeping on the event channel and
   once with both polling the ring first (``--poll-us``).

Baselines: the anyio socketpair above, and a blocking socketpair (plain ``socket.send`` /
``recv`` with no event loop) for the same ping-pong and echo.  Beside each figure it prints,
per request (or round trip) and for each side, the doorbells rung, the event-channel sleeps,
the polling windows and the process CPU time; for the sockets, the sends and receives.

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

from ..channel import MAX_POLL_US
from ._counters import describe, per_request, snapshot

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
        before = snapshot()
        start = time.perf_counter()
        for _ in range(rounds):
            channel.notify()
            await channel.wait()
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=rounds,
             counters=_grown(before, notifications=rounds, sleeps=rounds))
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
        rounds = 0
        before = snapshot()
        try:
            while True:
                await channel.wait()
                channel.notify()
                rounds += 1
        except PeerGoneError:
            pass
        _say(counters=_grown(before, notifications=rounds, sleeps=rounds + 1))
        await channel.aclose()


async def _socket_ping(fd: int, rounds: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        before = snapshot()
        start = time.perf_counter()
        for _ in range(rounds):
            await stream.send(b"!")
            await stream.receive(1)
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=rounds,
             counters=_grown(before, notifications=rounds, sleeps=rounds))


async def _socket_pong(fd: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        rounds = 0
        before = snapshot()
        try:
            while True:
                data = await stream.receive(1)
                await stream.send(data)
                rounds += 1
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        _say(counters=_grown(before, notifications=rounds, sleeps=rounds + 1))


def _grown(before: dict[str, float], **counted: float) -> dict[str, float]:
    """What grew since `before` (this process's CPU time), with the loop's own counts."""
    after = snapshot((), **counted)
    return {name: after[name] - before.get(name, 0.0) for name in after}


def _blocking_ping(fd: int, rounds: int) -> None:
    with socket.socket(fileno=fd) as sock:
        before = snapshot()
        start = time.perf_counter()
        for _ in range(rounds):
            sock.send(b"!")
            sock.recv(1)
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=rounds,
             counters=_grown(before, notifications=rounds, sleeps=rounds))


def _blocking_pong(fd: int) -> None:
    with socket.socket(fileno=fd) as sock:
        rounds = 0
        before = snapshot()
        while data := sock.recv(1):
            sock.send(data)
            rounds += 1
        _say(counters=_grown(before, notifications=rounds, sleeps=rounds + 1))


def _blocking_echo_front(fd: int, count: int, window: int) -> None:
    with socket.socket(fileno=fd) as sock:
        echo = _SocketEcho(count, window)
        while True:
            if batch := echo.to_send():
                sock.sendall(batch)
            if echo.got(sock.recv(65536)):
                break
        echo.report()


def _blocking_echo_back(fd: int) -> None:
    with socket.socket(fileno=fd) as sock:
        pending = bytearray()
        sends = receives = 0
        before = snapshot()
        while data := sock.recv(65536):
            receives += 1
            pending += data
            whole = len(pending) // REQUEST_SIZE
            if whole:
                sock.sendall(bytes(pending[: whole * REQUEST_SIZE]))
                del pending[: whole * REQUEST_SIZE]
                sends += 1
        _say(counters=_grown(before, notifications=sends, sleeps=receives))


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
        sent = received = notifies = sleeps = 0
        before = snapshot()
        start = time.perf_counter()
        while received < count:
            free = min(ring.free_requests(), count - sent)
            if free:
                ring.put_requests_from(batch, free)
                sent += free
                if ring.push_requests():
                    channel.notify()
                    notifies += 1
            got = ring.take_responses_into(responses)
            if got:
                if responses[:8] != responses[8:16]:
                    raise AssertionError("a response came back corrupted")
                received += got
                continue
            if not ring.final_check_for_responses():
                await channel.wait()
                sleeps += 1
        elapsed = time.perf_counter() - start
        _say(seconds=elapsed, requests=count, entries=entries,
             counters=_grown(before, notifications=notifies, sleeps=sleeps))
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
        notifies = sleeps = 0
        before = snapshot()
        try:
            while True:
                got = ring.take_requests_into(buffer)
                if got:
                    ring.put_responses_from(buffer, got)
                    if ring.push_responses():
                        channel.notify()
                        notifies += 1
                    continue
                if not ring.final_check_for_requests():
                    sleeps += 1
                    await channel.wait()
        except PeerGoneError:
            pass
        _say(counters=_grown(before, notifications=notifies, sleeps=sleeps))
        ring.release()
        await channel.aclose()
        await mapped.aclose()


class _SocketEcho:
    """The front end's bookkeeping of a socket echo, shared by the anyio and blocking loops:
    what to send next, what came back, and the counts."""

    def __init__(self, count: int, window: int) -> None:
        self.count, self.window = count, window
        self.batch = b"".join(_pattern(i) for i in range(window))
        self.sent = self.received = self.sends = self.receives = 0
        self.pending = bytearray()
        self.before = snapshot()
        self.start = time.perf_counter()

    def to_send(self) -> bytes:
        """The requests the window has room for (empty if none); counted as sent."""
        free = min(self.window - (self.sent - self.received), self.count - self.sent)
        if free:
            self.sent += free
            self.sends += 1
        return self.batch[: free * REQUEST_SIZE]

    def got(self, data: bytes) -> bool:
        """Take received bytes; True once every response is in."""
        self.receives += 1
        self.pending += data
        whole = len(self.pending) // REQUEST_SIZE
        if whole:
            if self.pending[:8] != self.pending[8:16]:
                raise AssertionError("a response came back corrupted")
            self.received += whole
            del self.pending[: whole * REQUEST_SIZE]
        return self.received >= self.count

    def report(self) -> None:
        elapsed = time.perf_counter() - self.start
        _say(seconds=elapsed, requests=self.count, entries=self.window,
             counters=_grown(self.before, notifications=self.sends, sleeps=self.receives))


async def _socket_echo_front(fd: int, count: int, window: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        echo = _SocketEcho(count, window)
        while True:
            if batch := echo.to_send():
                await stream.send(batch)
            if echo.got(await stream.receive(65536)):
                break
        echo.report()


async def _socket_echo_back(fd: int) -> None:
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    async with stream:
        pending = bytearray()
        sends = receives = 0
        before = snapshot()
        try:
            while True:
                pending += await stream.receive(65536)
                receives += 1
                whole = len(pending) // REQUEST_SIZE
                if whole:
                    # copy each request out, as the ring side does, then answer the batch
                    responses = bytes(pending[: whole * REQUEST_SIZE])
                    del pending[: whole * REQUEST_SIZE]
                    await stream.send(responses)
                    sends += 1
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        _say(counters=_grown(before, notifications=sends, sleeps=receives))


async def _channel_front(directory: str, domid: int, peer: int, count: int, window: int,
                         poll_us: int) -> None:
    """Requests through a `FrontRingChannel`, `window` in flight (1: a ring ping-pong)."""
    from ..channel import FrontRingChannel
    from ..proto.ring import FrontRing
    from ..sim import connect

    async with connect(directory, domid) as dom:
        pages = await dom.grants.share(peer, 1)
        event = await dom.events.alloc_unbound(peer)
        channel = FrontRingChannel(FrontRing.init(pages.buffer, _layout()), event,
                                   poll_us=poll_us)
        _say(refs=",".join(map(str, pages.refs)), port=event.port)
        await event.wait()  # the back end mapped, attached and bound
        window = min(window, channel.engine.entries)
        items = [_pattern(i) for i in range(window)]
        sent = received = 0
        before = snapshot((channel.stats,))
        start = time.perf_counter()
        while received < count:
            free = min(window - (sent - received), count - sent)
            if free:
                sent += channel.send_batch_nowait(items[:free])
            for item in await channel.receive_batch(window):
                if item[:8] != item[8:16]:
                    raise AssertionError("a response came back corrupted")
                received += 1
        elapsed = time.perf_counter() - start
        after = snapshot((channel.stats,))
        _say(seconds=elapsed, requests=count, entries=window,
             counters={name: after[name] - before[name] for name in after})
        await channel.aclose()
        await event.aclose()
        await pages.aclose()


async def _channel_back(directory: str, domid: int, peer: int, poll_us: int, refs: list[int],
                        port: int) -> None:
    """Echo every request through a `BackRingChannel`, a burst at a time."""
    from ..channel import BackRingChannel
    from ..proto.ring import BackRing
    from ..sim import connect

    async with connect(directory, domid) as dom:
        mapped = await dom.grants.map(peer, refs)
        event = await dom.events.bind_interdomain(peer, port)
        channel = BackRingChannel(BackRing.attach(mapped.buffer, _layout()), event,
                                  poll_us=poll_us)
        event.notify()
        before = snapshot((channel.stats,))
        try:
            while True:
                channel.send_batch_nowait(await channel.receive_batch(channel.engine.entries))
        except anyio.BrokenResourceError:
            pass  # the front end went away
        after = snapshot((channel.stats,))
        _say(counters={name: after[name] - before[name] for name in after})
        await channel.aclose()
        await event.aclose()
        await mapped.aclose()


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
    "channel-front": lambda a: _channel_front(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]),
                                              int(a[5])),
    "channel-back": lambda a: _channel_back(a[0], int(a[1]), int(a[2]), int(a[3]),
                                            [int(r) for r in a[4].split(",")], int(a[5])),
}
_BLOCKING: dict[str, Any] = {
    "blocking-ping": lambda a: _blocking_ping(int(a[0]), int(a[1])),
    "blocking-pong": lambda a: _blocking_pong(int(a[0])),
    "blocking-echo-front": lambda a: _blocking_echo_front(int(a[0]), int(a[1]), int(a[2])),
    "blocking-echo-back": lambda a: _blocking_echo_back(int(a[0])),
}
"""Workers without an event loop (the blocking socketpair baseline)."""


def _worker_main(argv: Sequence[str]) -> None:
    backend, role, *args = argv
    if role in _BLOCKING:
        _BLOCKING[role](args)
    else:
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


class _Measure:
    """One side-by-side cell: a figure and, per request, each side's counters."""

    def __init__(self, front: dict[str, Any], back: dict[str, Any], latency: bool) -> None:
        requests = int(front["requests"])
        seconds = float(front["seconds"])
        self.value = seconds / requests * 1e6 if latency else requests / seconds
        zero = dict.fromkeys(front["counters"], 0.0)
        self.front = per_request(zero, front["counters"], requests)
        self.back = per_request(zero, back["counters"], requests)
        self.entries = int(front.get("entries", 1))


def _pair(backend: str, first: tuple[str, ...], second: tuple[str, ...],
          relay: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the sim pair: `first` prints setup fields, `second` gets them (keys `relay`);
    return what each printed last (the figure and its counters, the peer's counters)."""
    a = _Child(backend, *first)
    setup = a.read()
    b = _Child(backend, *second, *(setup[key] for key in relay))
    try:
        result = a.read()
        a.finish()  # the first one leaving ends the second one's loop
        return result, b.read()
    finally:
        a.finish()
        b.finish()


def _socket_pair(backend: str, first: tuple[str, ...], second: tuple[str, ...]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    left, right = socket.socketpair()
    with left, right:
        a = _Child(backend, first[0], left.fileno(), *first[1:], pass_fds=[left.fileno()])
        b = _Child(backend, second[0], right.fileno(), *second[1:], pass_fds=[right.fileno()])
    try:
        result = a.read()
        a.finish()
        return result, b.read()
    finally:
        a.finish()
        b.finish()


_PING = "ping-pong round trip (us)"
_ECHO = "112-byte echo (req/s)"
_BASELINES = ("socketpair", "blocking")
"""The baseline columns: an anyio socketpair, and a blocking one (no event loop)."""


def run(
    backend: str, rounds: int, requests: int, ring_pages: int = 1, poll_us: int = 50
) -> dict[str, dict[str, _Measure]]:
    """Run every measurement once; returns, per row, the ring's `_Measure` (key ``sim``) and
    the baselines' (keys `_BASELINES`)."""
    from ..sim import SimXen

    async def sim_domains() -> tuple[str, int, int]:
        async with SimXen.attach(directory) as xen:
            return str(xen.directory), await xen.create_domain("bench-a"), await xen.create_domain(
                "bench-b")

    import tempfile

    rows: dict[str, _Measure] = {}
    modes = {"sleeping": 0} | ({f"polling {poll_us}us": poll_us} if poll_us else {})
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
            a, b = str(a_id), str(b_id)
            rows[_PING] = _Measure(*_pair(backend, ("sim-ping", d, a, b, str(rounds)),
                                         ("sim-pong", d, b, a), ["port"]), latency=True)
            rows[_ECHO] = _Measure(*_pair(backend, ("sim-echo-front", d, a, b, str(requests),
                                                   str(ring_pages)),
                                         ("sim-echo-back", d, b, a), ["refs", "port"]),
                                  latency=False)
            for mode, us in modes.items():
                for name, window, count in ((_PING, 1, rounds), (_ECHO, 1 << 16, requests)):
                    rows[f"{name.split(' (')[0]}, RingChannel {mode}"] = _Measure(*_pair(
                        backend, ("channel-front", d, a, b, str(count), str(window), str(us)),
                        ("channel-back", d, b, a, str(us)), ["refs", "port"]),
                        latency=name == _PING)
        finally:
            server.terminate()
            server.wait(timeout=30)
            if server.stdout is not None:
                server.stdout.close()
    echo_args = (str(requests), str(rows[_ECHO].entries))
    baselines = {
        (_PING, "socketpair"): _socket_pair(backend, ("socket-ping", str(rounds)),
                                            ("socket-pong",)),
        (_PING, "blocking"): _socket_pair(backend, ("blocking-ping", str(rounds)),
                                          ("blocking-pong",)),
        (_ECHO, "socketpair"): _socket_pair(backend, ("socket-echo-front", *echo_args),
                                            ("socket-echo-back",)),
        (_ECHO, "blocking"): _socket_pair(backend, ("blocking-echo-front", *echo_args),
                                          ("blocking-echo-back",)),
    }
    figures: dict[str, dict[str, _Measure]] = {}
    for name, measure in rows.items():
        kind = _PING if name.startswith(_PING.split(" (")[0]) else _ECHO
        figures[name] = {"sim": measure} | {
            column: _Measure(*baselines[kind, column], latency=kind == _PING)
            for column in _BASELINES}
    return figures


def _report(backend: str, repeat: int, figures: dict[str, dict[str, _Measure]]) -> None:
    click.echo(f"transport benchmark, anyio backend {backend}, {os.cpu_count()} CPUs "
               f"(load {os.getloadavg()[0]:.1f}), best of {repeat}")
    click.echo(f"{'':48} {'ringkit':>10} {'socketpair':>11} {'ratio':>7} {'blocking':>10} "
               f"{'ratio':>7}")
    for name, cells in figures.items():
        sim = cells["sim"].value
        pair, blocking = cells["socketpair"].value, cells["blocking"].value
        click.echo(f"{name:48} {sim:>10.1f} {pair:>11.1f} {sim / pair:>6.2f}x "
                   f"{blocking:>10.1f} {sim / blocking:>6.2f}x")
    click.echo("per request or round trip (ring: doorbells rung, event-channel sleeps, polling "
               "windows; sockets: send and receive calls; process CPU time of each side):")
    for name, cells in figures.items():
        click.echo(f"  {name}")
        for column in ("sim", *_BASELINES):
            cell = cells[column]
            label = "ringkit" if column == "sim" else column
            sockets = column != "sim"
            click.echo(f"    {label:<11}{describe('front', cell.front, sockets=sockets)} | "
                       f"{describe('back', cell.back, sockets=sockets)}")


@click.command("transport")
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio",
              show_default=True, help="anyio backend of every process.")
@click.option("--rounds", default=20000, show_default=True, type=click.IntRange(min=1),
              help="Ping-pong round trips.")
@click.option("--requests", default=200000, show_default=True, type=click.IntRange(min=1),
              help="Requests echoed through the ring / the socketpair.")
@click.option("--ring-pages", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Pages of the raw echo ring (blkif allows 1, 2, 4, 8, 16); the socketpairs "
                   "get the same window of requests in flight.  The RingChannel rows use one.")
@click.option("--poll-us", default=50, show_default=True, type=click.IntRange(0, MAX_POLL_US),
              help="Polling window of both ends for the polling RingChannel rows (0: none).")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Run everything this many times and keep each cell's best figure.")
def command(backend: str, rounds: int, requests: int, ring_pages: int, poll_us: int,
            repeat: int) -> None:
    """Simulated Xen vs Unix socketpairs: event-channel ping-pong latency and pipelined
    112-byte echo throughput through an io/ring.h ring (raw and through RingChannel, sleeping
    and polling), side by side with the ratios and the per-request counters."""
    figures = run(backend, rounds, requests, ring_pages, poll_us)
    for _ in range(repeat - 1):
        again = run(backend, rounds, requests, ring_pages, poll_us)
        for name, cells in again.items():
            for column, cell in cells.items():
                old = figures[name][column]
                better = cell.value < old.value if name.startswith("ping-pong") \
                    else cell.value > old.value
                if better:
                    figures[name][column] = cell
    _report(backend, repeat, figures)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
