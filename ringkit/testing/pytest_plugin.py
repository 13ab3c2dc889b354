"""ringkit's pytest plugin: fixtures to test split drivers (loaded through the ``pytest11`` entry
point, so installing ``ringkit[kit]`` is enough; docs/testing.md is the guide).

Fixtures (async ones work under anyio's plugin -- asyncio and trio -- and under pytest-asyncio,
strict mode included, through its public ``pytest_asyncio.fixture``; a project that leaves
pytest-asyncio's ``asyncio_default_fixture_loop_scope`` unset gets "function", and no warning):

``ringkit_timeout``   seconds any single wait of the fixtures and checks may take: the
                      ``ringkit_timeout(seconds)`` marker, else ``--ringkit-timeout`` / the
                      ``ringkit_timeout`` ini option, else 10
``sim_xen``           a simulated Xen (`ringkit.sim.SimXen`) in the test's event loop; under
                      the ``ringkit_shared_sim`` marker, a handle on one server process shared
                      by the module instead.  Teardown fails the test if the simulator still
                      holds anything (grants, maps, ports, watches, transactions...)
``world``             a `World` on `sim_xen`: ``dom0``, a fresh ``guest`` domain; leaving
                      checks both handles for leaks, then destroys the guest
``dom0``, ``guest``   `world`'s two `ringkit.abc.Domain` handles
``ringkit_transport`` "sim" or "xen": a test that asks for it runs once per transport, the
                      "xen" case marked ``xen`` and skipped without ``/dev/xen`` (a failure
                      under ``RINGKIT_REQUIRE_XEN=1``)
``any_world``         a `World` on ``ringkit_transport``: the same test on the sim and on Xen
``device_pair``       a `DevicePair` for the `DriverUnderTest` your ``ringkit_driver`` fixture
                      returns: both ends connected and serving; with the
                      ``ringkit_backend_process`` marker the backend runs in a child process
                      (``pair.backend_process.kill()`` is a real kill -9)

`DriverConformance` turns the driver conformance suite into one test per check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import AsyncIterator, Callable, Collection, Generator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from ..sim import SimXen
from ._driver import DriverUnderTest
from ._pair import DevicePair, open_device_pair
from ._world import (
    DEFAULT_TIMEOUT,
    Transport,
    World,
    check_sim_leaks,
    sim_world,
    xen_available,
    xen_world,
)
from .conformance import CHECKS, ConformanceFailure, checks_for, not_applicable

ASYNC_FIXTURES = frozenset({"sim_xen", "world", "any_world", "device_pair"})
"""Our async fixtures: each comes in two variants, one run by anyio's plugin and one by
pytest-asyncio, and the fixture of that name hands the test the one its runner runs."""
_LOOP_SCOPE_INI = "asyncio_default_fixture_loop_scope"
"""pytest-asyncio's setting that this plugin defaults to "function" when a project leaves it
unset (pytest-asyncio warns about it being unset, and "function" is its announced default)."""
T = TypeVar("T")


# --------------------------------------------------------------------------- configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ringkit timeout: ``--ringkit-timeout`` and the ``ringkit_timeout`` ini
    value."""
    group = parser.getgroup("ringkit")
    group.addoption("--ringkit-timeout", type=float, default=None, metavar="SECONDS",
                    help="bound on any single wait of ringkit's fixtures and checks "
                         f"(default {DEFAULT_TIMEOUT:g})")
    parser.addini("ringkit_timeout", "ringkit: bound on any single wait of the fixtures",
                  default=str(DEFAULT_TIMEOUT))


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> None:
    """pytest-asyncio's fixture loop scope defaults to "function" when the project does not
    set it: pytest-asyncio would warn at every run that it is unset.  A value in the project's
    configuration or ``-o`` still wins.  pytest has no call to set a value, so this registers
    pytest-asyncio's option again (pytest's public `Parser.addini`, same name and type) with
    that default -- here, after every plugin's `pytest_addoption` (pytest-asyncio's own
    registration cannot come later and undo it) and before pytest-asyncio reads the value in
    its `pytest_configure`."""
    if early_config.pluginmanager.has_plugin("asyncio"):
        parser.addini(_LOOP_SCOPE_INI, type="string", default="function",
                      help="default scope of the asyncio event loop used to execute async "
                           'fixtures (pytest-asyncio; ringkit\'s plugin: "function" if unset)')


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's markers (``ringkit_timeout``, ``ringkit_shared_sim``,
    ``ringkit_backend_process``, ``xen``)."""
    for line in (
        "ringkit_timeout(seconds): ringkit's bound on any single wait of this test's fixtures",
        "ringkit_shared_sim: sim_xen is one simulated Xen process shared by the module",
        "ringkit_backend_process: device_pair runs the backend in a child process",
        "xen: needs the real /dev/xen devices",
    ):
        config.addinivalue_line("markers", line)


def _asyncio_strict(item: pytest.Item) -> bool:
    """Whether pytest-asyncio, not anyio's plugin, runs `item` (an ``asyncio``-marked test)."""
    return (item.get_closest_marker("asyncio") is not None
            and "anyio_backend" not in getattr(item, "fixturenames", ())
            and item.config.pluginmanager.has_plugin("asyncio"))


