"""The demo's network step (`ringkit demo`, root only): `ringkit net serve --tap` and
`ringkit net attach --tap` on a simulated Xen, each TAP in a namespace of its own, and a ping
across.  It says what happened in a line, and removes its namespaces also when it fails.
Negative control: with the frontend process stopped, the ping gets no reply and the step
reports the failure."""

from __future__ import annotations

import io
import subprocess

import anyio
import pytest
from rich.console import Console
from test_net_tap import _needs_root

from ringkit.cli.demo import net_step
from ringkit.sim import SimXen

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    """The ends are separate processes: run once."""
    return "asyncio"


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


async def _step(*, stopped: bool) -> tuple[bool, str]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    with anyio.fail_after(90):
        async with SimXen.start() as xen:
            guest = await xen.create_domain("guest")
            pinged = await net_step(console, xen.directory, guest, frontend_stopped=stopped)
            await xen.destroy_domain(guest)
            leaks = await xen.settled_leaks()
            assert not leaks, leaks
    assert "rkdemo" not in _namespaces()
    return pinged, out.getvalue()


async def test_the_demo_pings_through_the_guests_vif() -> None:
    _needs_root()
    pinged, out = await _step(stopped=False)
    assert pinged, out
    assert "3/3 replies" in out and "crossed the netif tx and rx rings" in out, out
    assert "$ ringkit net serve" in out and "$ ringkit net attach" in out, out


async def test_negative_control_a_stopped_frontend_gets_no_reply() -> None:
    _needs_root()
    pinged, out = await _step(stopped=True)
    assert not pinged, out
    assert "0/3 replies: nothing came back" in out, out
