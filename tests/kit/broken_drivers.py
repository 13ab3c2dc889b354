"""Deliberately broken echo drivers: the negative controls of the driver conformance suite.
Each must fail it with a message that names its fault."""

from __future__ import annotations

from typing import ClassVar

from ringkit.abc import SharedPages
from ringkit.device import Nodes
from ringkit.proto.xenbus import Reaction
from ringkit.testing import DriverUnderTest

from .drivers_under_test import echo, echo_exchange


class LeakyBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Shares a page with the frontend on every connection and never gives it back."""

    kept: ClassVar[list[SharedPages]] = []

    async def connected(self, nodes: Nodes) -> None:
        self.kept.append(await self.domain.grants.share(self.peer_id, 1))


class DeafBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Ignores the frontend's Closing (and Closed): keeps the ring mapped and serving."""

    async def _react(self, reaction: Reaction) -> None:
        if reaction is not Reaction.CLOSE:
            await super()._react(reaction)


class TrustingBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Takes the slot's payload for ASCII text without checking: garbage crashes it."""

    async def handle(self, request: bytearray) -> bytes:
        ident, length, data = echo.MESSAGE.unpack(request)
        text = bytes(data[:length]).decode("ascii")  # trusts the peer
        return echo.MESSAGE.pack(ident, len(text), text.upper().encode())


def broken(backend: type[echo.EchoBackend]) -> DriverUnderTest:
    return DriverUnderTest(backend, echo.EchoFrontend, echo_exchange, name=backend.__name__)
