"""A backend that refused what a frontend published offers a new connection once the frontend
has followed it to Closed (blkback's "prepare for reconnect").

Found under real Xen (console, the conformance suite's hostile-backend/garbage-page): a new
backend read the frontend's ring-ref while the frontend, which had been connected before, was
revoking that grant; the backend's map failed, it refused (error node, Closing, Closed), the
frontend followed to Closed -- and each end then waited for the other to start over.  Here the
frontend publishes a never-granted ring-ref once, deterministically: without the backend's
offer, the frontend never connects again (the timeout below)."""

from __future__ import annotations

import anyio
import pytest

from ringkit.device import XenbusState
from ringkit.device.paths import Nodes
from ringkit.testing import DriverUnderTest
from ringkit.testing.conformance import connects, exchange, serving

from .after_a_backend import frontend_after_a_backend
from .drivers import EchoBackend, EchoFrontend

pytestmark = pytest.mark.anyio
S = XenbusState
NEVER_GRANTED = 4000


class StaleOnceFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """Publishes a ring-ref nobody granted when `stale_next` is set (once)."""

    stale_next = False

    async def publish(self, nodes: Nodes) -> None:
        await super().publish(nodes)
        if self.stale_next:
            self.stale_next = False
            await nodes.write("ring-ref", NEVER_GRANTED)


async def echo_exchange(front: EchoFrontend) -> None:
    assert await front.echo(7, b"again") == b"AGAIN"


async def test_a_refused_frontend_is_offered_a_new_connection() -> None:
    driver = DriverUnderTest(EchoBackend, StaleOnceFrontend, echo_exchange, name="echo")
    async with frontend_after_a_backend(driver, StaleOnceFrontend) as (w, front):
        front.stale_next = True  # the next backend finds a ring-ref it cannot map
        async with serving(w, driver) as second:
            await connects(w, driver, front, 1)
            await exchange(w, driver, front, "after the refusal")
            assert second.backend.generation == 1
        assert not front.stale_next


class AlwaysStaleFrontend(StaleOnceFrontend):
    """After `stale_from_now`, every connection it publishes is unusable."""

    async def publish(self, nodes: Nodes) -> None:
        stale = self.stale_next
        await super().publish(nodes)
        self.stale_next = stale


class CountingBackend(EchoBackend):  # type: ignore[misc]
    refusals = 0

    async def _local_failure(self, exc: object) -> None:
        type(self).refusals += 1
        await super()._local_failure(exc)  # type: ignore[arg-type]


async def test_offers_to_a_frontend_that_keeps_failing_back_off() -> None:
    """Not a busy loop: the first offer comes at once, the next after 0.5 s, 1 s, 2 s..."""
    driver = DriverUnderTest(CountingBackend, AlwaysStaleFrontend, echo_exchange, name="echo")
    async with frontend_after_a_backend(driver, AlwaysStaleFrontend) as (w, front):
        front.stale_next = True
        CountingBackend.refusals = 0
        async with serving(w, driver):
            await anyio.sleep(2.0)
            refusals = CountingBackend.refusals
        # at 0, 0, 0.5 and 1.5 s (+ handshake time each): four; a busy loop makes hundreds
        assert 2 <= refusals <= 5, refusals
        assert not front.is_connected
