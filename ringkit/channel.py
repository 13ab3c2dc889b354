"""Channels over shared rings: what a driver sends and receives through once connected.

- `RingChannel` (`FrontRingChannel` / `BackRingChannel`): an anyio object stream of whole
  io/ring.h slots (bytes), one per request or response;
- `PipeStream`: an anyio byte stream over a byte ring such as the console page, driven by any
  engine that has the `BytePipe` methods (e.g. `ringkit.proto.console.ConsoleRing`).

Each counts its pushes, doorbells and sleeps in ``stats`` (`LinkStats`); a `RingChannel` may
poll the ring before sleeping (``poll_us``, off by default).

Both follow anyio's error contract: `anyio.BrokenResourceError` chained from
`ringkit.RemoteProtocolError` (hostile peer) or `ringkit.PeerGoneError` (peer gone), and
`anyio.ClosedResourceError` after a local close.  `ringkit.device` builds them for you; a driver
that builds its own in ``make_channel`` imports them from here.
"""

from ._async._link import LinkStats as LinkStats
from ._async.channel import MAX_POLL_US as MAX_POLL_US
from ._async.channel import BackRingChannel as BackRingChannel
from ._async.channel import FrontRingChannel as FrontRingChannel
from ._async.channel import RingChannel as RingChannel
from ._async.stream import BytePipe as BytePipe
from ._async.stream import PipeStream as PipeStream

__all__ = (
    "MAX_POLL_US",
    "BackRingChannel",
    "BytePipe",
    "FrontRingChannel",
    "LinkStats",
    "PipeStream",
    "RingChannel",
)
