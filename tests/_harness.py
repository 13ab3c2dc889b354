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


@contextmanager
def kernel_backends_off() -> Iterator[None]:
    """Keep dom0's kernel backends (xen-blkback, once a test loaded it) away from the devices
    a test creates for ringkit's backends: they would answer for backend/vbd too.  Restored
    afterwards; a no-op where the switch is missing (not dom0)."""
    try:
        before = BACKEND_AUTOPROBE.read_text().strip()
        BACKEND_AUTOPROBE.write_text("0")
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            BACKEND_AUTOPROBE.write_text(before)
