"""Peer death (kill -9 of the other end's process) and hostile peers, on the simulated Xen.

kill -9 of either end and a destroyed guest domain, for the echo driver, are the driver
conformance suite's ``backend-killed``, ``frontend-killed`` and ``domain-destroyed`` checks
(tests/kit/test_conformance_drivers.py); what stays here is specific to the framework."""

from __future__ import annotations

import anyio
import pytest
from kit.drivers_under_test import echo_driver

from ringkit import RemoteProtocolError
from ringkit.abc import Domain
from ringkit.device import XenbusState
from ringkit.proto.layout import SRING_REQ_PROD
from ringkit.sim import SimXen
from ringkit.testing import sim_world
from ringkit.testing._child import Child, spawn

from .drivers import MESSAGE, EchoBackend, EchoFrontend
from .test_device_sim import running, world

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
S = XenbusState


async def wait_for(predicate: object, what: str) -> None:
    while not predicate():  # type: ignore[operator]
        await anyio.sleep(0.01)


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
                assert not backend.finished, backend.ended_by
            assert outcome == [None]
            assert not backend.queues


async def test_closing_after_the_backend_died_does_not_wait_for_it() -> None:
    """A frontend whose response reader saw the backend die closes at once instead of waiting
    `close_timeout` for a backend that will never unmap."""
    driver = echo_driver()
    with anyio.fail_after(30):
        async with SimXen.start(in_process=True) as xen, sim_world(xen) as w:
            await driver.create(w.dom0, w.guest_id)
            async with spawn(w, "backend", driver) as backend:
                await backend.expect("ready")
                await _close_after_backend_died(w.guest, backend)


async def _close_after_backend_died(guest: Domain, backend: Child) -> None:
    front = EchoFrontend(guest, backend_id=0)
    front.close_timeout = 600.0
    async with front:

        async def reader() -> None:
            while True:
                await front.channel.receive()

        front.tasks.start_soon(reader)
        await front.channel.send(MESSAGE.pack(1, 1, b"x"))  # the reader takes the answer
        await backend.kill()
        await wait_for(lambda: front.handshake.peer_stale, "the reader noticed")
    assert front.state is S.CLOSED
