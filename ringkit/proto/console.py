"""The console page (io/console.h ``struct xencons_interface``), sans-I/O: `ConsoleRing`.

Theory of operation
-------------------
One shared 4 KiB page holds two byte rings and their indices::

    in[1024]   at 0     backend -> guest      in_cons  at 3072 (guest), in_prod  at 3076 (backend)
    out[2048]  at 1024  guest -> backend      out_cons at 3080 (backend), out_prod at 3084 (guest)
    connection at 3088  written by the backend: 0 connected, 1 disconnected (Xen >= 4.19)

Indices are free-running uint32 counters masked by the ring size (MASK_XENCONS_IDX).  A side
writes bytes at its producer index, then (write fence) publishes the new producer; it reads
between its consumer index and the peer's producer (read fence first), then (full fence)
publishes the new consumer.  The console has no event hold-off: a side notifies after every
publish that moved an index, as xenconsoled and Linux's hvc_xen do.

The peer is not trusted.  Our own indices live in private copies and are only ever written to
the page, never read back.  The peer's two indices are validated on every load: its producer
may be at most `size` bytes ahead of our consumer, and its consumer may be at most our producer
and at most `size` behind it -- otherwise `RemoteProtocolError` names the index and its value,
and the engine is poisoned.  Bytes are copied out of the page once, into memory we own.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NoReturn

from .. import _native
from .._errors import ConfigError, RemoteProtocolError
from .layout import (
    CONSOLE_CONNECTION,
    CONSOLE_IN,
    CONSOLE_IN_CONS,
    CONSOLE_IN_PROD,
    CONSOLE_IN_SIZE,
    CONSOLE_OUT,
    CONSOLE_OUT_CONS,
    CONSOLE_OUT_PROD,
    CONSOLE_OUT_SIZE,
    XENCONSOLE_CONNECTED,
    XENCONSOLE_DISCONNECTED,
)

if TYPE_CHECKING:
    from .._native import Buffer, NativeImpl

__all__ = ("ConsoleRing", "ConsoleSide")

_U32 = 0xFFFFFFFF
CONSOLE_PAGE_SIZE = 4096


class ConsoleSide(enum.Enum):
    """Which end of the console page this engine is."""

    FRONTEND = "frontend"
    """The guest: writes `out`, reads `in`."""
    BACKEND = "backend"
    """xenconsoled's role: writes `in`, reads `out`, owns the connection byte."""


class ConsoleRing:
    """One side of a console page: `write` bytes towards the peer, `read` bytes from it.

    Both return whether the peer should be notified (True when an index moved).
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
        self._full_fence = impl.full_fence
        self._read_fence = impl.read_fence
        self._write_fence = impl.write_fence
        self.side = side
        if side is ConsoleSide.FRONTEND:
            # (data, size, our producer, peer's consumer) for what we write; then what we read.
            self._tx = (CONSOLE_OUT, CONSOLE_OUT_SIZE, CONSOLE_OUT_PROD, CONSOLE_OUT_CONS)
            self._rx = (CONSOLE_IN, CONSOLE_IN_SIZE, CONSOLE_IN_PROD, CONSOLE_IN_CONS)
        else:
            self._tx = (CONSOLE_IN, CONSOLE_IN_SIZE, CONSOLE_IN_PROD, CONSOLE_IN_CONS)
            self._rx = (CONSOLE_OUT, CONSOLE_OUT_SIZE, CONSOLE_OUT_PROD, CONSOLE_OUT_CONS)
        # Resume from the indices in the page (a fresh page: all zero), as xenconsoled does;
        # they are checked against each other before anything is trusted.
        self._prod = self._mem.load32(self._tx[2])
        self._cons = self._mem.load32(self._rx[3])
        self._error: RemoteProtocolError | None = None
        try:
            self._check_tx(self._mem.load32(self._tx[3]))
        except RemoteProtocolError:
            self._mem.release()
            raise

    # ------------------------------------------------------------------ state

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer error that poisoned this engine, or None."""
        return self._error

    @property
    def tx_size(self) -> int:
        """Bytes of the ring we write (out: 2048 for the guest; in: 1024 for the backend)."""
        return self._tx[1]

    @property
    def rx_size(self) -> int:
        """Bytes of the ring we read."""
        return self._rx[1]

    def release(self) -> None:
        """Let go of the page (so its mapping can be closed)."""
        self._mem.release()

    def _poison(self, message: str) -> NoReturn:
        self._error = RemoteProtocolError(f"console {self.side.value}: {message}")
        raise self._error

    def _ensure_usable(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(
                f"console {self.side.value} is unusable after: {self._error}"
            ) from self._error

    # ------------------------------------------------------------------ writing

    def _check_tx(self, peer_cons: int) -> int:
        """Validate the peer's consumer of our ring; return the bytes still unread."""
        used = (self._prod - peer_cons) & _U32
        if used > self._tx[1]:
            name = "in_cons" if self.side is ConsoleSide.BACKEND else "out_cons"
            self._poison(
                f"{name}={peer_cons} is {((peer_cons - self._prod) & _U32)} ahead of our "
                f"producer {self._prod} or more than {self._tx[1]} behind it"
            )
        return used

    def writable(self) -> int:
        """Free bytes in the ring we write."""
        self._ensure_usable()
        return self._tx[1] - self._check_tx(self._mem.load32(self._tx[3]))

    def write(self, data: bytes | bytearray | memoryview) -> tuple[int, bool]:
        """Copy as much of `data` as fits; publish it.  Returns (bytes written, notify?)."""
        free = self.writable()
        view = memoryview(data).cast("B")
        count = min(free, view.nbytes)
        if count == 0:
            return 0, False
        base, size, prod_off, _ = self._tx
        start = self._prod & (size - 1)
        first = min(count, size - start)
        self._mem.copy_in(base + start, view[:first])
        if count > first:
            self._mem.copy_in(base, view[first:count])
        self._prod = (self._prod + count) & _U32
        self._write_fence()  # the bytes before the index that covers them
        self._mem.store32(prod_off, self._prod)
        return count, True

    # ------------------------------------------------------------------ reading

    def readable(self) -> int:
        """Bytes waiting in the ring we read (after validating the peer's producer)."""
        self._ensure_usable()
        prod = self._mem.load32(self._rx[2])
        ready = (prod - self._cons) & _U32
        if ready > self._rx[1]:
            name = "out_prod" if self.side is ConsoleSide.BACKEND else "in_prod"
            self._poison(
                f"{name}={prod} is {ready} bytes ahead of the consumer {self._cons} in a "
                f"{self._rx[1]}-byte ring"
            )
        return ready

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Take up to `max_bytes` bytes (a private copy).  Returns (data, notify?)."""
        ready = min(self.readable(), max_bytes)
        if ready <= 0:
            return b"", False
        self._read_fence()  # the bytes only after the index that covers them
        base, size, _, cons_off = self._rx
        start = self._cons & (size - 1)
        first = min(ready, size - start)
        out = bytearray(ready)
        self._mem.copy_out(base + start, out, 0, first)
        if ready > first:
            self._mem.copy_out(base, out, first, ready - first)
        self._cons = (self._cons + ready) & _U32
        self._full_fence()  # finish reading before the peer may reuse the space
        self._mem.store32(cons_off, self._cons)
        return bytes(out), True

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
