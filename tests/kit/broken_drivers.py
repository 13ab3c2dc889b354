"""Deliberately broken drivers -- echo variants, and key-value variants built on
ringkit.requests -- the negative controls of the driver conformance suite.  Each must fail it
with a message that names its fault."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import ClassVar

import anyio

from ringkit import GrantError, PeerGoneError, RemoteProtocolError, RingkitError
from ringkit.abc import MappedPages, SharedPages
from ringkit.channel import BackRingChannel
from ringkit.device import Nodes, Queue, XenbusState
from ringkit.proto.xenbus import Reaction
from ringkit.requests import (
    GrantMapper,
    GrantPool,
    IncomingRequest,
    Request,
    RequestError,
    RequestQueue,
    RequestServer,
)
from ringkit.testing import DriverUnderTest

from .drivers_under_test import echo, echo_exchange, kv


class LeakyBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Shares a page with the frontend on every connection and never gives it back."""

    kept: ClassVar[list[SharedPages]] = []

    async def rings_mapped(self, nodes: Nodes) -> None:
        self.kept.append(await self.domain.grants.share(self.peer_id, 1))


class ClingingBackend(echo.EchoBackend):  # type: ignore[misc,valid-type]
    """Maps the frontend's ring a second time on every connection and never unmaps it."""

    kept: ClassVar[list[MappedPages]] = []

    async def rings_mapped(self, nodes: Nodes) -> None:
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


# --------------------------------------------------------------------------- on ringkit.requests


class OwnMappingKVBackend(kv.KVBackend):  # type: ignore[misc,valid-type]
    """Stores a PUT's value from pages it maps itself, outside the layer (`map_put`): what
    the variants below get wrong.  Everything else is the example's."""

    async def answer(self, request: IncomingRequest) -> bytes:
        _, op, _, key_len, value_len, *_, raw_key = kv.REQUEST.unpack(request.slot)
        if op != kv.Op.PUT or key_len > kv.MAX_KEY or value_len > kv.MAX_VALUE:
            return bytes(await super().answer(request))
        mapped = await self.map_put(request)
        try:
            value = b"".join(bytes(pages.buffer) for pages in mapped)[:value_len]
        finally:
            for pages in mapped:
                await pages.aclose()
        self.values[raw_key[:key_len]] = value
        return bytes(kv.RESPONSE.pack(request.id, kv.Status.OKAY, 0))

    async def map_put(self, request: IncomingRequest) -> list[MappedPages]:
        raise NotImplementedError


class GrantTrustingKVBackend(OwnMappingKVBackend):
    """Maps a PUT's refs and takes the map for granted: a ref it cannot map raises GrantError
    out of its handler, which ends its serving."""

    async def map_put(self, request: IncomingRequest) -> list[MappedPages]:
        return [await self.domain.grants.map(self.peer_id, list(request.refs), writable=False)]


class HalfUnmappingKVBackend(OwnMappingKVBackend):
    """Maps a PUT's refs one at a time; when one fails it refuses the request (an error
    response, as it should) but keeps the pages it had mapped before it."""

    kept: ClassVar[list[MappedPages]] = []

    async def map_put(self, request: IncomingRequest) -> list[MappedPages]:
        mapped: list[MappedPages] = []
        for ref in request.refs:
            try:
                mapped.append(await self.domain.grants.map(self.peer_id, [ref], writable=False))
            except GrantError as exc:
                self.kept.extend(mapped)  # the fault: never unmapped
                raise RequestError(f"kv: cannot map ref {ref}: {exc}") from exc
        return mapped


class CountTrustingKVBackend(OwnMappingKVBackend):
    """Reads a PUT's refs from the slot itself, as many as its count byte says (not the
    layer's `request.refs`, which is empty for a request naming too many): a count past the
    slot's end makes struct.error, which ends its serving."""

    async def map_put(self, request: IncomingRequest) -> list[MappedPages]:
        count = request.slot[9]
        refs = list(struct.unpack_from(f"<{count}I", request.slot, 16))  # trusts the peer
        try:
            return [await self.domain.grants.map(self.peer_id, refs, writable=False)]
        except GrantError as exc:
            raise RequestError(f"kv: cannot map {refs}: {exc}") from exc


class SwallowingKVBackend(OwnMappingKVBackend):
    """Treats a PUT whose pages it cannot map as an empty value and answers OKAY: the
    frontend is told its value is stored."""

    async def map_put(self, request: IncomingRequest) -> list[MappedPages]:
        try:
            return [await self.domain.grants.map(self.peer_id, list(request.refs),
                                                 writable=False)]
        except (GrantError, RingkitError):
            return []


