"""One blkif ring served through the request-queue layer (`ringkit.requests.RequestServer`).

Requests are taken off the ring in bursts (one private copy per burst, ids and direct grant refs
read in one call each) and served by `BlockService` -- one after the other, or `io_depth` at a
time, each answered as it completes -- so each response is written only after its I/O
finished.  Responses to small requests go out together with one
producer update and at most one event (ring.h's notify hold-off decides); a large transfer is
answered as soon as it is done (`PUSH_AFTER_SECTORS`), with whatever small answers are waiting.
The server sleeps only after the final check found the ring empty.  Each burst goes to the
service's C fast path first, where it has one (`backends.block.fastpath`): it answers the
burst's leading usual requests, the service the rest; at depth, to its fast path at depth
(`backends.block.uringpath`), which submits the usual ones to io_uring and answers them as they
complete.  How many answers went out of ring order (``io_depth`` > 1 only) reaches the
service's `ServiceStats.reordered` when the ring's server stops.
"""

from __future__ import annotations

from ringkit.channel import BackRingChannel
from ringkit.proto import blkif
from ringkit.requests import RequestServer

from .service import MIN_BURST, PUSH_AFTER_SECTORS, BlockService

BURST = MIN_BURST
"""Most requests taken off the ring at once when the caller says nothing else and the ring is
smaller: `serve_ring` takes up to a whole ring's worth, so a frontend that filled a 16-page
ring is answered with one push too."""


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
    server = RequestServer(channel, blkif.CODEC, service.answer, mapper=service.mapper,
                           burst=burst, concurrency=service.config.io_depth,
                           fast_path=service.fast_path, concurrent_path=service.uring_path)
    try:
        await server.run()
    finally:
        service.stats.reordered += server.stats.reordered


__all__ = ("BURST", "PUSH_AFTER_SECTORS", "serve_ring")
