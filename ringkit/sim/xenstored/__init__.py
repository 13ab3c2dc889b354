"""A simulated xenstored speaking the real xs_wire protocol.

Semantics follow Xen's C xenstored (what Debian runs): read, write, mkdir, rm, directory (and
directory-part), get/set perms, watch/unwatch with the initial event, transactions with EAGAIN
on conflict, get-domain-path, introduce/release (privileged only) and the special watches
``@introduceDomain`` / ``@releaseDomain``, per-node permissions, and quotas with Xen's error
strings (see `Quota`).  Debian's ``xenstore-ls``/``-read``/``-write``/``-watch`` work against it
with ``XENSTORED_PATH=<socket>``.

Embedding API::

    server = XenstoreServer()                   # owns the node tree; dom0 is privileged
    await server.serve_connection(stream, domid)  # serve one anyio ByteStream as `domid`
                                                  # until it closes (then it is closed)
    server.introduce_domain(domid)   # create /local/domain/<domid> owned by it, fire
                                     # @introduceDomain (as the toolstack + xenstored do)
    server.release_domain(domid)     # end its connections, watches and transactions, remove
                                     # its home, give its nodes to dom0, fire @releaseDomain
    await server.serve_unix(path, domid)  # listen on a Unix socket, every client is `domid`
                                          # (use with TaskGroup.start for readiness)

Unprivileged domains receive ``@introduceDomain``/``@releaseDomain`` events only if dom0 gave them
read access to the special node (``set_perms("@releaseDomain", ...)``), as in Xen.

Checked against the real thing: tests/store/test_store_vs_xenstored.py replays 56 raw requests
whose replies were recorded from Debian's Xen 4.17 C xenstored; all match except where 4.17
differs from current upstream (a malformed single-string argument: 4.17 leaks a stale ENOENT,
we answer EINVAL; GET_PERMS of a special node: 4.17 says EINVAL, upstream and we answer it).

Deviations from xenstored, on purpose: no ring-page transport (connections are byte streams),
XS_CONTROL / XS_RESUME / XS_SET_TARGET answer ENOSYS, permissions naming unknown domains are
kept as given, quotas count exactly (Xen's watch and transaction checks let one extra through).
"""

from .ops import Quota as Quota
from .server import XenstoreServer as XenstoreServer
from .tree import SPECIAL_NODES as SPECIAL_NODES

__all__ = ("SPECIAL_NODES", "Quota", "XenstoreServer")
