"""Console backend and frontend on the simulated Xen: both directions, wraparound, flow
control, hostile indices, and a real program reading the backend's pty."""

from __future__ import annotations

import io
import os
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest
from _tools import require_tools
from ringkit.backends.console import ConsoleBackend, write_all
from ringkit.frontends.console import ConsoleFrontend

from ringkit import ConfigError
from ringkit.abc import Domain
from ringkit.channel import PipeStream
from ringkit.device import DeviceAddress, Queue, XenbusState, create_device
from ringkit.proto.console import DEFAULT_CONSOLE_DEVID
from ringkit.proto.layout import CONSOLE_IN_SIZE, CONSOLE_OUT_PROD
from ringkit.sim import SimXen

pytestmark = pytest.mark.anyio
S = XenbusState


class RecordingFrontend(ConsoleFrontend):
    """Notes the page's connection byte at the moment the frontend lets go of the page."""

    connection_at_close: bool | None = None

    def make_channel(self, queue: Queue) -> anyio.abc.AsyncResource:
        stream = super().make_channel(queue)
        assert isinstance(stream, PipeStream)
        release = stream.aclose

        async def aclose() -> None:
            self.connection_at_close = None if stream.closed else stream.engine.peer_connected()
            await release()

        stream.aclose = aclose  # type: ignore[method-assign]
        return stream


@dataclass
class Console:
    backend: ConsoleBackend
    frontend: RecordingFrontend
    dom0: Domain
    domu: Domain
    log: Path


@asynccontextmanager
async def console(tmp_path: Path, **backend_args: object) -> AsyncIterator[Console]:
    log = tmp_path / "console.log"
    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            address = DeviceAddress("console", guest, 0, DEFAULT_CONSOLE_DEVID)
            await create_device(dom0.store, address)
            backend = ConsoleBackend(dom0, guest, log_path=log, **backend_args)  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg, backend:
                tg.start_soon(backend.run)
                async with RecordingFrontend(domu, backend_id=0) as frontend:
                    yield Console(backend, frontend, dom0, domu, log)
                await backend.aclose()
            assert not dom0.leaks() and not domu.leaks()


