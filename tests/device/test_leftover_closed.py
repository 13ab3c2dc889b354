"""A new frontend while the backend still says Closed from the previous connection.

The backend stays online at Closed after a connection ended (as Linux's blkback does with
``online`` = 1) and starts over only when it sees a frontend at Initialising.  The backend's
supervisor is held back here while a new frontend starts, so the frontend sees that leftover
Closed first -- deterministically -- and must keep Initialising instead of closing (closing
there left both ends at Closed for good).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import anyio
import pytest

from ringkit.device import XenbusState
from ringkit.device._base import Wakeup
from ringkit.device.paths import Nodes

from .drivers import EchoBackend, EchoFrontend
from .test_device_sim import running, world

pytestmark = pytest.mark.anyio
S = XenbusState


class HeldEchoBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """The echo backend whose supervisor can be held before it looks at the frontend, and
    which records every state it writes."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.hold: anyio.Event | None = None
        self.written: list[XenbusState] = []
        self.advertised = 0

    async def advertise(self, nodes: Nodes) -> None:
        self.advertised += 1
        await super().advertise(nodes)

    async def _write_state(self, to: XenbusState, store: object = None) -> None:
        self.written.append(to)
        await super()._write_state(to, store)  # type: ignore[arg-type]

    async def _restart_state(self) -> None:
        self.written.append(S.INITIALISING)
        await super()._restart_state()

    async def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await super()._on_wakeups(wakeups)


class WatchedEchoFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """The echo frontend, noting each (backend state, own state) its supervisor decided on."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.decisions: list[tuple[XenbusState, XenbusState]] = []
        self.saw_closed = anyio.Event()

    async def _carry_out(self, reaction: object) -> None:
        await super()._carry_out(reaction)  # type: ignore[arg-type]
        pair = (self.handshake.peer_state, self.handshake.state)
        self.decisions.append(pair)
        if pair[0] is S.CLOSED:
            self.saw_closed.set()


async def _first_connection(backend: HeldEchoBackend, domu: object) -> None:
    async with EchoFrontend(domu, backend_id=0) as front:
        assert await front.echo(1, b"first") == b"FIRST"
    while backend.state is not S.CLOSED:
        await anyio.sleep(0.01)
    # Then until its supervisor is idle: a wake-up still in hand (its own Closing write, the
    # frontend's last moves) would get past the hold the tests set next.
    while not backend.settled:
        await anyio.sleep(0.01)


def _after(states: Sequence[XenbusState], marker: XenbusState) -> list[XenbusState]:
    """What was written after the first `marker`."""
    return list(states[list(states).index(marker) + 1 :])


async def test_new_frontend_waits_for_a_backend_left_closed() -> None:
    with anyio.fail_after(30):
        async with world() as w, running(HeldEchoBackend, w, once=False) as backend:
            await _first_connection(backend, w.domu)
            backend.hold = anyio.Event()  # the backend answers late
            result: list[bytes] = []
            front = WatchedEchoFrontend(w.domu, backend_id=0)
            front.connect_timeout = 20

            async def attach() -> None:
                async with front:
                    result.append(await front.echo(2, b"second"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(attach)
                await front.saw_closed.wait()
                # The frontend's supervisor has reacted to the leftover Closed: it waits.
                assert (S.CLOSED, S.INITIALISING) in front.decisions
                assert front.state is S.INITIALISING
                fe_state = await w.dom0.store.read(f"{w.address.frontend_path}/state")
                assert fe_state == S.INITIALISING.to_wire()
                backend.hold.set()
            assert result == [b"SECOND"]
            assert front.generation == 1 and backend.generation == 2
            # blkback's "prepare for reconnect": Closed -> InitWait, features written again.
            assert _after(backend.written, S.CLOSED)[:1] == [S.INIT_WAIT]
            assert backend.advertised == 2


async def test_closed_backend_answers_a_new_frontend_with_initwait() -> None:
    """What a foreign (e.g. Linux) frontend does: write Initialising and wait for InitWait."""
    with anyio.fail_after(30):
        async with world() as w, running(HeldEchoBackend, w, once=False) as backend:
            await _first_connection(backend, w.domu)
            be_dir = w.address.backend_path
            await w.dom0.store.rm(f"{be_dir}/feature-upper")
            await w.domu.store.write(f"{w.address.frontend_path}/state", "1")
            while await w.dom0.store.read(f"{be_dir}/state") != S.INIT_WAIT.to_wire():
                await anyio.sleep(0.01)
            assert await w.dom0.store.read(f"{be_dir}/feature-upper") == "1"
            assert _after(backend.written, S.CLOSED)[:1] == [S.INIT_WAIT]
            # And a frontend started now connects to it.
            async with EchoFrontend(w.domu, backend_id=0) as front:
                assert await front.echo(3, b"third") == b"THIRD"


async def test_new_frontend_times_out_on_a_backend_that_never_answers() -> None:
    with anyio.fail_after(30):
        async with world() as w, running(HeldEchoBackend, w, once=False) as backend:
            await _first_connection(backend, w.domu)
            backend.hold = anyio.Event()
            front = WatchedEchoFrontend(w.domu, backend_id=0)
            front.connect_timeout = 1
            with pytest.raises(TimeoutError):
                async with front:
                    pass
            assert front.saw_closed.is_set() and front.state is S.INITIALISING
            assert not front.queues
            backend.hold.set()


class HeldEchoFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """The echo frontend whose supervisor can be held before it looks at the backend."""

    hold: anyio.Event | None = None

    async def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await super()._on_wakeups(wakeups)


class SettlingEchoBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """The echo backend, noting each (frontend state, own state) its supervisor decided on."""

    decisions: ClassVar[list[tuple[XenbusState, XenbusState]]] = []

    async def _carry_out(self, reaction: object) -> None:
        await super()._carry_out(reaction)  # type: ignore[arg-type]
        type(self).decisions.append((self.handshake.peer_state, self.handshake.state))


async def test_a_new_backend_waits_out_a_frontend_left_closed() -> None:
    """A backend closed in order; the frontend followed to Closed.  A new backend starts and
    reads that Closed before the frontend (slow, held here) reacted to the new InitWait.
    Closing on it -- blkback's answer to a leftover Closed -- left both ends at Closed for
    good, the frontend having seen a live backend (seen under real Xen, block's
    backend-closes); a starting backend waits it out at InitWait instead, and the frontend
    connects when it gets to it."""
    from ringkit.testing import DriverUnderTest
    from ringkit.testing.conformance import connects, serving

    from .after_a_backend import frontend_after_a_backend

    async def exchange(front: EchoFrontend) -> None:
        assert await front.echo(1, b"x") == b"X"

    first = DriverUnderTest(EchoBackend, HeldEchoFrontend, exchange, name="echo")
    second = DriverUnderTest(SettlingEchoBackend, HeldEchoFrontend, exchange, name="echo")
    async with frontend_after_a_backend(first, HeldEchoFrontend) as (w, front):
        front.hold = anyio.Event()
        SettlingEchoBackend.decisions = []
        async with serving(w, second):
            with anyio.fail_after(10):
                while not any(peer is S.CLOSED for peer, _ in SettlingEchoBackend.decisions):
                    await anyio.sleep(0.01)
            front.hold.set()
            await connects(w, second, front, 1)
            assert await front.echo(2, b"again") == b"AGAIN"
