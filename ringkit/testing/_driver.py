"""`DriverUnderTest`: what the kit needs to know about a driver to run it and to attack it."""

from __future__ import annotations

import base64
import pickle
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..abc import Domain
from ..device import Backend, DeviceAddress, Frontend, create_device

Exchange = Callable[[Any], Awaitable[None]]
"""Some real traffic through a connected frontend; raises when the traffic went wrong."""


@dataclass(frozen=True)
class DriverUnderTest:
    """A split driver as the conformance checks and the device-pair fixtures see it.

    `backend` and `frontend` are the two classes (or any callables with their constructors'
    first three parameters: domain, peer domid, devid); `backend_args` / `frontend_args` extra
    keyword arguments for them; `exchange(frontend)` does some real traffic and raises if it
    went wrong.  `backend_nodes` / `frontend_nodes` are what the toolstack writes besides the
    standard entries (e.g. a disk's ``params``).

    Ends may run in child processes, which rebuild this description with `pickle`: the classes
    and `exchange` must be importable module-level names (or instances of such classes), and
    the arguments plain data.  The child gets this process's ``sys.path``.
    """

    backend: type[Backend] | Callable[..., Backend]
    frontend: type[Frontend] | Callable[..., Frontend]
    exchange: Exchange
    backend_args: Mapping[str, Any] = field(default_factory=dict)
    frontend_args: Mapping[str, Any] = field(default_factory=dict)
    backend_nodes: Mapping[str, str | int] = field(default_factory=dict)
    frontend_nodes: Mapping[str, str | int] = field(default_factory=dict)
    devid: int = 0
    name: str = ""

    @property
    def device_type(self) -> str:
        """The xenstore device type, read from the frontend class."""
        return str(self.frontend.device_type)  # type: ignore[union-attr]

    @property
    def label(self) -> str:
        """How messages name the driver: `name`, else the device type."""
        return self.name or self.device_type

    def address(self, frontend_id: int, backend_id: int = 0) -> DeviceAddress:
        """Where the device lives in xenstore for this pair of domains."""
        return DeviceAddress(self.device_type, frontend_id, backend_id, self.devid)

    async def create(self, dom0: Domain, frontend_id: int) -> DeviceAddress:
        """Write both ends' xenstore entries, as the toolstack does."""
        address = self.address(frontend_id, dom0.domid)
        await create_device(dom0.store, address, backend_nodes=dict(self.backend_nodes),
                            frontend_nodes=dict(self.frontend_nodes))
        return address

    def make_backend(self, domain: Domain, frontend_id: int) -> Backend:
        """A backend in `domain` for the frontend in `frontend_id` (not yet entered)."""
        return self.backend(domain, frontend_id, self.devid, **self.backend_args)

    def make_frontend(self, domain: Domain, backend_id: int = 0) -> Frontend:
        """A frontend in `domain` for the backend in `backend_id` (not yet entered)."""
        return self.frontend(domain, backend_id, self.devid, **self.frontend_args)

    def encode(self) -> str:
        """This description for a child process's command line."""
        try:
            raw = pickle.dumps(self)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise TypeError(
                f"{self.label}: a DriverUnderTest must be picklable to run an end in another "
                f"process (module-level classes and exchange, plain arguments): {exc}"
            ) from exc
        return base64.b64encode(raw).decode()

    @staticmethod
    def decode(text: str) -> DriverUnderTest:
        """The description `encode` wrote, rebuilt in a child process."""
        driver = pickle.loads(base64.b64decode(text))
        assert isinstance(driver, DriverUnderTest)
        return driver
