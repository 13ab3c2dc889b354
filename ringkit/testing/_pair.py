"""`open_device_pair`: both ends of a driver's device, connected and serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from ..device import Backend, Frontend
from ._child import Child, spawn
from ._driver import DriverUnderTest
from ._ends import connected_frontend, serving
from ._world import World


@dataclass
class DevicePair:
    """Both ends of a driver's device, connected (see `open_device_pair`)."""

    world: World
    driver: DriverUnderTest
    frontend: Frontend
    backend: Backend | None
    """The backend, when it runs in this process."""
    backend_process: Child | None
    """The backend's child process, when it runs in one: ``await pair.backend_process.kill()``
    is a real kill -9."""

    async def exchange(self) -> None:
        """The driver's traffic, bounded by the world's timeout."""
        with self.world.within(f"{self.driver.label}: the exchange"):
            await self.driver.exchange(self.frontend)


@asynccontextmanager
async def open_device_pair(world: World, driver: DriverUnderTest, *,
                           backend_process: bool = False) -> AsyncIterator[DevicePair]:
    """Create `driver`'s device in `world` (toolstack entries), run its backend -- in a task,
    or with `backend_process` in a child process -- and connect its frontend in the guest
    (within the world's timeout).  Closes the frontend, then the backend, on the way out."""
    await driver.create(world.dom0, world.guest_id)
    async with AsyncExitStack() as stack:
        backend: Backend | None = None
        child: Child | None = None
        if backend_process:
            child = await stack.enter_async_context(spawn(world, "backend", driver))
            await child.expect("ready")
        else:
            backend = (await stack.enter_async_context(serving(world, driver))).backend
        front = await stack.enter_async_context(connected_frontend(world, driver))
        yield DevicePair(world, driver, front, backend, child)
