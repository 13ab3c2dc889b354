"""What every async shell over a shared ring keeps: its event channel and its closed / broken
state, with anyio's error contract (`ClosedResourceError` after a local close,
`BrokenResourceError` chained from the cause once the peer failed)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from .._errors import EventChannelError
from ..abc import EventChannel


class PeerLink:
    """Closed / broken state and the doorbell of one shell (`RingChannel`, `PipeStream`)."""

    def __init__(self, event: EventChannel) -> None:
        self._event = event
        self._closed = False
        self._broken: BaseException | None = None
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
        try:
            self._event.notify()
        except EventChannelError as exc:
            raise self._break(exc) from exc
