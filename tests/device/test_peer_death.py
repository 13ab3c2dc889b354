"""Peer death (kill -9 of the other end's process) and hostile peers, on the simulated Xen."""

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

from ringkit import EventChannelError, PeerGoneError, RemoteProtocolError
from ringkit.device import DeviceAddress, XenbusState, create_device
from ringkit.proto.layout import SRING_REQ_PROD
from ringkit.sim import SimXen

from .drivers import MESSAGE, EchoBackend, EchoFrontend
from .test_device_sim import World, running, world

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
S = XenbusState
PEER = Path(__file__).with_name("peer_main.py")


@asynccontextmanager
async def peer(w: World, role: str, ready: str) -> AsyncIterator[anyio.abc.Process]:
    """Run one end in a child process; wait for its `ready` line; kill it on the way out."""
    domid = w.guest
    directory = w.xen.directory
    async with await anyio.open_process(
        [sys.executable, str(PEER), str(directory), role, str(domid)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive(1)
                line += chunk
            assert line.decode().strip() == ready
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def wait_for(predicate: object, what: str) -> None:
    while not predicate():  # type: ignore[operator]
        await anyio.sleep(0.01)


async def test_backend_killed_frontend_reconnects_to_a_new_backend() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            async with (
                peer(w, "backend", "ready") as proc,
                EchoFrontend(w.domu, backend_id=0) as front,
            ):
                assert await front.echo(1, b"one") == b"ONE"
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                with pytest.raises(anyio.BrokenResourceError) as info:
                    await front.echo(2, b"two")
                assert isinstance(info.value.__cause__, PeerGoneError | EventChannelError)
                await wait_for(lambda: not front.queues, "teardown")
                async with peer(w, "backend", "ready"):
                    await front.wait_connected()
                    assert front.generation == 2
                    assert await front.echo(3, b"three") == b"THREE"
                    await front.aclose()  # orderly, while the new backend is alive
                    assert front.state is S.CLOSED
            assert not w.domu.leaks()


async def test_frontend_killed_backend_serves_the_next_frontend() -> None:
    with anyio.fail_after(60):
        async with world() as w, running(EchoBackend, w, once=False) as backend:
            async with peer(w, "frontend", "connected") as proc:
                assert backend.is_connected
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # The frontend's port closed: the backend unmaps, closes, and waits again.
                await wait_for(lambda: backend.state is S.INIT_WAIT and not backend.queues, "")
                leaks = w.dom0.leaks()
                assert (leaks.maps, leaks.ports) == (0, 0)
            async with EchoFrontend(w.domu, backend_id=0) as front:
                assert backend.generation == 2
                assert await front.echo(4, b"again") == b"AGAIN"


async def test_hostile_ring_ref_closes_cleanly_then_recovers() -> None:
    with anyio.fail_after(30):
        async with world() as w, running(EchoBackend, w, once=False) as backend:
            fe = w.address.frontend_path
            store = w.domu.store
            await wait_for(lambda: backend.state is S.INIT_WAIT, "")
            await store.write(f"{fe}/ring-ref", "not-a-number")
            await store.write(f"{fe}/event-channel", "1")
            await store.write(f"{fe}/state", "3")
            await wait_for(lambda: backend.state is S.CLOSED, "clean disconnect")
            # A well-behaved frontend starts over: the backend comes back for it.
            async with EchoFrontend(w.domu, backend_id=0) as front:
                assert await front.echo(5, b"ok") == b"OK"


async def test_hostile_ring_indices_close_cleanly() -> None:
    with anyio.fail_after(30):
        async with (
            world() as w,
            running(EchoBackend, w, once=False) as backend,
            EchoFrontend(w.domu, backend_id=0) as front,
        ):
            assert await front.echo(6, b"fine") == b"FINE"
            # Scribble an impossible producer index into the shared page and ring the bell.
            buf = front.queues[0].buffer
            buf[SRING_REQ_PROD:SRING_REQ_PROD + 4] = (10_000).to_bytes(4, "little")
            front.queues[0].event.notify()
            await wait_for(lambda: backend.state is S.CLOSED, "clean disconnect")
            assert not backend.queues
            # The frontend sees the backend close and follows it.
            await wait_for(lambda: front.state is S.CLOSED, "frontend follows")


async def test_destroying_the_guest_domain_ends_the_backend_cleanly() -> None:
    with anyio.fail_after(60):
        async with SimXen.start(in_process=True) as xen:
            guest = await xen.create_domain("guest")
            async with xen.connect(0) as dom0:
                address = DeviceAddress("echo", frontend_id=guest, backend_id=0, devid=0)
                await create_device(dom0.store, address)
                w = World(xen, guest, dom0, dom0, address)
                async with (
                    running(EchoBackend, w, once=False) as backend,
                    peer(w, "frontend", "connected") as proc,
                ):
                    assert backend.is_connected
                    await xen.destroy_domain(guest)  # @releaseDomain, its nodes removed
                    await backend.wait_finished()
                    assert not backend.queues
                    await proc.wait()
                leaks = dom0.leaks()
                assert (leaks.maps, leaks.ports, leaks.watches) == (0, 0, 0)
            assert not await xen.settled_leaks()


@pytest.mark.parametrize("seed", range(4))
async def test_random_frontend_states_never_crash_the_backend(seed: int) -> None:
    """A guest scribbling random values into its state and ring nodes: the backend keeps
    serving its device (each bad value ends at most that connection) until it is closed, and
    leaks nothing."""
    import random

    rng = random.Random(seed)
    values = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "", "x", "-1", "4294967296"]
    outcome: list[BaseException | None] = []

    async def run(backend: EchoBackend) -> None:
        try:
            await backend.run()
            outcome.append(None)
        except RemoteProtocolError as exc:
            outcome.append(exc)

    with anyio.fail_after(30):
        async with world() as w, anyio.create_task_group() as tg:
            async with EchoBackend(w.dom0, w.guest) as backend:
                tg.start_soon(run, backend)
                fe = w.address.frontend_path
                for _ in range(40):
                    node = rng.choice(["state", "state", "ring-ref", "event-channel"])
                    await w.domu.store.write(f"{fe}/{node}", rng.choice(values))
                    await anyio.sleep(rng.choice([0, 0.001, 0.005]))
                await anyio.sleep(0.05)
                assert not backend.finished, backend._finished
            assert outcome == [None]
            assert not backend.queues


async def test_closing_after_the_backend_died_does_not_wait_for_it() -> None:
    """A frontend whose response reader saw the backend die closes at once instead of waiting
    `close_timeout` for a backend that will never unmap."""
    with anyio.fail_after(30):
        async with world() as w, peer(w, "backend", "ready") as proc:
            front = EchoFrontend(w.domu, backend_id=0)
            front.close_timeout = 600.0
            async with front:

                async def reader() -> None:
                    while True:
                        await front.channel.receive()

                front.tasks.start_soon(reader)
                await front.channel.send(MESSAGE.pack(1, 1, b"x"))  # the reader takes the answer
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                await wait_for(lambda: front.handshake.peer_stale, "the reader noticed")
            assert front.state is S.CLOSED
