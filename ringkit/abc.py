"""The transport interface: what a process inside a Xen domain can do.

A `Domain` is "this process, inside domain N".  It bundles the four Xen facilities a split
driver uses, each behind a narrow ABC so that the real transport (`ringkit.xen`, the Linux
``/dev/xen`` devices) and the simulated one (`ringkit.sim`) are interchangeable:

* `GrantTable` -- share pages with a peer (gntalloc) and map a peer's pages (gntdev);
* `EventChannels` -- allocate / bind interdomain event channels, notify, wait;
* `Store` -- the xenstore client (one xs_wire implementation serves both transports);
* `Domain.leaks()` -- what the handle still holds, so tests prove nothing leaked.

Everything that holds a kernel or server resource is an `anyio.abc.AsyncResource`: use it with
``async with`` or call ``aclose()``; closing releases mappings, ports and fds in the right order.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from typing import TypeVar

from anyio.abc import AsyncResource

from ._errors import ConfigError

PAGE_SIZE = 4096
"""Size of a grant page in bytes (x86)."""

DOMID_SELF = 0x7FF0
"""Xen's "this domain" domid."""

T = TypeVar("T")


# --------------------------------------------------------------------------- grants


class SharedPages(AsyncResource):
    """Pages this domain granted to a peer (gntalloc).

    `buffer` is a writable memoryview over `len(refs)` contiguous pages.  Closing unmaps them and
    revokes the grants; as with gntalloc's early dealloc, the pages themselves live on until the
    peer unmaps them too.  Buffers still exported from `buffer` (e.g. a ring engine attached to
    it) stay valid after closing: the local unmap waits until they are released.  Closing twice
    is a double unmap and raises `GrantError`.
    """

    @property
    @abstractmethod
    def peer(self) -> int:
        """The domid the pages were granted to."""

    @property
    @abstractmethod
    def refs(self) -> tuple[int, ...]:
        """Grant references, one per page, in buffer order."""

    @property
    @abstractmethod
    def writable(self) -> bool:
        """Whether the peer may map the pages writable."""

    @property
    @abstractmethod
    def buffer(self) -> memoryview:
        """The shared pages, contiguous and writable by this side.

        Raises:
            anyio.ClosedResourceError: after `aclose()`.
        """

    @abstractmethod
    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        """When this process unmaps the pages or dies, clear the byte at `offset` and/or signal
        local event-channel `port` (gntalloc's SET_UNMAP_NOTIFY).

        Raises:
            ConfigError: `offset` lies outside the pages, or neither argument was given.
            GrantError: the kernel or the simulator refused.
        """


class MappedPages(AsyncResource):
    """A peer's granted pages mapped into this process (gntdev), contiguously.

    Closing unmaps them; buffers still exported from `buffer` stay valid and the local unmap
    waits until they are released.  Closing twice is a double unmap and raises `GrantError`.
    """

    @property
    @abstractmethod
    def peer(self) -> int:
        """The domid that granted the pages."""

    @property
    @abstractmethod
    def refs(self) -> tuple[int, ...]:
        """The grant references mapped, in buffer order."""

    @property
    @abstractmethod
    def writable(self) -> bool:
        """Whether the mapping is writable."""

    @property
    @abstractmethod
    def buffer(self) -> memoryview:
        """The mapped pages; read-only unless mapped writable.

        Raises:
            anyio.ClosedResourceError: after `aclose()`.
        """

    @abstractmethod
    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        """When this process unmaps the pages or dies, clear the byte at `offset` (writable
        mappings only) and/or signal local event-channel `port` (gntdev's SET_UNMAP_NOTIFY).

        Raises:
            ConfigError: bad offset, clearing a byte in a read-only mapping, or no argument.
            GrantError: the kernel or the simulator refused.
        """


@dataclass(frozen=True, slots=True)
class GrantCopySegment:
    """`length` bytes at `offset` in the page a peer granted under `ref` (one page at most):
    one side of a grant copy (Xen's ``GNTTABOP_copy``, gntdev's ``gntdev_grant_copy_segment``).
    """

    ref: int
    offset: int = 0
    length: int = PAGE_SIZE