class PendingTableKVBackend(kv.KVBackend):  # type: ignore[misc,valid-type]
    """Serves four requests at once and keeps those in progress in a table by id -- the
    frontend's id, taken to be unique: a duplicate overwrites its twin's entry, and the
    second removal raises KeyError, which ends its serving."""

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        self.pending: dict[int, IncomingRequest] = {}
        mapper = GrantMapper(self.domain.grants, self.peer_id, persistent=False)
        try:
            await RequestServer(queue.channel, kv.CODEC, self.tracked, mapper=mapper,
                                concurrency=4).run()
        finally:
            with anyio.CancelScope(shield=True):
                await mapper.aclose()

    async def tracked(self, request: IncomingRequest) -> bytes:
        self.pending[request.id] = request
        try:
            return bytes(await self.answer(request))
        finally:
            del self.pending[request.id]


class IdTrustingQueue(RequestQueue):
    """Matches each answer to the request record its id picks (modulo the window), without
    asking whether it issued that id or whether that request is in flight."""

    async def _receive_loop(self, index: int) -> None:
        channel, codec = self._channels[index], self.codec
        slot, size = codec.layout.slot_size, codec.layout.response_size
        buf = bytearray(slot * self._burst)
        try:
            while True:
                count = await channel.receive_into(buf, self._burst)
                for i in range(count):
                    rid = codec.response_id.read(buf, i * slot)
                    request = self._requests[rid % len(self._requests)]  # trusts the peer
                    request.response[:] = buf[i * slot:i * slot + size]
                    self._answered(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self.fail(PeerGoneError(f"kv: ring {index}: {exc!r}"))


class EagerReleaseQueue(RequestQueue):
    """Gives a request's id and pages back when its caller lets go, even while the request is
    in flight -- as if a cancelled request were over (its late answer is then one for a
    request not in flight)."""

    def release(self, request: Request) -> None:
        self._give_back(request)


class _QueueKVFrontend(kv.KVFrontend):  # type: ignore[misc,valid-type]
    queue_class: ClassVar[type[RequestQueue]] = RequestQueue

    async def peer_connected(self, backend: Nodes) -> None:
        pool = await GrantPool.share(self.domain.grants, self.peer_id, self.pool_pages)
        self._requests = self.queue_class([self.channel], kv.CODEC, pool=pool,
                                          check=kv.check_response)
        self.tasks.start_soon(self._requests.run)


class IdTrustingKVFrontend(_QueueKVFrontend):
    """Its request queue trusts the ids of the answers (`IdTrustingQueue`)."""

    queue_class = IdTrustingQueue


class EagerReleaseKVFrontend(_QueueKVFrontend):
    """Its request queue frees a cancelled request's id at once (`EagerReleaseQueue`)."""

    queue_class = EagerReleaseQueue


class FlatteningKVFrontend(kv.KVFrontend):  # type: ignore[misc,valid-type]
    """Reports any failure of a batch of PUTs as the backend being gone, hiding a backend
    that broke the protocol behind what reads as a crash."""

    async def put_many(self, items: dict[bytes, bytes], *, batch: int = 8) -> None:
        try:
            await super().put_many(items, batch=batch)
        except RingkitError as exc:
            raise PeerGoneError(f"kv: the backend is gone ({exc})") from None


STATUSLESS = replace(kv.CODEC, status=None)
"""The key-value slots as a protocol with no error status would read them: a request the
layer cannot deliver ends the connection (RemoteProtocolError) instead of an error response."""


class StatuslessKVBackend(kv.KVBackend):  # type: ignore[misc,valid-type]
    """Well-behaved: serves with `STATUSLESS`, so it disconnects, with an error node, where
    the example answers with an error."""

    request_codec = STATUSLESS

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        mapper = GrantMapper(self.domain.grants, self.peer_id, persistent=False)
        try:
            await RequestServer(queue.channel, STATUSLESS, self.answer, mapper=mapper).run()
        finally:
            with anyio.CancelScope(shield=True):
                await mapper.aclose()


class SilentlyLeavingKVBackend(StatuslessKVBackend):
    """Disconnects from a frontend that broke the protocol without writing its error node:
    the frontend (and its admin) never learn why."""

    async def _report_error(self, exc: RingkitError) -> None:
        pass


def broken_kv(backend: type[kv.KVBackend] = kv.KVBackend,
              frontend: type[kv.KVFrontend] = kv.KVFrontend) -> DriverUnderTest:
    odd = frontend if frontend is not kv.KVFrontend else backend
    return DriverUnderTest(backend, frontend, kv.exchange, name=odd.__name__)
