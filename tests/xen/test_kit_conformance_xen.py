"""The driver conformance suite on real Xen: the shipped drivers (echo, block, console) in dom0
loopback (frontend and backend both in dom0, ends in child processes where the check asks).

Every check runs for every driver on the simulated Xen (tests/kit); here, to keep the emulated
boot short, the drivers share a subset that covers every kind of check on the real devices --
the handshake, orderly close, kill -9 of either end's process, and hostile peers at the ring
and at the xenstore nodes, on either end -- each check run for one or two of the drivers, not
all three.  With ``RINGKIT_XEN_CONFORMANCE=full`` in the
environment every check that applies runs instead (about half an hour in the emulation)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from ringkit.testing import DriverUnderTest
from ringkit.testing.pytest_plugin import DriverConformance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import kernel_backends_off, kernel_frontends_off
from kit.drivers_under_test import block_driver, console_driver, echo_driver

FULL = os.environ.get("RINGKIT_XEN_CONFORMANCE") == "full"

pytestmark = pytest.mark.ringkit_timeout(60)  # emulated Xen (TCG) is slow: a child process
# of the emulated dom0 takes several seconds just to import ringkit


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_kernel_drivers() -> Iterator[None]:
    """dom0's kernel must not answer for the loopback devices: its xen-blkback (loaded by the
    blkback interop test earlier in the boot) bound the loopback vbd's event channel before
    ringkit's backend could (every block check failed with "binding port ... failed [EINVAL]"
    in a full `make test-xen`), and its built-in hvc_xen published a ring for the loopback
    console before ringkit's frontend did (console's first check failed)."""
    with kernel_backends_off(), kernel_frontends_off():
        yield


class TestEchoOnXen(DriverConformance):
    transports = ("xen",)
    checks: ClassVar[tuple[str, ...] | None] = None if FULL else (
        "handshake", "frontend-closes", "backend-closes", "hostile-frontend/vanishes",
        "hostile-backend/duplicate-responses", "hostile-backend/closes-event-channel",
        "port-closed-then-closes")
    # backend-killed, frontend-killed, req-prod-huge and rsp-prod-ahead run for block here
    # (and frontend-killed for console too): the same checks on the same devices, ~100 s of
    # emulated boot saved

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return echo_driver()


class TestBlockOnXen(DriverConformance):
    transports = ("xen",)
    checks: ClassVar[tuple[str, ...] | None] = None if FULL else (
        "handshake", "frontend-first", "frontend-closes", "port-closed-then-closes",
        "backend-killed", "frontend-killed", "hostile-frontend/req-prod-huge",
        "hostile-frontend/ring-ref-stale", "hostile-backend/rsp-prod-ahead",
        "hostile-backend/vanishes")

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return block_driver(tmp_path)


class TestConsoleOnXen(DriverConformance):
    transports = ("xen",)
    checks: ClassVar[tuple[str, ...] | None] = None if FULL else (
        "handshake", "backend-closes", "frontend-killed",
        "hostile-frontend/event-channel-unknown", "hostile-backend/garbage-page")
    # port-closed-then-closes runs for echo and block here
    # hostile-backend/garbage-page once left both ends at Closed: the next backend read a
    # ring-ref the frontend was revoking, refused, and each end waited for the other to start
    # over; a backend now offers InitWait again after such a refusal (tests/device/
    # test_reoffer.py)

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return console_driver(tmp_path)
