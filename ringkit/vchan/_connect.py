"""Setting a vchan up on a `ringkit.abc.Domain`, as libxenvchan does: `VchanServer` (grants the
pages, allocates the port, publishes them in xenstore, waits for a client), `connect` (the
client: reads xenstore, binds, maps, checks, announces itself) and `VchanListener` (a server
that offers a fresh channel at the same path for each new client).

Waiting never trusts the peer to show up: while a server waits for its client (or a client for
its server's xenstore entries), a peer *domain* that is destroyed -- its home
``/local/domain/<id>`` gone from xenstore, or its event channel closed -- ends the wait with
`PeerGoneError` instead of hanging (as Qubes' qrexec checks the domain's status).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.abc import AsyncResource

from .._async._poll import poll_seconds
from .._errors import (
    ConfigError,
    GrantError,
    PeerGoneError,
    RemoteProtocolError,
    StoreError,
    TransportError,
)
from ..abc import Access, Domain, EventChannel, MappedPages, Permission, SharedPages, Transaction
from ..proto.layout import VCHAN_CLI_LIVE, VCHAN_SRV_LIVE
from ..proto.vchan import Live, VchanEnd, VchanRole, choose_orders, read_header, write_header
from ._stream import CLOSE_TIMEOUT, VchanStream

POLL_INTERVAL = 1.0
"""Seconds between checks, while a server waits for its client, that the client's domain still
exists (an unbound port tells nobody when its remote domain goes away)."""

STALE_GRACE = 2.0
"""Seconds a client whose offer would not bind or map waits for the server to publish a new
one (a listening server offers again only once its previous client is gone), then retries."""
"""Seconds between two checks that the awaited peer domain still exists."""

_log = logging.getLogger(__name__)


def vchan_path(server: int, client: int, port: int | str) -> str:
    """Qubes' convention for a vchan's xenstore directory:
    ``/local/domain/<server>/data/vchan/<client>/<port>``."""
    return f"/local/domain/{server}/data/vchan/{client}/{port}"


async def domain_gone(domain: Domain, peer: int) -> bool:
    """True when xenstore says domain `peer` no longer exists: a privileged caller asks
    whether it is still introduced, anyone else whether its home ``/local/domain/<id>`` is gone.
    A store that will not tell (EACCES for an unprivileged caller) counts as "still there"."""
    introduced = getattr(domain.store, "is_domain_introduced", None)
    if introduced is not None:
        try:
            return not await introduced(peer)
        except StoreError:
            pass  # not privileged
    try:
        await domain.store.read_bytes(f"/local/domain/{peer}")
    except StoreError as exc:
        return exc.code == "ENOENT"
    return False


async def _close_all(resources: Sequence[AsyncResource]) -> None:
    with anyio.CancelScope(shield=True):
        for resource in resources:
            await resource.aclose()


class VchanServer(AsyncResource):
    """One offered vchan, waiting for its client.  Make it with `VchanServer.offer`; `accept`
    hands everything over to the returned `VchanStream`.  Closing an unaccepted offer revokes
    the grants, closes the port and removes the xenstore directory."""

    def __init__(self, domain: Domain, client: int, path: str, engine: VchanEnd,
                 event: EventChannel, pages: Sequence[SharedPages], *,
                 poll_us: int = 0) -> None:
        self.domain = domain
        self.client = client
        self.path = path
        self._engine: VchanEnd | None = engine
        self._event = event
        self._pages = tuple(pages)
        self._poll_us = poll_us

    @classmethod
    async def offer(
        cls, domain: Domain, client: int, path: str, *, read_min: int = 0, write_min: int = 0,
        poll_us: int = 0,
    ) -> VchanServer:
        """Grant the pages to domain `client`, allocate the event channel and publish
        ``<path>/ring-ref`` and ``<path>/event-channel`` (readable by `client` only) in one
        transaction.  The rings hold at least `read_min` / `write_min` bytes, placed as
        libxenvchan places them (`ringkit.proto.vchan.choose_orders`).  `poll_us`: the
        accepted stream's polling window (`VchanStream.poll_us`).

        Raises:
            ConfigError: sizes or `poll_us` out of range.
            TransportError: granting, allocating or writing the store failed.
        """
        poll_seconds(poll_us)  # checked before anything is granted
        orders = choose_orders(read_min, write_min)
        resources: list[AsyncResource] = []
        try:
            # closing order, as libxenvchan: the rings, the control page, then the port
            event = await domain.events.alloc_unbound(client)
            resources.append(event)
            ctrl = await domain.grants.share(client, 1)
            resources.insert(0, ctrl)
            rings: list[SharedPages] = []
            for count in (orders.left_pages, orders.right_pages):
                if count:
                    rings.append(await domain.grants.share(client, count))
                    resources.insert(0, rings[-1])
            write_header(ctrl.buffer, orders, tuple(r for p in rings for r in p.refs))
            ring_buffers = iter(p.buffer for p in rings)
            engine = VchanEnd(
                ctrl.buffer, VchanRole.SERVER, orders,
                left_data=next(ring_buffers) if orders.left_pages else None,
                right_data=next(ring_buffers) if orders.right_pages else None)
            try:
                ctrl.set_unmap_notify(offset=VCHAN_SRV_LIVE, port=event.port)
                await _publish(domain, client, path, ctrl.refs[0], event.port)
            except BaseException:
                engine.release()
                raise
        except BaseException:
            await _close_all(resources)
            raise
        return cls(domain, client, path, engine, event, [*rings, ctrl], poll_us=poll_us)

    async def accept(self, *, timeout: float | None = None) -> VchanStream:
        """Wait until the client connected (or came and went: its data is drained first) and
        return the stream, which from now on owns the pages, the port and the xenstore entries.

        Raises:
            PeerGoneError: the client's domain was destroyed before it connected.
            TimeoutError: `timeout` seconds passed first (the offer stays open).
            anyio.BrokenResourceError: the client wrote an impossible live byte.
        """
        engine = self._engine
        if engine is None:
            raise anyio.ClosedResourceError
        with anyio.fail_after(timeout):
            while True:
                try:
                    live = engine.peer_live()
                except RemoteProtocolError as exc:
                    await self.aclose()
                    raise anyio.BrokenResourceError(str(exc)) from exc
                if live is not Live.WAITING:
                    break
                gone = False
                with anyio.move_on_after(POLL_INTERVAL):
                    try:
                        await self._event.wait()
                    except PeerGoneError:
                        gone = True  # an unbound port closes only with its remote domain
                    else:
                        continue
                if gone or await domain_gone(self.domain, self.client):
                    await self.aclose()
                    raise PeerGoneError(
                        f"vchan {self.path}: client domain {self.client} was destroyed before "
                        "it connected")
        self._engine = None
        return VchanStream(engine, self._event, [*self._pages, self._event],
                           on_close=self._unpublish, close_timeout=CLOSE_TIMEOUT,
                           poll_us=self._poll_us)

    async def _unpublish(self) -> None:
        try:
            await self.domain.store.rm(self.path)
        except StoreError as exc:
            _log.info("vchan %s: could not remove the xenstore entries: %s", self.path, exc)

    async def aclose(self) -> None:
        """Withdraw an offer nobody accepted (no-op once accepted or closed)."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        with anyio.CancelScope(shield=True):
            engine.set_live(Live.EXITED)
            engine.release()
            await _close_all([*self._pages, self._event])
            await self._unpublish()


