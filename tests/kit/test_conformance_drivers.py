"""ringkit's own drivers -- the echo example, block and console -- pass the driver conformance
suite on the simulated Xen (one test per check, through the plugin's `DriverConformance`).

The cases marked xfail (strict) are known faults outside the drivers, listed once here:
"issue 10" -- a backend that cannot map or bind what a frontend published (a stale ring-ref,
event channel 0 or unknown) keeps InitWait silently instead of refusing it (error node,
Closing -> Closed), and a frontend that refused a backend's bad ``max-ring-page-order`` stays
Closed when a new backend comes (echo and console; block's slower connect hides it);
"stale nodes" -- a fresh frontend does not remove the ``ring-page-order`` /
``multi-queue-num-queues`` nodes an earlier (hostile) frontend left in its dir, so the backend
refuses the fresh one too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from ringkit.testing import DriverUnderTest
from ringkit.testing.pytest_plugin import DriverConformance

from .drivers_under_test import block_driver, console_driver, echo_driver

ISSUE_10 = "issue 10"
STALE = ("stale nodes: the Frontend base leaves an earlier frontend's ring-page-order / "
         "multi-queue-num-queues in place (ringkit/device/frontend.py)")
KNOWN = {
    "hostile-frontend/ring-ref-stale": ISSUE_10,
    "hostile-frontend/event-channel-zero": ISSUE_10,
    "hostile-frontend/event-channel-unknown": ISSUE_10,
    "hostile-frontend/ring-page-order-too-big": STALE,
    "hostile-frontend/too-many-queues": STALE,
}

pytestmark = [pytest.mark.slow, pytest.mark.ringkit_timeout(5)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the suite is transport behaviour; both loops run in test_plugin_*


class TestEcho(DriverConformance):
    xfail: ClassVar[Mapping[str, str]] = {
        **KNOWN, "hostile-backend/max-ring-page-order-garbage": ISSUE_10}

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return echo_driver()


class TestBlock(DriverConformance):
    xfail = KNOWN

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return block_driver(tmp_path)


class TestConsole(DriverConformance):
    xfail: ClassVar[Mapping[str, str]] = {
        **KNOWN, "hostile-backend/max-ring-page-order-garbage": ISSUE_10}

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return console_driver(tmp_path)