async def wait_until(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await anyio.sleep(0.005)


def read_pty(fd: int, want: int) -> bytes:
    got = b""
    while len(got) < want:
        got += os.read(fd, want - len(got))
    return got


async def test_guest_output_reaches_log_and_pty(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with console(tmp_path) as c:
            assert c.backend.pty_path is not None
            fe_tty = await c.dom0.store.read(f"{c.backend.address.backend_path}/tty")
            assert fe_tty == c.backend.pty_path
            assert c.frontend.backend_connected()
            reader = os.open(c.backend.pty_path, os.O_RDONLY | os.O_NOCTTY)
            try:
                await c.frontend.stream.send(b"Linux version 6.1 (ringkit)\r\n")
                line = await anyio.to_thread.run_sync(read_pty, reader, 29)
                assert line == b"Linux version 6.1 (ringkit)\r\n"
            finally:
                os.close(reader)
            await wait_until(lambda: c.log.stat().st_size == 29)
            assert c.log.read_bytes() == b"Linux version 6.1 (ringkit)\r\n"


async def test_typing_into_the_pty_reaches_the_guest(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with console(tmp_path) as c:
            assert c.backend.pty_path is not None
            writer = os.open(c.backend.pty_path, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(writer, b"root\n")
                got = b""
                while len(got) < 5:
                    got += await c.frontend.stream.receive()
                assert got == b"root\n"
            finally:
                os.close(writer)


async def test_many_ring_lengths_both_ways_with_wraparound(tmp_path: Path) -> None:
    payload = bytes(i % 253 for i in range(50_000))  # ~24 trips round the 2048-byte ring
    with anyio.fail_after(30):
        async with console(tmp_path, pty=False) as c:
            await c.frontend.stream.send(payload)
            await wait_until(lambda: c.log.stat().st_size == len(payload))
            assert c.log.read_bytes() == payload


async def test_full_ring_backpressure_then_drain(tmp_path: Path) -> None:
    """Nobody reads the pty: the backend stops taking bytes, the ring fills, the guest's send
    waits; a reader drains the pty and every byte arrives in order."""
    payload = bytes(i % 241 for i in range(300_000))  # more than a pty buffer plus the ring
    with anyio.fail_after(60):
        async with console(tmp_path) as c:
            assert c.backend.pty_path is not None
            done = anyio.Event()

            async def guest_writes() -> None:
                await c.frontend.stream.send(payload)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(guest_writes)
                engine = c.frontend.stream.engine
                await wait_until(lambda: engine.writable() == 0)  # the ring is full
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()
                reader = os.open(c.backend.pty_path, os.O_RDONLY | os.O_NOCTTY)
                try:
                    got = await anyio.to_thread.run_sync(read_pty, reader, len(payload))
                finally:
                    os.close(reader)
                await done.wait()
            assert got == payload


async def test_hostile_indices_disconnect_cleanly(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with console(tmp_path, pty=False) as c:
            queue = c.frontend.queue(0)
            struct.pack_into("<I", queue.buffer, CONSOLE_OUT_PROD, 100_000)
            queue.event.notify()
            await wait_until(lambda: c.backend.state is S.CLOSED)
            assert not c.backend.queues
            await wait_until(lambda: c.frontend.state is S.CLOSED)
            # The backend said "disconnected" in the page before it unmapped it.
            assert c.frontend.connection_at_close is False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_real_program_reads_the_pty(tmp_path: Path) -> None:
    """`cat`, and `tmux` when installed, attached to the console's pty see the guest's output."""
    with anyio.fail_after(30):
        async with console(tmp_path) as c:
            pty = c.backend.pty_path
            assert pty is not None
            async with await anyio.open_process(["cat", pty], stdout=subprocess.PIPE) as cat:
                await anyio.sleep(0.2)  # let cat open the pty before the guest writes
                await c.frontend.stream.send(b"login: ")
                assert cat.stdout is not None
                seen = b""
                while b"login: " not in seen:
                    seen += await cat.stdout.receive()
                cat.terminate()
            require_tools("tmux", why="attach a real terminal program to the console's pty")
            sock = str(tmp_path / "tmux.sock")
            subprocess.run(
                ["tmux", "-S", sock, "new-session", "-d", "-x", "80", "-y", "10", f"cat {pty}"],
                check=True,
            )
            try:
                await anyio.sleep(0.3)
                await c.frontend.stream.send(b"Welcome to the ringkit guest\r\n")
                screen = ""
                while "Welcome to the ringkit guest" not in screen:
                    await anyio.sleep(0.05)
                    screen = subprocess.run(
                        ["tmux", "-S", sock, "capture-pane", "-p"],
                        check=True, capture_output=True, text=True,
                    ).stdout
            finally:
                subprocess.run(["tmux", "-S", sock, "kill-server"], check=False)


@pytest.mark.anyio
async def test_devid_defaults_to_the_first_secondary_console_and_refuses_the_primary() -> None:
    # Linux's hvc_xen returns -ENODEV for device/console/0 and QEMU treats dev 0 as the
    # primary console: a ringkit console there would interoperate with nobody.
    with anyio.fail_after(30):
        async with SimXen.start(in_process=True) as xen:
            guest = await xen.create_domain("guest")
            async with xen.connect(0) as dom0, xen.connect(guest) as domu:
                backend = ConsoleBackend(dom0, guest, pty=False, log_path="/dev/null")
                assert backend.address.devid == 1
                assert backend.pty_path is None and backend.pty_backlog == 0
                assert ConsoleFrontend(domu).address.devid == 1
                with pytest.raises(ConfigError, match="primary console"):
                    ConsoleBackend(dom0, guest, 0, pty=False, log_path="/dev/null")
                with pytest.raises(ConfigError, match="primary console"):
                    ConsoleFrontend(domu, 0, 0)


async def test_the_pty_is_read_only_as_far_as_the_guest_has_room(tmp_path: Path) -> None:
    """A terminal typing faster than the guest reads waits in the pty: the backend reads no
    more than the free room of the 1 KiB ``in`` ring, so the rest stays in the pty."""
    typed = bytes(i % 251 for i in range(3000))
    with anyio.fail_after(20):
        async with console(tmp_path) as c:
            assert c.backend.pty_path is not None and c.backend.pty_backlog == 0
            writer = os.open(c.backend.pty_path, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(writer, typed)

                def unread_in_pty() -> int:
                    return c.backend.pty_backlog

                # The guest reads nothing yet: the ring fills and the rest stays in the pty.
                await wait_until(lambda: unread_in_pty() == len(typed) - CONSOLE_IN_SIZE)
                await anyio.sleep(0.1)
                assert unread_in_pty() == len(typed) - CONSOLE_IN_SIZE
                got = b""
                while len(got) < len(typed):
                    got += await c.frontend.stream.receive()
                assert got == typed
            finally:
                os.close(writer)


class _ShortWriter(io.RawIOBase):
    """A raw file whose writes take at most 3 bytes at a time."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.calls += 1
        chunk = bytes(memoryview(b)[:3])
        self.data += chunk
        return len(chunk)


def test_short_log_writes_are_completed() -> None:
    log = _ShortWriter()
    write_all(log, b"guest output\r\n")  # type: ignore[arg-type]
    assert bytes(log.data) == b"guest output\r\n"
    assert log.calls == 5
