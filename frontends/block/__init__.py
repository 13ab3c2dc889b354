"""The blkif block frontend: async byte-range I/O on a disk a backend domain serves.

``BlockFrontend`` is the driver (`device`); ``BlockClient`` its transport-free I/O engine
(`client`), whose ``submit`` runs a batch of ``ReadOp`` / ``WriteOp`` together and whose
``lend`` hands out granted pages (``PoolBuffer``) for reads and writes without a copy; ``DiskInfo``
what the backend advertised; ``BlockIOError`` /
``BlockNotSupportedError`` what a refused request raises; ``StaleReadError`` a read answered OKAY
whose pages were not written (detected with ``verify_reads``).
"""

from .client import BlockClient as BlockClient
from .client import DiskInfo as DiskInfo
from .client import PoolBuffer as PoolBuffer
from .client import ReadOp as ReadOp
from .client import WriteOp as WriteOp
from .device import BlockFrontend as BlockFrontend
from .errors import BlockIOError as BlockIOError
from .errors import BlockNotSupportedError as BlockNotSupportedError
from .errors import StaleReadError as StaleReadError

__all__ = ("BlockClient", "BlockFrontend", "BlockIOError", "BlockNotSupportedError", "DiskInfo",
           "PoolBuffer", "ReadOp", "StaleReadError", "WriteOp")