def _variant(request: pytest.FixtureRequest, name: str) -> Any:
    """The fixture `name` (one of `ASYNC_FIXTURES`) in the variant this test's runner runs:
    pytest-asyncio's for a pytest-asyncio test (in strict mode it runs only the fixtures made
    with its own ``pytest_asyncio.fixture``), anyio's plugin's otherwise."""
    runner = "asyncio" if _asyncio_strict(request.node) else "anyio"
    return request.getfixturevalue(f"_ringkit_{name}_{runner}")


def _asyncio_fixture(name: str) -> Callable[[Callable[..., AsyncIterator[Any]]], Any]:
    """pytest-asyncio's fixture decorator, on the function-scoped loop -- a pytest-asyncio
    test's loop unless the test asks for another; pytest's own where pytest-asyncio is not
    installed (the fixture is then never asked for)."""
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(name=name)
    return pytest_asyncio.fixture(name=name, loop_scope="function")


@asynccontextmanager
async def _held(opened: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter `opened` for a pytest-asyncio fixture.  pytest-asyncio sets a fixture up and
    tears it down in different tasks, and task groups and cancel scopes must be left in the
    task that entered them -- so the context lives in a task of its own until teardown.
    (anyio's plugin runs setup and teardown in one task: its variants enter `opened` as is.)"""
    import asyncio  # pytest-asyncio's loop: hold the context in a task of that loop

    ready: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with opened as value:
                ready.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.get_running_loop().create_task(hold())
    try:
        yield await ready
    finally:
        stop.set()
        await task


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """``RINGKIT_REQUIRE_XEN=1`` (set inside the real-Xen harness): a ``xen``-marked test that
    skips means the harness is broken, not that Xen is missing -- a failure."""
    report = yield
    if (report.skipped and os.environ.get("RINGKIT_REQUIRE_XEN") == "1"
            and item.get_closest_marker("xen") is not None and not hasattr(report, "wasxfail")
            and not item.stash.get(_NOT_APPLICABLE, False)):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"RINGKIT_REQUIRE_XEN=1 (make test-xen) but this real-Xen test "
                           f"skipped: {reason}")
    return report


_NOT_APPLICABLE = pytest.StashKey[bool]()
"""Set on a conformance test whose check does not apply to the driver."""

_XEN_PARAM = pytest.param("xen", marks=[
    pytest.mark.xen, pytest.mark.skipif(not xen_available(), reason="no /dev/xen here")])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``ringkit_transport`` over the simulated and the real Xen, and a
    `DriverConformance` class's ``ringkit_check`` over its checks and transports (its
    ``xfail`` cases marked)."""
    if "ringkit_transport" in metafunc.fixturenames and "ringkit_check" not in \
            metafunc.fixturenames:
        metafunc.parametrize("ringkit_transport", ["sim", _XEN_PARAM], indirect=True)
    cls = metafunc.cls
    if "ringkit_check" in metafunc.fixturenames and cls is not None:
        xfail: Mapping[str, str] = getattr(cls, "xfail", {})
        chosen = getattr(cls, "checks", None)
        names = sorted(CHECKS) if chosen is None else list(chosen)
        unknown = (set(xfail) | set(names)) - set(CHECKS)
        if unknown:
            raise pytest.UsageError(f"{cls.__name__} names no such check: {sorted(unknown)}")
        quick = pytest.mark.ringkit_timeout(getattr(cls, "xfail_timeout", 1.0))
        # Only the (check, transport) pairs the check is registered for: a sim-only check is
        # not a test on Xen at all (as a skip it would fail under RINGKIT_REQUIRE_XEN).
        cases = []
        for kind in getattr(cls, "transports", ("sim",)):
            xen_marks = list(_XEN_PARAM.marks) if kind == "xen" else []
            for name in names:
                if kind not in CHECKS[name].transports:
                    continue
                marks = xen_marks + ([pytest.mark.xfail(reason=xfail[name], strict=True),
                                      quick] if name in xfail else [])
                cases.append(pytest.param(name, kind, marks=marks, id=f"{name}-{kind}"))
        metafunc.parametrize(("ringkit_check", "ringkit_transport"), cases)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def ringkit_timeout(request: pytest.FixtureRequest) -> float:
    """Seconds any single wait of the fixtures and checks may take (see the module doc)."""
    marker = request.node.get_closest_marker("ringkit_timeout")
    if marker is not None:
        return float(marker.args[0])
    option = request.config.getoption("ringkit_timeout", None)
    if option is not None:
        return float(option)
    return float(request.config.getini("ringkit_timeout"))


@pytest.fixture(scope="module")
def _ringkit_shared_sim_dir() -> Iterator[Path]:
    """One simulated Xen server process for the module (see ``ringkit_shared_sim``)."""
    with tempfile.TemporaryDirectory(prefix="ringkit-sim-", dir="/tmp") as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "ringkit.sim", "serve", "--dir", tmp],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith(b"ready"):
                raise RuntimeError(f"the shared simulated Xen said {line!r}, not ready")
            yield Path(tmp)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# Each async fixture is an opener (fixture values in, an async context manager out) and three
# registrations: the fixture a test names, which hands over `_variant`; the variant anyio's
# plugin runs (``_ringkit_<name>_anyio``); and the one pytest-asyncio runs
# (``_ringkit_<name>_asyncio``, made with its public ``pytest_asyncio.fixture``).


def _open_sim_xen(request: pytest.FixtureRequest, timeout: float
                  ) -> AbstractAsyncContextManager[SimXen]:
    shared = request.node.get_closest_marker("ringkit_shared_sim") is not None
    directory = request.getfixturevalue("_ringkit_shared_sim_dir") if shared else None
    return _checked_sim(directory, timeout)


@asynccontextmanager
async def _checked_sim(directory: Path | None, timeout: float) -> AsyncIterator[SimXen]:
    opened = SimXen.start(in_process=True) if directory is None else SimXen.attach(directory)
    async with opened as xen:
        yield xen
        await check_sim_leaks(xen, timeout)


@pytest.fixture
def sim_xen(request: pytest.FixtureRequest, ringkit_timeout: float) -> SimXen:
    """A simulated Xen for this test (see the module docstring)."""
    xen: SimXen = _variant(request, "sim_xen")
    return xen


@pytest.fixture(name="_ringkit_sim_xen_anyio")
async def _sim_xen_anyio(request: pytest.FixtureRequest, ringkit_timeout: float
                         ) -> AsyncIterator[SimXen]:
    async with _open_sim_xen(request, ringkit_timeout) as xen:
        yield xen


@_asyncio_fixture("_ringkit_sim_xen_asyncio")
async def _sim_xen_asyncio(request: pytest.FixtureRequest, ringkit_timeout: float
                           ) -> AsyncIterator[SimXen]:
    async with _held(_open_sim_xen(request, ringkit_timeout)) as xen:
        yield xen


@pytest.fixture
def world(request: pytest.FixtureRequest, sim_xen: SimXen, ringkit_timeout: float) -> World:
    """dom0 and a fresh guest domain on `sim_xen`, checked for leaks on the way out."""
    w: World = _variant(request, "world")
    return w


@pytest.fixture(name="_ringkit_world_anyio")
async def _world_anyio(sim_xen: SimXen, ringkit_timeout: float) -> AsyncIterator[World]:
    async with sim_world(sim_xen, ringkit_timeout) as w:
        yield w


@_asyncio_fixture("_ringkit_world_asyncio")
async def _world_asyncio(sim_xen: SimXen, ringkit_timeout: float) -> AsyncIterator[World]:
    async with _held(sim_world(sim_xen, ringkit_timeout)) as w:
        yield w


@pytest.fixture
def dom0(world: World) -> Any:
    """`world`'s dom0 handle (`ringkit.abc.Domain`)."""
    return world.dom0


