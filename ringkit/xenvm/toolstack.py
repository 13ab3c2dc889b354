"""dom0's toolstack chores for the harness's tests and benchmarks under real Xen.

What ``xl`` and Xen's hotplug scripts would do around a device, done directly (``xl
block-attach`` and ``network-attach`` are not used: in the emulated dom0 their hotplug scripts
overran libxl's fixed timeout on a loaded machine, failing for reasons unrelated to the drivers):

* `kernel_backends_off` / `kernel_frontends_off`: keep dom0's kernel drivers away from devices
  that ringkit's backends (or a loopback test's frontends) are to serve;
* `plug_linux_vbd`: a block device served by dom0's own xen-blkback (``phy:``, the ``block``
  script's ``physical-device``);
* `plug_linux_vif`: a vif served by dom0's own xen-netback, with the ``vif`` script's
  ``hotplug-status``;
* `vif_nodes`: the keys libxl writes for a vif besides the generic ones;
* `detach_device`: ``xl block-detach`` / ``network-detach``: backend offline and Closing, wait
  for Closed, remove both dirs.

Used from the xen-marked tests (tests/xen) and from ``ringkit bench block-xen`` / ``net-xen``.
Only meaningful in the harness's dom0 (``ringkit xen-vm run --domu``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ..abc import Store
from ..device import DeviceAddress, create_device, destroy_device
from ..proto.xenbus import XenbusState

__all__ = (
    "BACKEND_AUTOPROBE",
    "FRONTEND_AUTOPROBE",
    "detach_device",
    "kernel_backends_off",
    "kernel_frontends_off",
    "plug_linux_vbd",
    "plug_linux_vif",
    "vif_nodes",
)

BACKEND_AUTOPROBE = Path("/sys/bus/xen-backend/drivers_autoprobe")
"""Whether dom0's kernel binds its backend drivers to new backend devices by itself."""

FRONTEND_AUTOPROBE = Path("/sys/bus/xen/drivers_autoprobe")
"""Whether a domain's kernel binds its frontend drivers (hvc_xen, xen-blkfront...) to new
devices under its own ``device/`` by itself."""


@contextmanager
def kernel_backends_off() -> Iterator[None]:
    """Keep dom0's kernel backends (xen-blkback, xen-netback, once loaded) away from the
    devices created meanwhile for ringkit's backends: they would answer for them too.  Devices
    the kernel bound before stay bound.  Restored afterwards; a no-op where the switch is
    missing (not dom0)."""
    with _autoprobe_off(BACKEND_AUTOPROBE):
        yield


@contextmanager
def kernel_frontends_off() -> Iterator[None]:
    """Keep this domain's kernel frontends away from the devices a loopback test creates under
    its own ``device/`` for ringkit's frontends: dom0's built-in hvc_xen probed a loopback
    ``device/console/1``, published its own ring-ref and port and said Initialised before
    ringkit's console frontend did, so ringkit's backend bound the kernel's port (seen as the
    console's first conformance check failing in a boot).  Restored afterwards; a no-op where
    the switch is missing."""
    with _autoprobe_off(FRONTEND_AUTOPROBE):
        yield


@contextmanager
def _autoprobe_off(switch: Path) -> Iterator[None]:
    try:
        before = switch.read_text().strip()
        switch.write_text("0")
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            switch.write_text(before)


async def _wait_state(store: Store, path: str, want: XenbusState, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while await store.read(f"{path}/state") != want.to_wire():
            await anyio.sleep(0.2)


async def plug_linux_vbd(store: Store, address: DeviceAddress, device: str, *,
                         vdev: str = "", timeout: float = 240.0) -> None:
    """Plug block device `device` (a loop device, say) into `address` served by dom0's
    xen-blkback (loaded, with the backend autoprobe on), as ``xl block-attach`` and Xen's
    ``block`` hotplug script together do: both ends' entries in one transaction (libxl), then,
    once blkback has probed the device and answered InitWait, ``physical-device`` =
    "major:minor" in hex (the script), which is what blkback waits for before it opens the
    disk.  `vdev`: the ``dev`` name libxl writes (``xvdb``).

    Raises:
        TimeoutError: blkback did not reach InitWait within `timeout` seconds.
    """
    rdev = os.stat(device).st_rdev
    await create_device(
        store, address,
        backend_nodes={"params": device, "type": "phy", "mode": "w", "dev": vdev,
                       "device-type": "disk", "removable": 0, "bootable": 1,
                       "discard-enable": 1},
        frontend_nodes={"virtual-device": address.devid, "device-type": "disk"})
    backend = address.backend_path
    await _wait_state(store, backend, XenbusState.INIT_WAIT, timeout)
    await store.write(f"{backend}/physical-device", f"{os.major(rdev):x}:{os.minor(rdev):x}")
    await store.write(f"{backend}/physical-device-path", device)
    await store.write(f"{backend}/hotplug-status", "connected")


def vif_nodes(mac: str, devid: int) -> tuple[dict[str, str | int], dict[str, str | int]]:
    """What libxl writes for a vif besides the generic keys: (frontend, backend)."""
    return ({"mac": mac, "handle": devid},
            {"mac": mac, "handle": devid, "type": "vif", "script": ""})


async def plug_linux_vif(store: Store, address: DeviceAddress, mac: str, *,
                         timeout: float = 300.0) -> str:
    """Plug vif `address` served by dom0's xen-netback (loaded, backend autoprobe on): both
    ends' entries as ``xl network-attach`` writes them, then, once netback answered InitWait
    and made its interface, ``hotplug-status`` = connected (the ``vif`` script's part).
    Returns the interface's name (``vif<domid>.<devid>``), still down and without an address.

    Raises:
        TimeoutError: netback did not get there within `timeout` seconds.
    """
    front, back = vif_nodes(mac, address.devid)
    vif = f"vif{address.frontend_id}.{address.devid}"
    await create_device(store, address, frontend_nodes=front, backend_nodes=back)
    await _wait_state(store, address.backend_path, XenbusState.INIT_WAIT, timeout)
    with anyio.fail_after(timeout):
        while not Path(f"/sys/class/net/{vif}").exists():
            await anyio.sleep(0.2)
    await store.write(f"{address.backend_path}/hotplug-status", "connected")
    return vif


async def detach_device(store: Store, address: DeviceAddress, *, timeout: float = 300.0) -> None:
    """What ``xl block-detach`` / ``network-detach`` do: take the backend offline and to
    Closing, which the frontend answers by closing; once the backend reached Closed, remove
    both dirs.

    Raises:
        TimeoutError: the backend did not reach Closed within `timeout` seconds (the entries
            are left for the caller's `destroy_device`).
    """
    backend = address.backend_path

    async def body(tx: Any) -> None:
        await tx.write(f"{backend}/online", "0")
        await tx.write(f"{backend}/state", XenbusState.CLOSING.to_wire())

    await store.transact(body)
    await _wait_state(store, backend, XenbusState.CLOSED, timeout)
    await destroy_device(store, address)
