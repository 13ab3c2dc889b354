"""The conformance suite catches broken drivers, each with a message naming its fault (a check
that cannot fail is a defect).  The checks are called directly, as a non-pytest runner would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ringkit.sim import SimXen
from ringkit.testing import DriverUnderTest, sim_world
from ringkit.testing.conformance import CHECKS

from .broken_drivers import (
    ClingingBackend,
    DeafAtInitWaitBackend,
    DeafBackend,
    GivingUpFrontend,
    LeakyBackend,
    StoppingBackend,
    TrustingBackend,
    broken,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def xen() -> AsyncIterator[SimXen]:
    async with SimXen.start(in_process=True) as xen:
        yield xen


async def fails(xen: SimXen, check: str, driver: DriverUnderTest) -> str:
    with pytest.raises(AssertionError) as info:
        await CHECKS[check].run(driver, lambda: sim_world(xen, 2))
    return str(info.value)


async def test_a_driver_that_leaks_a_grant_fails_naming_the_grant(xen: SimXen) -> None:
    message = await fails(xen, "handshake", broken(LeakyBackend))
    assert "leaked: dom0 (domain 0): grants=1" in message, message
    LeakyBackend.kept.clear()  # (closing the dom0 handle released them)


async def test_a_backend_that_keeps_a_dead_frontends_ring_mapped_fails(xen: SimXen) -> None:
    message = await fails(xen, "frontend-killed", broken(ClingingBackend))
    assert "after kill -9 of the frontend the backend kept maps=1" in message, message
    ClingingBackend.kept.clear()  # (closing the dom0 handle released them)


async def test_a_backend_that_keeps_a_destroyed_domains_ring_mapped_fails(xen: SimXen) -> None:
    message = await fails(xen, "domain-destroyed", broken(ClingingBackend))
    assert "maps=1" in message, message
    ClingingBackend.kept.clear()


async def test_a_driver_that_ignores_closing_fails_saying_so(xen: SimXen) -> None:
    message = await fails(xen, "handshake", broken(DeafBackend))
    assert "the backend following the frontend's Closing" in message, message
    assert "not done within 2 s" in message, message


async def test_a_backend_deaf_at_initwait_fails_the_port_closed_check(xen: SimXen) -> None:
    message = await fails(xen, "port-closed-then-closes", broken(DeafAtInitWaitBackend))
    assert "waited for the backend to follow its Closing (backend state " \
        "XenbusStateInitWait)" in message, message


async def test_a_driver_that_trusts_a_garbage_slot_fails_naming_the_crash(xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/garbage-slots", broken(TrustingBackend))
    # The framework ends only the connection the crash happened in (issue 18) and serves on;
    # the check still names the crash.
    assert "the backend's driver raised after" in message, message
    assert "garbage-slots" in message and "UnicodeDecodeError" in message, message


async def test_a_backend_that_stops_on_a_state_flap_fails_the_matrix(xen: SimXen) -> None:
    # The matrix's first case is the flap once reported: Closing, then Connected again.
    message = await fails(xen, "xenbus-state-matrix/backend", broken(StoppingBackend))
    assert "the backend stopped serving after a hostile frontend's state, connected '5' -> '4'" \
        in message, message
    assert "RemoteProtocolError" in message, message


async def test_a_frontend_that_gives_up_on_a_state_flap_fails_the_matrix(xen: SimXen) -> None:
    message = await fails(xen, "xenbus-state-matrix/frontend", broken(frontend=GivingUpFrontend))
    assert "a hostile backend's state, connected" in message, message
    assert "the frontend was ended by RemoteProtocolError" in message, message


async def test_the_same_checks_pass_the_well_behaved_echo_driver(xen: SimXen) -> None:
    from .drivers_under_test import echo_driver

    for check in ("handshake", "hostile-frontend/garbage-slots"):
        await CHECKS[check].run(echo_driver(), lambda: sim_world(xen, 5))