async def _publish(domain: Domain, client: int, path: str, ref: int, port: int) -> None:
    perms = [Permission(domain.domid, Access.NONE), Permission(client, Access.READ)]

    async def body(tx: Transaction) -> None:
        for name, value in (("ring-ref", ref), ("event-channel", port)):
            await tx.write(f"{path}/{name}", str(value))
            await tx.set_perms(f"{path}/{name}", perms)

    await domain.store.transact(body)


async def _read_entries(domain: Domain, path: str) -> tuple[int, int] | None:
    """(ring-ref, event-channel) once the server published both, else None."""
    values = []
    for name in ("ring-ref", "event-channel"):
        try:
            text = await domain.store.read(f"{path}/{name}")
        except StoreError as exc:
            # EACCES too: xenstored hides a missing node below a directory we may not read
            if exc.code in ("ENOENT", "EACCES"):
                return None
            raise
        if not text.isdigit() or not 0 < int(text) < 1 << 32:
            raise RemoteProtocolError(f"vchan {path}/{name} = {text!r} is not a positive integer")
        values.append(int(text))
    return values[0], values[1]


async def _await_entries(domain: Domain, server: int, path: str) -> tuple[int, int]:
    try:
        async with domain.store.watch(path) as watch:
            changes = aiter(watch)
            while True:
                found = await _read_entries(domain, path)
                if found is not None:
                    return found
                if await domain_gone(domain, server):
                    raise PeerGoneError(f"vchan {path}: server domain {server} was destroyed")
                with anyio.move_on_after(POLL_INTERVAL):
                    await anext(changes)
    except StopAsyncIteration:
        raise PeerGoneError(f"vchan {path}: the xenstore connection closed") from None


