"""The driver conformance suite: hold any split driver to what Xen drivers must do.

Point it at a `DriverUnderTest` -- the driver's Backend and Frontend classes and one
``exchange(frontend)`` coroutine that does some real traffic -- and a *world maker* (a callable
returning an async context manager that yields a `World`: `sim_world`, `xen_world`, or the
plugin's fixtures).  Every check builds its device in a fresh world, raises ``AssertionError``
with a message naming the fault when the driver misbehaves, and ends with the world's leak
check (grants, mappings, ports, watches, transactions).  Run through `CHECKS` or `checks_for`,
a failing check raises `ConformanceFailure` (an ``AssertionError``) whose first line is
``<check>: <cause>``, with the cause chained.  Nothing here imports pytest::

    from ringkit.testing.conformance import checks_for
    from ringkit.testing import DriverUnderTest, sim_world

    driver = DriverUnderTest(EchoBackend, EchoFrontend, exchange=say_hello)
    async with SimXen.start(in_process=True) as xen:
        for name, check in checks_for(driver, "sim").items():
            await check(driver, lambda: sim_world(xen))

The checks, by name (`CHECKS`):

* handshake: ``handshake`` (backend first), ``frontend-first``, ``skipped-states`` (a frontend
  going from Initialising straight to Connected), ``leftover-closed`` (a frontend dir still
  Closed from an earlier connection), ``features-read-back`` (each end's nodes readable by the
  other, with the same values);
* orderly close from either side, then reconnect and traffic again: ``frontend-closes``,
  ``backend-closes``; ``port-closed-then-closes`` (a frontend closes its event channel, then
  closes in order and reconnects: the backend must follow each step);
* peer death: ``backend-killed`` (kill -9 mid-traffic: the frontend's traffic fails with a
  typed error within the timeout, a new backend serves it again), ``frontend-killed`` (the
  backend cleans up and serves the next frontend), ``domain-destroyed`` (sim only);
* hostile peers, each in a process of its own (``hostile-frontend/<mode>`` and
  ``hostile-backend/<mode>``, modes in `ringkit.testing._hostile`): garbage slots, producer
  indices ahead / backwards / huge, a scribbled header, responses for ids never sent or twice,
  a peer that stops answering, closes its event channel or vanishes with pages mapped, and
  hostile xenstore nodes.  The end under attack must answer with a typed error and a clean
  disconnect (or keep serving where the bad input is only bad data), never crash, hang or
  leak, and must then serve a fresh, well-behaved peer;
* hostile requests and answers, for drivers on `ringkit.requests` (the attacked end's class
  has a `request_codec`; slots built from it, `ringkit.testing._hostile_requests`):
  ``hostile-frontend/refs-never-granted``, ``/refs-granted-elsewhere`` (a page granted to
  another domain), ``/refs-revoked`` (revoked right after the request was published),
  ``/ref-count-too-big`` and ``/duplicate-ids`` (two requests in flight with one id): the
  backend answers every request -- where the protocol has a status field, refusing at least one
  of those naming pages it cannot use with the error status -- or disconnects with its error
  node written; it holds no mapping once that frontend is gone.  ``hostile-backend/
  answers-unissued-ids`` and ``/answers-twice``: the frontend's traffic fails with
  `RemoteProtocolError` and it disconnects; ``hostile-backend/answers-cancelled`` (answers
  to requests whose callers gave up, which is legal): the frontend stays connected and sends
  more.  Either end must then serve a well-behaved peer;
* the hostile-xenbus state matrix (`ringkit.testing._xenbus_matrix`):
  ``xenbus-state-matrix/backend`` (your backend serves on while frontends write any ``first ->
  second`` pair of states 0..8 and garbage to their ``state`` node, before connecting,
  connected and while closing) and ``xenbus-state-matrix/frontend`` (the same from a backend's
  node against your frontend).  After each case the survivor is alive, holds nothing it did not
  hold idle, and a well-behaved peer connects and passes traffic.  A sample of 13 pairs per
  phase by default; every one of the 169 with ``RINGKIT_HOSTILE_MATRIX=full`` (sim only).

More checks plug in with `register` (same signature: driver, world maker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.abc

from .._errors import RemoteProtocolError, RingkitError
from ..abc import Domain
from ..device import DeviceAddress, Frontend, XenbusState
from ._child import Child, spawn
from ._driver import DriverUnderTest
from ._ends import TYPED_ERRORS as TYPED_ERRORS
from ._ends import ServingBackend as ServingBackend
from ._ends import _bounded
from ._ends import connected_frontend as connected_frontend
from ._ends import exchange as exchange
from ._ends import serving as serving
from ._ends import until as until
from ._ends import until_state as until_state
from ._hostile import (
    BACKEND_MODES,
    CLOSE_PORT_MODE,
    FRONTEND_MODES,
    SKIPS_INITIALISED_MODE,
    Expect,
    Mode,
    RingSpec,
    rings_of,
)
from ._world import Transport, WaitTimeout, World, WorldMaker, check_leaks
from ._xenbus_matrix import FULL_ENV as FULL_ENV
from ._xenbus_matrix import GARBAGE as GARBAGE
from ._xenbus_matrix import PHASES as PHASES
from ._xenbus_matrix import REPORTED_FLAP as REPORTED_FLAP
from ._xenbus_matrix import STATES as STATES
from ._xenbus_matrix import MatrixCase as MatrixCase
from ._xenbus_matrix import MatrixSeen as MatrixSeen
from ._xenbus_matrix import Side
from ._xenbus_matrix import check_xenbus_state_matrix as check_xenbus_state_matrix
from ._xenbus_matrix import full_matrix_requested as full_matrix_requested
from ._xenbus_matrix import matrix_cases as matrix_cases
from ._xenbus_matrix import run_backend_matrix as run_backend_matrix
from ._xenbus_matrix import run_frontend_matrix as run_frontend_matrix
from ._xenbus_matrix import settle as settle

__all__ = (
    "CHECKS",
    "FULL_ENV",
    "GARBAGE",
    "PHASES",
    "REPORTED_FLAP",
    "STATES",
    "TYPED_ERRORS",
    "Check",
    "ConformanceCheck",
    "ConformanceFailure",
    "HeldFrontend",
    "MatrixCase",
    "MatrixSeen",
    "ServingBackend",
    "WorldMaker",
    "check_backend_closes",
    "check_backend_killed",
    "check_domain_destroyed",
    "check_features_read_back",
    "check_frontend_closes",
    "check_frontend_first",
    "check_frontend_killed",
    "check_handshake",
    "check_port_closed_then_closes",
    "check_hostile",
    "check_leftover_closed",
    "check_skipped_states",
    "attacked_rings",
    "checks_for",
    "not_applicable",
    "connected_frontend",
    "connected_frontend_later",
    "check_xenbus_state_matrix",
    "connects",
    "exchange",
    "full_matrix_requested",
    "matrix_cases",
    "register",
    "run_backend_matrix",
    "run_frontend_matrix",
    "serving",
    "settle",
    "until",
    "until_state",
)

S = XenbusState

Check = Callable[[DriverUnderTest, WorldMaker], Awaitable[None]]
"""A conformance check: raises AssertionError naming the fault."""


@dataclass(frozen=True)
class ConformanceCheck:
    """A named check and where it applies."""

    name: str
    run: Check
    transports: tuple[Transport, ...] = ("sim", "xen")
    needs_ring: bool = False
    """Only for drivers with an io/ring.h layout: a `ring_layout`, or for a driver that names
    its ring pages (`ring_ref_keys`), `request_codecs` giving each ring's."""
    about: str = ""
    applies: Callable[[DriverUnderTest], bool] | None = None
    """Only for the drivers this says yes to (e.g. those on `ringkit.requests`)."""
    why_not: Callable[[DriverUnderTest], str] | None = None
    """Why the check cannot apply to a driver ("" or None: it applies), for checks that do
    not apply to whole kinds of drivers; `not_applicable` gives the reason to the runner."""


