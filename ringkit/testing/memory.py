"""In-memory event channels and grants: a ring's two ends in one task, no transport at all.

For unit tests of ring shells, request queues and driver logic, as trio.testing's
``memory_stream_pair`` is for streams.  They keep the rules that matter to a driver:

* `memory_event_pair` -- two `EventChannel` ends; notifications coalesce as Xen's do; closing
  one end makes the other's `wait` raise `PeerGoneError` (as a peer's death does);
* `memory_grants` -- a frontend's and a backend's `GrantTable` over one grant table: `share`
  grants zeroed pages to the other domain, `map` maps them only if they were granted to the
  mapping domain, not revoked, and writable when a writable mapping is asked (`GrantError`
  with the kernel's errno otherwise).  `revoke` pulls a grant as a hostile frontend would, and
  `MemoryGrantTable.live` counts what is still shared or mapped (a leak check),
  `MemoryGrantTable.pages_mapped` what a domain mapped in all.

Unmap-notify is accepted, not acted on: there is no process to die.  Use the simulated Xen
(`ringkit.sim`) for that.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from .._errors import ConfigError, EventChannelError, GrantError, PeerGoneError
from ..abc import (
    PAGE_SIZE,
    EventChannel,
    GrantCopySegment,
    GrantTable,
    MappedPages,
    SharedPages,
    check_copy_segments,
)

__all__ = ("MemoryEventChannel", "MemoryGrantTable", "memory_event_pair", "memory_grants")


class MemoryEventChannel(EventChannel):
    """One end of an in-memory event channel (see `memory_event_pair`)."""

    def __init__(self, port: int, remote_domid: int) -> None:
        self._port = port
        self._remote = remote_domid
        self.peer: MemoryEventChannel | None = None
        self._pending = False
        self._wakeup = anyio.Event()
        self.closed = False
        self.notifications = 0
        """Notifications this end sent (doorbells rung)."""

    @property
    def port(self) -> int:
        return self._port

    @property
    def remote_domid(self) -> int:
        return self._remote

    def notify(self) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        peer = self.peer
        if peer is None or peer.closed:
            raise EventChannelError("the remote end is closed")
        self.notifications += 1
        peer._pending = True
        peer._wakeup.set()

    async def wait(self) -> None:
        while not self._pending:
            if self.closed:
                raise anyio.ClosedResourceError
            if self.peer is None or self.peer.closed:
                raise PeerGoneError(f"event channel {self._port}: the remote end closed")
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        self._pending = False

    async def aclose(self) -> None:
        """Close this end: its waits and the peer's wake up (the peer's then raise
        `PeerGoneError`)."""
        if not self.closed:
            self.closed = True
            self._wakeup.set()
            if self.peer is not None:
                self.peer._wakeup.set()
        await anyio.lowlevel.checkpoint()


def memory_event_pair(front_domid: int = 1, back_domid: int = 0
                      ) -> tuple[MemoryEventChannel, MemoryEventChannel]:
    """A connected pair of event channel ends: ``(frontend's, backend's)``."""
    front = MemoryEventChannel(1, back_domid)
    back = MemoryEventChannel(2, front_domid)
    front.peer, back.peer = back, front
    return front, back


@dataclass
class _Grant:
    shared: _Shared
    index: int
    """Which page of `shared` the grant is."""
    owner: int
    to: int
    writable: bool
    revoked: bool = False


@dataclass
class _Table:
    grants: dict[int, _Grant] = field(default_factory=dict)
    next_ref: int = 8  # low refs are the toolstack's in Xen; start past them
    shared: int = 0
    mapped: int = 0


class _Pages:
    """What a share and a mapping have alike: the peer, the refs, writable or not, and the
    view (None once closed).  The ABC's abstract members are met through this base."""

    def __init__(self, table: _Table, peer: int, refs: Sequence[int], writable: bool,
                 view: memoryview) -> None:
        self._table = table
        self._peer = peer
        self._refs = tuple(refs)
        self._writable = writable
        self._view: memoryview | None = view

    @property
    def peer(self) -> int:
        return self._peer

    @property
    def refs(self) -> tuple[int, ...]:
        return self._refs

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def buffer(self) -> memoryview:
        if self._view is None:
            raise anyio.ClosedResourceError
        return self._view

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        if offset is None and port is None:
            raise ConfigError("set_unmap_notify needs an offset or a port")


class _Shared(_Pages, SharedPages):
    def __init__(self, table: _Table, peer: int, refs: list[int], writable: bool) -> None:
        self.memory = bytearray(PAGE_SIZE * len(refs))
        super().__init__(table, peer, refs, writable, memoryview(self.memory))
        table.shared += len(refs)

    @property
    def buffer_open(self) -> bool:
        return self._view is not None

    async def aclose(self) -> None:
        if self._view is None:
            raise GrantError(f"refs {list(self._refs)} were unshared already", errno.EINVAL)
        self._view = None
        for ref in self._refs:
            self._table.grants.pop(ref, None)
        self._table.shared -= len(self._refs)
        await anyio.lowlevel.checkpoint()


