"""The transport conformance suite (`ringkit.testing`) on every transport this machine has:
the simulated Xen always, the real /dev/xen devices where they exist (run under Xen-in-QEMU),
each on asyncio and trio."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from ringkit.abc import Domain
from ringkit.testing import (
    TRANSPORT_CHECKS,
    PairMaker,
    check_grant_limit,
    check_rebind_after_peer_close,
    check_refusals,
)

SIM_GRANT_LIMIT = 16
"""A small limit keeps the limit checks fast on the simulator."""
XEN_GRANT_LIMIT = 1024
"""gntalloc's default limit."""

requires_dev_xen = pytest.mark.skipif(
    not os.path.exists("/dev/xen/gntalloc"), reason="needs /dev/xen/gntalloc (run under Xen)"
)


@pytest.fixture(params=["sim", pytest.param("xen", marks=[pytest.mark.xen, requires_dev_xen])])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Runner = Callable[[Callable[[PairMaker], Awaitable[None]]], Awaitable[None]]


async def _run_on_sim(check: Callable[[PairMaker], Awaitable[None]]) -> None:
    from ringkit.sim import SimXen

    async with SimXen.start(in_process=True, grant_limit=SIM_GRANT_LIMIT) as xen:
        a_id = await xen.create_domain("conformance-a")
        b_id = await xen.create_domain("conformance-b")

        @asynccontextmanager
        async def make_pair() -> AsyncIterator[tuple[Domain, Domain]]:
            async with xen.connect(a_id) as a, xen.connect(b_id) as b:
                yield a, b

        await check(make_pair)
        leaks = await xen.settled_leaks()
        assert not leaks, f"the simulator still holds {leaks}"


async def _run_on_xen(check: Callable[[PairMaker], Awaitable[None]]) -> None:
    from ringkit.xen import open_domain

    def make_pair() -> AbstractAsyncContextManager[tuple[Domain, Domain]]:
        @asynccontextmanager
        async def pair() -> AsyncIterator[tuple[Domain, Domain]]:
            async with open_domain() as a, open_domain() as b:
                yield a, b

        return pair()

    await check(make_pair)


def _runner(transport: str) -> Runner:
    return _run_on_sim if transport == "sim" else _run_on_xen


def _limit(transport: str) -> int:
    return SIM_GRANT_LIMIT if transport == "sim" else XEN_GRANT_LIMIT


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance(transport: str, name: str) -> None:
    await _runner(transport)(TRANSPORT_CHECKS[name])


@pytest.mark.anyio
async def test_refusals(transport: str) -> None:
    limit = _limit(transport)

    async def check(make_pair: PairMaker) -> None:
        await check_refusals(make_pair, grant_limit=limit)

    await _runner(transport)(check)


@pytest.mark.anyio
async def test_grant_limit(transport: str) -> None:
    limit = _limit(transport)

    async def check(make_pair: PairMaker) -> None:
        await check_grant_limit(make_pair, limit)

    await _runner(transport)(check)


@pytest.mark.anyio
async def test_rebind_after_peer_close_on_sim() -> None:
    """Xen's evtchn_close makes the surviving end unbound again; the real transport's channel
    stays gone once its peer left (it cannot tell a rebind from its polling), so only the
    simulator is held to the rebind."""
    await _run_on_sim(check_rebind_after_peer_close)
