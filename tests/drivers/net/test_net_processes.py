"""The netif pair in separate processes on the simulated Xen: kill -9 either end mid-transfer.

A transfer runs both ways (frames numbered and checked on arrival) when one end's process is
killed with SIGKILL.  The survivor must notice and tear down: a frontend whose backend died
fails its senders with `PeerGoneError` and reconnects when a new backend process comes; a
backend whose frontend died unmaps everything and offers the device again (InitWait).  While
the dead end has no successor, the simulator holds no page, mapping or port of the connection
(its accounting over all domains); then a new peer connects and frames flow again, content
checked, and the accounting is zero at the end.

Negative controls: the "nothing held" check is taken while the survivor is still connected
(the frontend's tx window and rx buffers are granted, the rings mapped) and must see them --
it is not an accounting that is always zero.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from net_peer import size_of
from networld import frame, running_backend, world
from ringkit.frontends.net import NetFrontend

from ringkit import PeerGoneError
from ringkit.device import XenbusState
from ringkit.sim import SimXen

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PEER = Path(__file__).with_name("net_peer.py")


@pytest.fixture
def anyio_backend() -> str:
    """The ends are separate processes: run once."""
    return "asyncio"


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


async def wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await anyio.sleep(0.01)


async def held(xen: SimXen) -> tuple[int, int, int]:
    """(grants, maps, ports) the simulator holds over all domains, once the dead process's
    release has run (it is asynchronous: poll a little)."""
    leaks = await xen.leaks()
    with anyio.move_on_after(5):
        while leaks.grants or leaks.maps or leaks.ports:
            await anyio.sleep(0.02)
            leaks = await xen.leaks()
    return leaks.grants, leaks.maps, leaks.ports


async def echo_some(vif: NetFrontend, first: int, count: int) -> None:
    """Send frames first..first+count through a loopback backend, each back unchanged."""
    for n in range(first, first + count):
        await vif.send(frame(n, size_of(n)))
        assert await vif.receive() == frame(n, size_of(n)), n


async def drain_echoes(vif: NetFrontend, echoed: list[int]) -> None:
    """Read the frames still queued from an earlier connection: each must be whole and come
    after the last one read."""
    while True:
        with anyio.move_on_after(0.2):
            got = await vif.receive()
            n = int.from_bytes(got[14:18], "big")
            assert got == frame(n, size_of(n)), n
            assert not echoed or n > echoed[-1], (n, echoed[-1])
            echoed.append(n)
            continue
        return


async def test_backend_killed_mid_transfer() -> None:
    with anyio.fail_after(120):
        async with world() as w:
            argv = [sys.executable, str(PEER), "backend", str(w.xen.directory), str(w.guest),
                    str(w.address.devid)]
            async with child(argv) as (proc, lines):
                assert await lines.next() == "ready"
                async with NetFrontend(w.domu, 0, w.address.devid) as vif:
                    # negative control of `held`: a live connection holds pages, maps, ports
                    # (two ports each end: split event channels)
                    grants, maps, ports = await held_now(w.xen)
                    assert grants > 2 and maps >= 1 and ports == 4, (grants, maps, ports)
                    sent: list[int] = []
                    echoed: list[int] = []
                    gone: list[PeerGoneError] = []

                    async def sender() -> None:
                        n = 0
                        try:
                            while True:
                                await vif.send(frame(n, size_of(n)))
                                sent.append(n)
                                n += 1
                        except PeerGoneError as exc:  # the typed error a sender sees
                            gone.append(exc)

                    async def receiver() -> None:
                        while True:
                            got = await vif.receive()
                            n = int.from_bytes(got[14:18], "big")
                            assert got == frame(n, size_of(n)), n
                            assert not echoed or n > echoed[-1], (n, echoed[-1])
                            echoed.append(n)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(sender)
                        tg.start_soon(receiver)
                        await wait_for(lambda: len(echoed) >= 300)
                        proc.send_signal(signal.SIGKILL)
                        await wait_for(lambda: bool(gone))
                        tg.cancel_scope.cancel()
                    await wait_for(lambda: not vif.queues)
                    with pytest.raises(PeerGoneError):
                        await vif.send(frame(0, 60))
                    # the dead backend's mappings and the connection's grants and ports are gone
                    assert await held(w.xen) == (0, 0, 0)
                    leaks = w.domu.leaks()  # the frontend still watches the backend: no more
                    assert (leaks.grants, leaks.maps, leaks.ports) == (0, 0, 0), leaks
                    # a new backend process: the frontend reconnects, and frames flow again
                    async with child(argv) as (_, again):
                        assert await again.next() == "ready"
                        with anyio.fail_after(30):
                            await vif.wait_connected()
                        assert vif.generation == 2
                        # frames the dead backend delivered but the cancelled receiver did not
                        # read are still queued (the queue outlives connections): each whole
                        await drain_echoes(vif, echoed)
                        with anyio.fail_after(30):
                            await echo_some(vif, 10_000, 200)
                    await wait_for(lambda: not vif.queues)
            assert not w.domu.leaks(), w.domu.leaks()


async def test_frontend_killed_mid_transfer() -> None:
    with anyio.fail_after(120):
        async with world() as w, running_backend(w, once=False) as (be, wire):
            argv = [sys.executable, str(PEER), "frontend", str(w.xen.directory),
                    str(w.guest), str(w.address.devid)]
            async with child(argv) as (proc, lines):
                assert await lines.next() == "connected"
                grants, maps, ports = await held_now(w.xen)
                assert grants > 2 and maps >= 1 and ports == 4, (grants, maps, ports)
                received = 0

                async def host_sends() -> None:
                    n = 0
                    while True:
                        await wire.to_guest.send(frame(n, size_of(n)))
                        n += 1

                async with anyio.create_task_group() as tg:
                    tg.start_soon(host_sends)
                    while received < 300:
                        got = await wire.from_guest.receive()
                        assert got == frame(received, size_of(received)), received
                        received += 1
                    assert (await lines.next()).startswith("rx ")  # the other way flows too
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                    # the backend notices, unmaps everything and offers the device again
                    await wait_for(lambda: be.state is XenbusState.INIT_WAIT and not be.queues)
                    tg.cancel_scope.cancel()
            state = await w.dom0.store.read(f"{w.address.backend_path}/state")
            assert state.strip() == XenbusState.INIT_WAIT.to_wire()
            assert await held(w.xen) == (0, 0, 0)
            leaks = w.dom0.leaks()
            assert (leaks.maps, leaks.ports) == (0, 0), leaks
            while True:  # frames of the dead connection may still sit on the wire
                try:
                    wire.from_guest.receive_nowait()
                except anyio.WouldBlock:
                    break
            # a new frontend (a new process would do the same): frames flow both ways again
            with anyio.fail_after(30):
                async with NetFrontend(w.domu, 0, w.address.devid) as vif:
                    assert be.generation == 2
                    for n in range(200):
                        await vif.send(frame(n, size_of(n)))
                        assert await wire.from_guest.receive() == frame(n, size_of(n))
                    first = 100_000
                    for n in range(first, first + 200):
                        await wire.to_guest.send(frame(n, size_of(n)))
                    n = first
                    while n < first + 200:
                        got = await vif.receive()
                        if int.from_bytes(got[14:18], "big") < first:
                            continue  # host_sends' leftovers, queued for the dead guest
                        assert got == frame(n, size_of(n)), n
                        n += 1
            await be.aclose()


async def held_now(xen: SimXen) -> tuple[int, int, int]:
    leaks = await xen.leaks()
    return leaks.grants, leaks.maps, leaks.ports
