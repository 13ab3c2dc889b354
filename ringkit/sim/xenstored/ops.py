"""Node operations of the simulated xenstored, with Xen's permission and quota rules.

`NodeOps` implements read, write, mkdir, rm, directory, get/set perms for one request, against
a `View` (the committed tree or a transaction), as domain `domid`.  Rules follow Xen's C
xenstored (tools/xenstored/core.c), which is what Debian runs by default:

* a missing node is reported as ENOENT only if the nearest existing ancestor grants the access
  asked for, otherwise EACCES -- so that errors leak nothing about unreadable parts of the tree
  (``errno_from_parents()``);
* creating a node creates missing parents; each new node copies its parent's permissions, and
  an unprivileged creator becomes the owner (``construct_node()``: "Inherit permissions, unpriv
  domains own what they create");
* quotas bind unprivileged domains only and answer ENOSPC (node size, nodes per domain,
  permissions per node), see `Quota`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ...abc import Permission
from ...proto.xs_wire import XENSTORE_PAYLOAD_MAX
from .tree import (
    PERM_OWNER,
    PERM_READ,
    PERM_WRITE,
    Node,
    View,
    XsError,
    basename,
    child_of,
    parent_of,
    perm_bits,
)

__all__ = ("FireWatches", "NodeOps", "Quota")


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-domain limits, with the defaults of Xen's C xenstored (``quotas[]`` in
    tools/xenstored/domain.c).  They apply to unprivileged domains only.

    What Xen answers when one is exceeded (checked against tools/xenstored/*.c, and measured
    from a domU against Debian's Xen 4.17 xenstored by tests/store/test_store_domu.py):
    node size -> ENOSPC (``write_node_raw``), nodes per domain -> ENOSPC (``create_node``),
    permissions per node -> ENOSPC (``do_set_perms``), watches -> E2BIG (``do_watch``),
    transactions -> ENOSPC (``do_transaction_start``).  The limits themselves are exact here;
    4.17 measured slightly differently: a one-permission node held at most 2015 value bytes
    (its 24-byte record header and a ``>=`` test; upstream now counts 16 bytes, 2024 here), and
    an 11th transaction was still accepted (its ``>`` test lets one extra through).
    """

    node_size: int = 2048
    """Max `Node.accounted_size` (header + permissions + value + child names)."""
    nodes: int = 1000
    """Max nodes owned by one domain."""
    watches: int = 128
    """Max watches registered by one domain."""
    transactions: int = 10
    """Max transactions open at once by one domain."""
    perms: int = 5
    """Max permission entries on one node."""


FireWatches = Callable[[str, bool, Node, "tuple[Permission, ...] | None"], None]
"""Callback ``(path, exact, node, old_perms)`` reporting a change for watches."""


