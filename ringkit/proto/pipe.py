"""Byte-stream rings, sans-I/O: the console page (io/console.h) and libxenvchan's rings.

Public API
----------
::

    from ringkit.proto.pipe import (CONSOLE_IN_PIPE, CONSOLE_OUT_PIPE, PipeConsumer, PipeLayout,
                                    PipeProducer, console_backend, console_frontend,
                                    vchan_client, vchan_ring, vchan_server)

    tx, rx = console_frontend(page)           # guest: produces `out`, consumes `in`
    tx, rx = console_backend(page)            # console daemon: produces `in`, consumes `out`
    tx, rx = vchan_server(page, left_order=10, right_order=11)   # reads left, writes right
    tx, rx = vchan_client(page, ...)                             # writes left, reads right

    tx.space() -> int                         # free bytes (validates the peer's consumer index)
    tx.write(data) -> int                     # copy what fits, publish; returns bytes written
    rx.available() -> int                     # bytes ready (validates the peer's producer index)
    rx.read_into(buf, offset=0, max_bytes=None) -> int
    rx.read(max_bytes) -> bytes
    tx.error / rx.error, release(), ``with ...``

A `PipeLayout` names where one ring's data and two indices live; `PipeProducer` and
`PipeConsumer` take the page holding the indices, and optionally a separate buffer holding the
data (vchan rings of order >= 12 live in their own granted pages).

Errors: `RemoteProtocolError` when the peer's index is impossible (the half is poisoned, every
later call raises), `ConfigError` for a layout that cannot work (size not a power of two, data
outside the buffer).
"""

# Theory of operation
# -------------------
# One direction of a byte stream is `size` bytes of data (a power of two) and two free-running
# uint32 indices: prod, written only by the producer, and cons, written only by the consumer.
# Byte number i lives at data[i & (size - 1)]; prod - cons (mod 2**32) bytes are in flight and
# can never exceed `size`.  Each side keeps its own index privately (the page copy is only ever
# written) and loads the peer's, which is validated on every load:
#
#   producer:  load cons; 0 <= prod - cons <= size, else RemoteProtocolError (the consumer ran
#              ahead of the producer, or claims to have left more than `size` unread);
#              full fence (the peer's reads of the old bytes are done before we overwrite them);
#              copy bytes in (two copies across the wrap); write fence; store prod.
#   consumer:  load prod; 0 <= prod - cons <= size, else RemoteProtocolError; read fence;
#              copy bytes out; full fence (our reads finish before the space is handed back);
#              store cons.
#
# This is the discipline of Linux's hvc_xen / xenconsoled and libxenvchan's io.c.  A poisoned
# half raises on every later call.  Notification policy is not here: the console notifies on
# every publish, vchan consults its notify bytes -- both are the shell's business.

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import ConfigError
from ._half import SharedHalf, resolve_native
from .layout import (
    CONSOLE_IN,
    CONSOLE_IN_CONS,
    CONSOLE_IN_PROD,
    CONSOLE_IN_SIZE,
    CONSOLE_OUT,
    CONSOLE_OUT_CONS,
    CONSOLE_OUT_PROD,
    CONSOLE_OUT_SIZE,
    VCHAN_LEFT_CONS,
    VCHAN_LEFT_PROD,
    VCHAN_RIGHT_CONS,
    VCHAN_RIGHT_PROD,
    vchan_ring_offset,
)

if TYPE_CHECKING:
    from .._native import Buffer, Memory, NativeImpl

_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PipeLayout:
    """Where one direction of a byte stream lives.

    `data_offset`/`size` locate the data, `cons_offset`/`prod_offset` the two uint32 indices
    in the index page.  `size` must be a power of two.  `own_pages` says the data lives in a
    separate buffer (vchan rings of order >= 12), not in the index page.
    """

    name: str
    data_offset: int
    size: int
    cons_offset: int
    prod_offset: int
    own_pages: bool = False

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size & (self.size - 1):
            raise ConfigError(f"{self.name}: ring size {self.size} is not a power of two")
        for attr in ("data_offset", "cons_offset", "prod_offset"):
            value = getattr(self, attr)
            if value < 0:
                raise ConfigError(f"{self.name}: {attr} {value} is negative")
        for attr in ("cons_offset", "prod_offset"):
            if getattr(self, attr) % 4:
                raise ConfigError(f"{self.name}: {attr} is not 4-byte aligned")


