"""The hostile-xenbus state matrix: a peer whose ``state`` node takes any value, at any phase of
a connection, ends at most its own connection -- never the serving end.

For one end under test (the *survivor*) a hostile peer writes ``first -> second`` pairs of
values to its own ``state`` node: the nine XenbusStates (0..8) and garbage (`GARBAGE`), before
a connection is up, while connected, and while closing (`PHASES`).  The peer is a real driver
end (so that "connected" means mapped rings), its node overwritten by raw store writes: a guest
kernel misbehaving under a driver.  After each case the survivor must still be serving (no
crash, not given up; a refusal in its error node, or tolerating the flap, are both fine), hold
nothing beyond what it held idle, and a well-behaved peer must then connect and pass the
driver's traffic.

The default is a sample: per phase, every value once as ``first`` and once as ``second``
(`matrix_cases`, paired differently per driver and end).  ``RINGKIT_HOSTILE_MATRIX=full`` (or
``full=True``) plays every one of the 169 pairs per phase.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio

from .._errors import PeerGoneError, RingkitError
from ..abc import Domain
from ..device import Backend, Frontend, XenbusState
from ._driver import DriverUnderTest
from ._ends import TYPED_ERRORS, exchange, serving
from ._world import World, WorldMaker

S = XenbusState

STATES: tuple[str, ...] = tuple(str(int(s)) for s in S)
"""The XenbusStates as xenstore writes them, "0" (Unknown) to "8" (Reconfigured)."""
GARBAGE: tuple[str, ...] = ("99", "-1", "abc", "")
"""State values no driver may act on: out of range, negative, not a number, empty."""
VALUES: tuple[str, ...] = STATES + GARBAGE
Phase = Literal["before-connect", "connected", "closing"]
PHASES: tuple[Phase, ...] = ("before-connect", "connected", "closing")
"""When the hostile peer flaps its state: before a connection is up, while connected, and while
closing."""
MatrixCase = tuple[Phase, str, str]
"""(phase, first value, second value) written to the hostile peer's ``state`` node."""
Side = Literal["backend", "frontend"]

FULL_ENV = "RINGKIT_HOSTILE_MATRIX"
"""``RINGKIT_HOSTILE_MATRIX=full`` makes the conformance checks play every pair."""

REPORTED_FLAP: tuple[MatrixCase, ...] = (
    ("connected", "5", "4"), ("closing", "4", "5"), ("closing", "5", "4"))
"""The flap that once stopped a serving block backend: Closing, then Connected again."""

_POLL = 0.002
_QUIET = 4
"""A survivor counts as settled once nothing it shows changed for this many polls."""
_SETTLE_LIMIT = 3.0


def full_matrix_requested() -> bool:
    """Whether the environment asks for the full matrix (see `FULL_ENV`)."""
    return os.environ.get(FULL_ENV, "").strip().lower() == "full"


def matrix_cases(seed: int, *, full: bool | None = None) -> list[MatrixCase]:
    """The cases to play: with `full` (default: `full_matrix_requested`) all 169 pairs per
    phase; otherwise 13 per phase in which each value is once ``first`` and once ``second``,
    the pairing shifted by `seed` (so that different drivers and ends cover different pairs)."""
    if full is None:
        full = full_matrix_requested()
    if full:
        return [(p, a, b) for p in PHASES for a, b in itertools.product(VALUES, VALUES)]
    n = len(VALUES)
    return [
        (phase, VALUES[i], VALUES[(i + 1 + (seed + k) % (n - 1)) % n])
        for k, phase in enumerate(PHASES)
        for i in range(n)
    ]


@dataclass
class MatrixSeen:
    """What a matrix run saw (for assertions beyond the check's own)."""

    cases: int = 0
    refusals: int = 0
    """Backend survivors: cases after which the backend had written its error node."""
    opens_failed: dict[str, int] = field(default_factory=dict)
    """Frontend survivors: before-connect opens that failed, by exception type."""


# --------------------------------------------------------------------------- settling


def _snapshot(device: Backend | Frontend) -> tuple[object, ...]:
    hs = device.handshake
    # `settled`: the device's supervisor has decided on every wake-up it was given.
    return (hs.state, hs.peer_state, hs.broken, hs.peer_stale, len(device.queues),
            device.finished, device.settled)


async def settle(*devices: Backend | Frontend) -> None:
    """Wait until none of `devices` changed for a few polls.

    Raises:
        AssertionError: they kept changing for 3 s (two ends answering each other for ever),
            naming the last states seen.
    """
    last: tuple[object, ...] = ()
    quiet = 0
    history: list[tuple[object, ...]] = []
    with anyio.move_on_after(_SETTLE_LIMIT):
        while quiet < _QUIET:
            await anyio.sleep(_POLL)
            now = tuple(_snapshot(d) for d in devices)
            quiet = quiet + 1 if now == last else 0
            if now != last:
                history = [*history[-5:], now]
            last = now
        return
    raise AssertionError(f"never settled (a livelock?); the last changes: {history}")


