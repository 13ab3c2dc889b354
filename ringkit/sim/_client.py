"""The transport interface (`ringkit.abc`) implemented over the simulated Xen.

A `SimDomain` is one process's connection to one domain of the simulator.  Granted pages arrive
as memfds and are mapped here; read-only mappings get read-only descriptors, so the kernel
refuses writes.  Event channels are pairs of eventfds: each side waits on its own and writes
into its peer's, so `notify()` is one ``write()`` with no server involved.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from .._config import DOMID_MAX
from .._errors import ConfigError, EventChannelError, GrantError, PeerGoneError
from .._pagemap import PageMap, Piece, coalesce
from ..abc import (
    PAGE_SIZE,
    Domain,
    EventChannel,
    EventChannels,
    GrantCopySegment,
    GrantTable,
    Leaks,
    MappedPages,
    SharedPages,
    Store,
    check_copy_segments,
)
from ..store import StoreClient, connect_unix
from . import _paths
from ._kernel import PEER_GONE, signal
from ._link import Link
from ._wire import COPY_AREA_SIZE, COPY_CHUNK, COPY_SEGMENTS

log = logging.getLogger(__name__)


def _check_domid(domid: object) -> int:
    if not isinstance(domid, int) or isinstance(domid, bool) or not 0 <= domid <= DOMID_MAX:
        raise ConfigError(f"bad domid {domid!r}")
    return domid


def _notify_args(
    size: int, offset: int | None, port: int | None, writable: bool, dom: SimDomain
) -> None:
    if offset is None and port is None:
        raise ConfigError("set_unmap_notify needs an offset, a port, or both")
    if offset is not None:
        if not isinstance(offset, int) or not 0 <= offset < size:
            raise ConfigError(f"unmap-notify offset {offset!r} is outside the {size} bytes")
        if not writable:
            raise ConfigError("cannot clear a byte in a read-only mapping")
    if port is not None and port not in dom._channels:
        raise GrantError(f"unmap-notify port {port!r} is not an open port", errno.EINVAL)


# --------------------------------------------------------------------------- grants


class SimSharedPages(SharedPages):
    """Pages this process granted (see `SharedPages`)."""

    def __init__(
        self, dom: SimDomain, share_id: int, peer: int, refs: Sequence[int], writable: bool,
        area: PageMap,
    ) -> None:
        self._dom = dom
        self._id = share_id
        self._peer = peer
        self._refs = tuple(refs)
        self._writable = writable
        self._area: PageMap | None = area

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
        if self._area is None:
            raise anyio.ClosedResourceError
        return self._area.view

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        if self._area is None:
            raise anyio.ClosedResourceError
        _notify_args(len(self._refs) * PAGE_SIZE, offset, port, True, self._dom)
        self._dom._link.send_nowait(
            {"op": "unmap_notify", "kind": "share", "ident": self._id, "offset": offset,
             "port": port}
        )

    async def aclose(self) -> None:
        """Revoke the grants and unmap the pages (the peer's mappings stay valid).  Buffers the
        caller still exports from `buffer` stay valid: the unmap waits for their release.

        Raises:
            GrantError: the pages were closed already (a double unmap).
        """
        if self._area is None:
            await anyio.lowlevel.checkpoint()
            raise GrantError(f"pages {self._refs} were already unshared", errno.EINVAL)
        area, self._area = self._area, None
        # A raw export of `buffer` the caller still holds (cffi's from_buffer, say) keeps the
        # pages mapped until it is released, as on the real transport; the grant goes now.
        area.close()
        self._dom._shares.pop(self._id, None)
        if not self._dom._link.lost:
            with anyio.CancelScope(shield=True), contextlib.suppress(PeerGoneError):
                await self._dom._link.call("unshare", share=self._id)


class SimMappedPages(MappedPages):
    """A peer's pages mapped here (see `MappedPages`)."""

    def __init__(
        self, dom: SimDomain, map_id: int, peer: int, refs: Sequence[int], writable: bool,
        area: PageMap,
    ) -> None:
        self._dom = dom
        self._id = map_id
        self._peer = peer
        self._refs = tuple(refs)
        self._writable = writable
        self._area: PageMap | None = area

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
        if self._area is None:
            raise anyio.ClosedResourceError
        return self._area.view

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        if self._area is None:
            raise anyio.ClosedResourceError
        _notify_args(len(self._refs) * PAGE_SIZE, offset, port, self._writable, self._dom)
        self._dom._link.send_nowait(
            {"op": "unmap_notify", "kind": "map", "ident": self._id, "offset": offset,
             "port": port}
        )

    async def aclose(self) -> None:
        """Unmap the pages, running the unmap-notify.  Buffers the caller still exports from
        `buffer` stay valid: the local unmap waits for their release.

        Raises:
            GrantError: the pages were unmapped already (a double unmap).
        """
        if self._area is None:
            await anyio.lowlevel.checkpoint()
            raise GrantError(f"refs {self._refs} were already unmapped", errno.EINVAL)
        area, self._area = self._area, None
        self._dom._maps.pop(self._id, None)
        if not self._dom._link.lost:
            with anyio.CancelScope(shield=True), contextlib.suppress(PeerGoneError):
                await self._dom._link.call("unmap", map=self._id)
        area.close()


class SimGrantTable(GrantTable):
    """gntalloc / gntdev of a `SimDomain`."""

    def __init__(self, dom: SimDomain) -> None:
        self._dom = dom
        self._area: mmap.mmap | None = None
        self._area_lock = anyio.Lock()
        self._slots = anyio.Semaphore(COPY_AREA_SIZE // COPY_CHUNK)
        self._free_slots = list(range(0, COPY_AREA_SIZE, COPY_CHUNK))

    async def share(self, peer: int, count: int = 1, *, writable: bool = True) -> SharedPages:
        _check_domid(peer)
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"page count must be at least 1, not {count!r}")
        link = self._dom._link
        reply, fds = await link.call("share", peer=peer, count=count, writable=writable)
        share_id = int(reply["share"])
        try:
            (fd,) = fds
            area = PageMap([Piece(fd, 0, count * PAGE_SIZE)], writable=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await link.call("unshare", share=share_id)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        pages = SimSharedPages(self._dom, share_id, peer, reply["refs"], writable, area)
        self._dom._shares[share_id] = pages
        try:
            await link.call("activate", share=share_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pages.aclose()
            raise
        return pages

    async def map(
        self, peer: int, refs: Sequence[int], *, writable: bool = True
    ) -> MappedPages:
        _check_domid(peer)
        refs = list(refs)
        if not refs:
            raise ConfigError("no grant refs to map")
        link = self._dom._link
        reply, fds = await link.call("map", peer=peer, refs=refs, writable=writable)
        map_id = int(reply["map"])
        try:
            pieces = [Piece(fds[slot], index * PAGE_SIZE, PAGE_SIZE)
                      for slot, index in reply["pieces"]]
            area = PageMap(coalesce(pieces), writable=writable)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await link.call("unmap", map=map_id)
            if isinstance(exc, OSError):
                raise GrantError(f"mapping refs {refs}: {exc}", exc.errno) from exc
            raise
        finally:
            for fd in fds:
                os.close(fd)
        pages = SimMappedPages(self._dom, map_id, peer, refs, writable, area)
        self._dom._maps[map_id] = pages
        return pages

    async def copy_to_grants(self, peer: int, segments: Sequence[GrantCopySegment],
                             data: bytes | bytearray | memoryview) -> None:
        """A grant copy done by the simulated Xen itself (nothing is mapped here), as
        ``GNTTABOP_copy`` is done by Xen: the bytes go through this process's copy area, a
        memory both share, one request per `COPY_CHUNK` bytes."""
        _check_domid(peer)
        total = check_copy_segments(segments)
        if total != len(data):
            raise ConfigError(f"{len(data)} bytes to copy into segments of {total}")
        source = memoryview(data).cast("B")
        pos = 0
        async with self._copy_slot() as (area, at):
            for chunk in _chunks(segments):
                size = sum(seg.length for seg in chunk)
                area[at:at + size] = source[pos:pos + size]
                await self._copy(peer, chunk, at, into=True)
                pos += size

    async def copy_from_grants(self, peer: int,
                               segments: Sequence[GrantCopySegment]) -> bytes:
        """The bytes of `segments`, copied out by the simulated Xen itself (see
        `copy_to_grants`)."""
        _check_domid(peer)
        check_copy_segments(segments)
        parts = []
        async with self._copy_slot() as (area, at):
            for chunk in _chunks(segments):
                size = sum(seg.length for seg in chunk)
                await self._copy(peer, chunk, at, into=False)
                parts.append(area[at:at + size])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _copy(self, peer: int, chunk: Sequence[GrantCopySegment], at: int, *,
                    into: bool) -> None:
        # Shielded: the simulated Xen may still be moving bytes through the slot when a
        # cancelled wait would give it to the next copy (a hypercall is not interrupted
        # either).
        with anyio.CancelScope(shield=True):
            await self._dom._link.call(
                "copy", peer=peer, segments=[[s.ref, s.offset, s.length] for s in chunk],
                at=at, into=into)

    @asynccontextmanager
    async def _copy_slot(self) -> AsyncIterator[tuple[mmap.mmap, int]]:
        """One `COPY_CHUNK` of the copy area (asked of the simulated Xen on first use) for one
        copy at a time."""
        if self._area is None:
            async with self._area_lock:
                if self._area is None:
                    _, fds = await self._dom._link.call("copy_area")
                    try:
                        (fd,) = fds
                        self._area = mmap.mmap(fd, COPY_AREA_SIZE)
                    finally:
                        for fd in fds:
                            os.close(fd)
        try:
            self._slots.acquire_nowait()   # the usual case: no yield to the event loop
        except anyio.WouldBlock:
            await self._slots.acquire()
        at = self._free_slots.pop()
        try:
            yield self._area, at
        finally:
            self._free_slots.append(at)
            self._slots.release()

    def close_copy_area(self) -> None:
        """Drop this process's view of the copy area (the domain is closing).  A copy still
        holding the view keeps it until it returns (the mapping goes with the last
        reference), so none of them reads a closed area."""
        self._area = None


def _chunks(segments: Sequence[GrantCopySegment]) -> list[Sequence[GrantCopySegment]]:
    """`segments` cut into runs of at most `COPY_CHUNK` bytes and `COPY_SEGMENTS` segments."""
    out: list[Sequence[GrantCopySegment]] = []
    start, size = 0, 0
    for i, seg in enumerate(segments):
        if size + seg.length > COPY_CHUNK or i - start == COPY_SEGMENTS:
            out.append(segments[start:i])
            start, size = i, 0
        size += seg.length
    out.append(segments[start:])
    return out


# --------------------------------------------------------------------------- event channels


class SimEventChannel(EventChannel):
    """One port: waits on its own eventfd, notifies by writing the peer's.

    Fault hooks for tests: `drop_notifies` (the next n notifications are lost) and
    `fire_spurious()` (an event nobody sent).
    """

    def __init__(
        self, dom: SimDomain, port: int, remote_domid: int, wait_fd: int, notify_fd: int,
        *, bound: bool,
    ) -> None:
        self._dom = dom
        self._port = port
        self._remote = remote_domid
        self._wait_fd = wait_fd
        self._notify_fd = notify_fd
        self._bound = bound
        self._peer_closed = False
        self._gone = False
        self._closed = False
        self.drop_notifies = 0
        """Fault hook: this many coming notifications are silently dropped."""

    @property
    def port(self) -> int:
        return self._port

    @property
    def remote_domid(self) -> int:
        return self._remote

    def notify(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._peer_closed:
            raise EventChannelError(
                f"port {self._port} is not bound: domain {self._remote} closed its end",
                errno.ENOTCONN,
            )
        if self.drop_notifies > 0:
            self.drop_notifies -= 1
            return
        os.eventfd_write(self._notify_fd, 1)

    def fire_spurious(self) -> None:
        """Fault hook: make the next `wait()` return although the peer sent nothing."""
        if self._closed:
            raise anyio.ClosedResourceError
        signal(self._wait_fd)

    async def wait(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        blocked = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._gone:
                raise PeerGoneError(f"domain {self._remote} closed its end of port {self._port}")
            try:
                value = os.eventfd_read(self._wait_fd)
            except BlockingIOError:
                await anyio.wait_readable(self._wait_fd)
                blocked = True
                continue
            if value >= PEER_GONE:
                self._gone = self._peer_closed = True
                if value % PEER_GONE == 0:
                    continue
            if not blocked:  # every wait yields to the scheduler at least once
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return

    def _on_peer_closed(self) -> None:
        self._peer_closed = True

    def _on_rebound(self, notify_fd: int) -> None:
        """The remote domain bound this port again (Xen lets it, once the port's peer closed):
        notify the new binder from now on; waits block again instead of raising PeerGoneError.
        Events the old peer sent before closing still make one wake-up."""
        if self._closed:
            os.close(notify_fd)
            return
        os.close(self._notify_fd)
        self._notify_fd = notify_fd
        self._peer_closed = self._gone = False
        try:
            pending = os.eventfd_read(self._wait_fd)
        except BlockingIOError:
            return
        if pending % PEER_GONE:  # drop the mark of the old peer's close, keep the events
            signal(self._wait_fd, pending % PEER_GONE)

    async def aclose(self) -> None:
        """Close the port; the peer's waits then raise `PeerGoneError`.  Idempotent."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        anyio.notify_closing(self._wait_fd)
        os.close(self._wait_fd)
        os.close(self._notify_fd)
        self._dom._channels.pop(self._port, None)
        if not self._dom._link.lost:
            with (anyio.CancelScope(shield=True),
                  contextlib.suppress(PeerGoneError, EventChannelError)):
                await self._dom._link.call("close_port", port=self._port)


class SimEventChannels(EventChannels):
    """Event channels of a `SimDomain`."""

    def __init__(self, dom: SimDomain) -> None:
        self._dom = dom

    async def alloc_unbound(self, remote_domid: int) -> EventChannel:
        _check_domid(remote_domid)
        reply, fds = await self._dom._link.call("alloc_unbound", remote=remote_domid)
        return self._dom._new_channel(int(reply["port"]), remote_domid, fds, bound=False)

    async def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        _check_domid(remote_domid)
        if not isinstance(remote_port, int) or remote_port <= 0:
            raise EventChannelError(f"bad port {remote_port!r}", errno.EINVAL)
        reply, fds = await self._dom._link.call(
            "bind_interdomain", remote=remote_domid, remote_port=remote_port
        )
        return self._dom._new_channel(int(reply["port"]), remote_domid, fds, bound=True)


# --------------------------------------------------------------------------- domain


class SimDomain(Domain):
    """This process inside one domain of the simulated Xen; made by `connect`."""

    def __init__(self, domid: int, link: Link, store: StoreClient) -> None:
        self._domid = domid
        self._link = link
        self._store = store
        self._grants = SimGrantTable(self)
        self._events = SimEventChannels(self)
        self._shares: dict[int, SimSharedPages] = {}
        self._maps: dict[int, SimMappedPages] = {}
        self._channels: dict[int, SimEventChannel] = {}
        self._closed = False

    @property
    def domid(self) -> int:
        return self._domid

    @property
    def grants(self) -> GrantTable:
        return self._grants

    @property
    def events(self) -> EventChannels:
        return self._events

    @property
    def store(self) -> Store:
        return self._store

    def leaks(self) -> Leaks:
        return Leaks(
            grants=sum(len(s.refs) for s in self._shares.values()),
            maps=len(self._maps),
            ports=len(self._channels),
            fds=2 * len(self._channels),
            watches=self._store.watch_count,
        )

    def _new_channel(
        self, port: int, remote: int, fds: list[int], *, bound: bool
    ) -> SimEventChannel:
        wait_fd, notify_fd = fds
        channel = SimEventChannel(self, port, remote, wait_fd, notify_fd, bound=bound)
        self._channels[port] = channel
        return channel

    def _on_event(self, event: dict[str, Any], fds: list[int]) -> None:
        try:
            self._handle_event(event, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _handle_event(self, event: dict[str, Any], fds: list[int]) -> None:
        kind = event.get("ev")
        if kind == "peer_closed":
            channel = self._channels.get(event.get("port"))  # type: ignore[arg-type]
            if channel is not None:
                channel._on_peer_closed()
        elif kind == "bound":
            channel = self._channels.get(event.get("port"))  # type: ignore[arg-type]
            if channel is not None:
                if fds:  # bound again after its peer closed: the new binder's eventfd
                    channel._on_rebound(fds.pop())
                channel._bound = True
        elif kind == "lost":
            for channel in self._channels.values():
                channel._on_peer_closed()
                signal(channel._wait_fd, PEER_GONE)
        elif kind == "error":
            log.warning("the simulated Xen refused a request: %s", event.get("error"))

    async def aclose(self) -> None:
        """Unmap, unshare and close every port still open (in that order), then disconnect."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            for mapped in list(self._maps.values()):
                await mapped.aclose()
            for shared in list(self._shares.values()):
                await shared.aclose()
            for channel in list(self._channels.values()):
                await channel.aclose()
            await self._store.aclose()
            await self._link.aclose()
            self._grants.close_copy_area()


@asynccontextmanager
async def connect(directory: str | os.PathLike[str], domid: int) -> AsyncIterator[SimDomain]:
    """Act as a process inside domain `domid` of the simulated Xen serving `directory`.

    Raises:
        ConfigError: there is no such domain (or no simulator) at `directory`.
    """
    _check_domid(domid)
    path = _paths.xen_socket(directory, domid)
    try:
        stream = await anyio.connect_unix(path)
    except OSError as exc:
        raise ConfigError(
            f"no domain {domid} in the simulated Xen at {Path(directory)} ({exc})"
        ) from exc
    try:
        store = await connect_unix(_paths.xenstored_socket(directory, domid))
    except BaseException:
        await stream.aclose()
        raise
    async with anyio.create_task_group() as tg:
        dom: SimDomain | None = None

        def on_event(event: dict[str, Any], fds: list[int]) -> None:
            if dom is not None:
                dom._on_event(event, fds)
            else:
                for fd in fds:
                    os.close(fd)

        link = Link(stream, on_event)
        dom = SimDomain(domid, link, store)
        tg.start_soon(link.run)
        try:
            yield dom
        finally:
            await dom.aclose()
            tg.cancel_scope.cancel()
