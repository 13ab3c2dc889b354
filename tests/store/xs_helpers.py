"""Helpers shared by the xenstore tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import anyio

from ringkit.store import StoreClient

ClientFactory = Callable[[int], AbstractAsyncContextManager[StoreClient]]


async def next_event(watch: AsyncIterator[str], timeout: float = 5.0) -> str:
    """The next path of a watch, failing (not hanging) if none comes."""
    with anyio.fail_after(timeout):
        return await watch.__anext__()


async def no_event(watch: AsyncIterator[str], settle: Callable[[], Awaitable[object]]) -> None:
    """Assert the watch has nothing pending after `settle()` (a round trip on the watcher's own
    connection: the server queues events before later replies, so any event caused before it
    has arrived by then)."""
    await settle()
    pending = watch._queue.pending  # type: ignore[attr-defined]
    assert not pending, f"unexpected watch events {list(pending)}"
