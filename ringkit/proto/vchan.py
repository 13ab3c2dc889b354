"""libxenvchan's control page and notify-byte protocol, sans-I/O: `VchanEnd` and its helpers.

Public API
----------
::

    from ringkit.proto.vchan import (VchanEnd, VchanHeader, VchanOrders, VchanRole, check_orders,
                                     choose_orders, read_header, write_header)

    orders = choose_orders(read_min, write_min)     # libxenvchan's placement (server's view)
    write_header(page, orders, grants)              # server: a fresh control page
    header = read_header(page)                      # client: one copy, validated
    end = VchanEnd(page, VchanRole.CLIENT, header.orders, left_data=..., right_data=...)
    n, notify = end.write(data);  data, notify = end.read(max_bytes)
    end.peer_live() -> Live;  end.set_live(Live.EXITED)

Errors: `RemoteProtocolError` for anything the peer put in shared memory that libxenvchan could
not have written (orders, grant counts, indices, live bytes); the end is poisoned and every later
call raises.  `ConfigError` for a local request that cannot work (ring sizes over 1 MiB).
"""

# Theory of operation
# -------------------
# The server grants one control page: the two rings' indices, their orders, one live byte and
# one notify byte per side, then the grant refs of rings too big for the page.  ``left`` carries
# client -> server, ``right`` server -> client.  The byte rings themselves are
# `ringkit.proto.pipe`'s producer and consumer (indices validated on every load).
#
# Notifications are requested, not automatic.  A side about to sleep ORs a bit into the notify
# byte the *peer* consults (WRITE: "tell me when you wrote", READ: "tell me when you read"),
# fences, and looks at the ring again -- the peer may have moved just before the request.  A side
# that moved data fetch-ANDs the bit out of its own byte and signals the event channel only if it
# was set.  The server's own byte is ``srv_notify``, the client's ``cli_notify``.  Stray bits in a
# notify byte cost at most a spurious event, so they are tolerated, as libxenvchan does.
#
# Live bytes: each side publishes its own (0 exited, 1 connected, 2 not yet connected -- only the
# client's starts at 2) and arms unmap-notify on it, so the kernel clears it if the process dies.
# libxenvchan trusts the peer's byte; here it is checked: an unknown value, or a connected client
# going back to "not yet connected", is a protocol error.  Once seen exited, the peer stays
# exited for this end (a later flip back is ignored): the shell then drains what the peer wrote
# before it left, and only an empty ring after that is the end of the stream.

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from .._errors import ConfigError, RemoteProtocolError
from ._half import resolve_native
from .layout import (
    VCHAN_CLI_LIVE,
    VCHAN_CLI_NOTIFY,
    VCHAN_GRANTS,
    VCHAN_INPAGE_RING_OFFSET,
    VCHAN_LEFT_ORDER,
    VCHAN_LIVE_CONNECTED,
    VCHAN_LIVE_EXITED,
    VCHAN_LIVE_WAITING,
    VCHAN_MIN_ORDER,
    VCHAN_NOTIFY_READ,
    VCHAN_NOTIFY_WRITE,
    VCHAN_SRV_LIVE,
    VCHAN_SRV_NOTIFY,
)
from .pipe import PipeConsumer, PipeProducer, vchan_client, vchan_server

if TYPE_CHECKING:
    from .._native import Buffer, Memory, NativeImpl

_PAGE_SHIFT = 12
PAGE_SIZE = 1 << _PAGE_SHIFT
VCHAN_MAX_ORDER = 20
"""libxenvchan's largest ring: 1 MiB (256 grants per ring still fit the control page)."""
_SMALL_ORDER, _LARGE_ORDER = sorted(VCHAN_INPAGE_RING_OFFSET)

_ORDERS = struct.Struct("=HH")


class VchanRole(enum.Enum):
    """Which end of the vchan: the server grants the pages, the client maps them."""

    SERVER = "server"
    CLIENT = "client"


class Live(enum.IntEnum):
    """Values of a live byte."""

    EXITED = VCHAN_LIVE_EXITED
    CONNECTED = VCHAN_LIVE_CONNECTED
    WAITING = VCHAN_LIVE_WAITING
    """Only the client's byte, until the client connects."""


def ring_pages(order: int) -> int:
    """Separately granted pages of a ring of 2**order bytes (0 when it lives in the page)."""
    return 1 << (order - _PAGE_SHIFT) if order >= _PAGE_SHIFT else 0


