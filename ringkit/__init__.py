"""ringkit: Xen split drivers in userspace.

Frontends share ring pages through grants, backends map them, event channels carry the
doorbells, unmap-notify bytes report a peer's death and xenstore carries the handshake -- on
real Xen (`ringkit.xen`) or on a simulated Xen on one Linux machine (`ringkit.sim`).
"""

from importlib.metadata import version as _version

from ._errors import ConfigError as ConfigError
from ._errors import EventChannelError as EventChannelError
from ._errors import GrantError as GrantError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import PeerGoneError as PeerGoneError
from ._errors import PeerRefusedError as PeerRefusedError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import ResourceLimitError as ResourceLimitError
from ._errors import RingkitError as RingkitError
from ._errors import StoreError as StoreError
from ._errors import TransportError as TransportError

__version__: str = _version("ringkit")
"""The installed distribution's version (from its metadata, so it cannot drift from
pyproject.toml)."""

__all__ = (
    "__version__",
    "ConfigError",
    "EventChannelError",
    "GrantError",
    "LocalProtocolError",
    "PeerGoneError",
    "PeerRefusedError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResourceLimitError",
    "RingkitError",
    "StoreError",
    "TransportError",
)