def check_copy_segments(segments: Sequence[GrantCopySegment]) -> int:
    """The bytes `segments` cover, after checking each lies inside its page.

    Raises:
        ConfigError: no segments, a ref that is not 32-bit, an empty segment, or one that
            runs outside its page.
    """
    if not segments:
        raise ConfigError("a grant copy of no segments")
    total = 0
    for seg in segments:
        if not 0 <= seg.ref <= 0xFFFFFFFF:
            raise ConfigError(f"grant ref {seg.ref} is not a 32-bit unsigned integer")
        if seg.length < 1 or seg.offset < 0 or seg.offset + seg.length > PAGE_SIZE:
            raise ConfigError(f"grant copy segment {seg} does not lie inside one page")
        total += seg.length
    return total


class GrantTable(ABC):
    """Grant sharing (gntalloc), grant mapping and grant copy (gntdev) for one domain."""

    @abstractmethod
    async def share(self, peer: int, count: int = 1, *, writable: bool = True) -> SharedPages:
        """Allocate `count` zeroed pages and grant them to domain `peer`.

        Raises:
            ConfigError: count < 1 or a bad domid.
            ResourceLimitError: the grant limit of this process would be exceeded.
            GrantError: the kernel or the simulator refused.
        """

    @abstractmethod
    async def map(
        self, peer: int, refs: Sequence[int], *, writable: bool = True
    ) -> MappedPages:
        """Map the pages that domain `peer` granted under `refs`, contiguously, in order.

        Raises:
            ConfigError: empty `refs`.
            GrantError: a ref is unknown, revoked, granted to another domain, or read-only
                while `writable` was asked for (errno set as the kernel would).
            ResourceLimitError: the mapping limit was reached.
        """

    async def copy_to_grants(self, peer: int, segments: Sequence[GrantCopySegment],
                             data: bytes | bytearray | memoryview) -> None:
        """Copy `data` into the pages domain `peer` granted, filling `segments` in order (their
        lengths add up to ``len(data)``), without leaving them mapped: the peer may end its
        grants as soon as it sees an answer (Linux's xen-netfront marks the backend broken
        when one is still in use).

        This default maps the refs, copies and unmaps before returning; a transport with a
        grant-copy operation (Xen: gntdev's ``IOCTL_GNTDEV_GRANT_COPY``) overrides it.  Either
        way the checks are a writable map's.  A refused copy may have filled earlier segments.

        Raises:
            ConfigError: bad segments (`check_copy_segments`) or a length mismatch.
            GrantError: a ref is unknown, revoked, granted to another domain, or read-only.
        """
        total = check_copy_segments(segments)
        if total != len(data):
            raise ConfigError(f"{len(data)} bytes to copy into segments of {total}")
        source = memoryview(data).cast("B")
        await self._copy_by_map(peer, segments, source, writable=True)

    async def copy_from_grants(self, peer: int,
                               segments: Sequence[GrantCopySegment]) -> bytes:
        """The bytes of `segments` of the pages domain `peer` granted, in order, copied out
        without leaving them mapped (see `copy_to_grants`; read-only grants do).

        Raises:
            ConfigError: bad segments (`check_copy_segments`).
            GrantError: a ref is unknown, revoked or granted to another domain.
        """
        out = bytearray(check_copy_segments(segments))
        await self._copy_by_map(peer, segments, memoryview(out), writable=False)
        return bytes(out)

    async def _copy_by_map(self, peer: int, segments: Sequence[GrantCopySegment],
                           local: memoryview, *, writable: bool) -> None:
        """Map the refs of `segments`, copy between them and `local` (into the pages if
        `writable`), unmap.  No slice of the mapping outlives the copy, so the unmap is done
        when this returns (a lingering slice would defer it)."""
        unique = list(dict.fromkeys(seg.ref for seg in segments))
        index = {ref: i for i, ref in enumerate(unique)}
        pages = await self.map(peer, unique, writable=writable)
        try:
            buf = pages.buffer
            try:
                pos = 0
                for seg in segments:
                    at = index[seg.ref] * PAGE_SIZE + seg.offset
                    if writable:
                        buf[at:at + seg.length] = local[pos:pos + seg.length]
                    else:
                        local[pos:pos + seg.length] = buf[at:at + seg.length]
                    pos += seg.length
            finally:
                del buf
        finally:
            await pages.aclose()


