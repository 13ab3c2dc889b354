"""Shared test configuration.

Backend-agnostic async tests use anyio's pytest plugin (``@pytest.mark.anyio``) and run on both
asyncio and trio; asyncio-only tests use pytest-asyncio in strict mode.

Hypothesis runs without per-example deadlines: the suite runs on loaded two-core machines, where
a wall-clock deadline measures the machine, not the code.

``RINGKIT_REQUIRE_NATIVE=compiled,abi`` (set by ``make test``) turns a missing native
implementation into a failure instead of a silent skip of its tests.  ``RINGKIT_REQUIRE_XEN=1``
(set by ``make test-xen`` inside the harness's dom0) does the same for the ``xen``-marked tests:
there, a real-Xen test that skips means the harness is broken, not that Xen is missing; that
guard lives in ringkit's pytest plugin (`ringkit.testing.pytest_plugin`), so that driver
projects outside this tree get it too.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ringkit", deadline=None)
settings.load_profile("ringkit")


def pytest_sessionstart(session: pytest.Session) -> None:
    required = [n for n in os.environ.get("RINGKIT_REQUIRE_NATIVE", "").split(",") if n]
    if not required:
        return
    from ringkit import _native

    missing = [name for name in required if name not in _native.implementations()]
    if missing:
        raise pytest.UsageError(
            f"RINGKIT_REQUIRE_NATIVE asks for native implementation(s) {missing}, but only "
            f"{sorted(_native.implementations())} are available (is python3-dev installed?)"
        )


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
