"""In-process stand-ins for a transport's event channels, to test the async shells alone."""

from __future__ import annotations

import anyio

from ringkit import EventChannelError, PeerGoneError
from ringkit.abc import EventChannel


class FakeEventChannel(EventChannel):
    """One end of an in-process event channel pair; events coalesce like Xen's."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.peer: FakeEventChannel | None = None
        self._pending = False
        self._wakeup = anyio.Event()
        self.closed = False
        self.peer_gone = False
        self.notifies = 0

    @classmethod
    def pair(cls) -> tuple[FakeEventChannel, FakeEventChannel]:
        a, b = cls(1), cls(2)
        a.peer, b.peer = b, a
        return a, b

    @property
    def port(self) -> int:
        return self._port

    @property
    def remote_domid(self) -> int:
        return 0

    def _deliver(self) -> None:
        self._pending = True
        self._wakeup.set()

    def notify(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        if self.peer is None or self.peer.closed:
            raise EventChannelError("peer closed")
        self.notifies += 1
        self.peer._deliver()

    async def wait(self) -> None:
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            if self._pending:
                self._pending = False
                return
            if self.peer_gone:
                raise PeerGoneError("peer closed its end")
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        self.closed = True
        self._wakeup.set()
        if self.peer is not None:
            self.peer.peer_gone = True
            self.peer._wakeup.set()