@dataclass(frozen=True, slots=True)
class VchanOrders:
    """Ring sizes as powers of two: ``left`` (client -> server) and ``right`` (reverse)."""

    left: int
    right: int

    @property
    def left_pages(self) -> int:
        return ring_pages(self.left)

    @property
    def right_pages(self) -> int:
        return ring_pages(self.right)

    @property
    def grant_count(self) -> int:
        """Grant refs listed in the control page."""
        return self.left_pages + self.right_pages


def _order_problem(left: int, right: int) -> str | None:
    for name, order in (("left", left), ("right", right)):
        if not VCHAN_MIN_ORDER <= order <= VCHAN_MAX_ORDER:
            return f"{name}_order {order} is outside {VCHAN_MIN_ORDER}..{VCHAN_MAX_ORDER}"
    if left == right and left < _PAGE_SHIFT:
        return f"both rings claim the in-page slot of order {left}"
    if VCHAN_GRANTS + 4 * (ring_pages(left) + ring_pages(right)) > PAGE_SIZE:
        return "the grant list does not fit the control page"
    return None


def check_orders(left: int, right: int) -> VchanOrders:
    """The orders a server published, if libxenvchan's client would accept them.

    Raises:
        RemoteProtocolError: an order outside 10..20, two in-page rings in one slot, or more
            grants than the page holds.
    """
    problem = _order_problem(left, right)
    if problem is not None:
        raise RemoteProtocolError(f"vchan control page: {problem}")
    return VchanOrders(left, right)


def _min_order(size: int) -> int:
    order = _PAGE_SHIFT
    while size > 1 << order:
        order += 1
    return order


def choose_orders(read_min: int, write_min: int) -> VchanOrders:
    """Ring orders for a server that wants to read at least `read_min` and write at least
    `write_min` bytes at once, placed as libxenvchan's server places them: both rings inside the
    control page when they fit (left 1 KiB and right 2 KiB, or the reverse), else the smaller
    in-page when it fits 2 KiB, else whole pages (rounded up to a power of two).

    Raises:
        ConfigError: a size is negative or above 1 MiB.
    """
    for name, size in (("read_min", read_min), ("write_min", write_min)):
        if not 0 <= size <= 1 << VCHAN_MAX_ORDER:
            raise ConfigError(f"vchan {name}={size}: expected 0..{1 << VCHAN_MAX_ORDER} bytes")
    small, large = 1 << _SMALL_ORDER, 1 << _LARGE_ORDER
    left, right = _min_order(read_min), _min_order(write_min)
    if read_min <= small and write_min <= large:
        left, right = _SMALL_ORDER, _LARGE_ORDER
    elif read_min <= large and write_min <= small:
        left, right = _LARGE_ORDER, _SMALL_ORDER
    elif read_min <= large:
        left = _LARGE_ORDER
    elif write_min <= large:
        right = _LARGE_ORDER
    return VchanOrders(left, right)


@dataclass(frozen=True, slots=True)
class VchanHeader:
    """What a client learns from the control page: the orders and the rings' grant refs."""

    orders: VchanOrders
    left_grants: tuple[int, ...]
    right_grants: tuple[int, ...]


def write_header(
    page: Buffer, orders: VchanOrders, grants: tuple[int, ...], *,
    native: NativeImpl | None = None,
) -> None:
    """Lay out a fresh control page as a server: orders, grant refs (left's first), the client
    not yet connected and asked to notify our first read, our live byte set.  The indices are
    left as they are (a fresh page is zero).

    Raises:
        ConfigError: bad orders, or a grant count that does not match them.
    """
    problem = _order_problem(orders.left, orders.right)
    if problem is not None:
        raise ConfigError(f"vchan orders: {problem}")
    if len(grants) != orders.grant_count:
        raise ConfigError(f"vchan orders need {orders.grant_count} grant refs, got {len(grants)}")
    impl = resolve_native(native)
    with impl.attach(page) as mem:
        mem.copy_in(VCHAN_GRANTS, struct.pack(f"={len(grants)}I", *grants))
        mem.copy_in(VCHAN_LEFT_ORDER, _ORDERS.pack(orders.left, orders.right))
        mem.copy_in(VCHAN_CLI_NOTIFY, bytes([VCHAN_NOTIFY_WRITE]))
        mem.copy_in(VCHAN_CLI_LIVE, bytes([Live.WAITING]))
        impl.write_fence()
        mem.copy_in(VCHAN_SRV_LIVE, bytes([Live.CONNECTED]))


