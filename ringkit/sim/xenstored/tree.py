"""The node tree of the simulated xenstored: nodes, paths, permissions and per-domain counts.

Nodes live in one flat dict keyed by canonical path (``/local/domain/1/device``) plus the two
special nodes ``@introduceDomain`` and ``@releaseDomain``, which have permissions but no place
in the tree.  Every node carries a *generation* that changes whenever it is written; transactions
(`ringkit.sim.xenstored.transaction`) detect conflicts by comparing generations, as Xen's C
xenstored does.

Views: `Tree` is the committed store; a transaction is another `View` layered on top of it.  The
request handlers work against the `View` interface only, so the same code serves both.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ...abc import Access, Permission
from ...proto.xs_wire import XENSTORE_REL_PATH_MAX

__all__ = (
    "PERM_OWNER",
    "PERM_READ",
    "PERM_WRITE",
    "SPECIAL_NODES",
    "Node",
    "Tree",
    "View",
    "XsError",
    "basename",
    "canonicalize",
    "child_of",
    "home_of",
    "is_child",
    "parent_of",
    "parse_perm",
    "perm_bits",
)


PERM_READ = 1
PERM_WRITE = 2
PERM_OWNER = 4
"""Permission bits as in libxenstore's ``XS_PERM_*``."""

_ACCESS_BITS = {
    Access.NONE: 0,
    Access.READ: PERM_READ,
    Access.WRITE: PERM_WRITE,
    Access.BOTH: PERM_READ | PERM_WRITE,
}

SPECIAL_NODES = ("@introduceDomain", "@releaseDomain")
"""Special watch paths that xenstored fires on domain introduction / release."""

# Xen's valid_chars(): "Nodes can have lots of crap." -- letters, digits and -/_@ only.
_VALID_PATH = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_PREFIX = re.compile(r"/local/domain/(\d{1,5})/")


