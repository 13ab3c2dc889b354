"""The blkif block backend: serves a raw image file or block device to a frontend domain.

``BlockBackend`` is the driver (`device`), ``BlockService`` its blkif request logic
(`service`), ``Image`` the storage (`image`), ``serve_ring`` the per-ring loop (`queue`), a
`ringkit.requests.RequestServer` whose `GrantMapper` keeps persistent grants mapped.
"""

from .device import BlockBackend as BlockBackend
from .image import Image as Image
from .service import BlockService as BlockService
from .service import ServiceConfig as ServiceConfig
from .service import ServiceStats as ServiceStats

__all__ = ("BlockBackend", "BlockService", "Image", "ServiceConfig", "ServiceStats")
