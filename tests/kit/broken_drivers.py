"""Deliberately broken echo drivers: the negative controls of the driver conformance suite.
Each must fail it with a message that names its fault."""

from __future__ import annotations

from typing import ClassVar

from ringkit import RemoteProtocolError, RingkitError
from ringkit.abc import MappedPages, SharedPages
from ringkit.device import Nodes, XenbusState
from ringkit.proto.xenbus import Reaction
from ringkit.testing import DriverUnderTest

from .drivers_under_test import echo, echo_exchange


class LeakyBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Shares a page with the frontend on every connection and never gives it back."""

    kept: ClassVar[list[SharedPages]] = []

    async def connected(self, nodes: Nodes) -> None:
        self.kept.append(await self.domain.grants.share(self.peer_id, 1))


class ClingingBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Maps the frontend's ring a second time on every connection and never unmaps it."""

    kept: ClassVar[list[MappedPages]] = []

    async def connected(self, nodes: Nodes) -> None:
        ref = int(await self.peer_nodes.read("ring-ref"))
        self.kept.append(await self.domain.grants.map(self.peer_id, [ref]))


class DeafBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Ignores the frontend's Closing (and Closed): keeps the ring mapped and serving."""

    async def _react(self, reaction: Reaction) -> None:
        if reaction is not Reaction.CLOSE:
            await super()._react(reaction)


class DeafAtInitWaitBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Ignores a frontend's Closing and Closed while it waits at InitWait: a frontend that
    closed its event channel and then closes in order can neither finish nor reconnect (the
    fault issue 17 found in ringkit's own backends)."""

    async def _react(self, reaction: Reaction) -> None:
        if reaction is Reaction.CLOSE and self.state is XenbusState.INIT_WAIT:
            return
        await super()._react(reaction)


class TrustingBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Takes the slot's payload for ASCII text without checking: garbage crashes it."""

    async def handle(self, request: bytearray) -> bytes:
        ident, length, data = echo.MESSAGE.unpack(request)
        text = bytes(data[:length]).decode("ascii")  # trusts the peer
        return echo.MESSAGE.pack(ident, len(text), text.upper().encode())


class StoppingBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Gives up its device when a frontend breaks the handshake (an impossible transition, a
    garbage state): what ringkit's backends did before issue 10, when one guest's flap ended
    `ringkit block serve` for every later guest."""

    async def _protocol_failure(self, exc: RemoteProtocolError) -> None:
        await self._teardown()
        self._finish(exc)


class GivingUpFrontend(echo.EchoFrontend):  # type: ignore[misc,valid-type]
    """Ends itself for good when its backend breaks the handshake, even long after it
    connected, instead of waiting for the backend to start over."""

    async def _after_refusal(self, exc: RingkitError) -> None:
        self._finish(exc)


class CrashingFrontend(echo.EchoFrontend):  # type: ignore[misc,valid-type]
    """Crashes in its own hook while it connects: an untyped error out of the driver itself,
    which reaches the check through every task group between them."""

    async def publish(self, nodes: Nodes) -> None:
        raise RuntimeError("publish: out of cheese")


def broken(backend: type[echo.EchoBackend] = echo.EchoBackend,
           frontend: type[echo.EchoFrontend] = echo.EchoFrontend) -> DriverUnderTest:
    odd = frontend if frontend is not echo.EchoFrontend else backend
    return DriverUnderTest(backend, frontend, echo_exchange, name=odd.__name__)
