"""`PostedRequests`: the backend's side of a ring whose requests it takes when *it* has work.

`RequestServer` answers each request as it comes.  Some rings do not work that way:

* **posted buffers** -- netif's rx ring (and virtio-net's receive queue): the frontend posts
  empty pages ahead of time, and the backend uses them when a packet arrives from elsewhere,
  as many as the packet needs.  The backend pulls: `take(n)` waits until n buffers are posted;
  the rest stay pending, in ring order, for the next packet.
* **chains** -- netif's tx ring: one packet is several consecutive requests (``more_data``)
  with extra-info slots after the first (`ringkit.requests.Chain`).  `take_chain` returns a
  whole chain; the frontend publishes a chain with one push, so a chain that runs past the
  requests published is a ring-level violation (`RemoteProtocolError`, as Linux's netback
  treats it), and a chain longer than `Chain.maximum` that does end is refused whole.
  `take_ready_chains` then takes every further chain already published whole, and
  `respond_chains` answers them all with one push: a burst served with one grant copy.

Requests are private copies (taken off the ring in bursts), read through the codec like
`RequestServer`'s (`IncomingRequest`: ids, refs, `pages()` / `map()` through a `GrantMapper`,
released before the answer).  `respond` writes responses -- zero-padded whole slots -- and
pushes them with one push (ring.h's notify hold-off decides the doorbell).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._async.channel import BackRingChannel
from .._errors import ConfigError, RemoteProtocolError
from .back import IncomingRequest
from .codec import RequestError, SlotCodec
from .mapping import GrantMapper

__all__ = ("PostedRequests", "RequestChain")


@dataclass(slots=True)
class RequestChain:
    """One chain of requests (a netif packet): its `requests` in ring order, the private copies
    of its `extras` slots (after the first request), and why it is refused (`fault`), if it is.
    """

    requests: list[IncomingRequest]
    extras: list[bytes] = field(default_factory=list)
    fault: str | None = None

    @property
    def slots(self) -> int:
        """Ring slots the chain took (requests and extras): as many responses answer it."""
        return len(self.requests) + len(self.extras)


class PostedRequests:
    """Requests of `channel` in `codec`'s format, taken when the backend wants them.

    `mapper` maps the refs requests name (see `IncomingRequest.pages`).  One task takes, one
    responds (they may be the same).
    """

    def __init__(self, channel: BackRingChannel, codec: SlotCodec, *,
                 mapper: GrantMapper | None = None) -> None:
        if channel.engine.layout.slot_size != codec.layout.slot_size:
            raise ConfigError(f"the ring's layout {channel.engine.layout.name} does not match "
                              f"the codec's {codec.layout.name}")
        self.channel = channel
        self.codec = codec
        self.mapper = mapper
        self._entries = channel.engine.entries
        self._in = bytearray(codec.layout.slot_size * self._entries)
        self._out = bytearray(codec.layout.slot_size * self._entries)
        self._pending: deque[IncomingRequest] = deque()

    @property
    def pending(self) -> int:
        """Requests taken off the ring and not yet handed out."""
        return len(self._pending)

    def poll(self) -> int:
        """Take whatever the frontend published since the last look, without waiting; return
        how many requests are pending now.

        Raises:
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        count = self.channel.receive_into_nowait(self._in, self._entries)
        self._add(count)
        return len(self._pending)

    async def wait(self, count: int = 1) -> None:
        """Wait until at least `count` requests are pending.

        Raises:
            ConfigError: `count` is more than the ring holds (it could never come).
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        if count > self._entries:
            raise ConfigError(f"{count} requests never fit a {self._entries}-slot ring")
        while len(self._pending) < count:
            self._add(await self.channel.receive_into(self._in, self._entries))

    async def take(self, count: int = 1) -> list[IncomingRequest]:
        """The next `count` requests in ring order, waiting until the frontend posted them.

        Raises: as `wait`.
        """
        await self.wait(count)
        return [self._pending.popleft() for _ in range(count)]

    def take_nowait(self, count: int = 1) -> list[IncomingRequest] | None:
        """`take` without waiting: None unless `count` requests are posted now."""
        if len(self._pending) < count:
            self.poll()
        if len(self._pending) < count:
            return None
        return [self._pending.popleft() for _ in range(count)]

    async def take_chain(self) -> RequestChain:
        """The next chain of requests (see the module docstring), waiting for its first.

        Raises:
            ConfigError: the codec has no `Chain`.
            RemoteProtocolError: the chain runs past the requests the frontend published.
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        spec = self.codec.chain
        if spec is None:
            raise ConfigError(f"{self.codec.layout.name}: the codec has no chain")
        await self.wait(1)
        pending = self._pending
        length = self._chain_length()
        if length is None:
            self.poll()  # (a whole chain is published with one push: this finds nothing new)
            length = self._chain_length()
        if length is None:
            raise RemoteProtocolError(
                f"{self.codec.layout.name}: a chain of requests from id {pending[0].id} runs "
                f"past the {len(pending)} request(s) published")
        return self._next_chain(length)

    def _next_chain(self, length: int | None = None) -> RequestChain:
        """Take the chain at the head of the pending requests (`length` slots: known whole)."""
        spec = self.codec.chain
        assert spec is not None
        pending = self._pending
        if length is None:
            length = self._chain_length()
            assert length is not None
        slots = [pending.popleft() for _ in range(length)]
        head = slots[0]
        flags = spec.flags.read(head.slot)
        extras = 0
        if spec.extra and flags & spec.extra:
            assert spec.extra_flags is not None
            extras = 1
            while spec.extra_flags.read(slots[extras].slot) & spec.extra_more:
                extras += 1
        requests = [head, *slots[1 + extras:]]
        chain = RequestChain(requests, [bytes(s.slot) for s in slots[1:1 + extras]])
        if len(requests) > spec.maximum:
            chain.fault = (f"{self.codec.layout.name}: a chain of {len(requests)} requests from "
                           f"id {head.id}, at most {spec.maximum}")
        elif extras > spec.maximum:
            chain.fault = (f"{self.codec.layout.name}: {extras} extra slots after request "
                           f"{head.id}, at most {spec.maximum}")
        return chain

    def take_ready_chains(self, limit: int | None = None) -> list[RequestChain]:
        """The chains already published whole, in ring order, without waiting (at most
        `limit`; none if none is): what a backend serves together with the chain it waited
        for, so that one grant copy and one push serve a burst.

        Raises:
            ConfigError: the codec has no `Chain`.
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        if self.codec.chain is None:
            raise ConfigError(f"{self.codec.layout.name}: the codec has no chain")
        chains: list[RequestChain] = []
        while limit is None or len(chains) < limit:
            if not self._pending:
                self.poll()
            if not self._pending or self._chain_length() is None:
                break  # an unfinished chain is take_chain's to wait for (or to refuse)
            chains.append(self._next_chain())
        return chains

    def _chain_length(self) -> int | None:
        """Slots of the chain at the head of the pending requests, or None if it does not end
        inside them."""
        spec = self.codec.chain
        assert spec is not None
        pending = self._pending
        available = len(pending)
        first = pending[0].slot
        flags = spec.flags.read(first)
        pos = 1
        if spec.extra and flags & spec.extra:
            assert spec.extra_flags is not None
            while True:
                if pos >= available:
                    return None
                more = spec.extra_flags.read(pending[pos].slot) & spec.extra_more
                pos += 1
                if not more:
                    break
        more = flags & spec.more
        while more:
            if pos >= available:
                return None
            more = spec.flags.read(pending[pos].slot) & spec.more
            pos += 1
        return pos

    async def respond(self, requests: Sequence[IncomingRequest],
                      responses: Sequence[bytes | bytearray | memoryview]) -> None:
        """Release the mappings of `requests` and push `responses` (one per request, in that
        order; each at most ``response_size`` bytes, zero-padded to a slot) with one push.

        Raises:
            ConfigError: a response is too long, or the counts differ.
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        if len(requests) != len(responses):
            raise ConfigError(f"{len(responses)} responses to {len(requests)} requests")
        for request in requests:
            await request._release()
        self._push(list(responses))

    async def respond_chain(self, chain: RequestChain,
                            responses: Sequence[bytes | bytearray | memoryview] | None) -> None:
        """Answer a whole chain: `responses` for its requests (None: refuse it -- the codec's
        error response for each), the filler status for each extra slot; one push.

        Raises: as `respond`.
        """
        await self.respond_chains([(chain, responses)])

    async def respond_chains(
        self, answers: Sequence[tuple[RequestChain,
                                      Sequence[bytes | bytearray | memoryview] | None]],
    ) -> None:
        """`respond_chain` for several chains (each with its responses, or None to refuse it),
        in the order given, with one push.

        Raises: as `respond`.
        """
        out: list[bytes | bytearray | memoryview] = []
        filler = self._filler()
        for chain, responses in answers:
            if responses is None:
                responses = [self._error(request) for request in chain.requests]
            if len(responses) != len(chain.requests):
                raise ConfigError(f"{len(responses)} responses to a chain of "
                                  f"{len(chain.requests)} requests")
            for request in chain.requests:
                await request._release()
            out += [responses[0], *[filler] * len(chain.extras), *responses[1:]]
        if out:
            self._push(out)

    def refuse(self, request: IncomingRequest) -> bytes:
        """The codec's error response to `request` (for `respond`)."""
        return self._error(request)

    def _error(self, request: IncomingRequest) -> bytes:
        out = bytearray(self.codec.layout.response_size)
        self.codec.encode_error(request.slot, out)
        return bytes(out)

    def _filler(self) -> bytes:
        spec, status = self.codec.chain, self.codec.status
        out = bytearray(self.codec.layout.response_size)
        if spec is not None and spec.filler_status is not None and status is not None:
            status.write(out, spec.filler_status)
        return bytes(out)

    def _push(self, responses: list[bytes | bytearray | memoryview]) -> None:
        slot = self.codec.layout.slot_size
        size = self.codec.layout.response_size
        out = self._out
        count = len(responses)
        if count > self._entries:
            raise ConfigError(f"{count} responses never fit a {self._entries}-slot ring")
        for i, response in enumerate(responses):
            length = len(response) if not isinstance(response, memoryview) else response.nbytes
            if length > size:
                raise ConfigError(f"{self.codec.layout.name}: a {length}-byte response, the "
                                  f"format's are {size}")
            base = i * slot
            out[base:base + length] = response
            out[base + length:base + slot] = bytes(slot - length)
        sent = self.channel.send_from_nowait(memoryview(out)[:count * slot], count)
        if sent != count:  # responses never outnumber requests taken: a bug of ours
            raise RuntimeError(f"the ring took {sent} of {count} responses")

    def _add(self, count: int) -> None:
        codec = self.codec
        slot = codec.layout.slot_size
        size = codec.layout.request_size
        buf = self._in
        mapper = self.mapper
        for i in range(count):
            copy = buf[i * slot:i * slot + size]
            fault = None
            try:
                refs = codec.refs_of(copy)
            except RequestError as exc:
                refs, fault = [], exc.reason
            operation = codec.operation.read(copy) if codec.operation is not None else None
            self._pending.append(IncomingRequest(codec, mapper, copy, codec.request_id.read(copy),
                                                 operation, refs, fault))
