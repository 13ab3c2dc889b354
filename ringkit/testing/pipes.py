"""An event channel over two pipes, for a peer that runs in another process.

`ringkit.testing.memory` puts both ends of a ring in one process.  When the other end is a
separate program -- a C peer built against Xen's own library (libxenvchan, a blkif parser)
whose ``xenevtchn_notify`` / ``xenevtchn_pending`` calls a test redirects to file descriptors --
`pipe_event_channel` gives ringkit's side of that link: `PipeEventChannel.notify` writes one byte
to the peer, `PipeEventChannel.wait` returns once the peer wrote at least one (any number
coalesce into one wake-up, as Xen's pending bit does), and a peer that exits or closes its end
is seen as Xen shows a peer's death: `wait` raises `PeerGoneError`, `notify` raises
`EventChannelError` (``ENOTCONN``).

Typical use, with shared memory from a memfd passed to the child::

    to_peer_r, to_peer_w = os.pipe()
    from_peer_r, from_peer_w = os.pipe()
    process = await anyio.open_process([peer, str(to_peer_r), str(from_peer_w)],
                                       pass_fds=(to_peer_r, from_peer_w))
    os.close(to_peer_r)
    os.close(from_peer_w)
    event = pipe_event_channel(rx=from_peer_r, tx=to_peer_w)
"""

from __future__ import annotations

import errno
import os

import anyio

from .._errors import ConfigError, EventChannelError, PeerGoneError
from ..abc import EventChannel

__all__ = ("PipeEventChannel", "pipe_event_channel")

_READ_CHUNK = 4096


class PipeEventChannel(EventChannel):
    """ringkit's end of an event channel made of two pipes (see `pipe_event_channel`).

    Owns both descriptors: `aclose` closes them."""

    def __init__(self, rx: int, tx: int, port: int, remote_domid: int) -> None:
        self._rx = rx
        self._tx = tx
        self._port = port
        self._remote = remote_domid
        self._closed = False
        os.set_blocking(rx, False)

    @property
    def port(self) -> int:
        """The port number this end reports (the pipes have none; chosen by the caller)."""
        return self._port

    @property
    def remote_domid(self) -> int:
        """The domain id this end says the peer is in."""
        return self._remote

    def notify(self) -> None:
        """Wake the peer: one byte down the `tx` pipe."""
        if self._closed:
            raise EventChannelError("notify on a closed pipe event channel", errno.EBADF)
        try:
            os.write(self._tx, b"\1")
        except BrokenPipeError as exc:
            raise EventChannelError("the peer closed its end of the pipe", errno.ENOTCONN
                                    ) from exc
        except BlockingIOError:
            pass    # the pipe is full of unread wake-ups: the peer will wake anyway

    async def wait(self) -> None:
        """Return once the peer notified (every byte waiting is taken: they coalesce)."""
        while True:
            if self._closed:
                raise EventChannelError("wait on a closed pipe event channel", errno.EBADF)
            await anyio.wait_readable(self._rx)
            try:
                data = os.read(self._rx, _READ_CHUNK)
            except BlockingIOError:
                continue
            if not data:
                raise PeerGoneError("the peer closed its end of the pipe")
            return

    async def aclose(self) -> None:
        """Close both descriptors; idempotent."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._rx, self._tx):
            os.close(fd)


def pipe_event_channel(*, rx: int, tx: int, port: int = 1, remote_domid: int = 1
                       ) -> PipeEventChannel:
    """An `EventChannel` whose wake-ups from the peer arrive on `rx` and whose notifications go
    out on `tx` (both pipe ends owned by the result from now on).  `port` and `remote_domid`
    are what it reports: a positive port, and a domain id below DOMID_FIRST_RESERVED
    (0..32751)."""
    if rx < 0 or tx < 0 or rx == tx:
        raise ConfigError(f"pipe_event_channel needs two distinct open descriptors, "
                          f"got rx={rx}, tx={tx}")
    if port <= 0:
        raise ConfigError(f"port must be positive, got {port}")
    if not 0 <= remote_domid < 0x7FF0:
        raise ConfigError(f"remote_domid must be a domain id (0..32751), got {remote_domid}")
    return PipeEventChannel(rx, tx, port, remote_domid)
