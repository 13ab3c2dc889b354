"""Marks for real-Xen tests that run in the harness's dom0 and start domUs of their own.

``pytestmark = DOMU_TEST`` marks a module ``xen`` and skips it outside
``ringkit xen-vm run --domu`` (no /dev/xen, or no domU image to boot).  Modules that are also a
domU's program (run as a script, where this directory is not on sys.path) spell the same marks
out themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ringkit.xenvm.layout import ENV_DOMU_IMAGE

IN_HARNESS_DOM0 = os.path.exists("/dev/xen/gntalloc") and bool(os.environ.get(ENV_DOMU_IMAGE))
"""This process runs in the harness's dom0, with a domU image to start domUs from."""

needs_domus = pytest.mark.skipif(not IN_HARNESS_DOM0,
                                 reason="needs dom0 under `ringkit xen-vm run --domu`")

DOMU_TEST = [pytest.mark.xen, needs_domus]
"""The `pytestmark` of such a module."""


BACKEND_AUTOPROBE = Path("/sys/bus/xen-backend/drivers_autoprobe")
"""Whether dom0's kernel binds its backend drivers to new backend devices by itself."""


FRONTEND_AUTOPROBE = Path("/sys/bus/xen/drivers_autoprobe")
"""Whether a domain's kernel binds its frontend drivers (hvc_xen, xen-blkfront...) to new
devices under its own ``device/`` by itself."""


@contextmanager
def kernel_backends_off() -> Iterator[None]:
    """Keep dom0's kernel backends (xen-blkback, once a test loaded it) away from the devices
    a test creates for ringkit's backends: they would answer for backend/vbd too.  Restored
    afterwards; a no-op where the switch is missing (not dom0)."""
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
