"""`SharedEventChannel`: one event channel serving several rings.

netif's tx and rx rings share one ``event-channel`` unless both ends agree to
``feature-split-event-channels``; a `RingChannel` per ring would then be two tasks waiting on
one port, which an event channel does not allow.  `SharedEventChannel` hands out views
(`view`), one per ring: each is an `EventChannel` whose `wait` returns once an event newer than
its own previous wait arrived, however many views wait.  One waiting view at a time waits on
the real port; the others wait for it, and every event reaches every view (events coalesce, as
they always do).  Notifying through any view rings the one port.
"""

from __future__ import annotations

import anyio

from .._errors import PeerGoneError
from ..abc import EventChannel
from .pool import fresh_error

__all__ = ("SharedEventChannel",)


class SharedEventChannel:
    """Views of one `EventChannel` for several waiters (see the module docstring).  Closing a
    view does not close the port: its owner (the device's queue) does."""

    def __init__(self, event: EventChannel) -> None:
        self.event = event
        self._generation = 0
        self._leader = False
        self._woken = anyio.Event()
        self._error: BaseException | None = None

    def view(self) -> EventChannel:
        """A new view: an `EventChannel` of its own for one ring's shell."""
        return _View(self)

    async def _wait_newer(self, seen: int) -> int:
        while self._generation == seen:
            if self._error is not None:
                raise _again(self._error)
            if not self._leader:
                self._leader = True
                try:
                    await self.event.wait()
                    self._generation += 1
                except (PeerGoneError, anyio.ClosedResourceError) as exc:
                    self._error = exc
                    raise
                finally:
                    self._leader = False
                    woken, self._woken = self._woken, anyio.Event()
                    woken.set()
            else:
                await self._woken.wait()
        return self._generation


def _again(error: BaseException) -> BaseException:
    if isinstance(error, anyio.ClosedResourceError):
        return anyio.ClosedResourceError()
    return fresh_error(error)


class _View(EventChannel):
    def __init__(self, shared: SharedEventChannel) -> None:
        self._shared = shared
        self._seen = shared._generation

    @property
    def port(self) -> int:
        return self._shared.event.port

    @property
    def remote_domid(self) -> int:
        return self._shared.event.remote_domid

    def notify(self) -> None:
        self._shared.event.notify()

    async def wait(self) -> None:
        self._seen = await self._shared._wait_newer(self._seen)

    def peer_bound(self) -> None:
        self._shared.event.peer_bound()

    async def aclose(self) -> None:
        """Nothing to release: the port belongs to the shared channel's owner."""
