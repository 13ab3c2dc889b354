"""Set-up for the hostile handshake-node tests (test_hostile_handshake_nodes.py): a driver
`Subject` (how to build each end, one real exchange), a simulated Xen with its device created,
and extra domain handles per attempt, so that a refused frontend's handle can be checked for
leaks on its own.

The hostile-xenbus *state* matrix that lived here is a driver conformance check now
(``xenbus-state-matrix/backend`` and ``/frontend``, `ringkit.testing.conformance`), run for
echo, block and console by tests/kit/test_conformance_drivers.py.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ringkit import RingkitError
from ringkit.abc import Domain
from ringkit.device import Backend, DeviceAddress, Frontend, create_device
from ringkit.sim import SimXen
from ringkit.testing.conformance import settle as settle


@dataclass
class Subject:
    """One driver under test: how to build each end, and one real exchange of traffic."""

    name: str
    device_type: str
    devid: int
    make_backend: Callable[[Domain, int, Path], Backend]
    frontend_class: type[Frontend]
    exchange: Callable[[Frontend, Backend, Path], Awaitable[None]]
    frontend_nodes: dict[str, str | int] = field(default_factory=dict)
    backend_nodes: Callable[[Path], dict[str, str | int]] = lambda _: {}

    def make_frontend(self, dom: Domain, cls: type[Frontend] | None = None) -> Frontend:
        """The driver's frontend (or `cls`, a subclass of it) for this device."""
        return (cls or self.frontend_class)(dom, 0, self.devid)


@dataclass
class World:
    xen: SimXen
    guest: int
    address: DeviceAddress
    tmp: Path
    subject: Subject
    handles: list[Domain] = field(default_factory=list)

    async def handle(self, stack: AsyncExitStack, domid: int) -> Domain:
        dom = await stack.enter_async_context(self.xen.connect(domid))
        self.handles.append(dom)
        return dom

    def forget(self, *doms: Domain) -> None:
        """Stop checking handles that were closed."""
        self.handles = [h for h in self.handles if h not in doms]

    def leaks(self) -> list[str]:
        return [f"dom{d.domid}: {d.leaks()}" for d in self.handles if d.leaks()]


def first_failure(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group, or `exc` itself."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def world(subject: Subject, tmp: Path) -> AsyncIterator[World]:
    """A simulated Xen with the device created; a failed check inside the task groups below it
    comes out as itself, not wrapped in exception groups."""
    try:
        async with _world(subject, tmp) as w:
            yield w
    except BaseExceptionGroup as group:
        leaf = first_failure(group)
        if isinstance(leaf, AssertionError):
            raise leaf from group
        raise


@asynccontextmanager
async def _world(subject: Subject, tmp: Path) -> AsyncIterator[World]:
    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        address = DeviceAddress(subject.device_type, guest, 0, subject.devid)
        async with xen.connect(0) as dom0:
            await create_device(
                dom0.store,
                address,
                frontend_nodes=subject.frontend_nodes,
                backend_nodes=subject.backend_nodes(tmp),
            )
        yield World(xen, guest, address, tmp, subject)


async def backend_error(backend: Backend) -> str | None:
    try:
        raw = await backend.domain.store.read_bytes(backend.error_path)
    except RingkitError:
        return None
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- the drivers


def echo_subject() -> Subject:
    from .drivers import EchoBackend, EchoFrontend

    async def exchange(front: Frontend, backend: Backend, tmp: Path) -> None:
        assert await front.echo(1, b"still here") == b"STILL HERE"  # type: ignore[attr-defined]

    return Subject(
        "echo", "echo", 0,
        make_backend=lambda dom, guest, tmp: EchoBackend(dom, guest),
        frontend_class=EchoFrontend,
        exchange=exchange,
    )


DISK = 1 << 20


def block_subject() -> Subject:
    from ringkit.backends.block.device import BlockBackend
    from ringkit.frontends.block.device import BlockFrontend

    def image(tmp: Path) -> Path:
        path = tmp / "disk.img"
        if not path.exists():
            path.write_bytes(bytes(DISK))
        return path

    async def exchange(front: Frontend, backend: Backend, tmp: Path) -> None:
        assert isinstance(front, BlockFrontend)
        data = os.urandom(4096)
        await front.write(8192, data)
        assert await front.read(8192, 4096) == data

    return Subject(
        "block", "vbd", 51712,
        make_backend=lambda dom, guest, tmp: BlockBackend(dom, guest, 51712, image=image(tmp)),
        frontend_class=BlockFrontend,
        exchange=exchange,
        frontend_nodes={"virtual-device": 51712, "device-type": "disk"},
        backend_nodes=lambda tmp: {"params": str(image(tmp)), "mode": "w", "type": "raw"},
    )


def console_subject() -> Subject:
    from ringkit.backends.console import ConsoleBackend
    from ringkit.frontends.console import ConsoleFrontend

    from ringkit.proto.console import DEFAULT_CONSOLE_DEVID

    async def exchange(front: Frontend, backend: Backend, tmp: Path) -> None:
        assert isinstance(front, ConsoleFrontend)
        log = tmp / "console.log"
        before = log.stat().st_size if log.exists() else 0
        marker = struct.pack("<Q", before) + b"console ok\n"
        await front.stream.send(marker)
        with anyio.fail_after(5):
            while not (log.exists() and log.stat().st_size >= before + len(marker)):
                await anyio.sleep(0.005)
        assert log.read_bytes()[before:before + len(marker)] == marker

    return Subject(
        "console", "console", DEFAULT_CONSOLE_DEVID,
        make_backend=lambda dom, guest, tmp: ConsoleBackend(
            dom, guest, log_path=tmp / "console.log", pty=False
        ),
        frontend_class=ConsoleFrontend,
        exchange=exchange,
    )


SUBJECTS: dict[str, Callable[[], Subject]] = {
    "echo": echo_subject,
    "block": block_subject,
    "console": console_subject,
}