#: io/console.h ``in``: the console backend produces, the guest consumes.
CONSOLE_IN_PIPE = PipeLayout("console in", CONSOLE_IN, CONSOLE_IN_SIZE, CONSOLE_IN_CONS,
                             CONSOLE_IN_PROD)
#: io/console.h ``out``: the guest produces, the console backend consumes.
CONSOLE_OUT_PIPE = PipeLayout("console out", CONSOLE_OUT, CONSOLE_OUT_SIZE, CONSOLE_OUT_CONS,
                              CONSOLE_OUT_PROD)


def vchan_ring(side: str, order: int) -> PipeLayout:
    """The layout of vchan's ``left`` (client -> server) or ``right`` (server -> client) ring.

    Orders 10 and 11 put the data inside the control page (offset 1024 / 2048); larger orders
    put it at offset 0 of a separate buffer of 2**order bytes (the ring's own granted pages),
    which must then be passed as ``data_buffer``.
    """
    if side not in ("left", "right"):
        raise ConfigError(f"vchan ring side {side!r}: expected 'left' or 'right'")
    offset = vchan_ring_offset(order)
    if side == "left":
        cons, prod = VCHAN_LEFT_CONS, VCHAN_LEFT_PROD
    else:
        cons, prod = VCHAN_RIGHT_CONS, VCHAN_RIGHT_PROD
    if offset is None:
        return PipeLayout(f"vchan {side}", 0, 1 << order, cons, prod, own_pages=True)
    return PipeLayout(f"vchan {side}", offset, 1 << order, cons, prod)


