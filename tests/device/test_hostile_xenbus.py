"""Issue 10: a hostile peer can end its own connection, never the serving end.

For each shipped driver (echo, block, console) and each end, a hostile peer writes ``from ->
to`` pairs of values to its ``state`` node -- the nine XenbusStates and garbage -- at each
phase (before connecting, connected, while closing).  After every case the survivor is still
serving, leaks nothing, and a well-behaved peer connects and exchanges real traffic.

By default each (driver, end, phase) plays 13 pairs in which every value appears once as
``from`` and once as ``to`` (a different pairing for each driver and end); with
``RINGKIT_HOSTILE_MATRIX=full`` every one of the 169 pairs per phase is played (about five
minutes for the six runs on a quiet two-core machine; all pass).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import zlib
from pathlib import Path

import pytest

from ringkit import RemoteProtocolError

from .drivers import EchoBackend
from .hostile_xenbus import PHASES, SUBJECTS, VALUES, run_backend_matrix, run_frontend_matrix

pytestmark = pytest.mark.anyio

FULL = os.environ.get("RINGKIT_HOSTILE_MATRIX") == "full"


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """One event loop per run, alternating by test: what is checked is the framework's
    handshake, the same on both loops, and each run is long."""
    return ("asyncio", "trio")[zlib.crc32(request.node.name.encode()) % 2]


def cases(seed: int) -> list[tuple[str, str, str]]:
    if FULL:
        return [(p, a, b) for p in PHASES for a, b in itertools.product(VALUES, VALUES)]
    n = len(VALUES)
    return [
        (phase, VALUES[i], VALUES[(i + 1 + (seed + k) % (n - 1)) % n])
        for k, phase in enumerate(PHASES)
        for i in range(n)
    ]


# The flap of the report: Closing, then Connected again, twice, while connected.
REPORTED = [("connected", "5", "4"), ("closing", "4", "5"), ("closing", "5", "4")]


@pytest.mark.parametrize("driver", sorted(SUBJECTS))
async def test_backend_survives_frontend_state_flaps(driver: str, tmp_path: Path) -> None:
    played = REPORTED + cases(zlib.crc32(driver.encode()))
    seen = await run_backend_matrix(SUBJECTS[driver](), tmp_path, played)
    assert seen.cases == len(played)
    assert seen.refusals > 0  # Closing -> Connected is refused in xenstore


@pytest.mark.parametrize("driver", sorted(SUBJECTS))
async def test_frontend_survives_backend_state_flaps(driver: str, tmp_path: Path) -> None:
    played = cases(zlib.crc32(driver.encode()) + 7)
    seen = await run_frontend_matrix(SUBJECTS[driver](), tmp_path, played)
    assert seen.cases == len(played)


class StoppingBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """Negative control: the behaviour before issue 10 -- a frontend's impossible transition
    finished the device, and `ringkit block serve` exited."""

    async def _protocol_failure(self, exc: RemoteProtocolError) -> None:
        await self._teardown()
        self._finish(exc)


async def test_negative_control_a_backend_that_stops_is_caught(tmp_path: Path) -> None:
    stopping = dataclasses.replace(
        SUBJECTS["echo"](), make_backend=lambda dom, guest, tmp: StoppingBackend(dom, guest)
    )
    with pytest.raises(AssertionError, match=r"connected '5' -> '4'.*(died|stopped serving)"):
        await run_backend_matrix(stopping, tmp_path, REPORTED)