@pytest.fixture
def guest(world: World) -> Any:
    """`world`'s fresh guest domain handle (`ringkit.abc.Domain`)."""
    return world.guest


@pytest.fixture
def ringkit_transport(request: pytest.FixtureRequest) -> Transport:
    """"sim" or "xen" (the test runs once per transport)."""
    kind: Transport = getattr(request, "param", "sim")
    return kind


def _open_any_world(transport: Transport, xen: SimXen, timeout: float
                    ) -> AbstractAsyncContextManager[World]:
    return xen_world(timeout) if transport == "xen" else sim_world(xen, timeout)


@pytest.fixture
def any_world(request: pytest.FixtureRequest, ringkit_transport: Transport, sim_xen: SimXen,
              ringkit_timeout: float) -> World:
    """A `World` on each transport: the simulated Xen, and the real one where it exists
    (`sim_xen` is started either way: it is cheap, and a fixture cannot ask for an async one
    conditionally)."""
    w: World = _variant(request, "any_world")
    return w


@pytest.fixture(name="_ringkit_any_world_anyio")
async def _any_world_anyio(ringkit_transport: Transport, sim_xen: SimXen,
                           ringkit_timeout: float) -> AsyncIterator[World]:
    async with _open_any_world(ringkit_transport, sim_xen, ringkit_timeout) as w:
        yield w


