"""A driver's own bug -- a backend's `handle` or `serve` raising, or any task it started with
``self.tasks.start_soon`` failing with something that is not the peer's doing -- ends only that
connection, in order: the error node, Closing, the rings released, Closed (issue 18).  The peer
in the same process follows that Closing and its waiters fail with a typed error instead of
hanging; the backend then serves the next connection (or, with ``once=True``, `run()` raises the
driver's exception).  Both ends run in this process on the simulated Xen.

Without the fix, the backend was marked finished but stayed Connected with its rings mapped, and
the frontend's request waited forever: every check here is bounded so that it fails instead."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from ringkit import PeerGoneError, PeerRefusedError
from ringkit.device import XenbusState
from ringkit.device.paths import Nodes

from .drivers import MESSAGE, EchoBackend, EchoFrontend
from .test_device_sim import World, world

pytestmark = pytest.mark.anyio
S = XenbusState

BOUND = 10.0
"""Seconds within which a peer must notice the failure (it used to wait forever)."""
FAIL_ID = 13
"""The request id the failing backends choke on."""


class FailingEchoBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """The echo backend with a bug: `handle` raises RuntimeError on request `FAIL_ID` (on each
    one, or only on the first when `fail_once`).  It records, in order, what it writes to its
    state node (with whether its rings were still mapped and its error node there) and when
    its rings are released."""

    fail_once = False

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.events: list[tuple[object, ...]] = []
        self.failures = 0

    async def handle(self, request: bytearray) -> bytes:
        ident = MESSAGE.unpack(request)[0]
        if ident == FAIL_ID and not (self.fail_once and self.failures):
            self.failures += 1
            raise RuntimeError(f"a driver bug on request {ident}")
        return await super().handle(request)  # type: ignore[no-any-return]

    async def _write_state(self, to: XenbusState, store: object = None) -> None:
        await super()._write_state(to, store)  # type: ignore[arg-type]
        error = await self.domain.store.exists(self.error_path)
        self.events.append((to, "mapped" if self.queues else "unmapped",
                            "error node" if error else "no error node"))

    async def disconnected(self) -> None:
        self.events.append(("released",))
        await super().disconnected()


class Outcome:
    """How a backend's `run()` ended, seen from the task that ran it."""

    def __init__(self) -> None:
        self.raised: BaseException | None = None
        self.returned = False


@asynccontextmanager
async def serving(backend: EchoBackend, *, once: bool) -> AsyncIterator[Outcome]:
    """`backend` open and running in a task of this process; `run()`'s end is recorded, not
    propagated, so that the backend stays open -- as it does in a process that goes on after
    `run()` -- while the test looks at what it left behind."""
    outcome = Outcome()

    async def run() -> None:
        try:
            await backend.run(once=once)
        except Exception as exc:
            outcome.raised = exc
        else:
            outcome.returned = True

    async with anyio.create_task_group() as tg, backend:
        tg.start_soon(run)
        yield outcome


def front_of(w: World) -> EchoFrontend:
    front = EchoFrontend(w.domu, backend_id=0)
    front.close_timeout = 1.0  # after a failure the backend may be gone: do not wait 10 s
    return front


def failed_with_peer_gone(exc: BaseException) -> bool:
    """`exc` is the typed error a waiter gets when the backend went away: `PeerGoneError`
    itself, or a channel's `BrokenResourceError` chained from it (ringkit.device's contract),
    or the channel closed under it by the frontend's own teardown of that connection."""
    if isinstance(exc, PeerGoneError | anyio.ClosedResourceError):
        return True
    return isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, PeerGoneError)