class _Mapped(_Pages, MappedPages):
    """Refs that are consecutive pages of one share are a window on them (true sharing);
    others are a copy taken at map time and written back at unmap."""

    def __init__(self, table: _Table, peer: int, refs: Sequence[int], writable: bool,
                 grants: list[_Grant]) -> None:
        first = grants[0]
        self._copied: list[_Grant] = []
        if all(g.shared is first.shared and g.index == first.index + i
               for i, g in enumerate(grants)):
            view = memoryview(first.shared.memory)[first.index * PAGE_SIZE:
                                                   (first.index + len(grants)) * PAGE_SIZE]
        else:
            copy = bytearray(PAGE_SIZE * len(grants))
            for i, g in enumerate(grants):
                copy[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = _page(g)
            view = memoryview(copy)
            self._copied = grants
        super().__init__(table, peer, refs, writable, view if writable else view.toreadonly())
        table.mapped += len(refs)

    async def aclose(self) -> None:
        view, self._view = self._view, None
        if view is None:
            raise GrantError("double unmap", errno.EINVAL)
        if self._writable:
            for i, g in enumerate(self._copied):
                if g.shared.buffer_open:
                    _page(g)[:] = view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        self._table.mapped -= len(self._refs)
        await anyio.lowlevel.checkpoint()


def _page(grant: _Grant) -> memoryview:
    at = grant.index * PAGE_SIZE
    return memoryview(grant.shared.memory)[at:at + PAGE_SIZE]


class MemoryGrantTable(GrantTable):
    """One domain's view of an in-memory grant table (see `memory_grants`).

    Refs that are consecutive pages of one `share` map as a window on those very pages (true
    sharing); any other list maps as a copy written back at unmap -- enough for request/response
    protocols, where the frontend leaves a request's pages alone while it is in flight.
    """

    def __init__(self, table: _Table, domid: int) -> None:
        self._table = table
        self.domid = domid
        self.pages_mapped = 0
        """Pages this domain has mapped so far, summed over every `map` that succeeded (a page
        mapped twice counts twice; unmapping does not subtract): what persistent grants save."""

    @property
    def live(self) -> tuple[int, int]:
        """``(pages still shared, pages still mapped)`` in the whole table."""
        return self._table.shared, self._table.mapped

    def domain(self, domid: int) -> MemoryGrantTable:
        """Another domain's view of this same grant table: a third party, to test that grants
        to one domain refuse another."""
        if domid < 0 or domid == self.domid:
            raise ConfigError(f"domain {domid}: not a domain id other than {self.domid}")
        return MemoryGrantTable(self._table, domid)

    async def share(self, peer: int, count: int = 1, *, writable: bool = True) -> SharedPages:
        if count < 1:
            raise ConfigError(f"share of {count} pages")
        table = self._table
        refs = list(range(table.next_ref, table.next_ref + count))
        table.next_ref += count
        shared = _Shared(table, peer, refs, writable)
        for i, ref in enumerate(refs):
            table.grants[ref] = _Grant(shared, i, self.domid, peer, writable)
        await anyio.lowlevel.checkpoint()
        return shared

    def revoke(self, ref: int) -> None:
        """Pull grant `ref` (later maps fail with EINVAL, as after gntalloc's dealloc)."""
        grant = self._table.grants.get(ref)
        if grant is not None:
            grant.revoked = True

    def _grant(self, peer: int, ref: int, writable: bool) -> _Grant:
        """Grant `ref` of `peer`, checked as a map checks it."""
        grant = self._table.grants.get(ref)
        if grant is None or grant.revoked or grant.owner != peer:
            raise GrantError(f"grant ref {ref} of domain {peer} is not valid", errno.EINVAL)
        if grant.to != self.domid:
            raise GrantError(f"grant ref {ref} is granted to domain {grant.to}, not "
                             f"{self.domid}", errno.EPERM)
        if writable and not grant.writable:
            raise GrantError(f"grant ref {ref} is read-only", errno.EPERM)
        return grant

    async def map(self, peer: int, refs: Sequence[int], *, writable: bool = True
                  ) -> MappedPages:
        if not refs:
            raise ConfigError("map of no refs")
        grants = [self._grant(peer, ref, writable) for ref in refs]
        await anyio.lowlevel.checkpoint()
        mapped = _Mapped(self._table, peer, refs, writable, grants)
        self.pages_mapped += len(refs)
        return mapped


    async def copy_to_grants(self, peer: int, segments: Sequence[GrantCopySegment],
                             data: bytes | bytearray | memoryview) -> None:
        """Copy straight into the granting domain's pages (a grant copy: nothing mapped),
        with a writable map's checks."""
        total = check_copy_segments(segments)
        if total != len(data):
            raise ConfigError(f"{len(data)} bytes to copy into segments of {total}")
        grants = [self._grant(peer, seg.ref, True) for seg in segments]
        await anyio.lowlevel.checkpoint()
        source = memoryview(data).cast("B")
        pos = 0
        for seg, grant in zip(segments, grants, strict=True):
            _page(grant)[seg.offset:seg.offset + seg.length] = source[pos:pos + seg.length]
            pos += seg.length

    async def copy_from_grants(self, peer: int,
                               segments: Sequence[GrantCopySegment]) -> bytes:
        """Copy straight out of the granting domain's pages, with a read-only map's checks."""
        check_copy_segments(segments)
        grants = [self._grant(peer, seg.ref, False) for seg in segments]
        await anyio.lowlevel.checkpoint()
        return b"".join(bytes(_page(g)[seg.offset:seg.offset + seg.length])
                        for seg, g in zip(segments, grants, strict=True))


def memory_grants(front_domid: int = 1, back_domid: int = 0
                  ) -> tuple[MemoryGrantTable, MemoryGrantTable]:
    """A frontend's and a backend's grant tables over one in-memory table:
    ``(frontend's, backend's)``."""
    table = _Table()
    return MemoryGrantTable(table, front_domid), MemoryGrantTable(table, back_domid)