@_asyncio_fixture("_ringkit_any_world_asyncio")
async def _any_world_asyncio(ringkit_transport: Transport, sim_xen: SimXen,
                             ringkit_timeout: float) -> AsyncIterator[World]:
    async with _held(_open_any_world(ringkit_transport, sim_xen, ringkit_timeout)) as w:
        yield w


@pytest.fixture
def ringkit_driver() -> DriverUnderTest:
    """Override this: the `DriverUnderTest` that `device_pair` and `DriverConformance` use."""
    raise pytest.UsageError(
        "define a `ringkit_driver` fixture returning a ringkit.testing.DriverUnderTest "
        "(your Backend and Frontend classes and an exchange coroutine)")


def _open_pair(request: pytest.FixtureRequest, world: World, driver: DriverUnderTest
               ) -> AbstractAsyncContextManager[DevicePair]:
    in_child = request.node.get_closest_marker("ringkit_backend_process") is not None
    return open_device_pair(world, driver, backend_process=in_child)


@pytest.fixture
def device_pair(request: pytest.FixtureRequest, world: World,
                ringkit_driver: DriverUnderTest) -> DevicePair:
    """Both ends of `ringkit_driver`'s device on `world`, connected and serving; closed in
    order (frontend, then backend) on the way out."""
    pair: DevicePair = _variant(request, "device_pair")
    return pair


@pytest.fixture(name="_ringkit_device_pair_anyio")
async def _device_pair_anyio(request: pytest.FixtureRequest, world: World,
                             ringkit_driver: DriverUnderTest) -> AsyncIterator[DevicePair]:
    async with _open_pair(request, world, ringkit_driver) as pair:
        yield pair


@_asyncio_fixture("_ringkit_device_pair_asyncio")
async def _device_pair_asyncio(request: pytest.FixtureRequest, world: World,
                               ringkit_driver: DriverUnderTest) -> AsyncIterator[DevicePair]:
    async with _held(_open_pair(request, world, ringkit_driver)) as pair:
        yield pair


# --------------------------------------------------------------------------- conformance


@pytest.fixture
def ringkit_check(request: pytest.FixtureRequest) -> str:
    """The conformance check a `DriverConformance` test runs (parametrized over `CHECKS`)."""
    return str(request.param)


