"""The driver conformance suite on real Xen: the echo driver in dom0 loopback (frontend and
backend both in dom0, ends in child processes where the check asks), for a subset of checks.

Not here yet: ``frontend-killed`` -- in its one run under the harness (2026-12-05) the frontend
child process never said "connected" within 30 s (no diagnostics kept; the same check passes on
the sim, and ``backend-killed``, with two backend processes, passed here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import pytest

from ringkit.testing import DriverUnderTest
from ringkit.testing.pytest_plugin import DriverConformance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit.drivers_under_test import echo_driver

pytestmark = pytest.mark.ringkit_timeout(30)  # emulated Xen (TCG) is slow


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestEchoOnXen(DriverConformance):
    transports = ("xen",)
    checks: ClassVar[tuple[str, ...]] = (
        "handshake", "frontend-closes", "backend-closes", "backend-killed",
        "hostile-frontend/req-prod-huge", "hostile-frontend/vanishes",
        "hostile-backend/duplicate-responses", "hostile-backend/rsp-prod-ahead")

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return echo_driver()
