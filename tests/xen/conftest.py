"""Fixtures for tests that need the real Xen devices (run in dom0 under the Xen-in-QEMU harness).

Every test module here that touches /dev/xen marks itself ``xen`` and skips where
``/dev/xen/gntalloc`` does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ringkit.xen import XenDomain, open_domain


@pytest.fixture
async def domain() -> AsyncIterator[XenDomain]:
    """This process's domain; every test must leave nothing behind."""
    async with open_domain() as dom:
        yield dom
        assert not dom.leaks(), dom.leaks()
