"""Issue 10: a hostile peer can end its own connection, never the serving end.

The state matrix (a hostile peer writing ``first -> second`` pairs of the nine XenbusStates
and garbage to its ``state`` node, before connecting, connected and while closing) is a driver
conformance check: ``xenbus-state-matrix/backend`` and ``/frontend`` in
`ringkit.testing.conformance`.  tests/kit/test_conformance_drivers.py runs it for echo, block
and console, tests/kit/test_negative_controls.py shows it catching a backend that stops and a
frontend that gives up (``RINGKIT_HOSTILE_MATRIX=full`` plays all 169 pairs per phase).

The check accepts a survivor that refuses a flap or one that tolerates it.  The framework does
more, and that is tested here through the kit's public matrix runner: the flap first reported
against ``ringkit block serve`` -- Closing, then Connected again -- is refused in xenstore (an
error node, as Linux's ``xenbus_dev_fatal`` writes), and the backend serves on.  For echo and
block alike: the real frontend follows the backend's Closing to Closed before the raw Connected
lands, so the backend sees the impossible move.  (The block frontend used to see its port close
before the backend's Closing and start over at Initialising as if the backend had died, so the
raw write found a new connection and there was nothing to refuse: the block case is the test
that a frontend whose ring goes away during an orderly close follows the close in order.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kit.drivers_under_test import block_driver

from ringkit.sim import SimXen
from ringkit.testing import DriverUnderTest, sim_world
from ringkit.testing.conformance import REPORTED_FLAP, run_backend_matrix

from .drivers import EchoBackend, EchoFrontend

pytestmark = pytest.mark.anyio


async def echo_exchange(front: EchoFrontend) -> None:
    assert await front.echo(1, b"still here") == b"STILL HERE"


@pytest.mark.parametrize("driver", ["echo", "block"])
async def test_the_reported_flap_is_refused_in_xenstore(driver: str, tmp_path: Path) -> None:
    under_test = (DriverUnderTest(EchoBackend, EchoFrontend, echo_exchange, name="echo")
                  if driver == "echo" else block_driver(tmp_path))
    async with SimXen.start(in_process=True) as xen, sim_world(xen) as w:
        await under_test.create(w.dom0, w.guest_id)
        seen = await run_backend_matrix(w, under_test, REPORTED_FLAP)
    assert seen.cases == len(REPORTED_FLAP)
    assert seen.refusals > 0, "Closing -> Connected was tolerated silently, not refused"