async def _write_state(dom: Domain, path: str, value: str) -> None:
    await dom.store.write(f"{path}/state", value)


def _assertion_in(exc: BaseException) -> AssertionError | None:
    """The first AssertionError in `exc` (through exception groups), or None."""
    if isinstance(exc, AssertionError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _assertion_in(inner)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- the backend survives


async def run_backend_matrix(w: World, driver: DriverUnderTest,
                             cases: Sequence[MatrixCase]) -> MatrixSeen:
    """One backend serves `w`'s device (created already) throughout.  Each case starts with a
    well-behaved frontend that connects and exchanges traffic -- which also proves the
    previous case left the backend able to serve -- whose ``state`` node is then driven
    through the case.  A last well-behaved frontend follows the last case.

    Raises:
        AssertionError: naming the case after which the backend died, gave up, leaked, hung
            or failed a well-behaved frontend.
    """
    seen = MatrixSeen()
    async with serving(w, driver) as served:
        backend = served.backend
        await settle(backend)
        idle = w.dom0.leaks()  # a serving backend's watches; a case may add nothing to them
        played: list[tuple[Phase | None, str, str]] = [*cases, (None, "", "")]
        for phase, first, second in played:
            case = (f"a hostile frontend's state, {phase} {first!r} -> {second!r}"
                    if phase else "the last case")
            what = f"{driver.label}: {case}"
            try:
                with w.within(what):
                    if await _backend_case(w, driver, backend, phase, first, second):
                        seen.refusals += 1
            except BaseException as exc:
                found = _assertion_in(exc)
                if found is None:
                    raise
                served.assert_alive(case)
                raise AssertionError(f"{what}: {found}") from found
            served.assert_alive(case)
            leaks = w.guest.leaks()
            assert not leaks, f"{what}: the closed frontend's domain holds {leaks}"
            assert w.dom0.leaks() == idle, (
                f"{what}: the backend holds {w.dom0.leaks()}, idle it held {idle}")
            seen.cases += int(phase is not None)
    return seen


async def _backend_case(w: World, driver: DriverUnderTest, backend: Backend,
                        phase: Phase | None, first: str, second: str) -> bool:
    """Play one case (None: only the well-behaved frontend); True if the backend wrote its
    error node."""
    fe_path = driver.address(w.guest_id, w.dom0.domid).frontend_path
    # A fresh frontend (Initialising): whatever the last case left, the backend must come back
    # to InitWait for it.
    await _write_state(w.guest, fe_path, "1")
    await settle(backend)
    assert backend.state is S.INIT_WAIT, (
        f"the backend is at {backend.state.xen_name}, not InitWait, for a new frontend")
    front = driver.make_frontend(w.guest, w.dom0.domid)
    front.connect_timeout = w.timeout / 2
    front.close_timeout = 0.05
    async with front:
        await exchange(w, driver, front, "of a well-behaved frontend")
        if phase is None:
            return False
        if phase == "before-connect":
            await front.aclose()
            await _write_state(w.guest, fe_path, "1")
            await settle(backend, front)
        elif phase == "closing":
            await _write_state(w.guest, fe_path, "5")
            await settle(backend, front)
        for value in (first, second):
            await _write_state(w.guest, fe_path, value)
            await settle(backend, front)
        refused = _is_refusal(await _error_node(backend))
    await settle(backend)
    return refused


async def _error_node(backend: Backend) -> str | None:
    try:
        raw = await backend.domain.store.read_bytes(backend.error_path)
    except RingkitError:
        return None
    return raw.decode("utf-8", "replace")


def _is_refusal(text: str | None) -> bool:
    return text is not None and text.split(" ", 1)[0].isdigit()


# --------------------------------------------------------------------------- the frontend survives


async def run_frontend_matrix(w: World, driver: DriverUnderTest,
                              cases: Sequence[MatrixCase]) -> MatrixSeen:
    """Per case: a frontend opens against a real backend and exchanges traffic, then the
    backend's ``state`` node is driven through the case.  Nothing but the device going away
    (`PeerGoneError`) may end the frontend; a fresh, well-behaved backend then serves the
    *same* frontend object.  Before-connect cases drive the backend's node while the frontend
    opens with no backend serving: the open succeeds or fails with a typed error, and a fresh
    pair then connects.

    Raises:
        AssertionError: naming the case after which the frontend was ended, leaked, hung or
            could not be served again.
    """
    seen = MatrixSeen()
    for phase, first, second in cases:
        case = f"{driver.label}: a hostile backend's state, {phase} {first!r} -> {second!r}"
        try:
            with w.within(case, 2 * w.timeout):
                outcome = await _frontend_case(w, driver, phase, first, second)
        except BaseException as exc:
            found = _assertion_in(exc)
            if found is None:
                raise
            raise AssertionError(f"{case}: {found}") from found
        if outcome is not None:
            seen.opens_failed[outcome] = seen.opens_failed.get(outcome, 0) + 1
        seen.cases += 1
        for who, dom in (("dom0", w.dom0), ("guest", w.guest)):
            assert not dom.leaks(), f"{case}: {who} holds {dom.leaks()}"
    return seen


_OPEN_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, *TYPED_ERRORS)
"""How a frontend's open may fail while the backend's state is garbage: a typed error, or
its own connect timeout."""