CHECKS: dict[str, ConformanceCheck] = {}
"""Every registered check, by name."""


class ConformanceFailure(AssertionError):
    """A registered check failed: ``str()`` is one line, ``<check>: <cause>`` (e.g.
    ``handshake: echo: the exchange: not done within 2 s ...`` or ``handshake: RuntimeError:
    ...`` for a crash).  The cause is chained (``__cause__``), never wrapped in the task groups
    it went through.  `errors` holds every error found, the cause first: the errors next to an
    assertion are its fallout (a peer gone because the check stopped), but if several tasks
    crashed at once, each further crash adds an ``also:`` line."""

    def __init__(self, check: str, errors: tuple[Exception, ...]) -> None:
        lines = [f"{check}: {_describe(errors[0])}"]
        if not isinstance(errors[0], AssertionError):
            lines += [f"  also: {_describe(e)}" for e in errors[1:]]
        super().__init__("\n".join(lines))
        self.check = check
        self.errors = errors
        self.__cause__ = errors[0]

    @property
    def cause(self) -> Exception:
        """The error that failed the check (an ``AssertionError`` naming the fault, or
        whatever the driver raised)."""
        return self.errors[0]


def _describe(exc: BaseException) -> str:
    """A verdict (`AssertionError`, `WaitTimeout`) by its message; anything else -- a crash --
    as ``Type: message``."""
    text = str(exc)
    if isinstance(exc, AssertionError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def register(name: str, run: Check, *, transports: tuple[Transport, ...] = ("sim", "xen"),
             needs_ring: bool = False, about: str = "",
             applies: Callable[[DriverUnderTest], bool] | None = None,
             why_not: Callable[[DriverUnderTest], str] | None = None) -> Check:
    """Add a check to `CHECKS` (e.g. a state matrix); returns `run`.  The registered check
    (``CHECKS[name].run``, `checks_for`) raises `ConformanceFailure` naming the check.
    `applies`: the check is only for drivers it says yes to (the others skip it); `why_not`:
    the reason it cannot apply to a driver (empty: it applies)."""
    if name in CHECKS:
        raise ValueError(f"a conformance check named {name!r} exists already")
    CHECKS[name] = ConformanceCheck(name, _named(name, run), transports, needs_ring,
                                    about or name, applies, why_not)
    return run


def _named(name: str, run: Check) -> Check:
    """`run`, failing with a `ConformanceFailure` that names the check and the error itself
    rather than the task groups around it."""

    async def check(driver: DriverUnderTest, make_world: WorldMaker) -> None:
        try:
            await run(driver, make_world)
        except BaseException as exc:
            leaves = _leaves(exc)
            # (one error may arrive twice: raised in a task and again by the check itself)
            errors = list({id(e): e for e in leaves if isinstance(e, Exception)}.values())
            if not errors or any(isinstance(e, (KeyboardInterrupt, SystemExit))
                                 for e in leaves):
                raise  # a cancellation or an interrupt, not a verdict: as it came
            # An assertion is the verdict; other errors next to it are its fallout.
            errors.sort(key=lambda e: not isinstance(e, AssertionError))
            raise ConformanceFailure(name, tuple(errors)) from errors[0]

    return check


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside `exc`, with the exception groups they travelled in taken off."""
    if isinstance(exc, ConformanceFailure):
        return list(exc.errors)
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def checks_for(driver: DriverUnderTest, transport: Transport = "sim") -> dict[str, Check]:
    """The checks that apply to `driver` on `transport`, by name."""
    return {c.name: c.run for c in CHECKS.values()
            if not not_applicable(c.name, driver, transport)}


def not_applicable(name: str, driver: DriverUnderTest, transport: Transport = "sim") -> str:
    """Why check `name` does not apply to `driver` on `transport` ("" when it does).

    Raises:
        KeyError: no check has that name.
    """
    c = CHECKS[name]
    if transport not in c.transports:
        return f"it runs on {' and '.join(c.transports)} only"
    if c.needs_ring and not any(r.layout is not None for r in rings_of(driver.frontend)):
        return ("it attacks io/ring.h rings and the driver declares none (no ring_layout, nor "
                "request_codecs for its ring_ref_keys)")
    if c.why_not is not None and (why := c.why_not(driver)):
        return why
    if c.applies is not None and not c.applies(driver):
        return "the driver lacks what it attacks (a request_codec it applies to)"
    return ""


# --------------------------------------------------------------------------- handshake


async def check_handshake(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """Backend first, then the frontend: both Connected, traffic, an orderly close."""
    async with make_world() as w:
        address = await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver) as served:
            async with connected_frontend(w, driver) as front:
                assert front.is_connected and served.backend.is_connected, (
                    f"{driver.label}: both ends should be connected")
                await exchange(w, driver, front, "after connecting")
            assert front.state is S.CLOSED, f"{driver.label}: frontend ended {front.state!r}"
            await until(w, f"{driver.label}: the backend following the frontend's Closing "
                        f"(backend state {served.backend.state.xen_name})",
                        lambda: served.backend.state is S.CLOSED and not served.backend.queues)
            served.assert_alive("an orderly close")
            assert await w.dom0.store.read(f"{address.backend_path}/state") == "6"


async def check_frontend_first(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """The frontend starts (and waits at Initialising) before any backend exists."""
    async with make_world() as w:
        address = await driver.create(w.dom0, w.guest_id)
        up, done = anyio.Event(), anyio.Event()
        errors: list[BaseException] = []

        async def frontend_side() -> None:
            try:
                async with connected_frontend(w, driver) as front:
                    await exchange(w, driver, front, "with the backend started second")
                    up.set()
                    await done.wait()
            except BaseException as exc:
                errors.append(exc)
                up.set()
                raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(frontend_side)
            await until_state(w, address.frontend_path, {"1"},
                              f"{driver.label}: the frontend at Initialising")
            await anyio.sleep(0.05)
            async with serving(w, driver) as served:
                with w.within(f"{driver.label}: the frontend connecting to a later backend"):
                    await up.wait()
                done.set()
                if errors:
                    raise errors[0]
                served.assert_alive("a frontend that came first")


async def check_skipped_states(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """A frontend going from Initialising straight to Connected (blkif.h lets it skip
    Initialised): the backend connects; when that frontend dies, it serves the next one."""
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver) as served:
            async with spawn(w, "hostile-frontend", driver, mode=SKIPS_INITIALISED_MODE) as peer:
                await peer.expect("connected")
                await until(w, f"{driver.label}: the backend connecting to a frontend that "
                            "skipped Initialised", lambda: served.backend.is_connected)
            await until(w, f"{driver.label}: the backend releasing a killed frontend's rings",
                        lambda: not served.backend.queues)
            await _serves_a_fresh_frontend(w, driver, served, "a frontend that skipped states")


async def check_leftover_closed(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """The frontend dir still says Closed from an earlier connection when the backend starts:
    the backend waits, and a new frontend connects."""
    async with make_world() as w:
        address = await driver.create(w.dom0, w.guest_id)
        await w.guest.store.write(f"{address.frontend_path}/state", "6")
        async with serving(w, driver) as served:
            await anyio.sleep(0.05)
            served.assert_alive("a leftover Closed frontend state")
            await _serves_a_fresh_frontend(w, driver, served, "a leftover Closed")


async def check_features_read_back(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """Every node each end wrote in its dir reads the same from the other end's domain."""
    async with make_world() as w:
        address = await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver), connected_frontend(w, driver) as front:
            await exchange(w, driver, front, "after connecting")
            for writer, reader, path, who in (
                    (w.dom0, w.guest, address.backend_path, "backend"),
                    (w.guest, w.dom0, address.frontend_path, "frontend")):
                names = await writer.store.directory(path)
                assert "state" in names, f"{driver.label}: no state node in the {who} dir"
                for name in names:
                    node = f"{path}/{name}"
                    if await writer.store.directory(node):
                        continue  # a queue-<i>/ dir: its keys are read by the backend already
                    mine = await writer.store.read(node)
                    try:
                        theirs = await reader.store.read(node)
                    except RingkitError as exc:
                        raise AssertionError(f"{driver.label}: the {who}'s node {node} is not "
                                             f"readable by the other end: {exc}") from exc
                    assert mine == theirs, f"{driver.label}: {node} reads differently"


