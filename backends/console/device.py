"""`ConsoleBackend`: what xenconsoled does for one console, as a ringkit backend.

It maps the guest's ``struct xencons_interface`` page, binds the console's event channel
(``port``), sets the page's connection byte, and bridges the two byte rings:

* guest -> host (``out``): appended to a log file and/or written to a pty's master side;
* host -> guest (``in``): what a terminal attached to the pty types.

Flow control both ways: the backend takes bytes out of the ring only as fast as the pty (and
the log) accept them, so a guest that writes faster than the terminal reads blocks on a full
ring; and it reads the pty only once the guest's input ring has room, and no more than that
room, so a terminal that types faster than the guest reads blocks in the pty.
(``pty_policy="drop"`` discards pty output nobody reads instead, as xenconsoled does for an
unattached pty; the log keeps everything.)  The log file is unbuffered (a crash loses nothing)
and written in full even when ``write`` is short.

The pty's slave path is published as ``tty`` in the backend dir (xenconsoled publishes it as
``console/tty``) and is stable across reconnections of the guest.  Hostile ring indices end
the connection cleanly (Closing, Closed); the connection byte is set to disconnected before
the page is unmapped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Literal

import anyio
import anyio.abc

from ... import RemoteProtocolError
from ...abc import Domain
from ...channel import PipeStream
from ...device import Backend, Nodes, Queue
from ...proto.console import (
    DEFAULT_CONSOLE_DEVID,
    ConsoleRing,
    ConsoleSide,
    check_console_devid,
)
from ...proto.layout import CONSOLE_OUT_SIZE

__all__ = ("ConsoleBackend", "write_all")

_CHUNK = 4096


def write_all(file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to an unbuffered `file`, whose ``write`` may write only part of it
    (interrupted by a signal, the last blocks of a full disk)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = file.write(view)
        if not written:  # a blocking file never writes nothing; do not spin if one does
            raise OSError(f"{getattr(file, 'name', file)!r}: write wrote nothing")
        view = view[written:]


class _BackendConsoleStream(PipeStream):
    """The backend's stream also owns the connection byte (disconnected before unmapping) and
    hands what the guest wrote last, still in the ring at close, to `on_final`."""

    on_final: Callable[[bytes], None] | None = None

    async def aclose(self) -> None:
        engine = self.engine
        assert isinstance(engine, ConsoleRing)
        if not self._closed:
            if engine.error is None and self.on_final is not None:
                with suppress(RemoteProtocolError):
                    data, _ = engine.read(CONSOLE_OUT_SIZE)
                    if data:
                        self.on_final(data)
            engine.set_connected(False)  # one byte: harmless even to a hostile guest
        await super().aclose()


class ConsoleBackend(Backend[PipeStream]):
    """Serves one guest console.  ``async with ConsoleBackend(dom0, guest, log_path=...,
    pty=True) as console: print(console.pty_path); await console.run()``.

    `devid` defaults to 1, the first secondary console; 0 (the primary console, which is not a
    xenbus device) raises ConfigError -- see `ringkit.proto.console.check_console_devid`."""

    device_type = "console"
    event_channel_key = "port"

    def __init__(
        self,
        domain: Domain,
        frontend_id: int,
        devid: int = DEFAULT_CONSOLE_DEVID,
        *,
        log_path: str | os.PathLike[str] | None = None,
        pty: bool = True,
        pty_policy: Literal["block", "drop"] = "block",
    ) -> None:
        super().__init__(domain, frontend_id, check_console_devid(devid))
        self.log_path = Path(log_path) if log_path is not None else None
        self.pty_policy = pty_policy
        self._log: BinaryIO | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.pty_path: str | None = None
        """The pty a terminal attaches to (``screen``, ``tmux``, ``cat``...), or None."""
        if pty:
            self._open_pty()

    @property
    def pty_backlog(self) -> int:
        """Bytes typed at the pty that the backend has not taken yet: they wait in the pty
        while the guest's ``in`` ring is full (the pty pushes back on the terminal; nothing is
        dropped).  0 without a pty.

        Raises:
            OSError: the pty could not be asked (it was closed under the backend).
        """
        if self._master is None:
            return 0
        raw = fcntl.ioctl(self._master, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # bytes pass through untouched, as xenconsoled's pty does
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_path = os.ttyname(slave)

    # ------------------------------------------------------------------ device hooks

    def make_channel(self, queue: Queue[PipeStream]) -> PipeStream:
        ring = ConsoleRing(queue.buffer, ConsoleSide.BACKEND)
        ring.set_connected(True)
        stream = _BackendConsoleStream(ring, queue.event)
        stream.on_final = self._final_output
        return stream

    def _final_output(self, data: bytes) -> None:
        """Bytes the guest wrote just before the connection ended: keep them (log; pty if it
        takes them without waiting)."""
        if self._log is not None:
            write_all(self._log, data)
        if self._master is not None:
            with suppress(OSError):
                os.write(self._master, data)

    async def rings_mapped(self, nodes: Nodes) -> None:
        if self.pty_path is not None:
            await nodes.write("tty", self.pty_path)

    async def serve(self, queue: Queue[PipeStream]) -> None:
        stream = queue.channel
        if self.log_path is not None and self._log is None:
            self._log = self.log_path.open("ab", buffering=0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._guest_to_host, stream)
            if self._master is not None:
                tg.start_soon(self._host_to_guest, stream)

    # ------------------------------------------------------------------ the bridge

    async def _guest_to_host(self, stream: PipeStream) -> None:
        while True:
            data = await stream.receive(_CHUNK)
            if self._log is not None:
                write_all(self._log, data)
            if self._master is not None:
                await self._write_pty(data)

    async def _write_pty(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                if self.pty_policy == "drop":
                    return
                await anyio.wait_writable(self._master)

    async def _host_to_guest(self, stream: PipeStream) -> None:
        assert self._master is not None
        while True:
            # Room first: bytes the guest has no room for stay in the pty (its writer blocks)
            # instead of in our memory.  Only we write the ring, so the room cannot shrink.
            room = await stream.wait_writable()
            await anyio.wait_readable(self._master)
            try:
                data = os.read(self._master, min(_CHUNK, room))
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no slave open (cannot happen: we hold one)
                    await anyio.sleep(0.05)
                    continue
                raise
            await stream.send(data)  # fits: read no more than the room

    # ------------------------------------------------------------------ lifetime

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