async def _serve(scope: anyio.CancelScope, device: Backend) -> None:
    with scope:
        async with device:
            await device.run()


async def _frontend_case(w: World, driver: DriverUnderTest, phase: Phase, first: str,
                         second: str) -> str | None:
    """Play one case; the type name of the open's failure, or None if it opened."""
    be_path = driver.address(w.guest_id, w.dom0.domid).backend_path
    await _write_state(w.dom0, be_path, "1")
    failed: str | None = None
    front = driver.make_frontend(w.guest, w.dom0.domid)
    front.close_timeout = 0.05
    async with anyio.create_task_group() as tg:
        if phase == "before-connect":
            front.connect_timeout = min(0.5, w.timeout / 4)

            async def drive() -> None:
                for value in (first, second):
                    await _write_state(w.dom0, be_path, value)
                    await anyio.sleep(0.01)

            tg.start_soon(drive)
            try:
                async with front:
                    pass
            except _OPEN_FAILURES as exc:
                failed = type(exc).__name__
            except Exception as exc:
                raise AssertionError(
                    f"the frontend's open failed with {exc!r}, not a typed error") from exc
        else:
            hostile = anyio.CancelScope()
            backend = driver.make_backend(w.dom0, w.guest_id)
            tg.start_soon(_serve, hostile, backend)
            front.connect_timeout = w.timeout / 2
            async with front:
                await exchange(w, driver, front, "before the backend's state was driven")
                if phase == "closing":
                    await _write_state(w.dom0, be_path, "5")
                    await settle(front)
                for value in (first, second):
                    await _write_state(w.dom0, be_path, value)
                    await settle(front)
                ended = front.ended_by
                assert ended is None or isinstance(ended, PeerGoneError), (
                    f"the frontend was ended by {ended!r}; a backend's state may end only "
                    "the connection")
                # A well-behaved backend comes back: the same frontend reconnects to it.
                hostile.cancel()
                await settle(front)
                tg.start_soon(_serve, anyio.CancelScope(),
                              driver.make_backend(w.dom0, w.guest_id))
                if not front.finished:
                    try:
                        await front.wait_connected()
                    except TYPED_ERRORS as exc:
                        raise AssertionError(
                            "the frontend did not connect to a well-behaved backend "
                            f"afterwards: {exc!r}") from exc
                    await exchange(w, driver, front, "with a well-behaved backend afterwards")
        tg.cancel_scope.cancel()
    if phase == "before-connect":
        await _good_pair(w, driver)
    return failed


async def _good_pair(w: World, driver: DriverUnderTest) -> None:
    """A fresh backend and a fresh frontend connect and exchange."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve, anyio.CancelScope(), driver.make_backend(w.dom0, w.guest_id))
        front = driver.make_frontend(w.guest, w.dom0.domid)
        front.connect_timeout = w.timeout / 2
        async with front:
            await exchange(w, driver, front, "of a fresh pair afterwards")
        tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- the check


def _seed(driver: DriverUnderTest, side: Side) -> int:
    return zlib.crc32(f"{driver.label}/{side}".encode())


async def check_xenbus_state_matrix(side: Side, driver: DriverUnderTest,
                                    make_world: WorldMaker, *, full: bool | None = None
                                    ) -> MatrixSeen:
    """The matrix against the driver's `side` end ("backend": its backend survives a hostile
    frontend's states, the reported flap first; "frontend": the other way round) in a fresh
    world from `make_world`.  `full` as in `matrix_cases`.

    Raises:
        AssertionError: naming the case and what went wrong.
    """
    cases = matrix_cases(_seed(driver, side), full=full)
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        if side == "backend":
            return await run_backend_matrix(w, driver, [*REPORTED_FLAP, *cases])
        return await run_frontend_matrix(w, driver, cases)