async def connect(
    domain: Domain, server: int, path: str, *, timeout: float | None = None,
    close_timeout: float = CLOSE_TIMEOUT, poll_us: int = 0,
) -> VchanStream:
    """Connect as the client of the vchan domain `server` offers at `path`, waiting for the
    offer to appear.  Like libxenvchan's client: bind the event channel, map the control page
    (arming unmap-notify on ``cli_live``), check the orders, map the ring we write read-write and
    the ring we read read-only, then say we are connected and ring the server.  `poll_us`: the
    stream's polling window (`VchanStream.poll_us`).

    Raises:
        ConfigError: `poll_us` out of range.
        PeerGoneError: the server's domain was destroyed while we waited.
        TimeoutError: no offer appeared within `timeout` seconds.
        RemoteProtocolError: the offer is malformed (entries, orders, grant refs that do not
            map, a server that already left).
        TransportError: binding or mapping failed for a local reason.
    """
    poll_seconds(poll_us)  # checked before anything is bound
    with anyio.fail_after(timeout):
        entries = await _await_entries(domain, server, path)
    while True:
        try:
            return await _connect_to(domain, server, path, entries, close_timeout, poll_us)
        except _StaleOffer as stale:
            # What we read may be the offer a listening server made to the previous client,
            # about to be replaced; a server that is gone, or a bad offer, stays as it is.
            fresh = await _entries_changed(domain, path, entries, STALE_GRACE)
            if fresh is None:
                raise stale.error from stale.error.__cause__
            _log.debug("vchan %s: the offer we read was stale; trying the new one", path)
            entries = fresh


class _StaleOffer(Exception):
    """The offer's port would not bind or its control page would not map."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def _entries_changed(domain: Domain, path: str, entries: tuple[int, int],
                           grace: float) -> tuple[int, int] | None:
    """The server's entries once they differ from `entries`, or None after `grace` seconds."""
    with anyio.move_on_after(grace):
        while True:
            found = await _read_entries(domain, path)
            if found is not None and found != entries:
                return found
            await anyio.sleep(0.05)
    return None


async def _connect_to(domain: Domain, server: int, path: str, entries: tuple[int, int],
                      close_timeout: float, poll_us: int) -> VchanStream:
    ref, port = entries
    resources: list[AsyncResource] = []
    try:
        try:
            event = await domain.events.bind_interdomain(server, port)
        except TransportError as exc:
            raise _StaleOffer(exc) from exc
        resources.append(event)
        try:
            ctrl = await domain.grants.map(server, [ref], writable=True)
        except GrantError as exc:
            error = RemoteProtocolError(f"vchan {path}: ring-ref {ref} does not map: {exc}")
            error.__cause__ = exc
            raise _StaleOffer(error) from exc
        resources.insert(0, ctrl)
        header = read_header(ctrl.buffer)
        data: dict[str, MappedPages] = {}
        for name, refs, writable in (("left", header.left_grants, True),
                                     ("right", header.right_grants, False)):
            if refs:
                try:
                    data[name] = await domain.grants.map(server, refs, writable=writable)
                except GrantError as exc:
                    raise RemoteProtocolError(
                        f"vchan {path}: the {name} ring's grants {list(refs)} do not map: "
                        f"{exc}") from exc
                resources.insert(0, data[name])
        ctrl.set_unmap_notify(offset=VCHAN_CLI_LIVE, port=event.port)
        engine = VchanEnd(ctrl.buffer, VchanRole.CLIENT, header.orders,
                          left_data=data["left"].buffer if "left" in data else None,
                          right_data=data["right"].buffer if "right" in data else None)
    except BaseException:
        await _close_all(resources)
        raise
    engine.connect_client()
    stream = VchanStream(engine, event, resources, close_timeout=close_timeout,
                         poll_us=poll_us)
    try:
        event.notify()
    except BaseException:
        await stream.aclose()
        raise
    return stream


class VchanListener(AsyncResource):
    """A server that keeps serving `path`: each `accept` offers a fresh channel there and waits
    for a client, so a client may disconnect and a new one (or the same one again) connect --
    libxenvchan's ``server_persist``, except that every client gets new pages and a new port
    rather than the previous client's ring state."""

    def __init__(self, domain: Domain, client: int, path: str, *, read_min: int = 0,
                 write_min: int = 0, poll_us: int = 0) -> None:
        if read_min < 0 or write_min < 0:
            raise ConfigError("vchan ring sizes must not be negative")
        poll_seconds(poll_us)
        self.domain = domain
        self.client = client
        self.path = path
        self._sizes = (read_min, write_min)
        self._poll_us = poll_us
        self._offer: VchanServer | None = None
        self._closed = False

    async def accept(self, *, timeout: float | None = None) -> VchanStream:
        """Offer a channel and wait for the next client; see `VchanServer.accept`."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._offer is None:
            self._offer = await VchanServer.offer(
                self.domain, self.client, self.path, read_min=self._sizes[0],
                write_min=self._sizes[1], poll_us=self._poll_us)
        stream = await self._offer.accept(timeout=timeout)
        self._offer = None
        return stream

    async def aclose(self) -> None:
        """Withdraw a pending offer; streams already accepted stay open."""
        self._closed = True
        if self._offer is not None:
            offer, self._offer = self._offer, None
            await offer.aclose()
