"""Fixtures for the xenstore tests: a simulated xenstored and clients connected to it as any
domain, over real Unix socketpairs."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from xs_helpers import ClientFactory

from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import StoreClient


@asynccontextmanager
async def serve_pair(
    server: XenstoreServer, domid: int
) -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.TaskGroup]]:
    """A raw client socket connected to `server` as domain `domid`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client_stream = await anyio.abc.SocketStream.from_socket(ours)
    server_stream = await anyio.abc.SocketStream.from_socket(theirs)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve_connection, server_stream, domid)
        try:
            yield client_stream, tg
        finally:
            await client_stream.aclose()


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
