"""Shared test configuration.

Backend-agnostic async tests use anyio's pytest plugin (``@pytest.mark.anyio``) and run on both
asyncio and trio; asyncio-only tests use pytest-asyncio in strict mode.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
