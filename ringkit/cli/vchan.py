"""``ringkit vchan``: bridge a vchan to a Unix socket or to stdin/stdout -- the job of Xen's
``vchan-socket-proxy``, with the same arguments, talking the same wire as libxenvchan."""

from __future__ import annotations

import os
import select
import stat
import sys
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import click
from anyio.abc import ByteStream

from ..channel import MAX_POLL_US
from ._common import DIR_HELP, open_cli_domain, run_command

if TYPE_CHECKING:
    from ..abc import Domain

_CHUNK = 65536


class StdioStream(ByteStream):
    """stdin and stdout as one anyio byte stream, whatever the shell connected them to.

    Pipes, sockets and terminals are waited for in the event loop: a read waits until the
    descriptor is readable (so a cancelled read leaves no thread behind), a write to a pipe or
    socket until it is writable and then writes at most `PIPE_BUF` bytes, which a blocking pipe
    takes at once when it polls writable (the descriptor's blocking mode is shared with other
    processes, so it is left alone).  Regular files and devices such as /dev/null cannot be
    polled (epoll refuses them, EPERM) and never wait long: they are read and written in a
    worker thread.  Writes to a terminal go through a thread too (a terminal can block)."""

    def __init__(self, read_fd: int = 0, write_fd: int = 1) -> None:
        self._read_fd = read_fd
        self._write_fd: int | None = write_fd
        mode = os.fstat(write_fd).st_mode
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        mode = os.fstat(read_fd).st_mode
        self._read_pollable = (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
                               or os.isatty(read_fd))

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        if self._read_pollable:
            await anyio.wait_readable(self._read_fd)
            data = os.read(self._read_fd, max_bytes)
        else:
            data = await anyio.to_thread.run_sync(os.read, self._read_fd, max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view.nbytes:
            if self._write_fd is None:
                raise anyio.ClosedResourceError
            if self._pollable:
                await anyio.wait_writable(self._write_fd)
                written = os.write(self._write_fd, view[:select.PIPE_BUF])
            else:
                written = await anyio.to_thread.run_sync(os.write, self._write_fd, view)
            view = view[written:]

    async def send_eof(self) -> None:
        if self._write_fd is not None:
            with suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = None

    async def aclose(self) -> None:
        await self.send_eof()


async def bridge(vchan: ByteStream, local: ByteStream) -> None:
    """Copy both ways until the vchan ends.  End of the local input becomes the vchan's
    send_eof (after the peer took everything); the vchan's end of stream closes the local output
    and ends the bridge, as vchan-socket-proxy does when the other end closes."""

    async def upstream() -> None:
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                await vchan.send(await local.receive(_CHUNK))
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await vchan.send_eof()

    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream)
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                await local.send(await vchan.receive(_CHUNK))
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await local.send_eof()
        tg.cancel_scope.cancel()


def _peer_domid(text: str) -> int:
    try:
        domid = int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a domain id") from None
    if not 0 <= domid < 0x7FF0:
        raise click.BadParameter(f"domain id {domid} is out of range")
    return domid


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--domain", "domid", type=click.IntRange(0, 0x7FEF),
              help="Domid this end runs in (required with --dir).")
@click.option("-m", "--mode", type=click.Choice(["client", "server"]), default="client",
              show_default=True, help="Which end of the vchan this is.")
@click.option("-s", "--state-path", help='Write "running" to this xenstore node once ready.')
@click.option("--read-min", default=0, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Server: bytes the ring we read must hold (libxenvchan's left_min).")
@click.option("--write-min", default=0, show_default=True, type=click.IntRange(0, 1 << 20),
              help="Server: bytes the ring we write must hold (right_min).")
@click.option("--poll-us", default=0, show_default=True, type=click.IntRange(0, MAX_POLL_US),
              help="Spin on the rings this many microseconds before sleeping on the event "
                   "channel (0: never; needs a free CPU).")
@click.argument("peer")
@click.argument("path")
@click.argument("socket_path", metavar="SOCKET-PATH|-")
def vchan(directory: str | None, domid: int | None, mode: str, state_path: str | None,
          read_min: int, write_min: int, poll_us: int, peer: str, path: str,
          socket_path: str) -> None:
    """Bridge the vchan at xenstore PATH, with domain PEER at the other end, to a Unix socket
    or (with -) to stdin/stdout.  Wire-compatible with libxenvchan and vchan-socket-proxy.

    \b
    server: offer the vchan; for each client that connects, connect to the Unix socket
            SOCKET-PATH and bridge (then offer again); with -, bridge stdio once and exit.
    client: with -, connect to the vchan now and bridge stdio, exit when it closes; with a
            socket path, listen there and connect to the vchan for each accepted connection.
    """
    peer_id = _peer_domid(peer)
    stdio = socket_path == "-"

    async def main() -> None:
        from ..vchan import VchanListener, connect

        async with open_cli_domain(directory, domid) as dom:
            if mode == "server":
                async with VchanListener(dom, peer_id, path, read_min=read_min,
                                         write_min=write_min, poll_us=poll_us) as listener:
                    await _ready(dom, state_path)
                    while True:
                        async with await listener.accept() as stream:
                            if stdio:
                                await bridge(stream, StdioStream())
                                return
                            async with await anyio.connect_unix(socket_path) as sock:
                                await bridge(stream, sock)
            elif stdio:
                await _ready(dom, state_path)
                async with await connect(dom, peer_id, path, poll_us=poll_us) as stream:
                    await bridge(stream, StdioStream())
            else:
                async with await anyio.create_unix_listener(socket_path) as server:
                    await _ready(dom, state_path)
                    while True:
                        async with (await server.accept() as sock,
                                    await connect(dom, peer_id, path,
                                                  poll_us=poll_us) as stream):
                            await bridge(stream, sock)

    run_command(main)


async def _ready(dom: Domain, state_path: str | None) -> None:
    if state_path is not None:
        await dom.store.write(state_path, "running")
    print("ready", file=sys.stderr, flush=True)


__all__ = ("StdioStream", "bridge", "vchan")
