"""One blkif ring served: take a burst of requests, serve them in order, answer in one push.

Requests are taken off the ring in bursts (each a private copy of its slot) and served one
after the other, so each response is written only after its I/O finished; the burst's
responses then go out with a single producer update and at most one event (ring.h's notify
hold-off decides), and the loop sleeps only after the final check found the ring empty.
"""

from __future__ import annotations

from ringkit._async.channel import BackRingChannel
from ringkit.proto import blkif

from .service import BlockService

BURST = 32
"""Most requests served before their responses are pushed."""


async def serve_ring(channel: BackRingChannel, service: BlockService, *, burst: int = BURST
                     ) -> None:
    """Serve `channel` with `service` until the ring breaks or is closed.

    Raises:
        anyio.BrokenResourceError: the frontend broke the ring protocol or went away (chained
            from RemoteProtocolError / PeerGoneError); the caller tears the device down.
        anyio.ClosedResourceError: the channel was closed locally.
    """
    out = bytearray(blkif.RESPONSE_SIZE * burst)
    view = memoryview(out)
    size = blkif.RESPONSE_SIZE
    while True:
        slots = await channel.receive_batch(burst)
        for i, slot in enumerate(slots):
            rid, op, status = await service.handle(slot)
            blkif.encode_response_into(out, i * size, rid, op, status)
        await channel.send_batch([view[i * size:(i + 1) * size] for i in range(len(slots))])


__all__ = ("BURST", "serve_ring")
