"""A small driver project outside ringkit's tree, as a driver author would write one: its own
echo-like "ping" driver and tests that use ringkit's pytest plugin (pytest-asyncio strict and
anyio on asyncio and trio), the conformance suite, and a real-Xen case.  `write_project` lays it
out; tests/kit/test_plugin_out_of_tree.py runs it on the sim, tests/xen/test_kit_out_of_tree.py
under real Xen."""

from __future__ import annotations

from pathlib import Path

DRIVER = '''
"""The ping device: the frontend sends 24 bytes, the backend answers them reversed."""
import struct

import anyio
from ringkit import RemoteProtocolError
from ringkit.device import Backend, Frontend, RingLayout

PING_RING = RingLayout("ping", request_size=32, response_size=32)
SLOT = struct.Struct("<Q24s")


class PingBackend(Backend):
    device_type = "ping"
    ring_layout = PING_RING

    async def handle(self, request):
        ident, data = SLOT.unpack(request)
        return SLOT.pack(ident, bytes(reversed(data)))


class PingFrontend(Frontend):
    device_type = "ping"
    ring_layout = PING_RING

    async def ping(self, ident, data):
        await self.channel.send(SLOT.pack(ident, data))
        got, back = SLOT.unpack(await self.channel.receive())
        if got != ident:
            error = RemoteProtocolError(f"ping: answer for {got}, expected {ident}")
            self.wake("bad answer", error)
            raise error
        return bytes(reversed(back))


class SilentBackend(PingBackend):
    """Never answers (for the timeout test)."""

    async def handle(self, request):
        await anyio.sleep_forever()


async def exchange(front):
    for i in range(3):
        data = bytes([65 + i]) * 24
        assert await front.ping(i, data) == data
'''

CONFTEST = '''
import pytest
from ringkit.testing import DriverUnderTest

import pingdrv


@pytest.fixture
def ringkit_driver():
    return DriverUnderTest(pingdrv.PingBackend, pingdrv.PingFrontend, pingdrv.exchange)
'''

TEST_ASYNCIO = '''
"""pytest-asyncio, strict mode."""
import pytest
from ringkit import PeerGoneError
import anyio


@pytest.mark.asyncio
async def test_device_pair(device_pair):
    await device_pair.exchange()
    assert device_pair.backend.is_connected and device_pair.frontend.is_connected


@pytest.mark.asyncio
async def test_domains(dom0, guest, sim_xen):
    assert dom0.domid == 0 and guest.domid != 0
    assert guest.domid in [d.domid for d in await sim_xen.list_domains()]


@pytest.mark.asyncio
@pytest.mark.ringkit_backend_process
async def test_backend_killed(device_pair):
    await device_pair.exchange()
    await device_pair.backend_process.kill()
    with pytest.raises((PeerGoneError, anyio.BrokenResourceError)):
        with anyio.fail_after(5):
            await device_pair.frontend.ping(9, bytes(24))
'''

TEST_ANYIO = '''
"""anyio's plugin, asyncio and trio."""
import pytest
from ringkit.testing import open_device_pair
from ringkit.testing.pytest_plugin import DriverConformance

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def test_device_pair(device_pair):
    await device_pair.exchange()


async def test_on_each_transport(any_world, ringkit_driver):
    async with open_device_pair(any_world, ringkit_driver) as pair:
        await pair.exchange()


@pytest.mark.ringkit_shared_sim
async def test_shared_sim(device_pair):
    await device_pair.exchange()


class TestPingConformance(DriverConformance):
    checks = ("handshake", "backend-killed", "hostile-frontend/req-prod-huge",
              "hostile-backend/duplicate-responses")
'''

TEST_FAILING = '''
"""Tests that must fail, each with a message: a hang bounded by the ringkit timeout, a leak."""
import pytest
from ringkit.testing import DriverUnderTest

import pingdrv

pytestmark = pytest.mark.anyio


@pytest.fixture
def ringkit_driver():
    return DriverUnderTest(pingdrv.SilentBackend, pingdrv.PingFrontend, pingdrv.exchange)


@pytest.mark.ringkit_timeout(0.5)
async def test_silent_backend(device_pair):
    await device_pair.exchange()


async def test_leaky(guest, dom0):
    await guest.grants.share(dom0.domid, 1)
'''

INI = """[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers
"""

BARE_INI = """[pytest]
addopts = --strict-markers
"""
"""The same project's configuration without any of pytest-asyncio's settings."""


def write_project(root: Path) -> Path:
    """Write the project into `root` (its tests under ``tests/``, a failing set under
    ``failing/``); returns `root`."""
    (root / "tests").mkdir(parents=True, exist_ok=True)
    (root / "failing").mkdir(exist_ok=True)
    (root / "pingdrv.py").write_text(DRIVER)
    (root / "pytest.ini").write_text(INI)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "tests" / "test_ping_asyncio.py").write_text(TEST_ASYNCIO)
    (root / "tests" / "test_ping_anyio.py").write_text(TEST_ANYIO)
    (root / "failing" / "test_ping_failing.py").write_text(TEST_FAILING)
    return root
