"""``ringkit vchan`` (the vchan-socket-proxy job) as real processes on a simulated Xen running as
a third process: stdio at both ends, Unix sockets at both ends for two subsequent connections,
and SIGKILL of either end -- the survivor first gets every byte the dead end had put in the
ring, then end of stream (never a hang), its sends are refused, and nothing is leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from ringkit.sim import SimXen
from ringkit.sim import connect as sim_connect
from ringkit.vchan import VchanServer, VchanStream, connect, vchan_path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
TIMEOUT = 60
CLI = [sys.executable, "-c", "from ringkit.cli import main; main()", "vchan"]


async def cli(directory: Path, domid: int, *args: str) -> anyio.abc.Process:
    return await anyio.open_process([*CLI, "--dir", str(directory), "--domain", str(domid),
                                     *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=None)


async def read_exactly(stream: anyio.abc.ByteReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await stream.receive()
    assert len(got) == size, f"{len(got) - size} bytes too many"
    return bytes(got)


async def read_to_end(stream: anyio.abc.ByteReceiveStream) -> bytes:
    got = bytearray()
    with pytest.raises((anyio.EndOfStream, anyio.ClosedResourceError)):
        while True:
            got += await stream.receive()
    return bytes(got)


@asynccontextmanager
async def simulator() -> AsyncIterator[tuple[SimXen, int, int]]:
    async with SimXen.start() as xen:
        a = await xen.create_domain("srv")
        b = await xen.create_domain("cli")
        with anyio.fail_after(TIMEOUT):
            yield xen, a, b
        leaks = await xen.settled_leaks()
        assert not leaks and leaks.clients == 0, leaks


@pytest.mark.parametrize("poll", ["0", "1000"], ids=["sleeping", "polling"])
async def test_stdio_at_both_ends(anyio_backend: str, poll: str) -> None:
    """Polling: each end's two tasks (stdin -> vchan, vchan -> stdout) share the port; with
    polling, one task once slept with the ring ready after the other took the event meant for
    it, and both ends stopped with 2 KiB carried (every run of this test hung then)."""
    up, down = os.urandom(300_000), os.urandom(200_000)
    async with simulator() as (xen, a, b):
        path = vchan_path(a, b, 10)
        server = await cli(xen.directory, a, "-m", "server", "--poll-us", poll, str(b), path,
                           "-")
        client = await cli(xen.directory, b, "-m", "client", "--poll-us", poll, str(a), path,
                           "-")
        async with server, client:
            assert server.stdin and server.stdout and client.stdin and client.stdout
            async with anyio.create_task_group() as tg:   # pipes are small: write and read
                tg.start_soon(client.stdin.send, up)     # at the same time
                assert await read_exactly(server.stdout, len(up)) == up
            async with anyio.create_task_group() as tg:
                tg.start_soon(_send_and_close, server.stdin, down)   # then send_eof
                assert await read_to_end(client.stdout) == down
            assert await client.wait() == 0    # the vchan ended: the client exits
            assert await read_to_end(server.stdout) == b""
            assert await server.wait() == 0    # the client closed: so does a stdio server


async def test_files_and_dev_null_for_stdin_and_stdout(anyio_backend: str,
                                                     tmp_path: Path) -> None:
    """`ringkit vchan ... -` takes stdin from a file or /dev/null and writes stdout to a file or
    /dev/null, as vchan-socket-proxy does (epoll refuses regular files and /dev/null: they used
    to end in a traceback).  A client's input ending closes the vchan (libxenvchan has no half
    close); the server gets every byte first, then end of stream."""
    up = os.urandom(300_000)
    (tmp_path / "up").write_bytes(up)
    async with simulator() as (xen, a, b):
        common = ["--dir", str(xen.directory)]
        for port, source in ((12, tmp_path / "up"), (13, Path(os.devnull))):
            path = vchan_path(a, b, port)
            out = tmp_path / f"srv{port}.out"
            with open(source, "rb") as src, open(out, "wb") as srv_out, \
                    open(os.devnull, "wb") as null:
                server = await anyio.open_process(
                    [*CLI, *common, "--domain", str(a), "-m", "server", str(b), path, "-"],
                    stdin=subprocess.PIPE, stdout=srv_out, stderr=subprocess.PIPE)
                client = await anyio.open_process(
                    [*CLI, *common, "--domain", str(b), "-m", "client", str(a), path, "-"],
                    stdin=src, stdout=null, stderr=subprocess.PIPE)
                async with server, client:
                    assert await client.wait() == 0, await _stderr(client)
                    assert await server.wait() == 0, await _stderr(server)
                    assert "Traceback" not in await _stderr(client)
            assert out.read_bytes() == (up if port == 12 else b"")


async def _stderr(process: anyio.abc.Process) -> str:
    assert process.stderr is not None
    return (await read_to_end(process.stderr)).decode(errors="replace")


async def _send_and_close(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    await stream.send(data)
    await stream.aclose()


async def _echo(stream: anyio.abc.ByteStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def test_unix_sockets_at_both_ends_serve_subsequent_connections(anyio_backend: str) -> None:
    """echo service <- server proxy (connects per vchan client) <=vchan=> client proxy
    (listens) <- this test, twice in a row."""
    async with simulator() as (xen, a, b):
        path = vchan_path(a, b, 11)
        with tempfile.TemporaryDirectory(prefix="rk-vchan-", dir="/tmp") as tmp:
            service, front = Path(tmp, "service.sock"), Path(tmp, "front.sock")
            async with await anyio.create_unix_listener(service) as listener, \
                    anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, _echo)
                server = await cli(xen.directory, a, "-m", "server", str(b), path, str(service))
                client = await cli(xen.directory, b, "-m", "client", str(a), path, str(front))
                async with server, client:
                    for round_ in range(2):
                        while not front.exists():
                            await anyio.sleep(0.05)
                        data = os.urandom(100_000 + round_)
                        async with (await anyio.connect_unix(front) as sock,
                                    anyio.create_task_group() as io):
                            io.start_soon(sock.send, data)
                            assert await read_exactly(sock, len(data)) == data
                    for proc in (server, client):
                        proc.terminate()
                        await proc.wait()
                tg.cancel_scope.cancel()


@pytest.mark.parametrize("victim", ["client", "server"])
async def test_kill_9_of_either_end(anyio_backend: str, victim: str) -> None:
    """The victim is a `ringkit vchan` process; the survivor is this test, through the
    library.  What the victim put in the ring before dying arrives, then end of stream."""
    tail = os.urandom(20_000)                   # fits the 64 KiB ring the victim writes
    async with simulator() as (xen, a, b):
        path = vchan_path(a, b, 12)
        async with sim_connect(xen.directory, a if victim == "client" else b) as dom:
            stream: VchanStream
            if victim == "client":
                offer = await VchanServer.offer(dom, b, path, read_min=65536)
                proc = await cli(xen.directory, b, "-m", "client", str(a), path, "-")
                stream = await offer.accept()
            else:
                proc = await cli(xen.directory, a, "-m", "server", "--write-min", "65536",
                                 str(b), path, "-")
                stream = await connect(dom, a, path)
            async with proc, stream:
                assert proc.stdin and proc.stdout
                await stream.send(b"ping")
                assert await read_exactly(proc.stdout, 4) == b"ping"
                await proc.stdin.send(tail)
                while stream.engine.readable() < len(tail):   # all of it is in the ring
                    await anyio.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                assert await proc.wait() == -signal.SIGKILL
                got = bytearray()
                with pytest.raises(anyio.EndOfStream):
                    while True:
                        got += await stream.receive()
                assert bytes(got) == tail
                with pytest.raises(anyio.BrokenResourceError):
                    await stream.send(b"to the dead")
            assert not dom.leaks(), dom.leaks()
