"""The conformance suite catches broken drivers, each with a message naming its fault (a check
that cannot fail is a defect).  The checks are called directly, as a non-pytest runner would.

A failure reads as one line, ``<check>: <cause>``, with the cause chained: never the task groups
the error travelled through (a crash in a driver used to arrive inside four nested
ExceptionGroups).  `one_line` holds every failure here to that."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator

import pytest

from ringkit.sim import SimXen
from ringkit.testing import DriverUnderTest, sim_world
from ringkit.testing.conformance import CHECKS, ConformanceFailure, check_handshake

from .broken_drivers import (
    ClingingBackend,
    CountTrustingKVBackend,
    CrashingFrontend,
    DeafAtInitWaitBackend,
    DeafBackend,
    EagerReleaseKVFrontend,
    FlatteningKVFrontend,
    GivingUpFrontend,
    GrantTrustingKVBackend,
    HalfUnmappingKVBackend,
    IdTrustingKVFrontend,
    LeakyBackend,
    PendingTableKVBackend,
    SilentlyLeavingKVBackend,
    StatuslessKVBackend,
    StoppingBackend,
    SwallowingKVBackend,
    TrustingBackend,
    broken,
    broken_kv,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def xen() -> AsyncIterator[SimXen]:
    async with SimXen.start(in_process=True) as xen:
        yield xen


def one_line(check: str, error: BaseException) -> str:
    """The first line of a failed check's report, which must name the check and the cause;
    asserts that no ExceptionGroup appears anywhere in the report or its chained causes."""
    report = "".join(traceback.format_exception(error))
    assert "ExceptionGroup" not in report, report
    assert isinstance(error, ConformanceFailure) and error.check == check, report
    assert error.__cause__ is error.cause, report
    first = str(error).splitlines()[0]
    assert first.startswith(f"{check}: ") and len(first) > len(check) + 2, report
    return first


async def fails(xen: SimXen, check: str, driver: DriverUnderTest) -> str:
    """Run `check` on `driver`; the first line of its failure (see `one_line`)."""
    with pytest.raises(AssertionError) as info:
        await CHECKS[check].run(driver, lambda: sim_world(xen, 2))
    return one_line(check, info.value)


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


async def test_a_driver_that_crashes_fails_naming_the_check_and_the_crash(xen: SimXen) -> None:
    message = await fails(xen, "handshake", broken(frontend=CrashingFrontend))
    assert message == "handshake: RuntimeError: publish: out of cheese", message


async def test_negative_control_one_line_rejects_a_crash_inside_exception_groups(
        xen: SimXen) -> None:
    # The same crash out of the bare check function (not through CHECKS): the error as the
    # task groups deliver it -- what a registered check reported before.  one_line refuses it.
    with pytest.raises(BaseExceptionGroup) as info:
        await check_handshake(broken(frontend=CrashingFrontend), lambda: sim_world(xen, 2))
    with pytest.raises(AssertionError, match="ExceptionGroup"):
        one_line("handshake", info.value)


# ------------------------------------------------------- drivers on ringkit.requests (key-value)

BAD_REFS = ("refs-never-granted", "refs-granted-elsewhere", "refs-revoked")
CRASHED = "the backend's driver raised after"
"""How the kit reports a backend whose driver raised on a peer's input (the framework ended
only that connection, in order, and the backend lives on)."""


@pytest.mark.parametrize("mode", BAD_REFS)
async def test_a_backend_that_takes_its_grant_maps_for_granted_crashes_on_bad_refs(
        xen: SimXen, mode: str) -> None:
    message = await fails(xen, f"hostile-frontend/{mode}", broken_kv(GrantTrustingKVBackend))
    assert CRASHED in message, message
    assert mode in message and "GrantError" in message, message


async def test_a_backend_that_keeps_half_of_a_failed_map_fails_naming_the_mapping(
        xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/refs-granted-elsewhere",
                          broken_kv(HalfUnmappingKVBackend))
    assert "once the hostile frontend was gone, kept maps=1" in message, message
    HalfUnmappingKVBackend.kept.clear()  # (closing the dom0 handle released them)


async def test_a_backend_that_answers_success_for_pages_it_could_not_map_fails(
        xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/refs-revoked", broken_kv(SwallowingKVBackend))
    assert "none of the requests naming pages the backend cannot use was refused with the " \
        "error status -1" in message, message


async def test_a_backend_that_trusts_the_ref_count_fails_naming_the_crash(xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/ref-count-too-big",
                          broken_kv(CountTrustingKVBackend))
    assert CRASHED in message, message
    assert "struct.error" in message or "error(" in message, message


async def test_a_backend_that_keys_its_work_by_the_frontends_id_fails_on_duplicates(
        xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/duplicate-ids",
                          broken_kv(PendingTableKVBackend))
    assert CRASHED in message, message
    assert "KeyError" in message, message


async def test_a_backend_that_disconnects_without_saying_why_fails(xen: SimXen) -> None:
    message = await fails(xen, "hostile-frontend/refs-never-granted",
                          broken_kv(SilentlyLeavingKVBackend))
    assert "the backend left Connected (state " in message, message  # Closing or Closed
    assert ") with no error in /local/domain/0/error/backend/kv/" in message, message


@pytest.mark.parametrize("mode", ["answers-unissued-ids", "answers-twice"])
async def test_a_frontend_that_trusts_answer_ids_fails_by_hanging(xen: SimXen,
                                                                   mode: str) -> None:
    message = await fails(xen, f"hostile-backend/{mode}", broken_kv(
        frontend=IdTrustingKVFrontend))
    assert "the frontend's traffic hung instead of failing with a typed error" in message, \
        message


@pytest.mark.parametrize("mode", ["answers-unissued-ids", "answers-twice"])
async def test_a_frontend_that_hides_a_protocol_error_as_a_dead_backend_fails(
        xen: SimXen, mode: str) -> None:
    message = await fails(xen, f"hostile-backend/{mode}", broken_kv(
        frontend=FlatteningKVFrontend))
    assert "failed with PeerGoneError" in message and "not RemoteProtocolError" in message, \
        message


async def test_a_frontend_that_frees_cancelled_ids_at_once_drops_the_connection(
        xen: SimXen) -> None:
    message = await fails(xen, "hostile-backend/answers-cancelled", broken_kv(
        frontend=EagerReleaseKVFrontend))
    assert "the frontend dropped the connection on answers to requests it had cancelled" \
        in message, message
    assert "is not in flight" in message, message


async def test_the_same_checks_pass_the_well_behaved_echo_driver(xen: SimXen) -> None:
    from .drivers_under_test import echo_driver

    for check in ("handshake", "hostile-frontend/garbage-slots"):
        await CHECKS[check].run(echo_driver(), lambda: sim_world(xen, 5))


async def test_a_backend_without_an_error_status_may_disconnect_instead(xen: SimXen) -> None:
    # (the key-value example itself passes every check: tests/kit/test_conformance_drivers.py)
    for mode in ("refs-never-granted", "ref-count-too-big"):
        await CHECKS[f"hostile-frontend/{mode}"].run(broken_kv(StatuslessKVBackend),
                                                     lambda: sim_world(xen, 5))