class _PipeHalf(SharedHalf):
    """Shared plumbing of the two ends; not public."""

    __slots__ = (
        "_copy_in",
        "_copy_out",
        "_data",
        "_data_off",
        "_full_fence",
        "_index",
        "_layout",
        "_load32",
        "_mask",
        "_pvt",
        "_read_fence",
        "_size",
        "_store32",
        "_write_fence",
    )

    _role = "pipe"
    _writes_data = True

    def __init__(
        self,
        buffer: Buffer,
        layout: PipeLayout,
        *,
        data_buffer: Buffer | None = None,
        index: int | None = None,
        native: NativeImpl | None = None,
    ) -> None:
        """Attach this end of the ring `layout` describes; `buffer` is the page with the indices.

        `data_buffer` holds the data when it lives in its own pages (``layout.own_pages``).
        `index` is where this end resumes; None reads this end's own index from the page once
        (e.g. a console daemon restarting on a live page) and validates it against the peer's.
        """
        if layout.own_pages != (data_buffer is not None):
            raise ConfigError(
                f"{layout.name}: the data lives in its own pages, pass them as data_buffer"
                if layout.own_pages
                else f"{layout.name}: the data lives in the index page, data_buffer must be None"
            )
        impl = resolve_native(native)
        mems: list[Memory] = [impl.attach(buffer)]
        try:
            if data_buffer is not None:
                mems.append(impl.attach(data_buffer))
            idx_mem, data_mem = mems[0], mems[-1]
            # A consumer only ever writes its index: its data may be mapped read-only (as
            # libxenvchan's client maps the ring it reads).
            checks = [("index page", idx_mem)]
            if self._writes_data:
                checks.append(("data buffer", data_mem))
            for what, mem in checks:
                if not mem.writable:
                    raise ConfigError(f"{layout.name}: the {what} must be writable")
            for attr in ("cons_offset", "prod_offset"):
                if getattr(layout, attr) + 4 > idx_mem.size:
                    raise ConfigError(f"{layout.name}: {attr} is outside the index page")
            if layout.data_offset + layout.size > data_mem.size:
                raise ConfigError(
                    f"{layout.name}: {layout.size} data bytes at offset {layout.data_offset} "
                    f"do not fit the {data_mem.size}-byte buffer"
                )
        except BaseException:
            for mem in mems:
                mem.release()
            raise
        self._attached(mems, label=layout.name, who=f"{layout.name} {self._role}")
        self._layout = layout
        self._size = layout.size
        self._mask = layout.size - 1
        self._data_off = layout.data_offset
        self._load32 = idx_mem.load32
        self._store32 = idx_mem.store32
        self._copy_in = data_mem.copy_in
        self._copy_out = data_mem.copy_out
        self._full_fence = impl.full_fence
        self._read_fence = impl.read_fence
        self._write_fence = impl.write_fence
        self._data = data_mem
        self._index = idx_mem
        self._pvt = 0
        try:
            self._start(index)
        except BaseException:
            self.release()
            raise

    def _start(self, index: int | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ introspection

    @property
    def layout(self) -> PipeLayout:
        """Where this ring lives."""
        return self._layout

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        return self._size

    # ------------------------------------------------------------------ helpers

    def _check(self, prod: int, cons: int, peer: str) -> int:
        """Bytes in flight, or poison the end if the peer's index (`peer`) makes that impossible."""
        used = (prod - cons) & _U32
        if used <= self._size:
            return used
        if peer == "cons":
            value = cons
            why = (
                f"ahead of prod={prod} (consumer beyond producer)"
                if (cons - prod) & _U32 < (1 << 31)
                else f"{used} bytes behind prod={prod}, more than the {self._size}-byte ring"
            )
        else:
            value = prod
            why = (
                f"{used} bytes ahead of cons={cons}, more than the {self._size}-byte ring"
                if used < (1 << 31)
                else f"behind cons={cons} (producer moved backwards)"
            )
        self._poison(f"{peer}={value} is {why}")


class PipeProducer(_PipeHalf):
    """The writing end of one byte ring."""

    __slots__ = ()

    _role = "producer"

    def _start(self, index: int | None) -> None:
        if index is None:
            index = self._load32(self._layout.prod_offset)
            self._check(index, self._load32(self._layout.cons_offset), "cons")
        self._pvt = index & _U32

    @property
    def prod(self) -> int:
        """The private producer index: bytes written so far (mod 2**32)."""
        return self._pvt

    def space(self) -> int:
        """Free bytes, after validating the consumer's index."""
        if self._error is not None:
            self._raise_poisoned()
        return self._size - self._check(self._pvt, self._load32(self._layout.cons_offset), "cons")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of `data` as fits and publish it; return the number of bytes written.

        0 means the ring is full (or `data` empty): wait for the consumer.
        """
        if self._error is not None:
            self._raise_poisoned()
        prod = self._pvt
        free = self._size - self._check(prod, self._load32(self._layout.cons_offset), "cons")
        length = data.nbytes if type(data) is memoryview else len(data)
        n = min(free, length)
        if n == 0:
            return 0
        self._full_fence()  # the consumer's reads of the old bytes precede our overwrite
        pos = prod & self._mask
        first = min(n, self._size - pos)
        if first == length:
            self._copy_in(self._data_off + pos, data)
        else:
            with memoryview(data) as view, view.cast("B") as flat:
                self._copy_in(self._data_off + pos, flat[:first])
                if n > first:
                    self._copy_in(self._data_off, flat[first:n])
        self._write_fence()  # the bytes are visible before the index that covers them
        self._pvt = prod = (prod + n) & _U32
        self._store32(self._layout.prod_offset, prod)
        return n


class PipeConsumer(_PipeHalf):
    """The reading end of one byte ring."""

    __slots__ = ()

    _role = "consumer"
    _writes_data = False

    def _start(self, index: int | None) -> None:
        if index is None:
            index = self._load32(self._layout.cons_offset)
            self._check(self._load32(self._layout.prod_offset), index, "prod")
        self._pvt = index & _U32

    @property
    def cons(self) -> int:
        """The private consumer index: bytes consumed so far (mod 2**32)."""
        return self._pvt

    def available(self) -> int:
        """Bytes ready to read, after validating the producer's index."""
        if self._error is not None:
            self._raise_poisoned()
        return self._check(self._load32(self._layout.prod_offset), self._pvt, "prod")

    def read_into(
        self, buf: bytearray | memoryview, offset: int = 0, max_bytes: int | None = None
    ) -> int:
        """Copy up to `max_bytes` (default: what fits after `offset`) ready bytes into `buf`,
        hand the space back to the producer, and return how many were copied (0: empty)."""
        if self._error is not None:
            self._raise_poisoned()
        cons = self._pvt
        ready = self._check(self._load32(self._layout.prod_offset), cons, "prod")
        room = (buf.nbytes if type(buf) is memoryview else len(buf)) - offset
        n = min(ready, room) if max_bytes is None else min(ready, room, max_bytes)
        if n <= 0:
            return 0
        self._read_fence()  # the bytes are read only after the index that covers them
        pos = cons & self._mask
        first = min(n, self._size - pos)
        self._copy_out(self._data_off + pos, buf, offset, first)
        if n > first:
            self._copy_out(self._data_off, buf, offset + first, n - first)
        self._full_fence()  # our reads are complete before the producer may reuse the space
        self._pvt = cons = (cons + n) & _U32
        self._store32(self._layout.cons_offset, cons)
        return n

    def read(self, max_bytes: int) -> bytes:
        """A private copy of up to `max_bytes` ready bytes (b"" when the ring is empty)."""
        buf = bytearray(min(max_bytes, self._size))
        n = self.read_into(buf)
        return bytes(buf[:n])


def console_frontend(
    page: Buffer, *, native: NativeImpl | None = None
) -> tuple[PipeProducer, PipeConsumer]:
    """The guest's ends of a console page: it writes ``out`` and reads ``in``."""
    return (
        PipeProducer(page, CONSOLE_OUT_PIPE, native=native),
        PipeConsumer(page, CONSOLE_IN_PIPE, native=native),
    )


def console_backend(
    page: Buffer, *, native: NativeImpl | None = None
) -> tuple[PipeProducer, PipeConsumer]:
    """The console daemon's ends of a console page: it writes ``in`` and reads ``out``."""
    return (
        PipeProducer(page, CONSOLE_IN_PIPE, native=native),
        PipeConsumer(page, CONSOLE_OUT_PIPE, native=native),
    )


def vchan_server(
    page: Buffer,
    *,
    left_order: int,
    right_order: int,
    left_data: Buffer | None = None,
    right_data: Buffer | None = None,
    native: NativeImpl | None = None,
) -> tuple[PipeProducer, PipeConsumer]:
    """The vchan server's ends: it writes ``right`` and reads ``left``.

    `*_data` are the separately granted rings for orders >= 12 (None for in-page rings).
    """
    return (
        PipeProducer(page, vchan_ring("right", right_order), data_buffer=right_data,
                     native=native),
        PipeConsumer(page, vchan_ring("left", left_order), data_buffer=left_data, native=native),
    )


def vchan_client(
    page: Buffer,
    *,
    left_order: int,
    right_order: int,
    left_data: Buffer | None = None,
    right_data: Buffer | None = None,
    native: NativeImpl | None = None,
) -> tuple[PipeProducer, PipeConsumer]:
    """The vchan client's ends: it writes ``left`` and reads ``right``."""
    return (
        PipeProducer(page, vchan_ring("left", left_order), data_buffer=left_data, native=native),
        PipeConsumer(page, vchan_ring("right", right_order), data_buffer=right_data,
                     native=native),
    )


__all__ = (
    "CONSOLE_IN_PIPE",
    "CONSOLE_OUT_PIPE",
    "PipeConsumer",
    "PipeLayout",
    "PipeProducer",
    "console_backend",
    "console_frontend",
    "vchan_client",
    "vchan_ring",
    "vchan_server",
)