class XsError(Exception):
    """A request failed; `code` is the xenstore error name sent back in ``XS_ERROR``."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Node:
    """One xenstore node.  Immutable: writers build a new one with `dataclasses.replace`."""

    value: bytes
    perms: tuple[Permission, ...]
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        """The domain the first permission entry names."""
        return self.perms[0].domid

    @property
    def childlen(self) -> int:
        """Bytes of the NUL-separated child name list (xenstored's ``childlen``)."""
        return sum(len(c.encode()) + 1 for c in self.children)

    def children_payload(self) -> bytes:
        """The children as xenstored sends them in an ``XS_DIRECTORY`` reply."""
        return b"".join(c.encode() + b"\0" for c in self.children)

    def accounted_size(self) -> int:
        """The node size xenstored checks against its node-size quota.

        Xen's C xenstored (``calc_node_acc_size()`` in tools/xenstored/core.c) counts the
        16-byte ``struct node_hdr`` (generation u64, num_perms u16, datalen u16, childlen u32),
        8 bytes per ``struct xs_permissions``, the value and the child names.
        """
        return 16 + 8 * len(self.perms) + len(self.value) + self.childlen


def perm_bits(perms: Sequence[Permission], domid: int, privileged: bool) -> int:
    """What domain `domid` may do with a node carrying `perms` (xenstored's ``perm_for_conn``):
    privileged domains and the owner get everything; a domain listed after the owner gets its
    entry; everyone else gets the owner entry's access."""
    if privileged or perms[0].domid == domid:
        return PERM_READ | PERM_WRITE | PERM_OWNER
    for entry in perms[1:]:
        if entry.domid == domid:
            return _ACCESS_BITS[entry.access]
    return _ACCESS_BITS[perms[0].access]


def parent_of(path: str) -> str:
    """The parent of a canonical path ("/" for top-level nodes)."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def child_of(parent: str, name: str) -> str:
    """Join a parent path and a child name."""
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def basename(path: str) -> str:
    """The last component of a canonical path."""
    return path[path.rfind("/") + 1 :]


def is_child(path: str, parent: str) -> bool:
    """Whether `path` is `parent` or lies below it (xenstored's watch match)."""
    if parent == "/":
        return True
    return path == parent or path.startswith(parent + "/")


def home_of(domid: int) -> str:
    """A domain's home directory, which relative paths are resolved against."""
    return f"/local/domain/{domid}"


def canonicalize(path: str, domid: int, *, privileged: bool, allow_special: bool = False) -> str:
    """Resolve a client-supplied path the way xenstored's ``canonicalize()`` does.

    Relative paths are joined to the connection's home; '@' paths are allowed only where
    `allow_special`; a trailing '/' (other than "/") or '//' is invalid; unprivileged domains may
    not exceed ``XENSTORE_REL_PATH_MAX`` characters below ``/local/domain/<id>/``.

    Raises:
        XsError: EINVAL.
    """
    if not _VALID_PATH.match(path) or (path.startswith("@") and not allow_special):
        raise XsError("EINVAL", f"invalid path {path!r}")
    name = path if path.startswith(("/", "@")) else f"{home_of(domid)}/{path}"
    if (name.endswith("/") and name != "/") or "//" in name:
        raise XsError("EINVAL", f"invalid path {path!r}")
    local = _LOCAL_PREFIX.match(name)
    relative_len = len(name) - (local.end() if local else 0)
    if not privileged and relative_len > XENSTORE_REL_PATH_MAX:
        raise XsError("EINVAL", "path too long")
    return name


def parse_perm(text: str) -> Permission:
    """Parse one permission string as libxenstore's ``xenstore_strings_to_perms`` does (a letter
    from "nrwb" then a domid in C ``strtol(..., 0)`` syntax).

    Raises:
        XsError: EINVAL.
    """
    if len(text) < 2 or text[0] not in "nrwb":
        raise XsError("EINVAL", f"bad permission {text!r}")
    digits = text[1:]
    try:
        if digits.startswith(("0x", "0X")):
            domid = int(digits[2:], 16)
        elif digits.startswith("0") and len(digits) > 1:
            domid = int(digits[1:], 8)
        else:
            if not digits.isdigit():
                raise ValueError(digits)
            domid = int(digits)
    except ValueError:
        raise XsError("EINVAL", f"bad permission {text!r}") from None
    if domid > 0xFFFF:
        raise XsError("EINVAL", f"bad domid in permission {text!r}")
    return Permission(domid, Access(text[0]))


class View(ABC):
    """Read/modify access to the nodes, either committed (`Tree`) or inside a transaction."""

    @abstractmethod
    def get(self, path: str) -> Node | None:
        """The node at `path`, or None."""

    @abstractmethod
    def put(self, path: str, node: Node) -> None:
        """Create or replace the node at `path` (the caller keeps parents' child lists right)."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove the node at `path` (the caller removes it from its parent's child list)."""

    @abstractmethod
    def owned(self, domid: int) -> int:
        """How many nodes domain `domid` owns (for the nodes-per-domain quota)."""


class Tree(View):
    """The committed store."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._owned: Counter[int] = Counter()
        self._generation = 0
        dom0_none = (Permission(0, Access.NONE),)
        # The nodes Xen's xenstored creates at start (setup_structure()), plus the dom0 home
        # that xen-init-dom0 writes at boot.
        self.put("/", Node(b"", dom0_none))
        for special in SPECIAL_NODES:
            self.put(special, Node(b"", dom0_none))
        for path, value in (
            ("/tool", b""),
            ("/tool/xenstored", b""),
            ("/local", b""),
            ("/local/domain", b""),
            ("/local/domain/0", b""),
            ("/local/domain/0/domid", b"0"),
            ("/local/domain/0/name", b"Domain-0"),
        ):
            self.put(path, Node(value, dom0_none))
            parent = self._nodes[parent_of(path)]
            self.put(parent_of(path), replace(parent, children=(*parent.children, basename(path))))

    @property
    def generation(self) -> int:
        """The last generation number handed out."""
        return self._generation

    def next_generation(self) -> int:
        """A fresh generation number (also used to tag transactions)."""
        self._generation += 1
        return self._generation

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        old = self._nodes.get(path)
        if old is not None:
            self._owned[old.owner] -= 1
        self._owned[node.owner] += 1
        self._nodes[path] = replace(node, generation=self.next_generation())

    def delete(self, path: str) -> None:
        old = self._nodes.pop(path, None)
        if old is not None:
            self._owned[old.owner] -= 1

    def owned(self, domid: int) -> int:
        return self._owned[domid]

    def paths(self) -> Iterable[str]:
        """Every node path (special nodes included), in no particular order."""
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)
