"""One blkif ring served: take a burst of requests, serve them in order, answer in few pushes.

Requests are taken off the ring in bursts (each a private copy of its slot) and served one
after the other, so each response is written only after its I/O finished.  Responses to small
requests are batched: they go out together with one producer update and at most one event
(ring.h's notify hold-off decides).  A large transfer is answered as soon as it is done, with
whatever small answers are waiting, so a frontend streaming big requests is not kept waiting
for the rest of the burst.  The loop sleeps only after the final check found the ring empty.
"""

from __future__ import annotations

from ringkit.channel import BackRingChannel
from ringkit.proto import blkif

from .service import BlockService

BURST = 32
"""Most requests taken off the ring at once when the caller says nothing else and the ring is
smaller: `serve_ring` takes up to a whole ring's worth, so a frontend that filled a 16-page
ring is answered with one push too."""
PUSH_AFTER_SECTORS = 128
"""A request moving this many sectors (64 KiB) or more is answered without waiting for the
rest of its burst."""


async def serve_ring(channel: BackRingChannel, service: BlockService, *,
                     burst: int | None = None) -> None:
    """Serve `channel` with `service` until the ring breaks or is closed, taking up to `burst`
    requests at once (default: the ring's size, at least `BURST`).

    Raises:
        anyio.BrokenResourceError: the frontend broke the ring protocol or went away (chained
            from RemoteProtocolError / PeerGoneError); the caller tears the device down.
        anyio.ClosedResourceError: the channel was closed locally.
    """
    if burst is None:
        burst = max(BURST, channel.engine.entries)
    out = bytearray(blkif.RESPONSE_SIZE * burst)
    size = blkif.RESPONSE_SIZE
    view = memoryview(out)
    responses = [view[i * size:(i + 1) * size] for i in range(burst)]  # cut once, reused
    stats = service.stats
    while True:
        slots = await channel.receive_batch(burst)
        ready = 0
        for slot in slots:
            moved = stats.sectors_read + stats.sectors_written
            rid, op, status = await service.handle(slot)
            blkif.encode_response_into(out, ready * size, rid, op, status)
            ready += 1
            if stats.sectors_read + stats.sectors_written - moved >= PUSH_AFTER_SECTORS:
                await channel.send_batch(responses[:ready])
                ready = 0
        if ready:
            await channel.send_batch(responses[:ready])


__all__ = ("BURST", "PUSH_AFTER_SECTORS", "serve_ring")
