"""What every async shell over a shared ring keeps: its event channel and its closed / broken
state, with anyio's error contract (`ClosedResourceError` after a local close,
`BrokenResourceError` chained from the cause once the peer failed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio

from .._errors import EventChannelError
from ..abc import EventChannel


@dataclass(slots=True)
class LinkStats:
    """What one shell did to move its items: plain counters, cheap enough for the hot path, so
    that a benchmark (or a test) can tell whether batching and ring.h's notification hold-off
    work.  They only grow; take differences around the interval of interest."""

    pushes: int = 0
    """Producer updates published (each one fence-store-fence, whatever it carried).  Counted
    by `RingChannel`; a `PipeStream` publishes an index with every read and write and leaves
    this at 0."""
    notifications: int = 0
    """Doorbells rung on the event channel (the peer asked for them through its event index)."""
    sleeps: int = 0
    """Waits on the event channel (each one a trip through the event loop's poller)."""
    polls: int = 0
    """Polling windows begun (``poll_us`` of a `RingChannel` or a vchan): spins on the ring
    before sleeping (a plain `PipeStream`, the console's, does not poll)."""
    poll_hits: int = 0
    """Polling windows that found items before their time ran out (no sleep needed)."""


class PeerLink:
    """Closed / broken state and the doorbell of one shell (`RingChannel`, `PipeStream`)."""

    def __init__(self, event: EventChannel) -> None:
        self._event = event
        self._closed = False
        self._broken: BaseException | None = None
        self.stats = LinkStats()
        """Counters of pushes, doorbells, sleeps and polling (see `LinkStats`)."""
        self.on_broken: Callable[[BaseException], None] | None = None
        """Called once with the cause when the shell breaks (the device framework uses it to
        learn that the peer died or misbehaved)."""

    def _wake_sleepers(self) -> None:
        """Wake every task sleeping in the shell, so it sees the break."""
        raise NotImplementedError

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken is not None:
            raise anyio.BrokenResourceError from self._broken

    def _break(self, exc: BaseException) -> anyio.BrokenResourceError:
        """Record the first cause, tell `on_broken`, wake sleepers; return the error to raise."""
        if self._broken is None:
            self._broken = exc
            if self.on_broken is not None:
                self.on_broken(exc)
        self._wake_sleepers()
        err = anyio.BrokenResourceError(str(exc))
        err.__cause__ = exc
        return err

    def _notify(self) -> None:
        self.stats.notifications += 1
        try:
            self._event.notify()
        except EventChannelError as exc:
            raise self._break(exc) from exc
