"""Running a driver's ends for the conformance checks: a backend serving in a task, a
frontend connected within the world's timeout, the driver's traffic, bounded polls -- and what
counts as a typed error.  `ringkit.testing.conformance` re-exports all of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from .._errors import RingkitError
from ..device import Backend, Frontend
from ._driver import DriverUnderTest
from ._world import WaitTimeout, World

TYPED_ERRORS: tuple[type[BaseException], ...] = (
    RingkitError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
"""What a driver's traffic may raise when the peer dies or misbehaves: ringkit's own errors
(`PeerGoneError`, `RemoteProtocolError`, ...) and anyio's stream errors chained from them."""


class ServingBackend:
    """A backend serving in a task of this process (see `serving`)."""

    def __init__(self, backend: Backend, label: str) -> None:
        self.backend = backend
        self.label = label
        self.failure: BaseException | None = None
        self.returned = False

    def assert_alive(self, after: str) -> None:
        """The backend is still serving its device: it neither crashed nor gave up, and its
        driver never raised (the framework ends the connection a driver's bug happened in and
        serves on, but a peer must not be able to make a driver raise)."""
        if self.failure is not None:
            raise AssertionError(
                f"{self.label}: the backend stopped serving after {after}: {self.failure!r}"
            ) from self.failure
        error = self.backend.driver_error
        if error is not None:
            raise AssertionError(
                f"{self.label}: the backend's driver raised after {after}: {error!r} (the "
                "framework ended that connection; a peer must never make a driver raise)"
            ) from error
        if self.returned or self.backend.finished:
            raise AssertionError(
                f"{self.label}: the backend gave up its device after {after} (run() returned); "
                "a peer must never stop a serving backend")

    async def run(self) -> None:
        """Serve until the backend's `run` returns; record how it ended (`failure`,
        `returned`)."""
        try:
            await self.backend.run()
        except Exception as exc:
            self.failure = exc
        else:
            self.returned = True


@asynccontextmanager
async def serving(w: World, driver: DriverUnderTest) -> AsyncIterator[ServingBackend]:
    """The driver's backend for `w`'s guest, serving in a background task until the block
    ends (then closed in order)."""
    async with anyio.create_task_group() as tg:
        backend = driver.make_backend(w.dom0, w.guest_id)
        await backend.__aenter__()  # its task group: no cancel scope may wrap this
        served = ServingBackend(backend, driver.label)
        try:
            tg.start_soon(served.run)
            yield served
        finally:
            await backend.aclose()


def _bounded(front: Frontend, w: World) -> Frontend:
    """`front`, waiting at most half the world's timeout for a backend to follow its Closing
    (a dead or hostile one never will)."""
    # close_timeout is declared a class attribute; an instance value is what we need here
    front.close_timeout = min(front.close_timeout, w.timeout / 2)
    return front


@asynccontextmanager
async def connected_frontend(w: World, driver: DriverUnderTest) -> AsyncIterator[Frontend]:
    """The driver's frontend in `w`'s guest, connected (within the world's timeout)."""
    front = _bounded(driver.make_frontend(w.guest, w.dom0.domid), w)
    front.connect_timeout = w.timeout
    try:
        await front.__aenter__()
    except TimeoutError as exc:
        raise WaitTimeout(f"{driver.label}: the frontend did not connect within "
                          f"{w.timeout:g} s") from exc
    try:
        yield front
    finally:
        await front.aclose()


async def exchange(w: World, driver: DriverUnderTest, front: Frontend, when: str) -> None:
    """The driver's traffic, which must work now."""
    with w.within(f"{driver.label}: the exchange {when}"):
        try:
            await driver.exchange(front)
        except Exception as exc:
            raise AssertionError(f"{driver.label}: the exchange {when} failed: {exc!r}") from exc


async def until(w: World, what: str, predicate: Callable[[], object]) -> None:
    """Poll `predicate` until true, within the world's timeout (fails naming `what`)."""
    with w.within(what):
        while not predicate():
            await anyio.sleep(0.01)


async def until_state(w: World, path: str, wanted: set[str], what: str) -> None:
    """Poll ``<path>/state`` until it is one of `wanted`."""
    with w.within(what):
        while True:
            if await w.dom0.store.exists(f"{path}/state"):
                state = await w.dom0.store.read(f"{path}/state")
                if state in wanted:
                    return
            await anyio.sleep(0.01)
