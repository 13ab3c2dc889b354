"""The frontend's side of its blkif rings: serialised sends, one receive loop per ring.

`FrontQueues` gives `BlockClient` a single ``send`` that spreads requests over the device's
rings (multi-queue: the least busy ring first) and serialises senders per ring, and runs one
receive loop per ring that hands every response to the client.  When a ring breaks (hostile
responses, dead backend) the client is failed with the cause, so no caller waits forever.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import anyio

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import FrontRingChannel
from ringkit.proto import blkif

from .client import BlockClient


class FrontQueues:
    """Sending and receiving on the rings of one connected block device."""

    def __init__(self, channels: Sequence[FrontRingChannel]) -> None:
        if not channels:
            raise ValueError("a block device has at least one ring")
        self._channels = list(channels)
        self._locks = [anyio.Lock() for _ in channels]
        self._load = [0] * len(channels)

    async def send(self, slot: bytes | bytearray) -> None:
        """Queue one encoded request on the least busy ring, waiting for a free slot.

        Raises:
            RemoteProtocolError: the ring was broken by the backend.
            PeerGoneError: the backend went away or the device was closed.
        """
        with self._least_busy() as index:
            async with self._locks[index]:
                await self._channels[index].send(slot)

    async def send_many(self, slots: Sequence[bytes | bytearray]) -> int:
        """Queue the leading requests of `slots` on the least busy ring with one push (at most
        one doorbell): as many as it has free slots, and at least one, waiting for a free slot
        if there is none.  Returns how many were queued; a cancellation lands only before any
        was.  Raises as `send`."""
        with self._least_busy() as index:
            async with self._locks[index]:
                channel = self._channels[index]
                try:
                    return channel.send_batch_nowait(slots)
                except anyio.WouldBlock:
                    await channel.send(slots[0])
                    return 1

    @contextmanager
    def _least_busy(self) -> Iterator[int]:
        """The index of the least busy ring, counted busy meanwhile; ring errors mapped to the
        client's (RemoteProtocolError / PeerGoneError)."""
        load = self._load
        index = 0 if len(load) == 1 else min(range(len(load)), key=load.__getitem__)
        load[index] += 1
        try:
            yield index
        except anyio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, RemoteProtocolError | PeerGoneError):
                raise type(cause)(str(cause)) from exc
            raise PeerGoneError(f"block ring {index} broke: {exc}") from exc
        except anyio.ClosedResourceError as exc:
            raise PeerGoneError("block device closed") from exc
        finally:
            load[index] -= 1

    async def receive_loop(self, index: int, client: BlockClient) -> None:
        """Deliver ring `index`'s responses to `client` until the ring breaks or closes.

        Returns when the channel was closed locally.

        Raises:
            RemoteProtocolError: the backend wrote hostile indices or responses.
            PeerGoneError: the backend went away.
            In both cases `client` was failed with the same error first, so every caller
            waiting on a request gets it too.
        """
        channel = self._channels[index]
        try:
            while True:
                for raw in await channel.receive_batch(64):
                    client.deliver(blkif.parse_response(raw))
        except anyio.BrokenResourceError as exc:
            cause = exc.__cause__
            error = (cause if isinstance(cause, RemoteProtocolError | PeerGoneError)
                     else PeerGoneError(f"block ring {index} broke: {exc}"))
            client.fail(error)
            raise error from exc
        except anyio.ClosedResourceError:
            client.fail(PeerGoneError("block device closed"))


__all__ = ("FrontQueues",)
