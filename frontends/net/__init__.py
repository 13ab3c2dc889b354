"""The netif (vif) frontend: a guest's network interface as an anyio stream of frames.

``NetFrontend`` is the driver (`device`): ``send`` / ``receive`` Ethernet frames, or use its
``stream`` (``FrameStream``) wherever an object stream of frames is wanted (a TAP bridge).
"""

from .device import FrameStream as FrameStream
from .device import FrontendQueueStats as FrontendQueueStats
from .device import FrontendStats as FrontendStats
from .device import NetFrontend as NetFrontend
from .device import NetFrontRings as NetFrontRings

__all__ = ("FrameStream", "FrontendQueueStats", "FrontendStats", "NetFrontend", "NetFrontRings")
