"""Xenstore transactions of the simulated xenstored.

A transaction is a `View` that records the generation of every node it touches (read, written,
or found missing) on first access and keeps its own changes in an overlay.  Committing checks
that none of the touched nodes changed generation in the committed tree meanwhile -- if one did,
the commit fails with EAGAIN and the client retries, exactly the contract of Xen's C xenstored
(tools/xenstored/transaction.c: "accessed" nodes are checked at ``finalize_transaction()``).
Watch events caused inside a transaction are queued and fire only when it commits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...abc import Permission
from .tree import Node, Tree, View, XsError

__all__ = ("QueuedEvent", "Transaction")


_MISSING = -1


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """A watch event a transaction will fire on commit: the node path, whether only watches on
    exactly that path match (descendants of a removed subtree), and the node's permissions at the
    time (so that removed nodes can still be checked for readability)."""

    path: str
    exact: bool
    perms: tuple[Permission, ...] | None


@dataclass
class Transaction(View):
    """One open transaction on one connection."""

    tree: Tree
    tx_id: int
    overlay: dict[str, Node | None] = field(default_factory=dict)
    accessed: dict[str, int] = field(default_factory=dict)
    owned_delta: Counter[int] = field(default_factory=Counter)
    events: list[QueuedEvent] = field(default_factory=list)

    def get(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        node = self.tree.get(path)
        self.accessed.setdefault(path, node.generation if node is not None else _MISSING)
        return node

    def put(self, path: str, node: Node) -> None:
        old = self.get(path)
        if old is not None:
            self.owned_delta[old.owner] -= 1
        self.owned_delta[node.owner] += 1
        self.overlay[path] = node

    def delete(self, path: str) -> None:
        old = self.get(path)
        if old is not None:
            self.owned_delta[old.owner] -= 1
        self.overlay[path] = None

    def owned(self, domid: int) -> int:
        return self.tree.owned(domid) + self.owned_delta[domid]

    def conflicts(self) -> bool:
        """Whether a node this transaction touched changed in the committed tree since."""
        for path, generation in self.accessed.items():
            node = self.tree.get(path)
            if (node.generation if node is not None else _MISSING) != generation:
                return True
        return False

    def commit(self) -> list[QueuedEvent]:
        """Apply the overlay to the tree and return the queued watch events.

        Raises:
            XsError: EAGAIN when another writer changed a node this transaction touched.
        """
        if self.conflicts():
            raise XsError("EAGAIN", f"transaction {self.tx_id} conflicts")
        for path, node in self.overlay.items():
            if node is None:
                self.tree.delete(path)
            else:
                self.tree.put(path, node)
        return self.events
