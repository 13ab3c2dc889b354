"""The console page (io/console.h ``struct xencons_interface``), sans-I/O: `ConsoleRing`.

Theory of operation
-------------------
One shared 4 KiB page holds two byte rings and their indices::

    in[1024]   at 0     backend -> guest      in_cons  at 3072 (guest), in_prod  at 3076 (backend)
    out[2048]  at 1024  guest -> backend      out_cons at 3080 (backend), out_prod at 3084 (guest)
    connection at 3088  written by the backend: 0 connected, 1 disconnected (Xen >= 4.19)

The byte rings themselves are `ringkit.proto.pipe`'s producer and consumer ends (free-running
uint32 indices masked by the ring size; our own index kept privately and only ever written;
the peer's validated on every load, `RemoteProtocolError` and poisoning when it is impossible;
bytes copied out once).  `ConsoleRing` pairs the two ends one side of the page uses, owns the
connection byte, and answers "notify the peer?": the console has no event hold-off, so a side
notifies after every publish that moved an index, as xenconsoled and Linux's hvc_xen do.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .. import _native
from .._errors import ConfigError, RemoteProtocolError
from .layout import CONSOLE_CONNECTION, XENCONSOLE_CONNECTED, XENCONSOLE_DISCONNECTED
from .pipe import PipeConsumer, PipeProducer, console_backend, console_frontend

if TYPE_CHECKING:
    from .._native import Buffer, NativeImpl

__all__ = (
    "CONSOLE_PAGE_SIZE",
    "DEFAULT_CONSOLE_DEVID",
    "ConsoleRing",
    "ConsoleSide",
    "check_console_devid",
)

CONSOLE_PAGE_SIZE = 4096

DEFAULT_CONSOLE_DEVID = 1
"""The first secondary console: ``device/console/1``.  Device id 0 is not a xenbus device."""


def check_console_devid(devid: int) -> int:
    """Return `devid` if it names a secondary console ringkit can serve or drive.

    Device id 0 is the *primary* console, which is not a xenbus split device: the domain
    builder allocates its page and event channel and records them under
    ``/local/domain/<guest>/console/`` (``ring-ref`` there is the page's machine frame number,
    not a grant reference, and xenconsoled maps it with foreign-memory privileges).  Linux's
    hvc_xen refuses to probe ``device/console/0`` (``xencons_probe`` returns -ENODEV) and
    QEMU's xen_console treats dev 0 as the primary console, so a ringkit console there would
    talk to nobody.  (hvc_xen also derives the device id from the node name's *last digit*, so
    for a Linux guest use 1..9.)

    Raises:
        ConfigError: `devid` is 0 or negative.
    """
    if devid == 0:
        raise ConfigError(
            "console devid 0 is the primary console, which Xen sets up outside xenbus "
            "(an MFN in /local/domain/<guest>/console, not a grant; Linux's hvc_xen and "
            "QEMU never probe it as a device): use a secondary console, devid >= 1"
        )
    if devid < 0:
        raise ConfigError(f"console devid {devid} is negative")
    return devid


class ConsoleSide(enum.Enum):
    """Which end of the console page this engine is."""

    FRONTEND = "frontend"
    """The guest: writes `out`, reads `in`."""
    BACKEND = "backend"
    """xenconsoled's role: writes `in`, reads `out`, owns the connection byte."""


class ConsoleRing:
    """One side of a console page: `write` bytes towards the peer, `read` bytes from it.

    Both also return whether the peer should be notified (True when an index moved).  Indices
    resume from the page (all zero on a fresh page), as xenconsoled does.
    """

    def __init__(
        self, buffer: Buffer, side: ConsoleSide, *, native: NativeImpl | None = None
    ) -> None:
        impl = native or _native.implementations()[_native.IMPLEMENTATION]
        self._mem = impl.attach(buffer)
        if self._mem.size < CONSOLE_PAGE_SIZE:
            size = self._mem.size
            self._mem.release()
            raise ConfigError(f"a console page is {CONSOLE_PAGE_SIZE} bytes, got {size}")
        self._write_fence = impl.write_fence
        self.side = side
        opener = console_frontend if side is ConsoleSide.FRONTEND else console_backend
        self._tx: PipeProducer
        self._rx: PipeConsumer
        try:
            self._tx, self._rx = opener(buffer, native=native)
        except BaseException:
            self._mem.release()
            raise

    # ------------------------------------------------------------------ state

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer error that poisoned this side (either ring), or None."""
        return self._tx.error or self._rx.error

    @property
    def tx_size(self) -> int:
        """Bytes of the ring we write (out: 2048 for the guest; in: 1024 for the backend)."""
        return self._tx.size

    @property
    def rx_size(self) -> int:
        """Bytes of the ring we read."""
        return self._rx.size

    def release(self) -> None:
        """Let go of the page (so its mapping can be closed)."""
        self._tx.release()
        self._rx.release()
        self._mem.release()

    def _ensure_usable(self) -> None:
        error = self.error
        if error is not None:
            raise RemoteProtocolError(
                f"console {self.side.value} is unusable after: {error}"
            ) from error

    # ------------------------------------------------------------------ bytes

    def writable(self) -> int:
        """Free bytes in the ring we write (validates the peer's consumer index)."""
        self._ensure_usable()
        return self._tx.space()

    def write(self, data: bytes | bytearray | memoryview) -> tuple[int, bool]:
        """Copy as much of `data` as fits; publish it.  Returns (bytes written, notify?)."""
        self._ensure_usable()
        count = self._tx.write(data)
        return count, count > 0

    def readable(self) -> int:
        """Bytes waiting in the ring we read (validates the peer's producer index)."""
        self._ensure_usable()
        return self._rx.available()

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Take up to `max_bytes` bytes (a private copy).  Returns (data, notify?)."""
        self._ensure_usable()
        data = self._rx.read(max_bytes)
        return data, bool(data)

    # ------------------------------------------------------------------ connection byte

    def set_connected(self, connected: bool) -> None:
        """Backend only: publish the connection byte (XENCONSOLE_CONNECTED/DISCONNECTED)."""
        if self.side is not ConsoleSide.BACKEND:
            raise ConfigError("only the console backend writes the connection byte")
        value = XENCONSOLE_CONNECTED if connected else XENCONSOLE_DISCONNECTED
        self._write_fence()
        self._mem.copy_in(CONSOLE_CONNECTION, bytes([value]))

    def peer_connected(self) -> bool:
        """Frontend: whether the backend says it is connected (0 = connected; an older
        backend that never writes the byte leaves 0)."""
        return self._mem.read(CONSOLE_CONNECTION, 1)[0] == XENCONSOLE_CONNECTED