def since_closing(events: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The recorded events from the first Closing on (none before it is of interest)."""
    closing = [i for i, event in enumerate(events) if event[0] is S.CLOSING]
    return events[closing[0]:] if closing else events


async def until(predicate: object, what: str) -> None:
    with anyio.move_on_after(BOUND):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"{what}: not within {BOUND} s")


async def test_a_raising_handler_ends_the_connection_in_order() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = FailingEchoBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome, front_of(w) as front:
                assert await front.echo(1, b"fine") == b"FINE"
                with anyio.fail_after(BOUND), pytest.raises(Exception) as info:
                    await front.echo(FAIL_ID, b"boom")
                assert failed_with_peer_gone(info.value), repr(info.value)
                await until(lambda: backend.finished, "the backend finishing (once=True)")
                assert isinstance(outcome.raised, RuntimeError), outcome.raised
                assert "a driver bug on request 13" in str(outcome.raised)
                # In order: the error node, Closing with the rings still mapped, the rings
                # released, then Closed.
                assert since_closing(backend.events) == [
                    (S.CLOSING, "mapped", "error node"),
                    ("released",),
                    (S.CLOSED, "unmapped", "error node"),
                ], backend.events
                assert backend.state is S.CLOSED and not backend.queues
                error = await w.dom0.store.read(backend.error_path)
                assert error.startswith(f"{errno.EIO} "), error
                assert "RuntimeError" in error and "a driver bug on request 13" in error, error
                # The frontend follows the backend's Closing and lets go of its rings.
                await until(lambda: front.state is S.CLOSED and not front.queues,
                            "the frontend following the backend's Closing")
                assert await front.read_peer_error() == error
            leaks = w.dom0.leaks()
            assert not (leaks.maps or leaks.ports), leaks


async def test_after_a_raising_handler_the_backend_serves_the_next_connection() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = FailingEchoBackend(w.dom0, w.guest)
            backend.fail_once = True
            async with serving(backend, once=False) as outcome, front_of(w) as front:
                assert await front.echo(1, b"first") == b"FIRST"
                with anyio.fail_after(BOUND), pytest.raises(Exception) as info:
                    await front.echo(FAIL_ID, b"boom")
                assert failed_with_peer_gone(info.value), repr(info.value)
                # The backend offers a new connection and the same frontend takes it.
                with anyio.fail_after(BOUND):
                    while front.generation < 2 or not front.is_connected:
                        await front.wait_connected()
                        await anyio.sleep(0.01)
                assert await front.echo(FAIL_ID, b"again") == b"AGAIN"
                assert backend.failures == 1 and backend.generation == 2
                assert not backend.finished and outcome.raised is None, outcome.raised
                # The new connection cleared the error report of the old one.
                assert not await w.dom0.store.exists(backend.error_path)


async def test_a_handler_that_does_not_raise_keeps_the_connection() -> None:
    """The control: the same backend, never given the request it chokes on, keeps serving one
    connection (so the checks above do not pass because connections end anyway)."""
    with anyio.fail_after(60):
        async with world() as w:
            backend = FailingEchoBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome, front_of(w) as front:
                for ident in range(1, 40):
                    if ident != FAIL_ID:
                        assert await front.echo(ident, b"ok") == b"OK"
                await anyio.sleep(0.1)
                assert backend.is_connected and front.is_connected
                assert (backend.generation, front.generation) == (1, 1)
                assert not backend.finished and outcome.raised is None
                assert not await w.dom0.store.exists(backend.error_path)
                assert backend.failures == 0
            await until(lambda: backend.finished, "the backend following the close")
            assert outcome.returned and outcome.raised is None


async def test_offline_after_a_raising_handler_the_backend_finishes_raising_it() -> None:
    """``online`` = 0 finishes the device when its connection ends; ended by the driver's bug,
    `run()` raises that bug instead of returning as for a peer that went away."""
    with anyio.fail_after(60):
        async with world() as w:
            backend = FailingEchoBackend(w.dom0, w.guest)
            async with serving(backend, once=False) as outcome, front_of(w) as front:
                await w.dom0.store.write(f"{w.address.backend_path}/online", "0")
                with anyio.fail_after(BOUND), pytest.raises(Exception) as info:
                    await front.echo(FAIL_ID, b"boom")
                assert failed_with_peer_gone(info.value), repr(info.value)
                await until(lambda: backend.finished, "the offline backend finishing")
                assert isinstance(outcome.raised, RuntimeError), outcome.raised
                assert backend.state is S.CLOSED and not backend.queues


class WideFailingEchoBackend(FailingEchoBackend):
    max_queues = 2


class WideEchoFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    max_queues = 2

    async def echo_on(self, queue: int, ident: int, text: bytes) -> bytes:
        channel = self.queue(queue).channel
        await channel.send(MESSAGE.pack(ident, len(text), text))
        return bytes(MESSAGE.unpack(await channel.receive())[2][: len(text)])


async def test_two_queues_failing_at_once_end_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both queues' handlers raise together: the connection ends once (one Closing, one Closed)
    and the next is offered without the backoff of a frontend that keeps failing (made longer
    than the bound here, so that counting the one failure twice would show)."""
    monkeypatch.setattr("ringkit.device.backend.REOFFER_BACKOFF", 2 * BOUND)
    with anyio.fail_after(60):
        async with world() as w:
            backend = WideFailingEchoBackend(w.dom0, w.guest)
            async with serving(backend, once=False) as outcome:
                front = WideEchoFrontend(w.domu, 0)
                front.close_timeout = 1.0
                async with front:
                    assert front.num_queues == 2

                    async def doomed(queue: int) -> None:
                        with pytest.raises(Exception) as info:
                            await front.echo_on(queue, FAIL_ID, b"boom")
                        assert failed_with_peer_gone(info.value), repr(info.value)

                    with anyio.fail_after(BOUND):
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(doomed, 0)
                            tg.start_soon(doomed, 1)
                    with anyio.fail_after(BOUND):  # no backoff: offered again at once
                        while front.generation < 2 or not front.is_connected:
                            await anyio.sleep(0.01)
                    assert await front.echo_on(1, 2, b"again") == b"AGAIN"
                    states = [event[0] for event in backend.events]
                    assert states.count(S.CLOSING) == states.count(S.CLOSED) == 1, states
                    assert not backend.finished and outcome.raised is None


class TaskFailingBackend(FailingEchoBackend):
    """A backend whose own background task (``self.tasks``) fails while a request is being
    handled: the handler waits forever, so only ending the connection answers the peer."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.go = anyio.Event()

    async def rings_mapped(self, nodes: Nodes) -> None:
        await super().rings_mapped(nodes)
        self.tasks.start_soon(self._doomed)

    async def _doomed(self) -> None:
        await self.go.wait()
        raise ValueError("a background task of the driver failed")

    async def handle(self, request: bytearray) -> bytes:
        if MESSAGE.unpack(request)[0] == FAIL_ID:
            self.go.set()
            await anyio.sleep_forever()
        return await super().handle(request)  # type: ignore[no-any-return]


async def test_a_failing_backend_task_ends_the_connection_in_order() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = TaskFailingBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome, front_of(w) as front:
                assert await front.echo(1, b"fine") == b"FINE"
                with anyio.fail_after(BOUND), pytest.raises(Exception) as info:
                    await front.echo(FAIL_ID, b"stuck")
                assert failed_with_peer_gone(info.value), repr(info.value)
                await until(lambda: backend.finished, "the backend finishing (once=True)")
                assert isinstance(outcome.raised, ValueError), outcome.raised
                assert since_closing(backend.events) == [
                    (S.CLOSING, "mapped", "error node"),
                    ("released",),
                    (S.CLOSED, "unmapped", "error node"),
                ], backend.events
                error = await w.dom0.store.read(backend.error_path)
                assert error.startswith(f"{errno.EIO} ") and "ValueError" in error, error
                await until(lambda: front.state is S.CLOSED and not front.queues,
                            "the frontend following the backend's Closing")


class TaskFailingFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """A frontend whose own background task fails once told to."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.go = anyio.Event()
        self.events: list[tuple[object, ...]] = []

    async def peer_connected(self, backend: Nodes) -> None:
        await super().peer_connected(backend)
        self.tasks.start_soon(self._doomed)

    async def _doomed(self) -> None:
        await self.go.wait()
        raise KeyError("a background task of the frontend driver failed")

    async def _write_state(self, to: XenbusState, store: object = None) -> None:
        await super()._write_state(to, store)  # type: ignore[arg-type]
        error = await self.domain.store.exists(self.error_path)
        self.events.append((to, "shared" if self.queues else "unshared",
                            "error node" if error else "no error node"))

    async def disconnected(self) -> None:
        self.events.append(("released",))
        await super().disconnected()


async def test_a_failing_frontend_task_ends_the_connection_in_order() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = FailingEchoBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome:
                front = TaskFailingFrontend(w.domu, 0)
                front.close_timeout = 1.0
                async with front:
                    assert await front.echo(1, b"fine") == b"FINE"
                    front.go.set()
                    # The backend is not left serving a frontend that is gone: it follows the
                    # frontend's Closing and releases the rings.
                    await until(lambda: backend.finished, "the backend following the Closing")
                    assert backend.state is S.CLOSED and not backend.queues
                    assert outcome.returned and outcome.raised is None, outcome.raised
                    assert since_closing(front.events) == [
                        (S.CLOSING, "shared", "error node"),
                        ("released",),
                        (S.CLOSED, "unshared", "error node"),
                    ], front.events
                    error = await w.domu.store.read(front.error_path)
                    assert error.startswith(f"{errno.EIO} ") and "KeyError" in error, error
                    # The frontend is finished with its driver's error.
                    assert front.finished and not front.queues
                    with pytest.raises(KeyError):
                        await front.wait_connected()


class HookFailingBackend(FailingEchoBackend):
    """A backend whose `rings_mapped` hook -- run by the supervisor, not a task -- raises."""

    async def rings_mapped(self, nodes: Nodes) -> None:
        raise RuntimeError("a bug in the rings_mapped hook")


async def test_a_raising_hook_refuses_the_connection_in_order() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = HookFailingBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome:
                with anyio.fail_after(BOUND), pytest.raises(PeerRefusedError) as info:
                    async with front_of(w):
                        pass
                assert "RuntimeError: a bug in the rings_mapped hook" in str(info.value.peer_error)
                await until(lambda: backend.finished, "the backend finishing (once=True)")
                assert isinstance(outcome.raised, RuntimeError), outcome.raised
                assert since_closing(backend.events) == [
                    (S.CLOSING, "mapped", "error node"),
                    ("released",),
                    (S.CLOSED, "unmapped", "error node"),
                ], backend.events
