"""Where the simulated Xen puts its sockets inside its directory.

```
DIR/control.sock               toolstack socket: create/destroy/list domains, accounting
DIR/domain/<domid>/xen.sock    "hypercalls" of domain <domid>: grants and event channels
DIR/domain/<domid>/xenstored.sock   the xenstore as seen from domain <domid> (xs_wire)
```

A process is in domain N because it talks to domain N's sockets; each domain directory is
mode 0700, so file ownership decides who may act as which domain.
"""

from __future__ import annotations

import os
from pathlib import Path

CONTROL = "control.sock"
XEN = "xen.sock"
XENSTORED = "xenstored.sock"


def domain_dir(root: str | os.PathLike[str], domid: int) -> Path:
    """The socket directory of domain `domid`."""
    return Path(root) / "domain" / str(domid)


def xen_socket(root: str | os.PathLike[str], domid: int) -> Path:
    """The grant / event-channel socket of domain `domid`."""
    return domain_dir(root, domid) / XEN


def xenstored_socket(root: str | os.PathLike[str], domid: int) -> Path:
    """The xenstore socket of domain `domid` (point ``XENSTORED_PATH`` here)."""
    return domain_dir(root, domid) / XENSTORED


def control_socket(root: str | os.PathLike[str]) -> Path:
    """The toolstack's control socket."""
    return Path(root) / CONTROL
