"""Helpers shared by the xenstore tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc

from ringkit.abc import Watch
from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import StoreClient

ClientFactory = Callable[[int], AbstractAsyncContextManager[StoreClient]]


async def next_event(watch: AsyncIterator[str], timeout: float = 5.0) -> str:
    """The next path of a watch, failing (not hanging) if none comes."""
    with anyio.fail_after(timeout):
        return await watch.__anext__()


async def no_event(watch: Watch, settle: Callable[[], Awaitable[object]]) -> None:
    """Assert the watch has nothing pending after `settle()` (a round trip on the watcher's own
    connection: the server queues events before later replies, so any event caused before it
    has arrived by then)."""
    await settle()
    assert not watch.pending, f"unexpected watch events {list(watch.pending)}"


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