async def _serves_a_fresh_frontend(w: World, driver: DriverUnderTest, served: ServingBackend,
                                   after: str) -> None:
    served.assert_alive(after)
    try:
        async with connected_frontend(w, driver) as front:
            await exchange(w, driver, front, f"of a fresh frontend after {after}")
    except WaitTimeout as exc:
        raise AssertionError(f"{driver.label}: the backend did not serve a fresh frontend "
                             f"after {after} (backend state "
                             f"{served.backend.state.xen_name}): {exc}") from exc
    served.assert_alive(after)


# --------------------------------------------------------------------------- orderly close


async def check_frontend_closes(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """The frontend closes in order; a new frontend connects to the same backend."""
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver) as served:
            async with connected_frontend(w, driver) as front:
                await exchange(w, driver, front, "before closing")
            await until(w, f"{driver.label}: the backend following the frontend's Closing",
                        lambda: served.backend.state is S.CLOSED and not served.backend.queues)
            leaks = w.dom0.leaks()
            assert not (leaks.maps or leaks.ports), (
                f"{driver.label}: the backend kept maps={leaks.maps} ports={leaks.ports} "
                "after the frontend closed")
            await _serves_a_fresh_frontend(w, driver, served, "the frontend closed")


async def check_port_closed_then_closes(driver: DriverUnderTest,
                                        make_world: WorldMaker) -> None:
    """A frontend closes its event channel, then closes in order and connects again (Linux's
    xenbus_reset_frontend does this dance): the backend stops serving the closed port, follows
    the frontend's Closing and Closed from wherever that left it (InitWait, after a restart),
    offers InitWait again and connects the same frontend."""
    what = f"{driver.label}: a frontend that closed its port, then closed in order,"
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver) as served:
            async with spawn(w, "hostile-frontend", driver, mode=CLOSE_PORT_MODE) as peer:
                await peer.expect("connected")
                await peer.expect("port-seen")
                for word, step in (("closing-followed", "its Closing"),
                                   ("closed-followed", "its Closed"),
                                   ("reconnected", "its reconnect")):
                    try:
                        await peer.expect(word)
                    except WaitTimeout as exc:
                        raise AssertionError(
                            f"{what} waited for the backend to follow {step} (backend state "
                            f"{served.backend.state.xen_name}): {exc}") from exc
                served.assert_alive(what)
            await until(w, f"{what}: the backend releasing the killed frontend's rings",
                        lambda: not served.backend.queues)
            await _serves_a_fresh_frontend(w, driver, served, "a frontend closed its port, "
                                           "then closed in order")


