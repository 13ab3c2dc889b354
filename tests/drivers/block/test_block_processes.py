"""The block pair in separate processes on the simulated Xen: kill -9 either side mid-I/O.

No write that was acknowledged may be missing from the image afterwards, the survivor must tear
down cleanly, and the simulator's accounting must come back to zero.  The CLI commands
(`ringkit block serve` / `attach`) are exercised the same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from block_peer import BLOCK, block_data
from ringkit.backends.block.device import BlockBackend
from ringkit.frontends.block.device import BlockFrontend
from test_block_sim import DISK, world

from ringkit import PeerGoneError, RingkitError
from ringkit.device import XenbusState

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PEER = Path(__file__).with_name("block_peer.py")


@pytest.fixture
def anyio_backend() -> str:
    """The peers are separate processes; which event loop this one runs does not matter, and
    each of these tests starts several interpreters: run them once."""
    return "asyncio"

CLI = [sys.executable, "-c", "from ringkit.cli import main; main()"]


class Lines:
    """Line reader over a child's stdout."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self._stream.receive()
            except anyio.EndOfStream:
                raise AssertionError("peer exited early") from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


@asynccontextmanager
async def child(argv: list[str]) -> AsyncIterator[tuple[anyio.abc.Process, Lines]]:
    async with await anyio.open_process(argv, stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL) as proc:
        try:
            yield proc, Lines(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def run(argv: list[str]) -> bytes:
    """Run a CLI command to completion; its stdout, or a failure showing its stderr."""
    result = await anyio.run_process(argv, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


async def wait_for(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await anyio.sleep(0.01)


def check_acked(image: Path, acked: dict[int, int], seed: int) -> None:
    data = image.read_bytes()
    for offset, tag in acked.items():
        assert data[offset:offset + BLOCK] == block_data(seed, tag, BLOCK), offset


async def test_backend_killed_mid_io(tmp_path: Path) -> None:
    seed = 11
    acked: dict[int, int] = {}
    with anyio.fail_after(90):
        async with world(tmp_path) as w:
            argv = [sys.executable, str(PEER), "backend", str(w.xen.directory), str(w.guest),
                    str(w.address.devid), str(w.image)]
            async with child(argv) as (proc, lines):
                assert await lines.next() == "ready"
                async with BlockFrontend(w.domu, 0, w.address.devid) as disk:
                    failures: list[BaseException] = []

                    async def task(index: int) -> None:
                        for n in range(index, DISK // BLOCK, 4):
                            try:
                                await disk.write(n * BLOCK, block_data(seed, n, BLOCK))
                            except PeerGoneError as exc:
                                failures.append(exc)
                                return
                            acked[n * BLOCK] = n

                    async with anyio.create_task_group() as tg:
                        for i in range(4):
                            tg.start_soon(task, i)
                        await wait_for(lambda: len(acked) >= 40)
                        proc.send_signal(signal.SIGKILL)
                    assert failures or len(acked) == DISK // BLOCK
                    await wait_for(lambda: not disk.queues)
                    with pytest.raises(PeerGoneError):
                        await disk.read(0, 512)
                    # a new backend process: the frontend reconnects and finds every
                    # acknowledged block
                    async with child(argv) as (_, again):
                        assert await again.next() == "ready"
                        await disk.wait_connected()
                        assert disk.generation == 2
                        for offset, tag in acked.items():
                            got = await disk.read(offset, BLOCK)
                            assert got == block_data(seed, tag, BLOCK), offset
            assert not w.domu.leaks(), w.domu.leaks()
    check_acked(w.image, acked, seed)


async def test_frontend_killed_mid_io(tmp_path: Path) -> None:
    seed = 23
    acked: dict[int, int] = {}
    with anyio.fail_after(90):
        async with world(tmp_path) as w, anyio.create_task_group() as tg, BlockBackend(
                w.dom0, w.guest, w.address.devid, image=w.image) as backend:
            tg.start_soon(backend.run)
            argv = [sys.executable, str(PEER), "writer", str(w.xen.directory),
                    str(w.guest), str(w.address.devid), str(seed)]
            async with child(argv) as (proc, lines):
                assert await lines.next() == "connected"
                while len(acked) < 60:
                    _, offset, _, tag = (await lines.next()).split()
                    acked[int(offset)] = int(tag)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            # the backend notices, unmaps everything and waits for the next frontend
            await wait_for(lambda: backend.state is XenbusState.INIT_WAIT
                           and not backend.queues)
            leaks = w.dom0.leaks()
            assert (leaks.maps, leaks.ports) == (0, 0), leaks
            # ... and serves it
            async with BlockFrontend(w.domu, 0, w.address.devid) as disk:
                offset, tag = next(iter(acked.items()))
                assert await disk.read(offset, BLOCK) == block_data(seed, tag, BLOCK)
            await backend.aclose()
            tg.cancel_scope.cancel()
    check_acked(w.image, acked, seed)


async def test_cli_serve_and_attach(tmp_path: Path) -> None:
    with anyio.fail_after(90):
        async with world(tmp_path) as w:
            # the toolstack step is the serve command's job: start from no device at all
            await w.dom0.store.rm(w.address.backend_path)
            await w.dom0.store.rm(w.address.frontend_path)
            d = str(w.xen.directory)
            serve = [*CLI, "block", "serve", str(w.image), "--dir", d, "--frontend",
                     str(w.guest), "--devid", str(w.address.devid)]
            async with child(serve) as (proc, lines):
                assert (await lines.next()).startswith("ready: serving")
                attach = [*CLI, "block", "attach", "--dir", d, "--domain", str(w.guest),
                          "--devid", str(w.address.devid)]
                assert f"{DISK} bytes" in (await run(attach)).decode()
                check = await run([*attach, "--check", "2M"])
                assert "verified 2097152 bytes" in check.decode()
                data = tmp_path / "in.bin"
                data.write_bytes(b"ringkit!" * 128)
                await run([*attach, "--write", "8192", "--input", str(data)])
                assert await run([*attach, "--read", "8192:1024"]) == b"ringkit!" * 128
                proc.send_signal(signal.SIGTERM)
        assert w.image.read_bytes()[8192:9216] == b"ringkit!" * 128


async def test_cli_attach_waits_for_a_backend_still_closed(tmp_path: Path) -> None:
    # After a frontend left, the backend sits at Closed until it sees a new frontend at
    # Initialising.  A new frontend that looks before the backend has answered sees that
    # leftover Closed; it must wait it out (xenbus LEFTOVER table) rather than close, or both
    # ends end at Closed for good.  The serving process is stopped across the new attach's
    # start, so the backend answers late.
    with anyio.fail_after(90):
        async with world(tmp_path) as w:
            await w.dom0.store.rm(w.address.backend_path)
            await w.dom0.store.rm(w.address.frontend_path)
            d = str(w.xen.directory)
            serve = [*CLI, "block", "serve", str(w.image), "--dir", d, "--frontend",
                     str(w.guest), "--devid", str(w.address.devid)]
            async with child(serve) as (proc, lines):
                assert (await lines.next()).startswith("ready: serving")
                attach = [*CLI, "block", "attach", "--dir", d, "--domain", str(w.guest),
                          "--devid", str(w.address.devid), "--timeout", "60"]
                await run(attach)  # a first connection, closed: the backend ends at Closed
                state = f"{w.address.backend_path}/state"
                await wait_for_async(lambda: w.dom0.store.read(state),
                                     XenbusState.CLOSED.to_wire())
                proc.send_signal(signal.SIGSTOP)
                try:
                    async with anyio.create_task_group() as tg:
                        result: list[bytes] = []

                        async def second() -> None:
                            result.append(await run([*attach, "--read", "0:512"]))

                        tg.start_soon(second)
                        # let the new frontend start and look at the backend's Closed
                        with anyio.move_on_after(20):
                            await wait_for_async(
                                lambda: w.dom0.store.read(f"{w.address.frontend_path}/state"),
                                XenbusState.INITIALISING.to_wire())
                        await anyio.sleep(1)
                        proc.send_signal(signal.SIGCONT)
                finally:
                    proc.send_signal(signal.SIGCONT)
                assert result == [bytes(512)]
                proc.send_signal(signal.SIGTERM)


async def wait_for_async(read: object, value: str) -> None:
    """Poll until ``await read()`` returns `value`."""
    while True:
        try:
            if (await read()).strip() == value:  # type: ignore[operator]
                return
        except RingkitError:  # the node is not there yet
            pass
        await anyio.sleep(0.01)


async def test_cli_attach_times_out_without_backend(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w:
            result = await anyio.run_process(
                [*CLI, "block", "attach", "--dir", str(w.xen.directory), "--domain",
                 str(w.guest), "--devid", str(w.address.devid), "--timeout", "1"],
                check=False)
            assert result.returncode != 0
            assert b"no backend connected" in result.stderr


