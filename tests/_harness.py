"""Marks for real-Xen tests that run in the harness's dom0 and start domUs of their own.

``pytestmark = DOMU_TEST`` marks a module ``xen`` and skips it outside
``ringkit xen-vm run --domu`` (no /dev/xen, or no domU image to boot).  Modules that are also a
domU's program (run as a script, where this directory is not on sys.path) spell the same marks
out themselves.  The autoprobe switches live in `ringkit.xenvm.toolstack` (the benchmarks
under real Xen use them too) and are re-exported here.
"""

from __future__ import annotations

import os

import pytest

from ringkit.xenvm.layout import ENV_DOMU_IMAGE
from ringkit.xenvm.toolstack import BACKEND_AUTOPROBE as BACKEND_AUTOPROBE
from ringkit.xenvm.toolstack import FRONTEND_AUTOPROBE as FRONTEND_AUTOPROBE
from ringkit.xenvm.toolstack import kernel_backends_off as kernel_backends_off
from ringkit.xenvm.toolstack import kernel_frontends_off as kernel_frontends_off

IN_HARNESS_DOM0 = os.path.exists("/dev/xen/gntalloc") and bool(os.environ.get(ENV_DOMU_IMAGE))
"""This process runs in the harness's dom0, with a domU image to start domUs from."""

needs_domus = pytest.mark.skipif(not IN_HARNESS_DOM0,
                                 reason="needs dom0 under `ringkit xen-vm run --domu`")

DOMU_TEST = [pytest.mark.xen, needs_domus]
"""The `pytestmark` of such a module."""

