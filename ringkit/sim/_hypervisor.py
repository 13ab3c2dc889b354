"""The simulated hypervisor's state: domains, grant tables, event channels.

Everything here is synchronous: the server calls one method per request and no other request
runs in between, so each operation is atomic, as a hypercall is.  The state owns real kernel
objects:

* a *page file* is a sealed memfd backing the pages of one `share` call; grants name a page of
  it; it is closed when no grant and no mapping needs it any more (the pages themselves live on
  in whatever process still maps them, as granted pages outlive an early dealloc);
* each event-channel port owns the eventfd its owner waits on.  Allocating an unbound port also
  creates the eventfd the future binder will wait on, so the allocating side can notify from the
  start; what it sends before the bind is drained (dropped) when the bind happens, as Xen drops
  events sent on an unbound port, and replaced by one pending event, as Xen conservatively marks
  the binder's new port pending for notifications that may have been lost.  After the bind each
  side holds the other's eventfd and notifies it directly; the server is not involved.

A closing port writes `PEER_GONE` into the peer's eventfd: the peer's wait sees the events sent
before the close first, then the mark, and raises `PeerGoneError`.  As in Xen, the peer's port is
then unbound again, offered to the same domain, which may bind it anew (the owner gets the new
binder's eventfd with the "bound" event and its channel works again).

Errors are the kernel's: mapping an unknown, revoked, foreign or read-only (for a writable map)
grant fails with EINVAL as gntdev's mmap does; too many grants fail with ENOSPC as gntalloc's
ioctl does; binding a port that is not unbound or not offered to the binder fails with EINVAL,
naming an unknown domain with ESRCH, as the event-channel hypercalls do.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
from collections.abc import Callable

from .._config import DOMID_MAX as DOMID_MAX
from .._config import DomainName, load
from .._errors import ConfigError, EventChannelError, GrantError, ResourceLimitError
from ..abc import PAGE_SIZE
from ._kernel import PEER_GONE, PageFile, drain, new_eventfd, signal
from ._state import (
    Accounting,
    Client,
    CopyArea,
    DomainState,
    Grant,
    Mapping,
    Port,
    Share,
    UnmapNotify,
)
from ._wire import COPY_AREA_SIZE

log = logging.getLogger(__name__)

_REVOKED_MEMORY = 4096
"""How many revoked refs per domain are remembered, only to word refusals precisely."""


class Hypervisor:
    """Domains, grant tables and event channels of one simulated machine."""

    def __init__(self, *, grant_limit: int = 1024) -> None:
        if grant_limit < 1:
            raise ConfigError(f"grant limit must be at least 1, not {grant_limit}")
        self.grant_limit = grant_limit
        self.domains: dict[int, DomainState] = {}
        self._ids = itertools.count(1)
        self._page_files: set[PageFile] = set()
        self._next_domid = 1

    # ----------------------------------------------------------------- domains

    def create_domain(self, name: str, domid: int | None = None) -> int:
        """Create an empty domain and return its domid (dom0 must be created first, as 0)."""
        load(DomainName, name=name)
        if any(d.name == name for d in self.domains.values()):
            raise ConfigError(f"a domain named {name!r} exists already")
        if domid is None:
            while self._next_domid in self.domains:
                self._next_domid += 1
            domid = self._next_domid
            self._next_domid += 1
        if not 0 <= domid <= DOMID_MAX or domid in self.domains:
            raise ConfigError(f"domid {domid} is taken or out of range")
        self.domains[domid] = DomainState(domid, name)
        return domid

    def lookup(self, name_or_domid: str | int) -> DomainState:
        """A domain by name or domid.

        Raises:
            ConfigError: no such domain.
        """
        for dom in self.domains.values():
            if dom.name == name_or_domid or dom.domid == name_or_domid:
                return dom
        if isinstance(name_or_domid, str) and name_or_domid.isdigit():
            return self.lookup(int(name_or_domid))
        raise ConfigError(f"no domain {name_or_domid!r}")

    def destroy_domain(self, domid: int) -> list[Client]:
        """Release everything domain `domid` held, close its peers' ports, forget it; returns
        its clients, whose connections the caller must drop."""
        dom = self.domains[domid]
        clients = list(dom.clients)
        for client in clients:
            self.disconnect(client, run_notify=False)
        # Ports elsewhere offered to this domain (never bound, or unbound again when their
        # peer closed) will never be bound now.
        for other in self.domains.values():
            for port in list(other.ports.values()):
                if port.state == "unbound" and port.remote_domid == domid:
                    self._peer_closed(port, rebindable=False)
        del self.domains[domid]
        return clients

    def _domain(
        self, domid: int, what: str, exc: type[GrantError | EventChannelError]
    ) -> DomainState:
        if not isinstance(domid, int) or not 0 <= domid <= DOMID_MAX:
            raise ConfigError(f"bad domid {domid!r}")
        dom = self.domains.get(domid)
        if dom is None:
            raise exc(f"{what}: no domain {domid}", errno.ESRCH)
        return dom

    # ----------------------------------------------------------------- clients

    def attach(self, client: Client) -> None:
        self.domains[client.domid].clients.add(client)

    def disconnect(self, client: Client, *, run_notify: bool = True) -> None:
        """Tear down what `client` held, as the kernel does when a process's device files close:
        unmap-notify actions first (clear the byte, signal the port), then mappings and grants,
        then ports."""
        for mapping in list(client.maps.values()):
            self.unmap(client, mapping.id, run_notify=run_notify)
        for share in list(client.shares.values()):
            self.unshare(client, share.id, run_notify=run_notify)
        for port in list(client.ports.values()):
            self.close_port(client, port.port)
        if client.copy_area is not None:
            client.copy_area.close()
            client.copy_area = None
        dom = self.domains.get(client.domid)
        if dom is not None:
            dom.clients.discard(client)

    # ----------------------------------------------------------------- grants

    def share(self, client: Client, grantee: int, count: int, writable: bool) -> Share:
        """Allocate `count` pages granted to `grantee`; inactive until `activate`."""
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"page count must be at least 1, not {count!r}")
        self._domain(grantee, "share", GrantError)
        if client.grant_count + count > self.grant_limit:
            raise ResourceLimitError(
                f"sharing {count} more pages would exceed the limit of {self.grant_limit} "
                f"grants per process ({client.grant_count} held)",
                errno.ENOSPC,
            )
        dom = self.domains[client.domid]
        page = PageFile(count, writable)
        self._page_files.add(page)
        page.hold()
        share = Share(next(self._ids), client, grantee, [], page)
        for index in range(count):
            ref = dom.next_ref
            dom.next_ref += 1
            dom.grants[ref] = Grant(ref, share, index)
            share.refs.append(ref)
        client.shares[share.id] = share
        return share

    def activate(self, client: Client, share_id: int) -> None:
        """The granter mapped the pages: seal a read-only share and let the grantee map it."""
        share = self._share(client, share_id)
        if share.active:
            raise GrantError(f"share {share_id} is active already", errno.EINVAL)
        if not share.page.writable:
            share.page.seal_read_only()
        share.active = True

    def _share(self, client: Client, share_id: int) -> Share:
        share = client.shares.get(share_id)
        if share is None:
            raise GrantError(f"no share {share_id} (already closed?)", errno.EINVAL)
        return share

    def unshare(self, client: Client, share_id: int, *, run_notify: bool = True) -> None:
        """Close a share (gntalloc's dealloc + munmap): run its unmap-notify, revoke its refs.
        Mappings the grantee already made keep the pages alive."""
        share = self._share(client, share_id)
        if run_notify and share.active:
            self._run_notify(client, share.notify, lambda off: (share.page, off))
        dom = self.domains[client.domid]
        for ref in share.refs:
            dom.grants.pop(ref, None)
            dom.revoked[ref] = None
        while len(dom.revoked) > _REVOKED_MEMORY:
            dom.revoked.popitem(last=False)
        del client.shares[share_id]
        self._release(share.page)

    def map(self, client: Client, peer: int, refs: list[int], writable: bool) -> Mapping:
        """Map `refs` granted by `peer` to the client's domain (gntdev's map + mmap)."""
        if not refs:
            raise ConfigError("no grant refs to map")
        dom = self._domain(peer, "map", GrantError)
        pages = [self._granted(client, dom, peer, ref, writable) for ref in refs]
        for page, _ in pages:
            page.hold()
        mapping = Mapping(next(self._ids), client, peer, list(refs), pages, writable)
        client.maps[mapping.id] = mapping
        return mapping

    def _granted(self, client: Client, dom: DomainState, peer: int, ref: object,
                 writable: bool) -> tuple[PageFile, int]:
        """The page file and page index `ref` of domain `peer` names, after the checks gntdev's
        map and the grant-copy hypercall make for the client's domain."""
        if not isinstance(ref, int) or isinstance(ref, bool):
            raise ConfigError(f"bad grant ref {ref!r}")
        grant = dom.grants.get(ref)
        if grant is None or not grant.share.active:
            why = "revoked" if ref in dom.revoked else "unknown"
            raise GrantError(f"grant ref {ref} of domain {peer} is {why}", errno.EINVAL)
        share = grant.share
        if share.grantee != client.domid:
            raise GrantError(
                f"grant ref {ref} of domain {peer} is granted to domain {share.grantee}, "
                f"not to domain {client.domid}",
                errno.EINVAL,
            )
        if writable and not share.page.writable:
            raise GrantError(
                f"grant ref {ref} of domain {peer} is read-only (no writable map, no copy "
                "into it)",
                errno.EINVAL,
            )
        return share.page, grant.index

    def copy_area(self, client: Client) -> int:
        """The descriptor of `client`'s copy area (`CopyArea`, made on first use), where the
        bytes of its grant copies travel."""
        if client.copy_area is None:
            fd = os.memfd_create(f"copy-area-{client.id}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, COPY_AREA_SIZE)
                client.copy_area = CopyArea(fd, mmap.mmap(fd, COPY_AREA_SIZE))
            except BaseException:
                os.close(fd)
                raise
        return client.copy_area.fd

    def copy(self, client: Client, peer: int, segments: list[list[int]], at: int,
             into: bool) -> None:
        """A grant copy (``GNTTABOP_copy``) done here, as Xen does it, between the segments
        ([ref, offset, length] of pages `peer` granted, in order) and `client`'s copy area
        from byte `at`: `into` the segments from the area, else out of them into it.  Every
        segment is checked before any byte moves, so a refused copy changes nothing; nothing
        is mapped, before or after."""
        if not segments:
            raise ConfigError("a grant copy of no segments")
        area = client.copy_area
        if area is None:
            raise ConfigError("a grant copy before the client asked for its copy area")
        dom = self._domain(peer, "copy", GrantError)
        places: list[tuple[int, int]] = []
        total = 0
        for segment in segments:
            ref, offset, length = segment
            if not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in (offset, length)) \
                    or length < 1 or offset < 0 or offset + length > PAGE_SIZE:
                raise ConfigError(f"grant copy segment {segment!r} does not lie inside one page")
            page, index = self._granted(client, dom, peer, ref, into)
            places.append((page.fd, index * PAGE_SIZE + offset))
            total += length
        if not isinstance(at, int) or isinstance(at, bool) or at < 0 \
                or at + total > COPY_AREA_SIZE:
            raise ConfigError(f"a grant copy of {total} bytes at {at!r} does not lie inside the "
                              f"copy area of {COPY_AREA_SIZE}")
        with memoryview(area.memory) as view:
            pos = at
            for (fd, where), (_, _, length) in zip(places, segments, strict=True):
                if into:
                    os.pwrite(fd, view[pos:pos + length], where)
                else:
                    os.preadv(fd, [view[pos:pos + length]], where)
                pos += length

    def _mapping(self, client: Client, map_id: int) -> Mapping:
        mapping = client.maps.get(map_id)
        if mapping is None:
            raise GrantError(f"no mapping {map_id} (already unmapped?)", errno.EINVAL)
        return mapping

    def unmap(self, client: Client, map_id: int, *, run_notify: bool = True) -> None:
        """Unmap (gntdev's munmap + unmap): run its unmap-notify, drop its hold on the pages."""
        mapping = self._mapping(client, map_id)
        if run_notify:
            self._run_notify(
                client,
                mapping.notify,
                lambda off: (
                    mapping.pages[off // PAGE_SIZE][0],
                    mapping.pages[off // PAGE_SIZE][1] * PAGE_SIZE + off % PAGE_SIZE,
                ),
            )
        del client.maps[map_id]
        for page, _ in mapping.pages:
            self._release(page)

    def set_unmap_notify(
        self, client: Client, kind: str, ident: int, offset: int | None, port: int | None
    ) -> None:
        """Record what to do when a share or mapping goes away (SET_UNMAP_NOTIFY)."""
        if kind == "share":
            share = self._share(client, ident)
            size = len(share.refs) * PAGE_SIZE
            notify = share.notify
        else:
            mapping = self._mapping(client, ident)
            size = len(mapping.refs) * PAGE_SIZE
            if offset is not None and not mapping.writable:
                raise GrantError("cannot clear a byte in a read-only mapping", errno.EINVAL)
            notify = mapping.notify
        if offset is not None and not (isinstance(offset, int) and 0 <= offset < size):
            raise GrantError(f"unmap-notify offset {offset!r} outside the pages", errno.EINVAL)
        if port is not None and port not in self.domains[client.domid].ports:
            raise GrantError(f"unmap-notify port {port} is not open", errno.EINVAL)
        notify.offset = offset
        notify.port = port

    def _run_notify(
        self, client: Client, notify: UnmapNotify, locate: Callable[[int], tuple[PageFile, int]]
    ) -> None:
        if notify.offset is not None:
            page, where = locate(notify.offset)
            try:
                page.clear_byte(where)
            except OSError as exc:  # never leave a half-released share or mapping behind
                log.error("unmap-notify of domain %d could not clear byte %d: %s",
                          client.domid, notify.offset, exc)
        if notify.port is not None:
            port = self.domains[client.domid].ports.get(notify.port)
            if port is not None and port.peer is not None:
                signal(port.peer.wait_fd)

    def _release(self, page: PageFile) -> None:
        if page.release():
            self._page_files.discard(page)

    # ----------------------------------------------------------------- event channels

    def alloc_unbound(self, client: Client, remote: int) -> Port:
        """A new port of the client's domain that domain `remote` may bind."""
        self._domain(remote, "alloc_unbound", EventChannelError)
        dom = self.domains[client.domid]
        wait_fd = new_eventfd()
        try:
            reserved = new_eventfd()
        except BaseException:
            os.close(wait_fd)
            raise
        port = Port(client.domid, dom.next_port, client, remote, wait_fd, reserved)
        dom.next_port += 1
        dom.ports[port.port] = port
        client.ports[port.port] = port
        return port

    def bind_interdomain(self, client: Client, remote: int, remote_port: int) -> Port:
        """Bind to `remote_port` that domain `remote` allocated for the client's domain."""
        rdom = self._domain(remote, "bind_interdomain", EventChannelError)
        target = rdom.ports.get(remote_port) if isinstance(remote_port, int) else None
        if target is None:
            raise EventChannelError(
                f"domain {remote} has no port {remote_port!r}", errno.EINVAL
            )
        if target.state != "unbound" or target.remote_domid != client.domid:
            raise EventChannelError(
                f"port {remote_port} of domain {remote} is not an unbound port offered to "
                f"domain {client.domid}",
                errno.EINVAL,
            )
        dom = self.domains[client.domid]
        wait_fd, target.reserved_fd = target.reserved_fd, -1
        drain(wait_fd)  # events sent before the bind are dropped, as on an unbound port
        # ... and, as Xen's evtchn_bind_interdomain does to make up for them, the binder's new
        # port starts with one event pending: its first wait() returns at once.
        signal(wait_fd)
        port = Port(client.domid, dom.next_port, client, remote, wait_fd, peer=target,
                    state="bound")
        dom.next_port += 1
        dom.ports[port.port] = port
        client.ports[port.port] = port
        target.peer = port
        target.state = "bound"
        event = {"ev": "bound", "port": target.port, "remote_port": port.port}
        if target.was_bound:  # bound again: its owner notifies the new binder's eventfd now
            target.client.send_event(event, [wait_fd])
        else:
            target.client.send_event(event)
        target.was_bound = True
        return port

    def close_port(self, client: Client, number: int) -> None:
        """Close a port; a bound peer learns it (its wait raises PeerGoneError)."""
        port = client.ports.get(number)
        if port is None:
            raise EventChannelError(f"port {number} is not open", errno.ENOTCONN)
        if port.peer is not None:
            self._peer_closed(port.peer)
        port.peer = None
        os.close(port.wait_fd)
        if port.reserved_fd >= 0:
            os.close(port.reserved_fd)
        del client.ports[number]
        self.domains[port.domid].ports.pop(number, None)

    def _peer_closed(self, port: Port, *, rebindable: bool = True) -> None:
        """The remote end of `port` is gone.  As in Xen (evtchn_close), the port goes back to
        unbound, offered to the same remote domain, which may bind it again; with a fresh
        eventfd for that binder.  A port whose remote domain no longer exists (`rebindable`
        false) is merely dead.  Its owner is told once: the mark in its eventfd (seen after
        the events sent before the close) and a "peer_closed" event."""
        told = port.state != "bound" and port.was_bound  # unbound again since an earlier close
        port.peer = None
        if port.reserved_fd >= 0:
            os.close(port.reserved_fd)
            port.reserved_fd = -1
        port.state = "peer-closed"
        if rebindable:
            try:
                port.reserved_fd = new_eventfd()
                port.state = "unbound"
            except OSError as exc:  # out of descriptors: the port just cannot be bound again
                log.warning("port %d of domain %d cannot be bound again: %s",
                            port.port, port.domid, exc)
        if not told:
            signal(port.wait_fd, PEER_GONE)
            port.client.send_event({"ev": "peer_closed", "port": port.port})

    def fire(self, domid: int, number: int) -> None:
        """Fault hook: deliver a spurious event on port `number` of domain `domid`."""
        port = self.domains[domid].ports.get(number)
        if port is None:
            raise EventChannelError(f"domain {domid} has no port {number}", errno.EINVAL)
        signal(port.wait_fd)

    # ----------------------------------------------------------------- accounting

    def accounting(self, domid: int | None = None) -> Accounting:
        """What is held, in one domain or in all."""
        doms = [self.domains[domid]] if domid is not None else list(self.domains.values())
        clients = [c for d in doms for c in d.clients]
        ports = [p for d in doms for p in d.ports.values()]
        return Accounting(
            grants=sum(len(d.grants) for d in doms),
            maps=sum(len(c.maps) for c in clients),
            ports=len(ports),
            page_files=len(self._page_files) if domid is None else len(
                {s.page for c in clients for s in c.shares.values()}
            ),
            eventfds=sum(1 + (p.reserved_fd >= 0) for p in ports),
            clients=len(clients),
        )
