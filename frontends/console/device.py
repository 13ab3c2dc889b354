"""`ConsoleFrontend`: a guest's PV console (a secondary console device, as Linux's hvc_xen
drives one) exposed as an anyio byte stream.

The frontend grants one page laid out as ``struct xencons_interface``, allocates an event
channel and publishes them as ``ring-ref`` and ``port`` (the console's names); what it sends
goes to the backend through ``out[2048]``, what it receives comes through ``in[1024]``.
"""

from __future__ import annotations

from ...abc import Domain
from ...channel import PipeStream
from ...device import Frontend, Queue
from ...proto.console import (
    DEFAULT_CONSOLE_DEVID,
    ConsoleRing,
    ConsoleSide,
    check_console_devid,
)

__all__ = ("ConsoleFrontend",)


class ConsoleFrontend(Frontend[PipeStream]):
    """``async with ConsoleFrontend(domain, backend_id) as console:`` then
    ``await console.stream.send(b"...")`` / ``await console.stream.receive()``.

    `devid` defaults to 1, the first secondary console; 0 (the primary console, which is not a
    xenbus device) raises ConfigError -- see `ringkit.proto.console.check_console_devid`."""

    device_type = "console"
    event_channel_key = "port"

    def __init__(
        self, domain: Domain, backend_id: int = 0, devid: int = DEFAULT_CONSOLE_DEVID
    ) -> None:
        super().__init__(domain, backend_id, check_console_devid(devid))

    def make_channel(self, queue: Queue[PipeStream]) -> PipeStream:
        # A freshly granted page is zeroed: every index 0, connection byte 0.
        return PipeStream(ConsoleRing(queue.buffer, ConsoleSide.FRONTEND), queue.event)

    @property
    def stream(self) -> PipeStream:
        """The console of the current connection, as a byte stream.

        Raises:
            PeerGoneError: not connected.
        """
        return self.channel

    def backend_connected(self) -> bool:
        """Whether the backend says it is attached (the page's connection byte)."""
        engine = self.stream.engine
        assert isinstance(engine, ConsoleRing)
        return engine.peer_connected()