# --------------------------------------------------------------------------- event channels


class EventChannel(AsyncResource):
    """One bound (or allocated-unbound) interdomain event channel, seen from this side."""

    @property
    @abstractmethod
    def port(self) -> int:
        """The local port number (what the peer binds to, or what we bound)."""

    @property
    @abstractmethod
    def remote_domid(self) -> int:
        """The domain at the other end."""

    @abstractmethod
    def notify(self) -> None:
        """Signal the remote end.  Never blocks.  On an allocated port the peer has not bound yet
        the event is dropped, as Xen does.

        Raises:
            anyio.ClosedResourceError: the port was closed locally.
            EventChannelError: the transport refused (e.g. the port is not bound).
        """

    @abstractmethod
    async def wait(self) -> None:
        """Return once an event newer than the previous `wait()` arrived.  Events coalesce: many
        notifications between two waits make one return.

        Raises:
            anyio.ClosedResourceError: the port was closed locally.
            PeerGoneError: the remote end closed the channel or its domain was destroyed.
        """

    def peer_bound(self) -> None:
        """The peer said, out of band, that it has bound the other end of this allocated port
        (a backend writes XenbusState Connected only after binding).

        Xen tells nobody when a remote end binds or closes; a transport that detects a closed
        remote end by asking for the port's status must know that a peer was there, or a peer
        that bound and left without ever notifying would look like one that never came.  The
        device framework calls this when the backend reports Connected.  Transports that see
        the remote end close directly need nothing here (the default does nothing).
        """


class EventChannels(ABC):
    """Event-channel operations of one domain (``/dev/xen/evtchn`` semantics)."""

    @abstractmethod
    async def alloc_unbound(self, remote_domid: int) -> EventChannel:
        """Allocate a port that domain `remote_domid` may bind to.

        Raises:
            EventChannelError: refused (bad domid, no free ports).
        """

    @abstractmethod
    async def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        """Bind to the unbound port `remote_port` that domain `remote_domid` allocated for us.

        Raises:
            EventChannelError: the port does not exist, is not unbound, or is not for us.
        """


# --------------------------------------------------------------------------- store


class Access(enum.StrEnum):
    """Xenstore access letters."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"


@dataclass(frozen=True, slots=True)
class Permission:
    """One entry of a node's permission list.  The first entry names the owner (who may do
    anything) and the access every domain not listed gets."""

    domid: int
    access: Access

    def to_wire(self) -> str:
        """The entry as xenstore writes it: the access letter, then the domid (``"r5"``)."""
        return f"{self.access.value}{self.domid}"

    @classmethod
    def from_wire(cls, text: str) -> Permission:
        """Parse ``"r5"``-style text.

        Raises:
            ValueError: malformed text.
        """
        if len(text) < 2 or text[0] not in "nrwb" or not text[1:].isdigit():
            raise ValueError(f"malformed xenstore permission {text!r}")
        return cls(int(text[1:]), Access(text[0]))


class StoreOps(ABC):
    """Operations on xenstore nodes, outside or inside a transaction.

    Paths are absolute (``/local/domain/0/...``) or relative to the connection's home
    (``/local/domain/<domid>``), as in xenstore.  Errors are `StoreError` with the xenstore
    error string in `code` (``ENOENT``, ``EACCES``, ``EINVAL``, ``E2BIG``, ``EQUOTA``...).
    """

    @abstractmethod
    async def read(self, path: str) -> str:
        """The node's value decoded as UTF-8."""

    @abstractmethod
    async def read_bytes(self, path: str) -> bytes:
        """The node's raw value."""

    @abstractmethod
    async def write(self, path: str, value: str | bytes) -> None:
        """Create or overwrite a node (and missing parents)."""

    @abstractmethod
    async def mkdir(self, path: str) -> None:
        """Create an empty node (no error if it exists)."""

    @abstractmethod
    async def rm(self, path: str) -> None:
        """Remove a node and its children."""

    @abstractmethod
    async def directory(self, path: str) -> list[str]:
        """Names of the node's children."""

    @abstractmethod
    async def get_perms(self, path: str) -> list[Permission]:
        """The node's permission list (owner first)."""

    @abstractmethod
    async def set_perms(self, path: str, perms: Sequence[Permission]) -> None:
        """Replace the node's permission list (owner first)."""

    async def exists(self, path: str) -> bool:
        """Whether the node exists (a read that maps ENOENT to False)."""
        from ._errors import StoreError

        try:
            await self.read_bytes(path)
        except StoreError as exc:
            if exc.code == "ENOENT":
                return False
            raise
        return True


