"""The async xenstore client.

One implementation of the xs_wire protocol (`ringkit.proto.xs_wire`) serves every transport:
`connect_unix` for xenstored's socket (or the simulator's per-domain store socket),
`connect_xenbus` for the Linux ``/dev/xen/xenbus`` device, `open_store` to choose like
libxenstore does.  Use the client as an async context manager::

    async with await connect_unix(path) as store:
        await store.write("device/vif/0/state", "1")
        async with store.watch("device/vif/0/state") as watch:
            async for changed in watch:
                ...
"""

from .client import StoreClient as StoreClient
from .connect import XENBUS_DEVICE as XENBUS_DEVICE
from .connect import FdByteStream as FdByteStream
from .connect import XenbusDeviceStream as XenbusDeviceStream
from .connect import connect_unix as connect_unix
from .connect import connect_xenbus as connect_xenbus
from .connect import daemon_socket_path as daemon_socket_path
from .connect import domain_device_path as domain_device_path
from .connect import open_path as open_path
from .connect import open_store as open_store

__all__ = (
    "XENBUS_DEVICE",
    "StoreClient",
    "FdByteStream",
    "XenbusDeviceStream",
    "connect_unix",
    "connect_xenbus",
    "daemon_socket_path",
    "domain_device_path",
    "open_path",
    "open_store",
)
