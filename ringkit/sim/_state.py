"""The records of the simulated machine: domains, their clients, grants, mappings and ports.

Plain data; the rules that change them live in `ringkit.sim._hypervisor`.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._kernel import PageFile

FIRST_GRANT_REF = 8
"""Xen reserves the first grant entries (GNTTAB_NR_RESERVED_ENTRIES) for the toolstack."""


class EventSink(Protocol):
    """Delivers an unsolicited message to a client, with duplicates of `fds` when given."""

    def __call__(self, message: dict[str, Any], fds: list[int] | None = None) -> None: ...


class Client:
    """One connection to a domain's hypervisor socket (one process, usually).

    `send_event` delivers an unsolicited message (e.g. "your port's peer closed") to it.
    """

    _ids = itertools.count(1)

    def __init__(self, domid: int, send_event: EventSink) -> None:
        self.id = next(self._ids)
        self.domid = domid
        self.send_event = send_event
        self.shares: dict[int, Share] = {}
        self.maps: dict[int, Mapping] = {}
        self.ports: dict[int, Port] = {}
        self.copy_area: CopyArea | None = None

    @property
    def grant_count(self) -> int:
        return sum(len(share.refs) for share in self.shares.values())


@dataclass(slots=True)
class CopyArea:
    """A client's own memory the simulated Xen can reach: a memfd both map, where the bytes of
    the client's grant copies land or come from (Xen reaches the caller's buffer directly;
    here the area stands for it)."""

    fd: int
    memory: mmap.mmap

    def close(self) -> None:
        self.memory.close()
        os.close(self.fd)


@dataclass(slots=True)
class Grant:
    ref: int
    share: Share
    index: int


@dataclass(slots=True)
class UnmapNotify:
    offset: int | None = None
    port: int | None = None


@dataclass(slots=True)
class Share:
    id: int
    client: Client
    grantee: int
    refs: list[int]
    page: PageFile
    active: bool = False
    notify: UnmapNotify = field(default_factory=UnmapNotify)


@dataclass(slots=True)
class Mapping:
    id: int
    client: Client
    peer: int
    refs: list[int]
    pages: list[tuple[PageFile, int]]
    writable: bool
    notify: UnmapNotify = field(default_factory=UnmapNotify)


@dataclass(slots=True)
class Port:
    domid: int
    port: int
    client: Client
    remote_domid: int
    wait_fd: int
    reserved_fd: int = -1  # while unbound: the eventfd the binder will wait on
    peer: Port | None = None
    state: str = "unbound"  # unbound -> bound -> unbound (peer closed) ...; or peer-closed (dead)
    was_bound: bool = False  # bound at least once: a new binding must reach the owner's process


@dataclass(slots=True)
class DomainState:
    domid: int
    name: str
    grants: dict[int, Grant] = field(default_factory=dict)
    revoked: OrderedDict[int, None] = field(default_factory=OrderedDict)
    ports: dict[int, Port] = field(default_factory=dict)
    clients: set[Client] = field(default_factory=set)
    next_ref: int = FIRST_GRANT_REF
    next_port: int = 1


@dataclass(frozen=True, slots=True)
class Accounting:
    """What the hypervisor holds, over all domains or one."""

    grants: int = 0
    maps: int = 0
    ports: int = 0
    page_files: int = 0
    eventfds: int = 0
    clients: int = 0
