"""ringkit's pytest plugin: fixtures to test split drivers (loaded through the ``pytest11`` entry
point, so installing ringkit is enough; docs/testing.md is the guide).

Fixtures (async ones work under anyio's plugin -- asyncio and trio -- and under pytest-asyncio,
strict mode included):

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
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ..device import Backend, Frontend
from ..sim import SimXen
from ._child import Child, spawn
from ._driver import DriverUnderTest
from ._world import (
    DEFAULT_TIMEOUT,
    Transport,
    WaitTimeout,
    World,
    check_sim_leaks,
    sim_world,
    xen_available,
    xen_world,
)
from .conformance import CHECKS, checks_for, serving

ASYNC_FIXTURES = frozenset({"sim_xen", "world", "any_world", "device_pair"})
"""Our async fixtures, which pytest-asyncio (strict) must run when anyio's plugin does not."""


# --------------------------------------------------------------------------- configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ringkit")
    group.addoption("--ringkit-timeout", type=float, default=None, metavar="SECONDS",
                    help="bound on any single wait of ringkit's fixtures and checks "
                         f"(default {DEFAULT_TIMEOUT:g})")
    parser.addini("ringkit_timeout", "ringkit: bound on any single wait of the fixtures",
                  default=str(DEFAULT_TIMEOUT))


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "ringkit_timeout(seconds): ringkit's bound on any single wait of this test's fixtures",
        "ringkit_shared_sim: sim_xen is one simulated Xen process shared by the module",
        "ringkit_backend_process: device_pair runs the backend in a child process",
        "xen: needs the real /dev/xen devices",
    ):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[
        None, object, object]:
    """Our async fixtures under pytest-asyncio when the test is not anyio's: mark them as
    pytest-asyncio fixtures for this setup only (in strict mode it ignores unmarked ones, and
    anyio's plugin runs them itself when the test uses ``anyio_backend``)."""
    func = getattr(fixturedef.func, "__func__", fixturedef.func)
    ours = fixturedef.argname in ASYNC_FIXTURES and getattr(func, "_ringkit_fixture", False)
    if (not ours or "anyio_backend" in request.fixturenames
            or not request.config.pluginmanager.has_plugin("asyncio")):
        return (yield)
    func._force_asyncio_fixture = True
    func._loop_scope = None
    try:
        return (yield)
    finally:
        del func._force_asyncio_fixture, func._loop_scope


def _ours(func: Any) -> Any:
    func._ringkit_fixture = True
    return func


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """``RINGKIT_REQUIRE_XEN=1`` (set inside the real-Xen harness): a ``xen``-marked test that
    skips means the harness is broken, not that Xen is missing -- a failure."""
    report = yield
    if (report.skipped and os.environ.get("RINGKIT_REQUIRE_XEN") == "1"
            and item.get_closest_marker("xen") is not None and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"RINGKIT_REQUIRE_XEN=1 (make test-xen) but this real-Xen test "
                           f"skipped: {reason}")
    return report


_XEN_PARAM = pytest.param("xen", marks=[
    pytest.mark.xen, pytest.mark.skipif(not xen_available(), reason="no /dev/xen here")])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ringkit_transport" in metafunc.fixturenames and "ringkit_check" not in \
            metafunc.fixturenames:
        metafunc.parametrize("ringkit_transport", ["sim", _XEN_PARAM], indirect=True)
    cls = metafunc.cls
    if "ringkit_check" in metafunc.fixturenames and cls is not None:
        xfail: Mapping[str, str] = getattr(cls, "xfail", {})
        unknown = set(xfail) - set(CHECKS)
        if unknown:
            raise pytest.UsageError(f"{cls.__name__}.xfail names no check: {sorted(unknown)}")
        quick = pytest.mark.ringkit_timeout(getattr(cls, "xfail_timeout", 1.0))
        metafunc.parametrize("ringkit_check", [
            pytest.param(name, marks=[pytest.mark.xfail(reason=xfail[name], strict=True), quick])
            if name in xfail else name for name in sorted(CHECKS)])
        metafunc.parametrize("ringkit_transport", [
            _XEN_PARAM if kind == "xen" else kind
            for kind in getattr(cls, "transports", ("sim",))])


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


@pytest.fixture
@_ours
async def sim_xen(request: pytest.FixtureRequest, ringkit_timeout: float
                  ) -> AsyncIterator[SimXen]:
    """A simulated Xen for this test (see the module docstring)."""
    if request.node.get_closest_marker("ringkit_shared_sim") is not None:
        directory = request.getfixturevalue("_ringkit_shared_sim_dir")
        opened = SimXen.attach(directory)
    else:
        opened = SimXen.start(in_process=True)
    async with opened as xen:
        yield xen
        await check_sim_leaks(xen, ringkit_timeout)


