"""Request-queue benchmark (issue 18): a 4 KiB echo through `ringkit.requests` on the simulated
Xen vs the same exchange over an anyio socketpair, on the same anyio backend.

The ringkit side is a small echo device (`EchoFrontend` / `EchoBackend`, with `request_codec`
set) built on the request-queue layer: the frontend's `RequestQueue` lends each request one
page of its `GrantPool` (32 pages, granted once per connection), writes 4 KiB into it and names
its grant ref in the request slot; the backend's `RequestServer` (requests handled in ring
order, a burst's responses pushed together) maps the page through a `GrantMapper` --
persistently by default, since pool pages are reused (``--grants per-request`` maps and unmaps
it for every request) -- reads the 4 KiB, stamps the first 8 bytes (the request's sequence
number, with the top bit set) and writes them back into the same page; the frontend reads the
4 KiB back out and checks them.  The backend runs in a child process, the frontend in this one,
the simulated Xen in a third.

The baseline is the same exchange over a Unix socketpair between this process and a child, on
the same anyio backend (`anyio.abc.SocketStream`): fixed 4096-byte frames whose first 8 bytes
are the sequence number; the server stamps and returns each frame, every whole frame of a
receive answered with one send; the client checks every reply.

Depth 32 both ways, each measured twice:

* **32 callers**: 32 tasks, each with one request in flight at a time (ringkit: ``async with
  queue.request(pages=1)``, `RequestQueue.call`; socketpair: each task sends its frame under a
  lock and waits for a reader task to hand it the reply with its sequence number);
* **batches of 32**: one task prepares 32 requests, sends them with one push and waits for all
  of them (`RequestQueue.call_batch`; socketpair: 32 frames in one send, then the 32 replies).

Beside each figure it prints, per request and for each side, the doorbells rung, the
event-channel sleeps, the polling windows and the process CPU time (for the sockets, the send
and receive calls), as the other benchmarks do, with the load average before and after and the
command that reproduces the run.  ``--profile FILE`` runs cProfile over the frontend's measured
intervals (this process) and prints the top functions.  It prints numbers and asserts nothing.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from io import StringIO
from typing import Any, NamedTuple

import anyio
import anyio.abc
import click

from .._errors import PeerGoneError, RemoteProtocolError
from ..channel import BackRingChannel, FrontRingChannel
from ..device import Backend, DeviceAddress, Frontend, Nodes, Queue, RingLayout, create_device
from ..requests import (
    Field,
    GrantMapper,
    GrantPool,
    IncomingRequest,
    RefList,
    Request,
    RequestError,
    RequestQueue,
    RequestServer,
    SlotCodec,
)
from ._counters import describe, per_request, snapshot

__all__ = ("CODEC", "DEPTH", "ECHO_RING", "PAGE", "EchoBackend", "EchoFrontend", "EchoPayload",
           "Figure", "command", "stamp")

PAGE = 4096
"""Bytes echoed per request, each way: one granted page."""
DEPTH = 32
"""Requests in flight, on both sides."""
_ECHO = 0
_ANSWERED = 1 << 63
"""Set by the server in the first 8 bytes (the sequence number) of what it hands back."""

# request (32 bytes): id u64 | op u8 | nr_refs u8 | pad 2 | length u32 | ref u32 | pad 12
# response (16 bytes): id u64 | status i16 | pad 2 | length u32
_REQUEST = struct.Struct("<QBBxxII12x")
_RESPONSE = struct.Struct("<QhxxI")
ECHO_RING = RingLayout("rq-echo", request_size=_REQUEST.size, response_size=_RESPONSE.size)
CODEC = SlotCodec(
    ECHO_RING,
    request_id=Field(0, 8),
    response_id=Field(0, 8),
    operation=Field(8, 1),
    refs=RefList(offset=16, stride=4, maximum=1, count=Field(9, 1),
                 writable_operations=frozenset({_ECHO})),
    status=Field(8, 2, signed=True),
)
"""The echo device's slots, as the request-queue layer reads them."""


