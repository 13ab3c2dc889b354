"""ringkit's own drivers -- the echo and key-value examples, block, console and net -- pass the
driver conformance suite on the simulated Xen (one test per check, through the plugin's
`DriverConformance`).

No case is marked xfail: the faults this suite found in the framework (a backend that
refused a bad ring silently, a frontend or backend that left an earlier peer's ring keys in
place) are fixed, and `KNOWN` is where a new known fault would be listed (strict xfail).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from ringkit.testing import DriverUnderTest
from ringkit.testing.pytest_plugin import DriverConformance

from .drivers_under_test import block_driver, console_driver, echo_driver, kv_driver, net_driver

KNOWN: Mapping[str, str] = {}
"""Checks a shipped driver is known to fail (strict xfail), with the reason; none now."""

pytestmark = [pytest.mark.slow, pytest.mark.ringkit_timeout(5)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the suite is transport behaviour; both loops run in test_plugin_*


class TestEcho(DriverConformance):
    xfail: ClassVar[Mapping[str, str]] = KNOWN

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return echo_driver()


class TestKeyValue(DriverConformance):
    """The key-value example: a driver on ringkit.requests (per-request grants)."""

    xfail: ClassVar[Mapping[str, str]] = KNOWN

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return kv_driver()


class TestBlock(DriverConformance):
    xfail: ClassVar[Mapping[str, str]] = KNOWN

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return block_driver(tmp_path)


class TestConsole(DriverConformance):
    xfail: ClassVar[Mapping[str, str]] = KNOWN

    @pytest.fixture
    def ringkit_driver(self, tmp_path: Path) -> DriverUnderTest:
        return console_driver(tmp_path)


class TestNet(DriverConformance):
    """The netif pair: two rings per queue (tx-ring-ref, rx-ring-ref), both on
    ringkit.requests; its exchange sends frames through a loopback backend and checks them."""

    xfail: ClassVar[Mapping[str, str]] = KNOWN

    @pytest.fixture
    def ringkit_driver(self) -> DriverUnderTest:
        return net_driver()


class TestNetTrio(TestNet):
    """The net pair's checks again with the driver's ends under trio (the child processes'
    ends run under asyncio either way)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "trio"