class Watch(AsyncResource):
    """A registered xenstore watch: iterate it to receive the paths that changed.

    Xenstore fires once right after registration, then on every change at or below the path.
    """

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[str]: ...

    @property
    @abstractmethod
    def pending(self) -> tuple[str, ...]:
        """The changed paths received and not yet taken by iterating, oldest first (a path
        that changed again while pending is there once).  Events come in the order the
        store sent them, before later replies on the same connection: after a round trip on
        it, every event caused before that round trip is here."""


class Transaction(StoreOps):
    """A xenstore transaction; see `Store.transaction`."""


class Store(StoreOps, AsyncResource):
    """An async xenstore client connection."""

    @abstractmethod
    async def get_domain_path(self, domid: int) -> str:
        """``/local/domain/<domid>``, as the store reports it."""

    @abstractmethod
    def watch(self, path: str, token: str | None = None) -> AbstractAsyncContextManager[Watch]:
        """Register a watch on `path` (or a special path: ``@introduceDomain``,
        ``@releaseDomain``) for the life of the context."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """Start a transaction; it commits when the block exits normally and aborts on an
        exception.  A conflicting commit raises `StoreError` with code ``EAGAIN``."""

    async def transact(self, body: Callable[[Transaction], Awaitable[T]], attempts: int = 16) -> T:
        """Run `body` in a transaction, retrying it on ``EAGAIN`` conflicts."""
        from ._errors import StoreError

        for attempt in range(attempts):
            try:
                async with self.transaction() as tx:
                    result = await body(tx)
                return result
            except StoreError as exc:
                if exc.code != "EAGAIN" or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- domain


@dataclass(frozen=True, slots=True)
class Leaks:
    """What a `Domain` handle still holds.  All zero (falsy) after everything was closed."""

    grants: int = 0
    """Pages shared through gntalloc and not yet closed."""
    maps: int = 0
    """gntdev mappings not yet closed."""
    ports: int = 0
    """Event channels not yet closed."""
    fds: int = 0
    """File descriptors the transport opened for resources above and still holds."""
    watches: int = 0
    """Xenstore watches still registered."""

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


class Domain(AsyncResource):
    """This process, inside domain `domid`: grants, event channels and xenstore."""

    @property
    @abstractmethod
    def domid(self) -> int:
        """The domain this handle acts in."""

    @property
    @abstractmethod
    def grants(self) -> GrantTable:
        """Sharing pages with other domains (gntalloc) and mapping theirs (gntdev)."""

    @property
    @abstractmethod
    def events(self) -> EventChannels:
        """Event channels: allocating, binding, notifying and waiting."""

    @property
    @abstractmethod
    def store(self) -> Store:
        """This domain's xenstore connection."""

    @abstractmethod
    def leaks(self) -> Leaks:
        """Resources this handle still holds (see `Leaks`)."""


__all__ = (
    "DOMID_SELF",
    "PAGE_SIZE",
    "Access",
    "Domain",
    "EventChannel",
    "EventChannels",
    "GrantCopySegment",
    "GrantTable",
    "Leaks",
    "MappedPages",
    "Permission",
    "SharedPages",
    "Store",
    "StoreOps",
    "Transaction",
    "Watch",
    "check_copy_segments",
)