async def check_backend_closes(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """The backend closes in order; the frontend follows, then connects to a new backend."""
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with connected_frontend_later(w, driver) as held:
            front = held.front
            async with serving(w, driver):
                await connects(w, driver, front)
                await exchange(w, driver, front, "before the backend closed")
            await until(w, f"{driver.label}: the frontend following the backend's Closing "
                        f"(frontend state {front.state.xen_name})", lambda: not front.queues)
            await _released(w, w.guest, ("grants", "ports"),
                            f"{driver.label}: after the backend closed the frontend")
            async with serving(w, driver):
                await connects(w, driver, front, 1)
                await exchange(w, driver, front, "with a new backend")


async def _released(w: World, dom: Domain, kinds: tuple[str, ...], who: str) -> None:
    """Wait, within the world's timeout, until `dom` holds none of `kinds` (leak counters):
    an end empties its queue list first and then releases the rings one by one, so an empty
    list alone does not mean the pages and ports are gone yet."""
    def held() -> str:
        leaks = dom.leaks()
        return " ".join(f"{k}={getattr(leaks, k)}" for k in kinds if getattr(leaks, k))

    try:
        await until(w, f"{who} releasing its rings", lambda: not held())
    except WaitTimeout as exc:
        raise AssertionError(f"{who} kept {held()}") from exc


async def connects(w: World, driver: DriverUnderTest, front: Frontend, after: int = 0) -> None:
    """Wait for `front` to be connected with a generation newer than `after`."""
    await until(w, f"{driver.label}: the frontend connecting (state {front.state.xen_name})",
                lambda: front.generation > after and front.is_connected)


class HeldFrontend:
    """A frontend opened in a task of its own (see `connected_frontend_later`)."""

    def __init__(self, front: Frontend) -> None:
        self.front = front
        self.failed: BaseException | None = None
        """The typed error its open ended with, if a hostile backend was refused while it
        opened (ringkit's frontends fail the open at once then: `PeerRefusedError`,
        `RemoteProtocolError`)."""
        self.opened = False
        self.stop = anyio.Event()
        self.closed = anyio.Event()

    async def close(self) -> None:
        """Close it now (e.g. while a backend is still there to follow its Closing)."""
        self.stop.set()
        if self.opened:
            await self.closed.wait()


@asynccontextmanager
async def connected_frontend_later(w: World, driver: DriverUnderTest
                                   ) -> AsyncIterator[HeldFrontend]:
    """The driver's frontend, opened in a task of its own (its ``async with`` returns only
    once some backend connects), for checks that start the backends later."""
    held = HeldFrontend(_bounded(driver.make_frontend(w.guest, w.dom0.domid), w))

    async def hold() -> None:
        try:
            async with held.front:
                held.opened = True
                await held.stop.wait()
        except TYPED_ERRORS as exc:
            held.failed = exc
        finally:
            held.closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        try:
            yield held
        finally:
            held.stop.set()
            if not held.opened:
                tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- peer death


async def check_backend_killed(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """kill -9 of the backend's process mid-traffic: the frontend's traffic fails with a typed
    error within the timeout; a new backend process serves it again."""
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with connected_frontend_later(w, driver) as held:
            front = held.front
            async with spawn(w, "backend", driver) as first:
                await first.expect("ready")
                await connects(w, driver, front)
                await exchange(w, driver, front, "before the kill")
                await first.kill()
                await _fails_typed(w, driver, front, "after kill -9 of the backend")
            async with spawn(w, "backend", driver) as second:
                await second.expect("ready")
                await connects(w, driver, front, 1)
                await exchange(w, driver, front, "with the new backend")
                await held.close()  # while the backend is there to follow its Closing


async def _fails_typed(w: World, driver: DriverUnderTest, front: Frontend, when: str) -> None:
    """The driver's traffic must fail, with a typed error, within the timeout."""
    try:
        with w.within(f"{driver.label}: the frontend noticing {when}"):
            while True:
                await driver.exchange(front)
                await anyio.sleep(0.01)
    except TYPED_ERRORS:
        return
    except WaitTimeout:
        raise
    except Exception as exc:
        raise AssertionError(f"{driver.label}: {when}, the frontend's traffic failed with "
                             f"{exc!r}, not a typed error ({_typed_names()})") from exc


def _typed_names() -> str:
    return ", ".join(t.__name__ for t in TYPED_ERRORS)


async def check_frontend_killed(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """kill -9 of the frontend's process: the backend unmaps, closes the ports and serves
    the next frontend."""
    async with make_world() as w:
        await driver.create(w.dom0, w.guest_id)
        async with serving(w, driver) as served:
            async with spawn(w, "frontend", driver) as child:
                await child.expect("connected")
                await until(w, f"{driver.label}: the backend connected",
                            lambda: served.backend.is_connected)
                await child.kill()
                await until(w, f"{driver.label}: the backend releasing a killed frontend's "
                            "rings", lambda: not served.backend.queues)
            await _released(w, w.dom0, ("maps", "ports"),
                            f"{driver.label}: after kill -9 of the frontend the backend")
            await _serves_a_fresh_frontend(w, driver, served, "kill -9 of the frontend")


async def check_domain_destroyed(driver: DriverUnderTest, make_world: WorldMaker) -> None:
    """The frontend's whole domain is destroyed: the backend releases everything and ends."""
    async with make_world() as w:
        assert w.xen is not None, "domain-destroyed runs on the simulated Xen"
        doomed = await w.xen.create_domain(f"doomed-{w.guest_id}")
        doomed_world = World(w.transport, w.dom0, w.guest, w.xen, w.timeout)
        async with w.xen.connect(doomed) as handle:
            doomed_world.guest = handle
            await driver.create(w.dom0, doomed)
            async with serving(doomed_world, driver) as served, \
                    spawn(doomed_world, "frontend", driver) as child:
                await child.expect("connected")
                await until(w, f"{driver.label}: the backend connected",
                            lambda: served.backend.is_connected)
                await w.xen.destroy_domain(doomed)
                with w.within(f"{driver.label}: the backend ending after the frontend's "
                              "domain was destroyed"):
                    await served.backend.wait_finished()
                assert not served.backend.queues
                if served.failure is not None:
                    raise AssertionError(f"{driver.label}: the backend failed when the "
                                         f"frontend's domain died: {served.failure!r}")
        check_leaks(dom0=w.dom0)


# --------------------------------------------------------------------------- hostile peers


async def check_hostile(side: str, mode: Mode, driver: DriverUnderTest,
                        make_world: WorldMaker) -> None:
    """A hostile `side` ("frontend" or "backend") in a process of its own against the
    driver's other end (see `Mode`)."""
    what = f"{driver.label}: a hostile {side} ({mode.name}: {mode.about})"
    rings = attacked_rings(side, mode, driver)
    for index, spec in rings:
        # one fresh world per ring attacked: a driver with several rings per queue
        # (ring_ref_keys) is attacked on each in turn
        on = what if len(rings) == 1 else f"{what} on its {spec.key} ring"
        async with make_world() as w:
            address = await driver.create(w.dom0, w.guest_id)
            attack = _against_backend if side == "frontend" else _against_frontend
            await attack(w, driver, address, mode, on, index, spec)


def attacked_rings(side: str, mode: Mode, driver: DriverUnderTest
                    ) -> list[tuple[int, RingSpec]]:
    """The rings of a queue that `mode` attacks, by index: all that fit it (an io/ring.h
    layout for `Mode.needs_ring`, a codec it applies to for `Mode.needs_codec`) for a mode on
    one ring (`Mode.each_ring`), else just the first."""
    attacked = driver.backend if side == "frontend" else driver.frontend
    specs = rings_of(attacked)
    if not mode.each_ring:
        return [(0, specs[0])]
    return [(i, spec) for i, spec in enumerate(specs)
            if (not mode.needs_ring or spec.layout is not None)
            and (mode.needs_codec is None
                 or (spec.codec is not None and mode.needs_codec(spec.codec)))
            and not (side == "frontend" and spec.codec is not None and spec.codec.posted
                     and _waits_for_the_backend(mode))]


def _waits_for_the_backend(mode: Mode) -> bool:
    """Whether a hostile frontend's `mode` is judged by what the backend does with the ring's
    requests -- answers them, or disconnects over their indices.  Not on a ring of posted
    buffers (`SlotCodec.posted`, netif's rx): its backend looks at that ring only when it has
    data for the guest, which the kit cannot make happen (Linux's netback, too, reads the rx
    ring only with packets to deliver), so the mode is played on the driver's other rings
    only.  Attacks the backend meets while connecting (bad ring-ref nodes) and attacks it may
    serve through (garbage) are played on posted rings too."""
    return mode.needs_codec is not None or mode.expect is Expect.DISCONNECT


async def _against_backend(w: World, driver: DriverUnderTest, address: DeviceAddress,
                           mode: Mode, what: str, ring: int, spec: RingSpec) -> None:
    async with serving(w, driver) as served:
        backend = served.backend
        async with spawn(w, "hostile-frontend", driver, mode=f"{mode.name}@{ring}") as peer:
            if mode.name == "vanishes":
                await peer.expect("connected")
                with w.within(f"{what}: the peer exiting"):
                    await peer.process.wait()
                await until(w, f"{what}: the backend disconnecting (state "
                            f"{backend.state.xen_name})", lambda: not backend.queues)
            elif mode.expect is Expect.REFUSE:
                await _refused(w, peer, address.backend_path, f"{what}: the backend")
                assert not backend.queues, f"{what}: the backend mapped its ring"
            elif mode.expect is Expect.REFUSE_OR_SERVE:
                await peer.expect("done")
                await anyio.sleep(0.1)
            else:
                await peer.expect("connected")
                if mode.needs_codec is not None:
                    await _judge_answers(w, peer, served, spec, what)
                else:
                    await peer.expect("done")
                if mode.expect is Expect.DISCONNECT:
                    await until(w, f"{what}: the backend disconnecting (state "
                                f"{backend.state.xen_name})", lambda: not backend.queues)
                else:
                    await anyio.sleep(0.1)
            served.assert_alive(what)
        await until(w, f"{what}: the backend releasing the hostile frontend's rings",
                    lambda: not backend.queues)
        if mode.needs_codec is not None:
            await _released(w, w.dom0, ("maps",),
                            f"{what}: the backend, once the hostile frontend was gone,")
        await _serves_a_fresh_frontend(w, driver, served, f"{mode.name} ({mode.about})")


@dataclass
class _Answers:
    """What a hostile frontend reported about its requests (see
    `ringkit.testing._hostile_requests`)."""

    sent: Counter[int] = field(default_factory=Counter)
    answered: Counter[int] = field(default_factory=Counter)
    kinds: dict[int, str] = field(default_factory=dict)
    """Request id -> "unusable" (names a page the backend cannot use), "racy", "good"."""
    statuses: dict[int, list[str]] = field(default_factory=dict)
    closed: str | None = None
    broken: str | None = None
    hung: WaitTimeout | None = None


async def _judge_answers(w: World, peer: Child, served: ServingBackend, spec: RingSpec,
                         what: str) -> None:
    """Hostile requests to a driver on `ringkit.requests`: the backend must answer every one
    -- where the protocol has a status field, refusing at least one of those naming pages it
    cannot use with the error status -- or leave Connected with a typed error in its error
    node; within the timeout, without crashing."""
    seen = _Answers()
    backend = served.backend
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_alive, served, tg.cancel_scope)
        await _read_answers(w, peer, seen, what)
        tg.cancel_scope.cancel()
    served.assert_alive(what)
    missing = seen.sent - seen.answered
    if seen.hung is not None:
        raise AssertionError(
            f"{what}: the backend neither answered request(s) {_ids(missing)} nor "
            f"disconnected within {w.timeout:g} s (backend state {backend.state.xen_name}; "
            f"answered {_ids(seen.answered) or 'none'})") from seen.hung
    if seen.broken is not None:
        raise AssertionError(f"{what}: the backend broke the ring answering: {seen.broken}")
    if seen.closed is not None:
        error = None
        with suppress(RingkitError):
            error = await w.dom0.store.read(backend.error_path)
        assert error, (f"{what}: the backend left Connected (state {seen.closed}) with no "
                       f"error in {backend.error_path}")
        return
    extra = seen.answered - seen.sent
    assert not missing and not extra, (
        f"{what}: the backend answered ids {_ids(seen.answered)}, sent {_ids(seen.sent)}")
    codec = spec.codec
    unusable = {rid: seen.statuses[rid] for rid, kind in seen.kinds.items()
                if kind == "unusable"}
    if unusable and codec is not None and codec.status is not None and not any(
            str(codec.error_status) in statuses for statuses in unusable.values()):
        # Only one that needs the pages must refuse: a handler may answer without them (a
        # key-value GET of a key it does not hold).
        answers = "; ".join(f"id {rid}: {' '.join(s)}" for rid, s in sorted(unusable.items()))
        raise AssertionError(
            f"{what}: none of the requests naming pages the backend cannot use was refused "
            f"with the error status {codec.error_status} ({answers}): it reported success "
            "for requests it cannot have served")


async def _read_answers(w: World, peer: Child, seen: _Answers, what: str) -> None:
    try:
        with w.within(f"{what}: the backend answering every request"):
            while (line := await peer.read_line("reporting the answers")) != "done":
                word, _, rest = line.partition(" ")
                if word == "sent":
                    rid, _, kind = rest.split()
                    seen.sent[int(rid)] += 1
                    seen.kinds[int(rid)] = kind
                elif word == "answer":
                    rid, status = rest.split()
                    seen.answered[int(rid)] += 1
                    seen.statuses.setdefault(int(rid), []).append(status)
                elif word == "closed":
                    seen.closed = rest
                elif word == "broken":
                    seen.broken = rest
                else:
                    raise AssertionError(f"{what}: the hostile frontend said {line!r}")
    except WaitTimeout as exc:
        seen.hung = exc


async def _watch_alive(served: ServingBackend, scope: anyio.CancelScope) -> None:
    """Cancel `scope` as soon as the backend stops serving (so a crash fails at once)."""
    backend = served.backend
    while served.failure is None and not served.returned and not backend.finished:
        await anyio.sleep(0.01)
    scope.cancel()


def _ids(counts: Counter[int]) -> str:
    return ", ".join(f"{rid}" + (f" (x{n})" if n > 1 else "")
                     for rid, n in sorted(counts.items()) if n > 0)


async def _against_frontend(w: World, driver: DriverUnderTest, address: DeviceAddress,
                            mode: Mode, what: str, ring: int, spec: RingSpec) -> None:
    async with connected_frontend_later(w, driver) as held:
        front = held.front
        async with spawn(w, "hostile-backend", driver, mode=f"{mode.name}@{ring}") as peer:
            if mode.expect is Expect.REFUSE:
                await _refused(w, peer, address.frontend_path, f"{what}: the frontend")
                assert not front.is_connected, f"{what}: the frontend connected"
                if held.failed is None and front.finished:
                    await held.closed.wait()
            else:
                await peer.expect("connected")
                # The frontend may see the attack before it even finished connecting.  (A
                # frontend that connects first -- netif's -- counts a generation before the
                # backend's Connected: it is connected once it took that in.)
                await until(w, f"{what}: the frontend connecting",
                            lambda: (front.generation and not front.handshake.ahead)
                            or front.state is S.CLOSED)
                if mode.expect is Expect.SERVE:
                    await _answers_cancelled(w, driver, front, peer, what)
                elif front.is_connected:
                    await _answers_typed(w, driver, front, mode, what,
                                         protocol=mode.needs_codec is not None)
        await _frontend_recovers(w, driver, held, what)


async def _refused(w: World, peer: Child, path: str, who: str) -> None:
    """The hostile peer published its bad nodes; the end at `path` must say Closed."""
    await peer.expect("done")
    await until_state(w, path, {"6"}, f"{who} refusing it (Closing -> Closed)")


async def _answers_typed(w: World, driver: DriverUnderTest, front: Frontend, mode: Mode,
                         what: str, *, protocol: bool = False) -> None:
    """The driver's traffic fails with a typed error (with `protocol`: one that comes from
    `RemoteProtocolError` -- the frontend saw the backend break the protocol)."""
    quiet = min(0.5, w.timeout / 4)
    try:
        with anyio.fail_after(quiet if mode.expect is Expect.NO_ANSWER else w.timeout):
            await driver.exchange(front)
    except TYPED_ERRORS as exc:
        if protocol and not _caused_by(exc, RemoteProtocolError):
            raise AssertionError(f"{what}: the frontend's traffic failed with {exc!r}, not "
                                 "RemoteProtocolError: the backend broke the protocol") from exc
    except TimeoutError:  # (a WaitTimeout is an AssertionError, never caught here)
        if mode.expect is not Expect.NO_ANSWER:
            raise WaitTimeout(f"{what}: the frontend's traffic hung instead of failing with "
                              "a typed error") from None
    except Exception as exc:
        raise AssertionError(f"{what}: the frontend's traffic failed with {exc!r}, not a "
                             f"typed error ({_typed_names()})") from exc
    else:
        if mode.expect is Expect.DISCONNECT:
            raise AssertionError(f"{what}: the frontend's traffic succeeded over a broken ring")
    if mode.expect is Expect.DISCONNECT:
        await until(w, f"{what}: the frontend disconnecting", lambda: not front.queues)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc`, or an exception it was raised from (its cause, or the context it did not
    suppress), is a `kind`."""
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        if isinstance(at, kind):
            return True
        seen.add(id(at))
        at = at.__cause__ or (None if at.__suppress_context__ else at.__context__)
    return False


async def _answers_cancelled(w: World, driver: DriverUnderTest, front: Frontend, peer: Child,
                             what: str) -> None:
    """The backend holds the frontend's first requests until their callers gave up (the check
    cancels the traffic), then answers them: legal (the answer to a cancelled request is
    dropped, and only then are its id and pages reused).  The frontend must stay connected
    and go on: send more requests over the same connection."""
    if not front.is_connected:
        raise AssertionError(f"{what}: the frontend did not connect (state "
                             f"{front.state.xen_name})")
    generation = front.generation
    await _traffic_until(w, driver, front, peer, "holding", what)
    await peer.tell("release")
    await peer.expect("answered")
    dropped = f"{what}: the frontend dropped the connection on answers to requests it had " \
        "cancelled"
    await _stays_connected(w, front, generation, dropped)
    await _traffic_until(w, driver, front, peer, "took",
                         f"{what}, after answers to requests the frontend had cancelled")
    await _stays_connected(w, front, generation, f"{dropped}, once it sent more")


async def _traffic_until(w: World, driver: DriverUnderTest, front: Frontend, peer: Child,
                         word: str, what: str) -> None:
    """Run the driver's traffic until the hostile backend says `word` (it took requests), then
    cancel it: its callers give up on requests still in flight."""
    failed: list[BaseException] = []
    hung: list[WaitTimeout] = []

    async def traffic(scope: anyio.CancelScope) -> None:
        try:
            await driver.exchange(front)
        except Exception as exc:
            failed.append(exc)
        else:
            failed.append(AssertionError("it finished with the backend answering nothing"))
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(traffic, tg.cancel_scope)
        try:
            await peer.expect(word)
        except WaitTimeout as exc:
            hung.append(exc)
        tg.cancel_scope.cancel()
    if failed:
        raise AssertionError(f"{what}: the frontend's traffic failed before the backend took "
                             f"it: {failed[0]!r} (state {front.state.xen_name})") from failed[0]
    if hung:
        raise AssertionError(f"{what}: the frontend's requests never reached the backend "
                             f"(state {front.state.xen_name})") from hung[0]


async def _stays_connected(w: World, front: Frontend, generation: int, fault: str) -> None:
    """`front` is still on connection `generation` after a moment; else fail with `fault`
    and what the frontend wrote to its error node."""
    await anyio.sleep(min(0.2, w.timeout / 10))
    if front.is_connected and front.generation == generation:
        return
    error = None
    with suppress(RingkitError):
        error = await w.guest.store.read(front.error_path)
    raise AssertionError(f"{fault} (state {front.state.xen_name}, generation "
                         f"{front.generation}, was {generation}; its error node: {error})")


async def _frontend_recovers(w: World, driver: DriverUnderTest, held: HeldFrontend,
                             what: str) -> None:
    """After the hostile backend is gone: a well-behaved backend serves the same frontend --
    or, if the frontend's open failed with a typed error because the backend was refused
    while it opened, a fresh frontend in the same process."""
    front = held.front
    before = front.generation
    if held.failed is not None:
        async with serving(w, driver), connected_frontend(w, driver) as fresh:
            await exchange(w, driver, fresh, f"a fresh frontend after {what}")
        return
    async with serving(w, driver):
        try:
            await connects(w, driver, front, before)
        except WaitTimeout as exc:
            raise AssertionError(f"{what}: afterwards the frontend did not connect to a "
                                 f"well-behaved backend (state {front.state.xen_name})") from exc
        await exchange(w, driver, front, f"with a well-behaved backend after {what}")


# --------------------------------------------------------------------------- the registry


def _register_all() -> None:
    register("handshake", check_handshake)
    register("frontend-first", check_frontend_first)
    register("skipped-states", check_skipped_states)
    register("leftover-closed", check_leftover_closed)
    register("features-read-back", check_features_read_back)
    register("frontend-closes", check_frontend_closes)
    register("backend-closes", check_backend_closes)
    register("port-closed-then-closes", check_port_closed_then_closes)
    register("backend-killed", check_backend_killed)
    register("frontend-killed", check_frontend_killed)
    register("domain-destroyed", check_domain_destroyed, transports=("sim",))
    for side, table in (("frontend", FRONTEND_MODES), ("backend", BACKEND_MODES)):
        for mode in table.values():
            register(f"hostile-{side}/{mode.name}", partial(check_hostile, side, mode),
                     needs_ring=mode.needs_ring, about=mode.about,
                     applies=None if mode.needs_codec is None else partial(_speaks, side, mode),
                     why_not=partial(_named_rings, mode) if mode.not_for_named_rings else None)
    ends: tuple[tuple[Side, str], ...] = (("backend", "frontend"), ("frontend", "backend"))
    for end, peer in ends:
        register(f"xenbus-state-matrix/{end}", partial(_state_matrix, end),
                 transports=("sim",),
                 about=f"your {end} survives a {peer} writing any state at any phase")


def _speaks(side: str, mode: Mode, driver: DriverUnderTest) -> bool:
    """Whether the end a hostile `side` attacks has a request codec that `mode` applies to
    (its `request_codec`, or one of its `request_codecs`)."""
    return bool(attacked_rings(side, mode, driver))


def _named_rings(mode: Mode, driver: DriverUnderTest) -> str:
    """`Mode.not_for_named_rings` for a driver that names its ring pages, else ""."""
    named = getattr(driver.frontend, "ring_ref_keys", ())
    return mode.not_for_named_rings if named else ""


async def _state_matrix(end: Side, driver: DriverUnderTest, make_world: WorldMaker) -> None:
    await check_xenbus_state_matrix(end, driver, make_world)


_register_all()
