"""The toolstack's part of plugging a device in: both ends' xenstore entries with permissions.

This is what ``xl block-attach`` (libxl's device_add) writes, run by a privileged domain
(dom0) over any `Store`, real or simulated:

* the frontend dir, owned by the frontend domain, readable by the backend domain:
  ``backend``, ``backend-id``, ``state`` = Initialising, plus the device's own keys;
* the backend dir, owned by the backend domain, readable by the frontend domain:
  ``frontend``, ``frontend-id``, ``online`` = 1, ``state`` = Initialising, plus the device's keys.

Both are written in one transaction (retried on conflict), so a driver watching either dir never
sees half a device.  `destroy_device` removes both dirs, which the drivers see as the device
going away.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..abc import Access, Permission, Store, Transaction
from ..proto.xenbus import XenbusState
from .paths import DeviceAddress

__all__ = ("create_device", "destroy_device", "device_permissions")


def device_permissions(owner: int, reader: int) -> list[Permission]:
    """Owner may do anything, nobody else has access, except `reader`, who may read."""
    perms = [Permission(owner, Access.NONE)]
    if reader != owner:
        perms.append(Permission(reader, Access.READ))
    return perms


async def create_device(
    store: Store,
    address: DeviceAddress,
    *,
    frontend_nodes: Mapping[str, str | int] | None = None,
    backend_nodes: Mapping[str, str | int] | None = None,
) -> None:
    """Create both ends' entries of `address` with xl's permissions, in one transaction.

    `frontend_nodes` / `backend_nodes` are extra device keys (e.g. ``params``, ``mode``,
    ``virtual-device``).  An existing device at the same address is replaced.

    Raises:
        StoreError: the store refused (e.g. EACCES when `store` is not privileged).
    """
    fe_perms = device_permissions(address.frontend_id, address.backend_id)
    be_perms = device_permissions(address.backend_id, address.frontend_id)
    frontend = {
        "backend": address.backend_path,
        "backend-id": address.backend_id,
        "state": XenbusState.INITIALISING.to_wire(),
        **(frontend_nodes or {}),
    }
    backend = {
        "frontend": address.frontend_path,
        "frontend-id": address.frontend_id,
        "online": 1,
        "state": XenbusState.INITIALISING.to_wire(),
        **(backend_nodes or {}),
    }

    async def body(tx: Transaction) -> None:
        for path, nodes, perms in (
            (address.frontend_path, frontend, fe_perms),
            (address.backend_path, backend, be_perms),
        ):
            if await tx.exists(path):
                await tx.rm(path)
            await tx.mkdir(path)
            await tx.set_perms(path, perms)
            for name, value in nodes.items():
                await tx.write(f"{path}/{name}", str(value))
                await tx.set_perms(f"{path}/{name}", perms)

    await store.transact(body)


async def destroy_device(store: Store, address: DeviceAddress) -> None:
    """Remove both ends' entries (missing ones are fine), as ``xl block-detach -f`` ends up doing.

    Raises:
        StoreError: the store refused.
    """

    async def body(tx: Transaction) -> None:
        for path in (address.backend_path, address.frontend_path):
            if await tx.exists(path):
                await tx.rm(path)

    await store.transact(body)