def stamp(buf: bytearray | memoryview, at: int = 0) -> None:
    """What the server does to each 4 KiB it hands back: set the top bit of its first 8 bytes
    (so the client sees that the data went through the server)."""
    seq = int.from_bytes(buf[at:at + 8], "little")
    buf[at:at + 8] = (seq | _ANSWERED).to_bytes(8, "little")


class EchoPayload:
    """The client's data for request `seq`: the sequence number, then a fixed pattern; and the
    check of what came back."""

    def __init__(self) -> None:
        self.data = bytearray(bytes(range(256)) * (PAGE // 256))
        self.tail = bytes(self.data[8:])

    def make(self, seq: int) -> bytearray:
        """The 4 KiB to send as request `seq` (one buffer, rewritten by the next call)."""
        self.data[:8] = seq.to_bytes(8, "little")
        return self.data

    def check(self, seq: int, reply: bytes | bytearray) -> None:
        """Raise unless `reply` is request `seq`'s data, `stamp`ed by the server.

        Raises:
            click.ClickException: it came back wrong (the benchmark is broken).
        """
        if reply[:8] != (seq | _ANSWERED).to_bytes(8, "little") or not reply.endswith(self.tail):
            raise click.ClickException(f"request {seq} came back wrong: the benchmark is broken")


# --------------------------------------------------------------------------- the echo device


class EchoBackend(Backend):
    """Serves the echo device: maps each request's page and hands its 4 KiB back, stamped."""

    device_type = "rq-echo"
    ring_layout = ECHO_RING
    request_codec = CODEC

    def __init__(self, *args: Any, persistent: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.persistent = persistent
        """Whether the backend keeps the pool's pages mapped (`GrantMapper(persistent=...)`)."""
        self.servers: list[RequestServer] = []

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        mapper = GrantMapper(self.domain.grants, self.peer_id, persistent=self.persistent)
        server = RequestServer(queue.channel, CODEC, self.answer, mapper=mapper)
        self.servers.append(server)
        try:
            await server.run()
        finally:
            with anyio.CancelScope(shield=True):
                await mapper.aclose()

    async def answer(self, request: IncomingRequest) -> bytes:
        _, op, _, length, _ = _REQUEST.unpack(request.slot)
        if op != _ECHO or not 8 <= length <= PAGE:
            raise RequestError(f"operation {op}, length {length}")
        page = (await request.pages())[0]
        data = bytearray(page[:length])  # read the page (a private copy) ...
        stamp(data)
        page[:length] = data  # ... and hand it back in the same page
        return _RESPONSE.pack(request.id, 0, length)


class EchoFrontend(Frontend):
    """Sends 4 KiB echo requests through a `RequestQueue` (`requests`), one pool page each."""

    device_type = "rq-echo"
    ring_layout = ECHO_RING
    request_codec = CODEC

    _requests: RequestQueue | None = None

    async def peer_connected(self, backend: Nodes) -> None:
        pool = await GrantPool.share(self.domain.grants, self.peer_id, DEPTH)
        self._requests = RequestQueue([self.channel], CODEC, pool=pool, window=DEPTH)
        self.tasks.start_soon(self._requests.run)

    async def disconnected(self) -> None:
        requests, self._requests = self._requests, None
        if requests is not None:
            requests.fail(PeerGoneError(f"{self.address}: disconnected"))
            assert requests.pool is not None
            await requests.pool.aclose()

    @property
    def requests(self) -> RequestQueue:
        if self._requests is None:
            raise PeerGoneError(f"{self.address} is not connected")
        return self._requests

    def encode(self, req: Request, payload: bytes | bytearray) -> None:
        """Put `payload` (4 KiB) into the request's page and name the page in its slot."""
        req.write_data(payload)
        _REQUEST.pack_into(req.slot, 0, 0, _ECHO, 1, PAGE, req.refs[0])

    @staticmethod
    def decode(req: Request, out: bytearray) -> None:
        """Check the response and read the 4 KiB back out of the page into `out`."""
        _, status, length = _RESPONSE.unpack(req.response)
        if status != 0 or length != PAGE:
            raise RemoteProtocolError(f"rq-echo: status {status}, length {length}")
        req.read_data(out)


# --------------------------------------------------------------------------- child processes


async def _answer_snapshots(take: Callable[[], dict[str, float]]) -> None:
    """Print `take()` as JSON for every line the parent writes on our stdin; return at EOF."""
    fd = sys.stdin.fileno()
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, 4096)
        if not data:
            return
        for _ in range(data.count(b"\n")):
            print(json.dumps(take()), flush=True)


async def _backend_main(directory: str, frontend_id: int, persistent: bool) -> None:
    from ..sim import connect

    async with connect(directory, 0) as dom0, \
            EchoBackend(dom0, frontend_id, 0, persistent=persistent) as backend:
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_answer_snapshots,
                          lambda: snapshot(queue.channel.stats for queue in backend.queues))
            await backend.run(once=True)
            tg.cancel_scope.cancel()


async def _socket_server_main(fd: int) -> None:
    """Echo 4096-byte frames, stamped, answering every whole frame of a receive with one send."""
    counts = {"sends": 0, "receives": 0}
    stream = await anyio.abc.SocketStream.from_socket(socket.socket(fileno=fd))
    print("ready", flush=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_answer_snapshots, lambda: snapshot(
            (), notifications=counts["sends"], sleeps=counts["receives"]))
        pending = bytearray()
        try:
            async with stream:
                while True:
                    pending += await stream.receive(65536)
                    counts["receives"] += 1
                    whole = len(pending) // PAGE
                    if whole:
                        for at in range(0, whole * PAGE, PAGE):
                            stamp(pending, at)
                        out = bytes(memoryview(pending)[:whole * PAGE])
                        del pending[:whole * PAGE]
                        await stream.send(out)
                        counts["sends"] += 1
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        tg.cancel_scope.cancel()


class _Child:
    """A child process of the parent: its readiness and counter snapshots (over stdin/stdout)."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self._stdout.receive()
            except anyio.EndOfStream:
                raise click.ClickException("a benchmark child process exited early") from None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def snapshot(self) -> dict[str, float]:
        await self._stdin.send(b"snapshot\n")
        result: dict[str, float] = json.loads(await self.line())
        return result


# --------------------------------------------------------------------------- measurements


class Figure(NamedTuple):
    """One measurement: requests per second, and per request the counters of each side
    (`ringkit.bench._counters`)."""

    value: float
    front: dict[str, float]
    back: dict[str, float]


_MODES = ("callers", "batches")
_MODE_LABELS = {"callers": f"{DEPTH} callers", "batches": f"batches of {DEPTH}"}
_Body = Callable[[float], Awaitable[int]]
"""Runs the exchange for about the given seconds; returns the requests answered."""


async def _measured(body: _Body, seconds: float, front: Callable[[], dict[str, float]],
                    back: _Child, profile: cProfile.Profile | None = None) -> Figure:
    front_before = front()
    back_before = await back.snapshot()
    if profile is not None:
        profile.enable()
    start = time.perf_counter()
    count = await body(seconds)
    elapsed = time.perf_counter() - start
    if profile is not None:
        profile.disable()
    front_after = front()
    back_after = await back.snapshot()
    return Figure(count / elapsed, per_request(front_before, front_after, count),
                  per_request(back_before, back_after, count))


def _ringkit_bodies(fe: EchoFrontend) -> dict[str, _Body]:
    queue = fe.requests

    async def callers(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        done = 0

        async def caller(first: int) -> None:
            nonlocal done
            payload, out = EchoPayload(), bytearray(PAGE)
            seq = first
            while time.perf_counter() < deadline:
                async with queue.request(pages=1) as req:
                    fe.encode(req, payload.make(seq))
                    await queue.call(req)
                    fe.decode(req, out)
                payload.check(seq, out)
                seq += DEPTH
                done += 1

        async with anyio.create_task_group() as tg:
            for k in range(DEPTH):
                tg.start_soon(caller, k)
        return done

    async def batches(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        payload, out = EchoPayload(), bytearray(PAGE)
        seq = 0
        while time.perf_counter() < deadline:
            held: list[Request] = []
            try:
                for k in range(DEPTH):
                    req = await queue.prepare(1)
                    held.append(req)
                    fe.encode(req, payload.make(seq + k))
                await queue.call_batch(held)
                for k, req in enumerate(held):
                    fe.decode(req, out)
                    payload.check(seq + k, out)
            finally:
                for req in held:
                    queue.release(req)
            seq += DEPTH
        return seq

    return {"callers": callers, "batches": batches}


def _socket_bodies(stream: anyio.abc.SocketStream, counts: dict[str, int]) -> dict[str, _Body]:
    async def callers(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        lock = anyio.Lock()
        waiting: dict[int, anyio.Event] = {}
        replies: dict[int, bytearray] = {}
        done = 0

        async def reader() -> None:
            pending = bytearray()
            while True:
                pending += await stream.receive(65536)
                counts["receives"] += 1
                whole = len(pending) // PAGE
                for at in range(0, whole * PAGE, PAGE):
                    seq = int.from_bytes(pending[at:at + 8], "little") & ~_ANSWERED
                    replies[seq] = pending[at:at + PAGE]  # read the 4 KiB back out
                    waiting.pop(seq).set()
                del pending[:whole * PAGE]

        async def caller(first: int) -> None:
            nonlocal done
            payload = EchoPayload()
            seq = first
            while time.perf_counter() < deadline:
                event = waiting[seq] = anyio.Event()
                async with lock:
                    await stream.send(bytes(payload.make(seq)))
                    counts["sends"] += 1
                await event.wait()
                payload.check(seq, replies.pop(seq))
                seq += DEPTH
                done += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            async with anyio.create_task_group() as inner:
                for k in range(DEPTH):
                    inner.start_soon(caller, k)
            tg.cancel_scope.cancel()
        return done

    async def batches(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        payload = EchoPayload()
        frames = bytearray(DEPTH * PAGE)
        pending = bytearray()
        seq = 0
        while time.perf_counter() < deadline:
            for k in range(DEPTH):
                frames[k * PAGE:(k + 1) * PAGE] = payload.make(seq + k)
            await stream.send(bytes(frames))
            counts["sends"] += 1
            while len(pending) < DEPTH * PAGE:
                pending += await stream.receive(65536)
                counts["receives"] += 1
            for k in range(DEPTH):
                payload.check(seq + k, pending[k * PAGE:(k + 1) * PAGE])
            del pending[:DEPTH * PAGE]
            seq += DEPTH
        return seq

    return {"callers": callers, "batches": batches}


def _child_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "ringkit.bench.requests", *(str(a) for a in args)]


async def _measure_ringkit(backend: str, seconds: float, warmup: float, persistent: bool,
                           profile: cProfile.Profile | None) -> dict[str, Figure]:
    from ..sim import SimXen

    results: dict[str, Figure] = {}
    async with SimXen.start() as xen:
        guest = await xen.create_domain("bench-guest")
        async with xen.connect(0) as dom0:
            await create_device(dom0.store, DeviceAddress(EchoFrontend.device_type, guest, 0, 0))
        argv = _child_argv(backend, "backend", xen.directory, guest, int(persistent))
        async with await anyio.open_process(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE) as proc:
            back = _Child(proc)
            await back.line()  # ready
            async with xen.connect(guest) as domu, EchoFrontend(domu, 0) as fe:
                bodies = _ringkit_bodies(fe)
                channels: Sequence[FrontRingChannel] = [q.channel for q in fe.queues]

                def front() -> dict[str, float]:
                    return snapshot(channel.stats for channel in channels)

                # warm-up: a batch takes every pool page at once, so a persistent mapper maps
                # each of them here, outside the measurements
                for mode in _MODES:
                    await bodies[mode](warmup)
                for mode in _MODES:
                    results[mode] = await _measured(bodies[mode], seconds, front, back, profile)
            await proc.stdin.aclose()  # type: ignore[union-attr]
            await proc.wait()
    return results


async def _measure_socketpair(backend: str, seconds: float, warmup: float) -> dict[str, Figure]:
    results: dict[str, Figure] = {}
    mine, theirs = socket.socketpair()
    with theirs:
        proc = await anyio.open_process(_child_argv(backend, "socket-server", theirs.fileno()),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        pass_fds=[theirs.fileno()])
    async with proc:
        back = _Child(proc)
        await back.line()  # ready
        counts = {"sends": 0, "receives": 0}
        async with await anyio.abc.SocketStream.from_socket(mine) as stream:
            bodies = _socket_bodies(stream, counts)

            def front() -> dict[str, float]:
                return snapshot((), notifications=counts["sends"], sleeps=counts["receives"])

            for mode in _MODES:
                await bodies[mode](warmup)
            for mode in _MODES:
                results[mode] = await _measured(bodies[mode], seconds, front, back)
        await proc.stdin.aclose()  # type: ignore[union-attr]
        await proc.wait()
    return results


def _best(runs: list[dict[str, Figure]]) -> dict[str, Figure]:
    """Each figure's best run (the least disturbed on a shared machine), with its counters."""
    return {key: max((run[key] for run in runs), key=lambda f: f.value) for key in runs[0]}


def _mib(requests_per_second: float) -> float:
    return requests_per_second * PAGE / (1 << 20)


def _report(figures: dict[str, dict[str, dict[str, Figure]]]) -> None:
    click.echo(f"{'':9}{'depth 32 as':<16}{'ringkit req/s':>14}{'MiB/s':>9}"
               f"{'socketpair req/s':>18}{'MiB/s':>9}{'ratio':>9}")
    for backend, cells in figures.items():
        for mode in _MODES:
            ours, theirs = cells["ringkit"][mode].value, cells["socketpair"][mode].value
            click.echo(f"{backend:<9}{_MODE_LABELS[mode]:<16}{ours:>14,.0f}{_mib(ours):>9.1f}"
                       f"{theirs:>18,.0f}{_mib(theirs):>9.1f}{ours / theirs:>8.2f}x")
    click.echo("per request (ringkit: doorbells rung, event-channel sleeps, polling windows; "
               "socketpair: send and receive calls; process CPU time of each side):")
    for backend, cells in figures.items():
        for mode in _MODES:
            click.echo(f"  {backend} {_MODE_LABELS[mode]}")
            for column in ("ringkit", "socketpair"):
                cell = cells[column][mode]
                sockets = column == "socketpair"
                click.echo(f"    {column:<11}{describe('front', cell.front, sockets=sockets)} | "
                           f"{describe('back', cell.back, sockets=sockets)}")


def _print_profile(profile: cProfile.Profile, path: str, top: int = 25) -> None:
    profile.dump_stats(path)
    out = StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    click.echo(f"cProfile of this process (the frontend) over the ringkit measurements, "
               f"saved to {path}; top {top} by own time:")
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    for line in lines[start:]:
        if line.strip():
            click.echo(f"  {line}")


def _command_line(backend: str, seconds: float, repeat: int, grants: str, smoke: bool,
                  profile_path: str | None) -> str:
    words = ["ringkit", "bench", "requests", "--backend", backend]
    if smoke:
        words.append("--smoke")
    else:
        words += ["--seconds", f"{seconds:g}", "--repeat", str(repeat)]
    if grants != "persistent":
        words += ["--grants", grants]
    if profile_path:
        words += ["--profile", profile_path]
    return " ".join(words)


@click.command("requests")
@click.option("--backend", type=click.Choice(["asyncio", "trio", "both"]), default="both",
              show_default=True, help="anyio backend of every process (both: one after the "
                                      "other).")
@click.option("--seconds", default=2.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Length of each measurement.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs of everything; the best figure of each cell is shown (the machine may "
                   "be shared: the best run is the least disturbed one).")
@click.option("--grants", type=click.Choice(["persistent", "per-request"]),
              default="persistent", show_default=True,
              help="How the backend maps the pool's pages: kept mapped (GrantMapper("
                   "persistent=True)) or mapped and unmapped for every request.")
@click.option("--smoke", is_flag=True,
              help="A tiny run that only shows the benchmark works (0.05 s per figure, one "
                   "run); its figures mean nothing.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False, writable=True),
              help="cProfile this process (the frontend) over the ringkit measurements, save "
                   "the stats to this file and print the top functions.")
def command(backend: str, seconds: float, repeat: int, grants: str, smoke: bool,
            profile_path: str | None) -> None:
    """Request-queue 4 KiB echo at depth 32 (a granted pool page per request) on the simulated
    Xen vs the same exchange over an anyio socketpair, with 32 callers and in batches of 32,
    side by side with the ratio and the per-request counters."""
    line = _command_line(backend, seconds, repeat, grants, smoke, profile_path)
    if smoke:
        seconds, repeat = 0.05, 1
    warmup = min(seconds / 4, 0.5)
    backends = ["asyncio", "trio"] if backend == "both" else [backend]
    persistent = grants == "persistent"
    profile = cProfile.Profile() if profile_path else None
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Figure]]]] = {
        name: {"ringkit": [], "socketpair": []} for name in backends}
    for _ in range(repeat):
        for name in backends:
            runs[name]["ringkit"].append(anyio.run(_measure_ringkit, name, seconds, warmup,
                                                   persistent, profile, backend=name))
            runs[name]["socketpair"].append(anyio.run(_measure_socketpair, name, seconds,
                                                      warmup, backend=name))
    load = os.getloadavg()
    click.echo(f"request-queue benchmark: {PAGE}-byte echo, depth {DEPTH}, {os.cpu_count()} "
               f"CPUs, load average {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
               f"{' '.join(f'{x:.2f}' for x in load)} at the end; best of {repeat} run(s) of "
               f"{seconds:g} s per figure{' (smoke: the figures mean nothing)' if smoke else ''}")
    click.echo(f"command: {line}")
    click.echo(f"ringkit: RequestQueue (window {DEPTH}, {DEPTH}-page GrantPool, one page per "
               f"request) -> RequestServer in ring order, GrantMapper(persistent={persistent}); "
               "frontend in this process, backend in a child, the simulated Xen in a third")
    click.echo(f"socketpair: anyio SocketStream between this process and a child, {PAGE}-byte "
               f"frames; {DEPTH} callers share it under a lock with a reader task, batches go "
               f"out as one {DEPTH * PAGE // 1024} KiB send")
    click.echo(f"MiB/s counts the {PAGE} bytes of each request one way (as many come back); "
               "issue 18's target: ringkit >= 3x the socketpair")
    _report({name: {column: _best(cells) for column, cells in runs[name].items()}
             for name in backends})
    if profile is not None and profile_path:
        _print_profile(profile, profile_path)


def _child_main(argv: Sequence[str]) -> None:
    backend, role, *args = argv
    if role == "backend":
        anyio.run(_backend_main, args[0], int(args[1]), bool(int(args[2])), backend=backend)
    elif role == "socket-server":
        anyio.run(_socket_server_main, int(args[0]), backend=backend)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
