"""The real transport: Linux's ``/dev/xen/{gntalloc,gntdev,evtchn}`` and xenstore.

Usage (in dom0 or a domU whose kernel has the xen-gntalloc, xen-gntdev and xen-evtchn
drivers)::

    async with ringkit.xen.open_domain() as dom:
        pages = await dom.grants.share(peer, count=1)
        port = await dom.events.alloc_unbound(peer)

It implements the interfaces of `ringkit.abc` exactly as the simulated transport does, with
the kernel's errnos mapped once into `GrantError`, `EventChannelError` and
`ResourceLimitError`.  `_uapi` holds the kernel ABI (struct layouts, flags, ioctl numbers).
"""

from .domain import XenDomain as XenDomain
from .domain import discover_domid as discover_domid
from .domain import open_domain as open_domain
from .evtchn import XenEventChannel as XenEventChannel
from .evtchn import XenEventChannels as XenEventChannels
from .grants import XenGrantTable as XenGrantTable
from .grants import XenMappedPages as XenMappedPages
from .grants import XenSharedPages as XenSharedPages

__all__ = (
    "XenDomain",
    "XenEventChannel",
    "XenEventChannels",
    "XenGrantTable",
    "XenMappedPages",
    "XenSharedPages",
    "discover_domid",
    "open_domain",
)
