"""`open_domain()`: this process inside the Xen domain whose Linux kernel it runs on.

The handle bundles `XenGrantTable` (gntalloc/gntdev), `XenEventChannels` (evtchn, whose reader
task runs in the handle's task group) and a xenstore client.  The store is opened the way
libxenstore does (`ringkit.store.open_store`: xenstored's socket, else ``/dev/xen/xenbus``)
unless one is injected.  The domid is the store's answer for the relative node ``domid`` (as
libxl and libxenvchan find it), falling back to 0 when ``/proc/xen/capabilities`` says this is
the control domain.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from .._errors import ConfigError, StoreError
from ..abc import Domain, Leaks, Store
from .evtchn import XenEventChannels
from .grants import XenGrantTable

__all__ = ("CAPABILITIES", "XenDomain", "discover_domid", "open_domain")


CAPABILITIES = "/proc/xen/capabilities"


class XenDomain(Domain):
    """The real transport's `Domain`: see `open_domain`."""

    def __init__(self, domid: int, store: Store, task_group: anyio.abc.TaskGroup, *,
                 owns_store: bool) -> None:
        self._domid = domid
        self._store = store
        self._owns_store = owns_store
        self._grants = XenGrantTable()
        self._events = XenEventChannels(task_group)
        self._closed = False

    @property
    def domid(self) -> int:
        return self._domid

    @property
    def grants(self) -> XenGrantTable:
        return self._grants

    @property
    def events(self) -> XenEventChannels:
        return self._events

    @property
    def store(self) -> Store:
        return self._store

    def leaks(self) -> Leaks:
        watches = getattr(self._store, "watch_count", 0)
        return Leaks(
            grants=sum(len(p.refs) for p in self._grants.shared),
            maps=len(self._grants.mapped),
            ports=len(self._events.ports),
            fds=self._grants.open_fds() + self._events.open_fds(),
            watches=watches() if callable(watches) else int(watches),
        )

    async def aclose(self) -> None:
        """Close ports, then mappings, then shared pages, then the store (if ours)."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._events.aclose_all()
            for mapped in list(self._grants.mapped):
                await mapped.aclose()
            for shared in list(self._grants.shared):
                await shared.aclose()
            if self._owns_store:
                await self._store.aclose()


def _is_control_domain() -> bool:
    try:
        with open(CAPABILITIES) as f:
            return "control_d" in f.read()
    except OSError:
        return False


async def discover_domid(store: Store) -> int:
    """The domid of the domain this process runs in.

    Raises:
        ConfigError: neither the store nor /proc/xen tells (pass ``domid=`` explicitly).
    """
    try:
        text = await store.read("domid")
    except StoreError as exc:
        if _is_control_domain():
            return 0
        raise ConfigError("cannot tell this domain's id: xenstore has no 'domid' node "
                          f"({exc.code}) and this is not the control domain; pass domid=") from exc
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"xenstore node 'domid' holds {text!r}, not a domain id") from exc


@contextlib.asynccontextmanager
async def open_domain(*, domid: int | None = None,
                      store: Store | None = None) -> AsyncIterator[XenDomain]:
    """Open this process's handle on the Xen domain it runs in (real ``/dev/xen`` devices).

    `store`: a xenstore client to use (kept open at exit); default: `ringkit.store.open_store()`,
    closed at exit.  `domid`: skip discovery.

    Raises:
        StoreError: no xenstore is reachable.
        ConfigError: the domid cannot be discovered.
    """
    owns_store = store is None
    if store is None:
        from ..store import open_store

        store = await open_store()
    try:
        if domid is None:
            domid = await discover_domid(store)
        async with anyio.create_task_group() as tg:
            domain = XenDomain(domid, store, tg, owns_store=owns_store)
            try:
                yield domain
            finally:
                await domain.aclose()
                tg.cancel_scope.cancel()
    finally:
        if owns_store:
            with anyio.CancelScope(shield=True):
                await store.aclose()
