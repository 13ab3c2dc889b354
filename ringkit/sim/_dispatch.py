"""The simulated Xen's "hypercalls": one JSON request of a domain's process, carried out.

Each operation is one synchronous `Hypervisor` call, so every request is atomic; the reply says
what was created and carries the descriptors the process needs (memfds of granted pages,
eventfds of ports).
"""

from __future__ import annotations

import os
from typing import Any

from ._hypervisor import Hypervisor
from ._state import Client


def dispatch(
    hv: Hypervisor, client: Client, msg: dict[str, Any]
) -> tuple[dict[str, Any], list[int]]:
    """Carry out one request of `client` and return the reply and the descriptors it carries.

    The descriptors are the hypervisor's own (the outbox duplicates them), except a read-only
    map's reopenings, which the caller closes once queued.

    Raises:
        TransportError, ConfigError: the request is refused (the client gets the error).
        OSError: out of descriptors or memory (the request fails, not the server).
        KeyError, TypeError, ValueError: a malformed request (the client is dropped).
    """
    op = msg["op"]
    if op == "share":
        share = hv.share(client, msg["peer"], msg["count"], bool(msg["writable"]))
        return {"share": share.id, "refs": share.refs}, [share.page.fd]
    if op == "activate":
        hv.activate(client, msg["share"])
        return {}, []
    if op == "unshare":
        hv.unshare(client, msg["share"])
        return {}, []
    if op == "map":
        writable = bool(msg["writable"])
        mapping = hv.map(client, msg["peer"], list(msg["refs"]), writable)
        files: list[int] = []
        slots: dict[int, int] = {}
        pieces = []
        for page, index in mapping.pages:
            if page.fd not in slots:
                slots[page.fd] = len(files)
                files.append(page.fd)
            pieces.append([slots[page.fd], index])
        if not writable:
            # A read-only descriptor: the kernel itself refuses writable mappings.
            reopened: list[int] = []
            try:
                for fd in files:
                    reopened.append(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                for fd in reopened:
                    os.close(fd)
                hv.unmap(client, mapping.id, run_notify=False)
                raise
            files = reopened
        return {"map": mapping.id, "pieces": pieces}, files
    if op == "copy_area":
        return {}, [hv.copy_area(client)]
    if op == "copy":
        # The bytes travel through the client's copy area, never through this socket.
        hv.copy(client, msg["peer"], list(msg["segments"]), msg["at"], bool(msg["into"]))
        return {}, []
    if op == "unmap":
        hv.unmap(client, msg["map"])
        return {}, []
    if op == "unmap_notify":
        hv.set_unmap_notify(client, msg["kind"], msg["ident"], msg["offset"], msg["port"])
        return {}, []
    if op == "alloc_unbound":
        port = hv.alloc_unbound(client, msg["remote"])
        return {"port": port.port}, [port.wait_fd, port.reserved_fd]
    if op == "bind_interdomain":
        port = hv.bind_interdomain(client, msg["remote"], msg["remote_port"])
        assert port.peer is not None
        return {"port": port.port}, [port.wait_fd, port.peer.wait_fd]
    if op == "close_port":
        hv.close_port(client, msg["port"])
        return {}, []
    raise ValueError(f"unknown operation {op!r}")
