"""The netif (vif) backend: a guest's network interface bridged to a stream of frames.

``NetBackend`` is the driver (`device`); its packet side is any anyio object stream of
Ethernet frames -- a memory stream, or a ``TapDevice`` (`tap`) on the host.
"""

from .device import BackendQueueStats as BackendQueueStats
from .device import BackendStats as BackendStats
from .device import NetBackend as NetBackend
from .device import NetBackRings as NetBackRings

__all__ = ("BackendQueueStats", "BackendStats", "NetBackend", "NetBackRings")
