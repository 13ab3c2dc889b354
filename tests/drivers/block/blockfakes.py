"""In-process stand-ins for the frontend's granted pages and a blkif ring, for transport-free
driver tests.

`FakeGrants` holds a pool of pages under refs 1000.. and implements `GrantTable.map` the way
gntdev behaves for the backend: unknown refs and writable maps of read-only grants are refused
with `GrantError`; a one-page map aliases the page; a multi-page map is a contiguous copy that is
written back when it is closed (the backend always closes before answering).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

import anyio
from ringkit.frontends.block.client import BlockClient, DiskInfo

from ringkit._errors import GrantError, PeerGoneError
from ringkit.abc import PAGE_SIZE, EventChannel, GrantTable, MappedPages, SharedPages
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantPool
from ringkit.testing.memory import memory_event_pair

BASE_REF = 1000


class FakeMapped(MappedPages):
    def __init__(self, owner: FakeGrants, refs: Sequence[int], writable: bool) -> None:
        self._owner = owner
        self._refs = tuple(refs)
        self._writable = writable
        if len(refs) == 1:
            self._buffer = owner.page(refs[0])
            self._copy: bytearray | None = None
        else:
            self._copy = bytearray(b"".join(owner.page(r) for r in refs))
            self._buffer = memoryview(self._copy)
        if not writable:
            self._buffer = self._buffer.toreadonly()
        self._open = True
        owner.live_maps += 1

    @property
    def peer(self) -> int:
        return 1

    @property
    def refs(self) -> tuple[int, ...]:
        return self._refs

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def buffer(self) -> memoryview:
        if not self._open:
            raise anyio.ClosedResourceError
        return self._buffer

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        if not self._open:
            return
        self._open = False
        self._owner.live_maps -= 1
        if self._copy is not None and self._writable:
            for i, ref in enumerate(self._refs):
                self._owner.page(ref)[:] = self._copy[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]


class FakeGrants(GrantTable):
    def __init__(self, pages: int) -> None:
        self.memory = bytearray(pages * PAGE_SIZE)
        self.refs = tuple(range(BASE_REF, BASE_REF + pages))
        self.readonly_refs: set[int] = set()
        self.live_maps = 0
        self.map_calls = 0

    def page(self, ref: int) -> memoryview:
        index = ref - BASE_REF
        return memoryview(self.memory)[index * PAGE_SIZE:(index + 1) * PAGE_SIZE]

    async def share(self, peer: int, count: int = 1, *, writable: bool = True) -> SharedPages:
        raise NotImplementedError("the fake only plays the frontend's side of the grants")

    async def map(self, peer: int, refs: Sequence[int], *, writable: bool = True
                  ) -> MappedPages:
        self.map_calls += 1
        for ref in refs:
            if ref not in range(BASE_REF, BASE_REF + len(self.refs)):
                raise GrantError(f"unknown grant ref {ref}", errno.EINVAL)
            if writable and ref in self.readonly_refs:
                raise GrantError(f"grant ref {ref} is read-only", errno.EPERM)
        await anyio.lowlevel.checkpoint()
        return FakeMapped(self, refs, writable)


class FakeEventChannel(EventChannel):
    """One end of an in-process event channel pair (see `event_pair`)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.peer: FakeEventChannel | None = None
        self._pending = False
        self._wakeup = anyio.Event()
        self._closed = False
        self.peer_gone = False
        self.notifications = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def remote_domid(self) -> int:
        return 1

    def notify(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        assert self.peer is not None
        self.notifications += 1
        self.peer._pending = True
        self.peer._wakeup.set()

    async def wait(self) -> None:
        while not self._pending:
            if self._closed:
                raise anyio.ClosedResourceError
            if self.peer_gone:
                raise PeerGoneError("fake peer closed its end")
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        self._pending = False

    def kill_peer(self) -> None:
        """Make `wait` raise PeerGoneError, as when the remote end closes."""
        self.peer_gone = True
        self._wakeup.set()

    async def aclose(self) -> None:
        self._closed = True
        self._wakeup.set()


def event_pair() -> tuple[FakeEventChannel, FakeEventChannel]:
    a, b = FakeEventChannel(1), FakeEventChannel(2)
    a.peer, b.peer = b, a
    return a, b


class RingPair:
    """A `BlockClient` on one in-memory blkif ring, its pool the pages of `grants`, with the
    ring's backend half left to the test (`back`, a raw `BackRing`, and `back_event`) -- to
    serve it (`serve_ring`) or to answer by hand.  Run `client.run` (or call
    `client.queue.poll()`) for the answers to land."""

    def __init__(self, grants: FakeGrants, info: DiskInfo, **client_args: Any) -> None:
        self.ring = bytearray(PAGE_SIZE)
        self.front_event, self.back_event = memory_event_pair()
        self.front = FrontRingChannel(FrontRing.init(self.ring, blkif.RING_LAYOUT),
                                      self.front_event)
        self.back = BackRing.attach(self.ring, blkif.RING_LAYOUT)
        self.back_channel = BackRingChannel(BackRing.attach(self.ring, blkif.RING_LAYOUT),
                                            self.back_event)
        self.client = BlockClient([self.front], GrantPool(memoryview(grants.memory),
                                                          grants.refs), info, **client_args)

    def answer(self, response: blkif.Response) -> None:
        """Put one response on the ring by hand (the backend half `back`) and ring the bell."""
        self.back.put_response(blkif.encode_response(response.id, response.operation,
                                                     response.status))
        if self.back.push_responses():
            self.back_event.notify()
