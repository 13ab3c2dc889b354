"""Fixtures for the xenstore tests: a simulated xenstored and clients connected to it as any
domain, over real Unix socketpairs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from xs_helpers import ClientFactory, serve_pair

from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import StoreClient


@pytest.fixture
def server() -> XenstoreServer:
    return XenstoreServer()


@pytest.fixture
def connect(server: XenstoreServer) -> ClientFactory:
    """``async with connect(domid) as store``: a StoreClient talking to `server` as `domid`."""

    @asynccontextmanager
    async def factory(domid: int) -> AsyncIterator[StoreClient]:
        async with serve_pair(server, domid) as (stream, _tg):
            client = StoreClient(stream)
            async with client:
                yield client

    return factory