def read_header(page: Buffer, *, native: NativeImpl | None = None) -> VchanHeader:
    """Parse a server's control page as a client, from one private copy.

    Raises:
        RemoteProtocolError: orders libxenvchan's client refuses (see `check_orders`), or a
            server that says it has already exited.
    """
    impl = resolve_native(native)
    copy = bytearray(PAGE_SIZE)
    with impl.attach(page) as mem:
        if mem.size < PAGE_SIZE:
            raise ConfigError(f"a vchan control page is {PAGE_SIZE} bytes, got {mem.size}")
        mem.copy_out(0, copy)
    orders = check_orders(*_ORDERS.unpack_from(copy, VCHAN_LEFT_ORDER))
    srv_live = copy[VCHAN_SRV_LIVE]
    if srv_live != Live.CONNECTED:
        raise RemoteProtocolError(
            f"vchan control page: srv_live={srv_live} before the client connected (expected "
            f"{Live.CONNECTED})")
    refs = struct.unpack_from(f"={orders.grant_count}I", copy, VCHAN_GRANTS)
    return VchanHeader(orders, refs[:orders.left_pages], refs[orders.left_pages:])


class VchanEnd:
    """One side of a connected vchan: the two byte rings, the notify bytes and the live bytes.

    `write` and `read` return (count or data, notify?) like the console's engine, so
    `ringkit._async.stream.PipeStream` drives either.  When they come back short they have asked
    the peer for a notification and looked again (so sleeping on the event channel afterwards is
    safe); `writable` and `readable` do the same when the ring is full / empty.
    """

    def __init__(
        self,
        page: Buffer,
        role: VchanRole,
        orders: VchanOrders,
        *,
        left_data: Buffer | None = None,
        right_data: Buffer | None = None,
        native: NativeImpl | None = None,
    ) -> None:
        impl = resolve_native(native)
        self.role = role
        self.orders = orders
        server = role is VchanRole.SERVER
        self._own_notify = VCHAN_SRV_NOTIFY if server else VCHAN_CLI_NOTIFY
        self._peer_notify = VCHAN_CLI_NOTIFY if server else VCHAN_SRV_NOTIFY
        self._own_live = VCHAN_SRV_LIVE if server else VCHAN_CLI_LIVE
        self._peer_live = VCHAN_CLI_LIVE if server else VCHAN_SRV_LIVE
        self._peer_name = "client" if server else "server"
        self._seen = Live.WAITING if server else Live.CONNECTED
        self._error: RemoteProtocolError | None = None
        self._full_fence = impl.full_fence
        self._mem: Memory = impl.attach(page)
        opener = vchan_server if server else vchan_client
        self._tx: PipeProducer
        self._rx: PipeConsumer
        try:
            self._tx, self._rx = opener(page, left_order=orders.left, right_order=orders.right,
                                        left_data=left_data, right_data=right_data,
                                        native=native)
        except BaseException:
            self._mem.release()
            raise

    # ------------------------------------------------------------------ state

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer error that poisoned this end (either ring, or the control bytes), or None."""
        return self._error or self._tx.error or self._rx.error

    @property
    def page(self) -> Memory:
        """The shared control page as this end maps it (``read``, ``copy_in``, ``store32``):
        for diagnostics, and for a test that plays a hostile peer by writing into it.  The
        peer writes it too: what it reads is untrusted."""
        return self._mem

    @property
    def tx_size(self) -> int:
        """Bytes of the ring this end writes."""
        return self._tx.size

    @property
    def rx_size(self) -> int:
        """Bytes of the ring this end reads."""
        return self._rx.size

    def release(self) -> None:
        """Let go of the shared buffers (so their mappings can be closed)."""
        self._tx.release()
        self._rx.release()
        self._mem.release()

    def _ensure_usable(self) -> None:
        error = self.error
        if error is not None:
            raise RemoteProtocolError(
                f"vchan {self.role.value} is unusable after: {error}") from error

    def _poison(self, message: str) -> NoReturn:
        self._error = RemoteProtocolError(f"vchan {self._peer_name}: {message}")
        raise self._error

    # ------------------------------------------------------------------ notify bytes

    def _request(self, bit: int) -> None:
        """Ask the peer to signal us after its next move (then the caller looks again)."""
        self._mem.fetch_or8(self._peer_notify, bit)
        self._full_fence()

    def _take_request(self, bit: int) -> bool:
        """After we moved data: did the peer ask to be told?  (Clears the request.)"""
        self._full_fence()
        return bool(self._mem.fetch_and8(self._own_notify, 0xFF ^ bit) & bit)

    # ------------------------------------------------------------------ bytes

    def writable(self) -> int:
        """Free bytes in the ring we write; asks to be woken by the peer's next read when the
        ring is not empty (a full ring needs it; `drain` waits for an empty one)."""
        self._ensure_usable()
        space = self._tx.space()
        if space < self._tx.size:
            self._request(VCHAN_NOTIFY_READ)
            space = self._tx.space()
        return space

    def write(self, data: bytes | bytearray | memoryview) -> tuple[int, bool]:
        """Copy as much of `data` as fits and publish it.  Returns (bytes written, notify?)."""
        self._ensure_usable()
        length = data.nbytes if type(data) is memoryview else len(data)
        count = self._tx.write(data)
        if count < length:
            self._request(VCHAN_NOTIFY_READ)
            with memoryview(data) as view, view.cast("B") as flat:
                count += self._tx.write(flat[count:])
        return count, count > 0 and self._take_request(VCHAN_NOTIFY_WRITE)

    def write_all_or_nothing(self, data: bytes | bytearray | memoryview) -> tuple[bool, bool]:
        """Packet write: publish all of `data` or nothing.  Returns (written?, notify?).

        Raises:
            ConfigError: `data` is larger than the ring.
        """
        length = data.nbytes if type(data) is memoryview else len(data)
        if length > self._tx.size:
            raise ConfigError(f"a {length}-byte packet does not fit the {self._tx.size}-byte ring")
        self._ensure_usable()
        if self._tx.space() < length:
            self._request(VCHAN_NOTIFY_READ)
            if self._tx.space() < length:
                return False, False
        count, notify = self.write(data)
        return count == length, notify

    def progress(self) -> tuple[int, int]:
        """(bytes waiting to be read, free bytes to write) as they are now, asking the peer
        for nothing: what a poller compares to see the peer move."""
        self._ensure_usable()
        return self._rx.available(), self._tx.space()

    def readable(self) -> int:
        """Bytes waiting in the ring we read; asks to be woken by the peer's next write when
        there are none."""
        self._ensure_usable()
        ready = self._rx.available()
        if not ready:
            self._request(VCHAN_NOTIFY_WRITE)
            ready = self._rx.available()
        return ready

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        """Take up to `max_bytes` bytes (a private copy).  Returns (data, notify?)."""
        self._ensure_usable()
        data = self._rx.read(max_bytes)
        if not data:
            self._request(VCHAN_NOTIFY_WRITE)
            data = self._rx.read(max_bytes)
        return data, bool(data) and self._take_request(VCHAN_NOTIFY_READ)

    def read_exactly(self, count: int) -> tuple[bytes | None, bool]:
        """Packet read: `count` bytes if that many are waiting, else None (having asked to be
        woken by the peer's next write).  Returns (data or None, notify?).

        Raises:
            ConfigError: `count` is larger than the ring.
        """
        if count > self._rx.size:
            raise ConfigError(f"a {count}-byte packet does not fit the {self._rx.size}-byte ring")
        self._ensure_usable()
        if self._rx.available() < count:
            self._request(VCHAN_NOTIFY_WRITE)
            if self._rx.available() < count:
                return None, False
        data, notify = self.read(count)
        return data, notify

    # ------------------------------------------------------------------ live bytes

    def connect_client(self) -> None:
        """Client: ask the server to notify our first read, then say we are connected (the
        caller rings the server next)."""
        if self.role is not VchanRole.CLIENT:
            raise ConfigError("only a vchan client announces itself")
        self._mem.copy_in(self._peer_notify, bytes([VCHAN_NOTIFY_WRITE]))
        self.set_live(Live.CONNECTED)

    def set_live(self, value: Live) -> None:
        """Publish our live byte (after everything written before it)."""
        self._full_fence()
        self._mem.copy_in(self._own_live, bytes([value]))

    def peer_live(self) -> Live:
        """The peer's live byte, validated; `Live.EXITED` for good once seen.

        Raises:
            RemoteProtocolError: an unknown value, a server not saying connected, or a
                connected client going back to "not yet connected".
        """
        self._ensure_usable()
        if self._seen is Live.EXITED:
            return Live.EXITED
        value = self._mem.read(self._peer_live, 1)[0]
        self._full_fence()  # the indices are read after the byte (drain after an exit)
        if value not in (Live.EXITED, Live.CONNECTED, Live.WAITING):
            self._poison(f"live byte {value} is none of exited/connected/waiting (0/1/2)")
        live = Live(value)
        if live is Live.WAITING and (self._seen is Live.CONNECTED or self.role is VchanRole.CLIENT):
            self._poison("live byte went back to 2 (not yet connected) after connecting")
        self._seen = live
        return live


__all__ = (
    "PAGE_SIZE",
    "VCHAN_MAX_ORDER",
    "Live",
    "VchanEnd",
    "VchanHeader",
    "VchanOrders",
    "VchanRole",
    "check_orders",
    "choose_orders",
    "read_header",
    "ring_pages",
    "write_header",
)
