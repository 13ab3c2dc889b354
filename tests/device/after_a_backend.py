"""A frontend that a first backend served and then left in order: the starting point of the
tests of what the next backend finds (tests/device/test_reoffer.py, test_leftover_closed.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from ringkit.device import Frontend, XenbusState
from ringkit.sim import SimXen
from ringkit.testing import DriverUnderTest, World, sim_world
from ringkit.testing.conformance import connected_frontend_later, connects, exchange, serving

FrontT = TypeVar("FrontT", bound=Frontend)


@asynccontextmanager
async def frontend_after_a_backend(driver: DriverUnderTest, kind: type[FrontT]
                                   ) -> AsyncIterator[tuple[World, FrontT]]:
    """A simulated Xen with `driver`'s frontend (a `kind`) held open in a task of its own,
    after `driver`'s backend connected it, passed its exchange and closed in order: the
    frontend is Closed, its rings released, waiting for the next backend."""
    async with SimXen.start(in_process=True) as xen, sim_world(xen, timeout=10) as w:
        await driver.create(w.dom0, w.guest_id)
        async with connected_frontend_later(w, driver) as held:
            front = held.front
            assert isinstance(front, kind)
            async with serving(w, driver):
                await connects(w, driver, front)
                await exchange(w, driver, front, "with the first backend")
            with anyio.fail_after(10):
                while front.state is not XenbusState.CLOSED or front.queues:
                    await anyio.sleep(0.01)
            yield w, front