class NodeOps:
    """Node requests of one connection (domain `domid`) against one `View`."""

    def __init__(
        self,
        view: View,
        domid: int,
        *,
        privileged: bool,
        quota: Quota,
        fire: FireWatches,
    ) -> None:
        self.view = view
        self.domid = domid
        self.privileged = privileged
        self.quota = quota
        self._fire = fire

    # ----------------------------------------------------------------- access checks

    def perm(self, node: Node) -> int:
        """This domain's permission bits on `node`."""
        return perm_bits(node.perms, self.domid, self.privileged)

    def _nearest(self, path: str) -> Node:
        """The nearest existing ancestor of `path` (the root always exists)."""
        while path != "/":
            path = parent_of(path)
            node = self.view.get(path)
            if node is not None:
                return node
        raise AssertionError("the xenstore root node is missing")

    def get_node(self, path: str, want: int) -> Node:
        """The node at canonical `path` if this domain has `want` on it.

        Raises:
            XsError: EACCES without permission; ENOENT if it does not exist and the nearest
                existing ancestor grants `want` (EACCES otherwise).
        """
        node = self.view.get(path)
        if node is not None:
            if self.perm(node) & want != want:
                raise XsError("EACCES", path)
            return node
        if path.startswith("@") or self.perm(self._nearest(path)) & want:
            raise XsError("ENOENT", path)
        raise XsError("EACCES", path)

    def _check_size(self, node: Node) -> None:
        if not self.privileged and node.accounted_size() > self.quota.node_size:
            raise XsError("ENOSPC", f"node of {node.accounted_size()} bytes over quota")

    # ----------------------------------------------------------------- requests

    def read(self, path: str) -> bytes:
        return self.get_node(path, PERM_READ).value

    def directory(self, path: str) -> bytes:
        payload = self.get_node(path, PERM_READ).children_payload()
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            # send_reply() refuses oversized replies; libxenstore then uses XS_DIRECTORY_PART.
            raise XsError("E2BIG", path)
        return payload

    def directory_part(self, path: str, offset: int) -> bytes:
        """One chunk of a long child list: the node's generation, then as many complete child
        names from byte `offset` as fit, with an extra NUL once the list is complete."""
        node = self.get_node(path, PERM_READ)
        gen = str(node.generation).encode() + b"\0"
        children = node.children_payload()
        if offset >= len(children):
            return gen + b"\0"
        room = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        end = offset
        while end < len(children):
            nul = children.index(b"\0", end)
            if nul + 1 - offset > room:
                break
            end = nul + 1
        if end == offset:
            raise XsError("E2BIG", path)
        chunk = children[offset:end]
        return gen + chunk + (b"\0" if end == len(children) else b"")

    def get_perms(self, path: str) -> list[Permission]:
        return list(self.get_node(path, PERM_READ).perms)

    def write(self, path: str, value: bytes) -> None:
        try:
            node = self.get_node(path, PERM_WRITE)
        except XsError as exc:
            if exc.code != "ENOENT":
                raise
            self._create(path, value)
            return
        new = replace(node, value=value)
        self._check_size(new)
        self.view.put(path, new)
        self._fire(path, False, new, None)

    def mkdir(self, path: str) -> None:
        try:
            self.get_node(path, PERM_WRITE)
        except XsError as exc:
            if exc.code != "ENOENT":
                raise
            self._create(path, b"")

    def _create(self, path: str, value: bytes) -> None:
        """Create `path` and its missing ancestors, all or nothing."""
        missing = [path]
        parent_path = parent_of(path)
        parent = self.view.get(parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = parent_of(parent_path)
            parent = self.view.get(parent_path)
        if not self.privileged and self.view.owned(self.domid) + len(missing) > self.quota.nodes:
            raise XsError("ENOSPC", f"domain {self.domid} owns too many nodes")
        writes: list[tuple[str, Node]] = []
        for new_path in reversed(missing):
            perms = parent.perms
            if not self.privileged:
                perms = (Permission(self.domid, perms[0].access), *perms[1:])
            grown = replace(parent, children=(*parent.children, basename(new_path)))
            node = Node(value if new_path == path else b"", perms)
            for candidate in (grown, node):
                self._check_size(candidate)
            writes.append((parent_path, grown))
            parent_path, parent = new_path, node
        writes.append((path, parent))
        for write_path, node in writes:
            self.view.put(write_path, node)
        self._fire(path, False, parent, None)

    def rm(self, path: str) -> None:
        try:
            node = self.get_node(path, PERM_WRITE)
        except XsError as exc:
            # "Didn't exist already?  Fine, if parent exists."
            if exc.code == "ENOENT" and path != "/" and self.view.get(parent_of(path)):
                return
            raise
        if path == "/":
            raise XsError("EINVAL", "cannot remove the root")
        self._remove_subtree(path, node, exact=False)
        parent_path = parent_of(path)
        parent = self.view.get(parent_path)
        assert parent is not None
        name = basename(path)
        self.view.put(
            parent_path, replace(parent, children=tuple(c for c in parent.children if c != name))
        )

    def _remove_subtree(self, path: str, node: Node, *, exact: bool) -> None:
        for child in node.children:
            child_path = child_of(path, child)
            child_node = self.view.get(child_path)
            if child_node is not None:
                self._remove_subtree(child_path, child_node, exact=True)
        self.view.delete(path)
        # Watches on the removed root (and above) fire; below it only exact matches fire, as
        # delnode_sub() does.
        self._fire(path, exact, node, None)

    def set_perms(self, path: str, perms: Sequence[Permission]) -> None:
        if not self.privileged and len(perms) > self.quota.perms:
            raise XsError("ENOSPC", "too many permissions")
        node = self.get_node(path, PERM_WRITE | PERM_OWNER)
        if not self.privileged and perms[0].domid != node.owner:
            # "Unprivileged domains may not change the owner." (do_set_perms)
            raise XsError("EPERM", path)
        new = replace(node, perms=tuple(perms))
        self._check_size(new)
        self.view.put(path, new)
        self._fire(path, False, new, node.perms)