class DriverConformance:
    """The driver conformance suite as tests: subclass it in a test module (name it
    ``Test...``) and define a ``ringkit_driver`` fixture; each check of
    `ringkit.testing.conformance.CHECKS` becomes one test, on the simulated Xen (and on real
    Xen too if `transports` lists "xen").  Checks that do not apply to the driver (e.g. ring
    index attacks on a driver without an io/ring.h layout, request-layer attacks on one
    without a `request_codec`) skip.

    `xfail` maps check names to reasons: those run as ``xfail(strict=True)``, so they fail the
    run once the driver passes them.  `transports` lists where to run ("sim", "xen"); the
    "xen" cases are marked ``xen`` and skip without ``/dev/xen``.  The tests run under anyio's
    pytest plugin (asyncio by default; parametrize ``anyio_backend`` for trio).
    """

    transports: ClassVar[tuple[Transport, ...]] = ("sim",)
    checks: ClassVar[Collection[str] | None] = None
    """Names of the checks to run (default: all of `CHECKS`)."""
    xfail: ClassVar[Mapping[str, str]] = {}
    xfail_timeout: ClassVar[float] = 1.0
    """The ringkit timeout of the `xfail` cases (they fail by timing out, mostly; once fixed,
    a check passes well within it)."""

    @pytest.mark.anyio
    async def test_conformance(self, ringkit_check: str, ringkit_transport: Transport,
                               ringkit_driver: DriverUnderTest, ringkit_timeout: float,
                               request: pytest.FixtureRequest) -> None:
        """One conformance check on one transport, for the class's ``ringkit_driver``."""
        run = checks_for(ringkit_driver, ringkit_transport).get(ringkit_check)
        if run is None:
            # The driver lacks what the check attacks (e.g. no io/ring.h layout): a skip that
            # says nothing about the harness, so RINGKIT_REQUIRE_XEN lets it stand.
            request.node.stash[_NOT_APPLICABLE] = True
            why = not_applicable(ringkit_check, ringkit_driver, ringkit_transport)
            pytest.skip(f"{ringkit_check} does not apply to {ringkit_driver.label} on "
                        f"{ringkit_transport}: {why or 'no reason given'}")
        failure: ConformanceFailure | None = None
        try:
            if ringkit_transport == "xen":
                await run(ringkit_driver, lambda: xen_world(ringkit_timeout))
            else:
                async with SimXen.start(in_process=True) as xen:
                    try:
                        await run(ringkit_driver, lambda: sim_world(xen, ringkit_timeout))
                    except ConformanceFailure as exc:  # (before the simulator's task group
                        failure = exc                   # could wrap it in a group again)
        except ConformanceFailure as exc:
            failure = exc
        if failure is not None:
            # The text carries the cause and its traceback; chained, pytest would print every
            # message of the chain above that one line.
            raise pytest.fail.Exception(_failure_text(failure), pytrace=False) from None


def _failure_text(failure: ConformanceFailure) -> str:
    """What a failed conformance test shows: the one line naming the check and the cause
    (all pytest's summary shows), then -- unless the cause is just the kit's own verdict, whose
    message says it all -- the cause's traceback: for a crash, where in the driver it was."""
    if _verdict_only(failure.cause):
        return str(failure)
    trace = "".join(traceback.format_exception(failure.cause)).rstrip()
    return f"{failure}\n\nThe cause, {type(failure.cause).__name__}:\n{trace}"


_KIT = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _verdict_only(exc: BaseException) -> bool:
    """Whether `exc` and everything it was raised from are assertions the kit raised, timeouts
    and cancellations: nothing a traceback would say more about than the messages."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AssertionError):
            frames = traceback.extract_tb(current.__traceback__)
            if not frames or not frames[-1].filename.startswith(_KIT):
                return False
        elif isinstance(current, Exception) and not isinstance(current, TimeoutError):
            return False
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return True


__all__ = (
    "ASYNC_FIXTURES",
    "DevicePair",
    "DriverConformance",
    "any_world",
    "device_pair",
    "dom0",
    "guest",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_load_initial_conftests",
    "pytest_runtest_makereport",
    "ringkit_check",
    "ringkit_driver",
    "ringkit_timeout",
    "ringkit_transport",
    "sim_xen",
    "world",
)
