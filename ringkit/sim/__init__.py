"""A simulated Xen on one Linux machine: real shared memory, real wake-ups, Xen's rules.

A server process owns the domains, their grant tables and event channels, and a xenstored
speaking the real xs_wire protocol (`ringkit.sim.xenstored`).  Every domain gets a directory of
Unix sockets; a process *is* in domain N because it talks to domain N's sockets (file
permissions decide who may).  Granted pages are sealed memfds passed with SCM_RIGHTS -- a
read-only grant is sealed against writes and mapped through a read-only descriptor, so the
kernel enforces it; multi-page mappings are stitched contiguously.  Event channels are
eventfds: once bound, each side holds the other's, so `notify()` is one write and the server is
never on the hot path.  When a process exits or is killed, the server runs its unmap-notify
actions as the kernel would (clear the byte, signal the port), revokes its grants, closes its
ports (the peers' waits raise `PeerGoneError`); pages live until their last mapping is gone.

Start a simulator and act inside its domains (tests, demos)::

    from ringkit.sim import SimXen

    async with SimXen.start() as xen:           # child process; in_process=True for one loop
        front_id = await xen.create_domain("front")
        back_id = await xen.create_domain("back")
        async with xen.connect(front_id) as front, xen.connect(back_id) as back:
            pages = await front.grants.share(back_id, 2)        # SharedPages (refs, buffer)
            port = await front.events.alloc_unbound(back_id)    # EventChannel
            await front.store.write("data/ring-ref", str(pages.refs[0]))
            mapped = await back.grants.map(front_id, pages.refs)  # contiguous MappedPages
            chan = await back.events.bind_interdomain(front_id, port.port)
            chan.notify(); await port.wait()
            ...
            assert not front.leaks() and not back.leaks()
        assert not await xen.settled_leaks()        # the server's own accounting, once it
                                                    # has processed every disconnect

From any other process (it only needs the directory and a domid)::

    async with ringkit.sim.connect(directory, domid) as dom:   # a `ringkit.abc.Domain`
        ...

`SimXen` also offers `destroy_domain`, `list_domains`, `leaks` (a `SimLeaks` snapshot),
`xenstored_path(domid)`, `server_pid` (child-process mode) and `SimXen.attach(directory)` for a
server started elsewhere.  A stopped server makes later control calls raise `TransportError`
and every connected process's waits raise `PeerGoneError`.

Command line: ``ringkit sim serve --dir DIR [--grant-limit N]``, ``ringkit sim domain create
NAME``, ``ringkit sim domain list``, ``ringkit sim domain destroy NAME``.  Debian's xenstore
tools work against ``XENSTORED_PATH=DIR/domain/0/xenstored.sock``.

Rules, as strict as Xen and Linux:

* mapping an unknown, revoked, foreign (granted to another domain) or -- for a writable map --
  read-only grant raises `GrantError` with errno EINVAL (what gntdev's mmap gives);
* more than `grant_limit` (default 1024, gntalloc's) granted pages per process raise
  `ResourceLimitError` (ENOSPC);
* closing `SharedPages` / `MappedPages` twice is a double unmap: `GrantError`;
* an event sent before the peer bound is dropped, and, as Xen's evtchn_bind_interdomain does to
  make up for such lost events, every bind leaves exactly one event pending on the binder's new
  port (its first `wait()` returns at once); after the peer closed its end, `wait()`
  returns for the events it sent before closing, then raises `PeerGoneError`, and `notify()`
  raises `EventChannelError` (ENOTCONN: the port is no longer bound) -- until the same remote
  domain binds the port again, which Xen allows (the port went back to unbound);
* destroying a domain releases all it held, closes its peers' ports, disconnects its processes
  and fires ``@releaseDomain``.

Fault hooks: `SimEventChannel.drop_notifies` (lose the next n notifications),
`SimEventChannel.fire_spurious()` and `SimXen.fire(domid, port)` (events nobody sent).
Events coalesce as in Xen: many notifications between two waits make one wake-up.
"""

from ._client import SimDomain as SimDomain
from ._client import SimEventChannel as SimEventChannel
from ._client import SimMappedPages as SimMappedPages
from ._client import SimSharedPages as SimSharedPages
from ._client import connect as connect
from ._control import DomainInfo as DomainInfo
from ._control import SimLeaks as SimLeaks
from ._control import SimXen as SimXen
from ._paths import xenstored_socket as xenstored_socket

__all__ = (
    "DomainInfo",
    "SimDomain",
    "SimEventChannel",
    "SimLeaks",
    "SimMappedPages",
    "SimSharedPages",
    "SimXen",
    "connect",
    "xenstored_socket",
)
