"""A hostile xenbus peer: it writes any value to its own ``state`` node, at any phase of a
connection, and then a well-behaved peer must still be served by the survivor.

The survivor is a real driver end (echo, block, console) that stays up across every case, as a
serving process does.  The hostile end is a real driver end too (so that "connected" is a real
connection with mapped rings), opened through a domain handle of its own, plus raw writes to
its ``state`` node through yet another handle: a guest kernel misbehaving under a driver.

`Subject` describes a driver; `run_backend_matrix` and `run_frontend_matrix` play every case
against one survivor and return what they saw, so tests can assert on it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ringkit import PeerGoneError, RingkitError
from ringkit.abc import Domain
from ringkit.device import Backend, DeviceAddress, Frontend, XenbusState, create_device
from ringkit.sim import SimXen

S = XenbusState

STATES: tuple[str, ...] = tuple(str(int(s)) for s in S)
GARBAGE: tuple[str, ...] = ("99", "-1", "abc", "")
VALUES: tuple[str, ...] = STATES + GARBAGE
PHASES: tuple[str, ...] = ("before-connect", "connected", "closing")

SETTLE_POLL = 0.002
SETTLE_QUIET = 4
"""A survivor counts as settled once nothing it shows changed for this many polls."""
CASE_TIMEOUT = 10.0


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
class Seen:
    """What the matrix saw, case by case (for the tests' assertions and messages)."""

    cases: int = 0
    refusals: int = 0
    """Cases after which the survivor had written an error node."""
    opens_failed: dict[str, int] = field(default_factory=dict)
    """Frontend survivors only: open failures by exception type."""


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


def snapshot(device: Backend | Frontend) -> tuple[object, ...]:
    hs = device.handshake
    return (hs.state, hs.peer_state, hs.broken, hs.peer_stale, len(device.queues),
            device.finished, device._wake_rx.statistics().current_buffer_used)


SETTLE_LIMIT = 3.0


async def settle(*devices: Backend | Frontend) -> None:
    """Wait until none of `devices` shows any change for `SETTLE_QUIET` polls.

    Raises:
        AssertionError: they kept changing for `SETTLE_LIMIT` seconds (a livelock: two ends
            answering each other for ever), naming the last states seen.
    """
    last: tuple[object, ...] = ()
    quiet = 0
    history: list[tuple[object, ...]] = []
    with anyio.move_on_after(SETTLE_LIMIT):
        while quiet < SETTLE_QUIET:
            await anyio.sleep(SETTLE_POLL)
            now = tuple(snapshot(d) for d in devices)
            quiet = quiet + 1 if now == last else 0
            if now != last:
                history = [*history[-5:], now]
            last = now
        return
    raise AssertionError(f"never settled; the last changes: {history}")


async def write_state(dom: Domain, path: str, value: str) -> None:
    await dom.store.write(f"{path}/state", value)


def refused(error_text: str | None) -> bool:
    return error_text is not None and error_text.split(" ", 1)[0].isdigit()


# ---------------------------------------------------------------- the backend survives


async def run_backend_matrix(
    subject: Subject, tmp: Path, cases: Sequence[tuple[str, str, str]]
) -> Seen:
    """One backend serves throughout.  Each case starts with a well-behaved frontend that
    connects and exchanges traffic (which also proves the previous case left the backend able
    to serve), then turns hostile: its ``state`` node is driven through (phase, first,
    second).  A last well-behaved frontend follows the last case."""
    seen = Seen()
    async with world(subject, tmp) as w, AsyncExitStack() as stack:
        dom0 = await w.handle(stack, 0)
        writer = await w.handle(stack, w.guest)
        backend = subject.make_backend(dom0, w.guest, tmp)
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                await backend.run()
            except Exception as exc:  # the serving process would die of this
                failure.append(exc)

        async with anyio.create_task_group() as tg, backend:
            tg.start_soon(serve)
            await settle(backend)
            # What an idle serving backend holds (its watches); a case may add nothing to it.
            idle = dom0.leaks()
            w.forget(dom0)
            for phase, first, second in [*cases, ("last", "", "")]:
                case = f"{subject.name} backend, {phase} {first!r} -> {second!r}"
                try:
                    with anyio.fail_after(CASE_TIMEOUT):
                        if await backend_case(w, backend, writer, phase, first, second):
                            seen.refusals += 1
                except (AssertionError, TimeoutError) as exc:
                    if failure:
                        raise AssertionError(f"{case}: the backend died: {failure[0]!r}") from exc
                    raise AssertionError(f"{case}: {exc!r}") from exc
                assert not failure, f"{case}: the backend died: {failure[0]!r}"
                assert not backend.finished, f"{case}: stopped serving: {backend._finished!r}"
                assert not w.leaks(), f"{case}: {w.leaks()}"
                assert dom0.leaks() == idle, f"{case}: the backend holds {dom0.leaks()}"
                seen.cases += 1
            tg.cancel_scope.cancel()
        assert not w.leaks(), w.leaks()
        assert not dom0.leaks(), f"the closed backend's handle holds {dom0.leaks()}"
    seen.cases -= 1
    return seen


async def backend_case(
    w: World, backend: Backend, writer: Domain, phase: str, first: str, second: str
) -> bool:
    """Play one case; True if the backend reported an error in xenstore for it."""
    subject = w.subject
    fe_path = w.address.frontend_path
    # A fresh frontend (Initialising): whatever the last case left, the backend must come back
    # to InitWait for it.
    await write_state(writer, fe_path, "1")
    await settle(backend)
    assert backend.state is S.INIT_WAIT, (
        f"{subject.name} backend at {backend.state.xen_name}, not InitWait, for a new frontend"
    )
    async with AsyncExitStack() as stack:
        dom = await w.handle(stack, w.guest)
        front = subject.make_frontend(dom)
        front.connect_timeout = CASE_TIMEOUT / 2
        front.close_timeout = 0.05
        await stack.enter_async_context(front)
        await subject.exchange(front, backend, w.tmp)
        if phase == "last":
            return False
        if phase == "before-connect":
            await front.aclose()
            await write_state(writer, fe_path, "1")
            await settle(backend, front)
        elif phase == "closing":
            await write_state(writer, fe_path, "5")
            await settle(backend, front)
        for value in (first, second):
            await write_state(writer, fe_path, value)
            await settle(backend, front)
        report = await backend_error(backend)
    w.forget(dom)
    await settle(backend)
    return refused(report)


async def backend_error(backend: Backend) -> str | None:
    try:
        raw = await backend.domain.store.read_bytes(backend.error_path)
    except RingkitError:
        return None
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- the frontend survives


async def run_frontend_matrix(
    subject: Subject, tmp: Path, cases: Sequence[tuple[str, str, str]]
) -> Seen:
    """Per case, in this process: a frontend opens against a real backend, exchanges traffic,
    and then the backend's ``state`` node is driven through (phase, first, second) by raw
    writes.  The frontend must not be ended by anything but the device going away; a fresh,
    well-behaved backend then serves the *same* frontend object.  Before-connect cases drive
    the backend's node while the frontend opens: the open succeeds or fails with a typed
    error, and a fresh pair then connects."""
    seen = Seen()
    async with world(subject, tmp) as w, AsyncExitStack() as outer:
        writer = await w.handle(outer, 0)
        for phase, first, second in cases:
            case = f"{subject.name} frontend, {phase} {first!r} -> {second!r}"
            try:
                with anyio.fail_after(CASE_TIMEOUT * 2):
                    outcome = await frontend_case(w, writer, phase, first, second)
            except (AssertionError, TimeoutError) as exc:
                raise AssertionError(f"{case}: {exc!r}") from exc
            if outcome is not None:
                seen.opens_failed[outcome] = seen.opens_failed.get(outcome, 0) + 1
            seen.cases += 1
            assert not w.leaks(), f"{case}: {w.leaks()}"
    return seen


async def serve(scope: anyio.CancelScope, device: Backend) -> None:
    with scope:
        async with device:
            await device.run()


async def frontend_case(
    w: World, writer: Domain, phase: str, first: str, second: str
) -> str | None:
    """Play one case; the type name of the open's failure, or None if it opened."""
    subject = w.subject
    be_path = w.address.backend_path
    await write_state(writer, be_path, "1")
    failed: str | None = None
    async with AsyncExitStack() as stack:
        front_dom = await w.handle(stack, w.guest)
        back_dom = await w.handle(stack, 0)
        front = subject.make_frontend(front_dom)
        front.close_timeout = 0.05
        tg = await stack.enter_async_context(anyio.create_task_group())
        if phase == "before-connect":
            front.connect_timeout = 0.5

            async def drive() -> None:
                for value in (first, second):
                    await write_state(writer, be_path, value)
                    await anyio.sleep(0.01)

            tg.start_soon(drive)
            try:
                async with front:
                    pass
            except (RingkitError, TimeoutError) as exc:
                failed = type(exc).__name__
        else:
            backend_scope = anyio.CancelScope()
            backend = subject.make_backend(back_dom, w.guest, w.tmp)
            tg.start_soon(serve, backend_scope, backend)
            front.connect_timeout = CASE_TIMEOUT / 2
            async with front:
                await subject.exchange(front, backend, w.tmp)
                if phase == "closing":
                    await write_state(writer, be_path, "5")
                    await settle(front)
                for value in (first, second):
                    await write_state(writer, be_path, value)
                    await settle(front)
                assert not front.finished or isinstance(front._finished, PeerGoneError), (
                    f"{subject.name} frontend ended by {front._finished!r} after {phase} "
                    f"{first!r} -> {second!r}"
                )
                # A well-behaved backend comes back: the same frontend reconnects to it.
                backend_scope.cancel()
                await settle(front)
                fresh = subject.make_backend(back_dom, w.guest, w.tmp)
                tg.start_soon(serve, anyio.CancelScope(), fresh)
                if not front.finished:
                    await front.wait_connected()
                    await subject.exchange(front, fresh, w.tmp)
        tg.cancel_scope.cancel()
    w.forget(front_dom, back_dom)
    if phase == "before-connect":
        await good_pair(w)
    return failed


async def good_pair(w: World) -> None:
    """A fresh backend and a fresh frontend in this process connect and exchange."""
    async with AsyncExitStack() as stack:
        back_dom = await w.handle(stack, 0)
        front_dom = await w.handle(stack, w.guest)
        backend = w.subject.make_backend(back_dom, w.guest, w.tmp)
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(serve, anyio.CancelScope(), backend)
        front = w.subject.make_frontend(front_dom)
        front.connect_timeout = CASE_TIMEOUT / 2
        async with front:
            await w.subject.exchange(front, backend, w.tmp)
        tg.cancel_scope.cancel()
    w.forget(back_dom, front_dom)


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