@pytest.fixture
@_ours
async def world(sim_xen: SimXen, ringkit_timeout: float) -> AsyncIterator[World]:
    """dom0 and a fresh guest domain on `sim_xen`, checked for leaks on the way out."""
    async with sim_world(sim_xen, ringkit_timeout) as w:
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


@pytest.fixture
@_ours
async def any_world(request: pytest.FixtureRequest, ringkit_transport: Transport,
                    ringkit_timeout: float) -> AsyncIterator[World]:
    """A `World` on each transport: the simulated Xen, and the real one where it exists."""
    if ringkit_transport == "xen":
        async with xen_world(ringkit_timeout) as w:
            yield w
        return
    xen: SimXen = request.getfixturevalue("sim_xen")
    async with sim_world(xen, ringkit_timeout) as w:
        yield w


@pytest.fixture
def ringkit_driver() -> DriverUnderTest:
    """Override this: the `DriverUnderTest` that `device_pair` and `DriverConformance` use."""
    raise pytest.UsageError(
        "define a `ringkit_driver` fixture returning a ringkit.testing.DriverUnderTest "
        "(your Backend and Frontend classes and an exchange coroutine)")


@dataclass
class DevicePair:
    """Both ends of a driver's device, connected (the `device_pair` fixture)."""

    world: World
    driver: DriverUnderTest
    frontend: Frontend
    backend: Backend | None
    """The backend, when it runs in this process."""
    backend_process: Child | None
    """The backend's child process (``ringkit_backend_process`` marker): ``await
    pair.backend_process.kill()`` is kill -9."""

    async def exchange(self) -> None:
        """The driver's traffic, bounded by the ringkit timeout."""
        with self.world.within(f"{self.driver.label}: the exchange"):
            await self.driver.exchange(self.frontend)


@pytest.fixture
@_ours
async def device_pair(request: pytest.FixtureRequest, world: World,
                      ringkit_driver: DriverUnderTest) -> AsyncIterator[DevicePair]:
    """Both ends of `ringkit_driver`'s device on `world`, connected and serving; closed in
    order (frontend, then backend) on the way out."""
    async with _pair(world, ringkit_driver,
                     request.node.get_closest_marker("ringkit_backend_process") is not None
                     ) as pair:
        yield pair


@asynccontextmanager
async def _pair(w: World, driver: DriverUnderTest, in_child: bool) -> AsyncIterator[DevicePair]:
    from .conformance import connected_frontend

    await driver.create(w.dom0, w.guest_id)
    async with AsyncExitStack() as stack:
        backend: Backend | None = None
        child: Child | None = None
        if in_child:
            child = await stack.enter_async_context(spawn(w, "backend", driver))
            await child.expect("ready")
        else:
            backend = (await stack.enter_async_context(serving(w, driver))).backend
        front = await stack.enter_async_context(connected_frontend(w, driver))
        yield DevicePair(w, driver, front, backend, child)


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
    index attacks on a driver without an io/ring.h layout) skip.

    `xfail` maps check names to reasons: those run as ``xfail(strict=True)``, so they fail the
    run once the driver passes them.  `transports` lists where to run ("sim", "xen"); the
    "xen" cases are marked ``xen`` and skip without ``/dev/xen``.  The tests run under anyio's
    pytest plugin (asyncio by default; parametrize ``anyio_backend`` for trio).
    """

    transports: ClassVar[tuple[Transport, ...]] = ("sim",)
    xfail: ClassVar[Mapping[str, str]] = {}
    xfail_timeout: ClassVar[float] = 1.0
    """The ringkit timeout of the `xfail` cases (they fail by timing out, mostly; once fixed,
    a check passes well within it)."""

    @pytest.mark.anyio
    async def test_conformance(self, ringkit_check: str, ringkit_transport: Transport,
                               ringkit_driver: DriverUnderTest, ringkit_timeout: float) -> None:
        run = checks_for(ringkit_driver, ringkit_transport).get(ringkit_check)
        if run is None:
            pytest.skip(f"{ringkit_check} does not apply to {ringkit_driver.label} on "
                        f"{ringkit_transport}")
        if ringkit_transport == "xen":
            await run(ringkit_driver, lambda: xen_world(ringkit_timeout))
            return
        async with SimXen.start(in_process=True) as xen:
            await run(ringkit_driver, lambda: sim_world(xen, ringkit_timeout))


__all__ = ("DevicePair", "DriverConformance", "WaitTimeout")
