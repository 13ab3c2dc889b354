"""`NetTxTable`: a netfront's tx requests written and answered in C, one call each way.

A netif frontend sends every frame as requests on the tx ring: one per page of the frame
(``more_data`` on all but the last, the first's size the frame's), with a GSO extra-info slot
after the first when the frame asks the backend to segment it (io/netif.h).  Each answer frees
an id and a page.  At 64 KiB per GSO frame that is seventeen requests to prepare, encode, push,
match and free per packet, and in Python that bookkeeping -- not the bytes -- is what bounds the
frontend.  This is the same work in C (``rk_nettx_*`` in ringkit/_native/_build.py):

* `NetTxTable.send_nowait` takes, for as many whole frames as ids, pool pages and ring slots
  allow, the lowest free ids and the first free pages, copies each frame into its pages and
  encodes its slots, in one call; the slots go onto the ring with one copy and one push
  (``FrontRingChannel.send_from_nowait``: the ring engine publishes and notifies with its
  hold-off, as for any batch).
* The queue's receive path hands each burst of responses (its private copy, never the shared
  ring) to the table first (`complete`): one call consumes the leading responses that answer
  the table's requests -- status checked, id and page freed, packets and errors counted -- and
  hands the rest back to the Python path.  A NETIF_RSP_NULL answers the table's oldest extra
  slot in flight (netif gives it no id: Linux's netback leaves it unset).

The state is the queue's own, as with block's `ringkit.requests.shadow.ShadowTable`: the id
table (``ID_SHADOW`` marks the table's requests) and the `GrantPool`'s free map are the
bytearrays the Python path reads and writes, and both pick ids and pages the same way, so the
two can be compared request for request (tests/requests/test_nettx.py).  A queue's extra slots
must all go one way, though: a NETIF_RSP_NULL goes to the table while it has one in flight.

What stays Python: checking a frame (its size, ``feature-sg``, the GSO kinds negotiated: the
driver's job), waiting for room (`room`), the errors (a hostile response is the same
`RemoteProtocolError` as on the Python path) and the connection's end (what is in flight stays
so, as on the Python path: the pool's grants are revoked with the connection).  The Python
path stays the reference and the fallback: in ABI mode (``RINGKIT_NATIVE=abi``) `unavailable`
says why, and `PythonTxPath` does the same work request by request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from .._native import compiled_part
from ..proto import netif
from ..proto.ring import FrontRing
from .pool import fresh_error

if TYPE_CHECKING:
    from .front import Request, RequestQueue

__all__ = ("NetTxTable", "PythonTxPath", "TxFrame", "unavailable")

_ffi, _lib, _MISSING = compiled_part("rk_nettx_submit", "the netfront tx table")

_E_STATUS = 1
_MORE_DATA = int(netif.TxFlag.MORE_DATA)
_EXTRA_INFO = int(netif.TxFlag.EXTRA_INFO)
_CHECKSUM = int(netif.TxFlag.CSUM_BLANK | netif.TxFlag.DATA_VALIDATED)


def unavailable() -> str:
    """Why a `NetTxTable` cannot be made here, or "" when it can."""
    return _MISSING


TxFrame = tuple[Any, int, int, int]
"""One frame for `NetTxTable.send_nowait`: (its bytes -- any contiguous buffer --, its first
request's checksum flags (NETTXF_csum_blank / data_validated), GSO segment size, GSO type; 0
for none)."""


class NetTxTable:
    """The C tx table of `queue` (one netif tx ring with a `GrantPool`): see the module
    docstring.  `max_pages`: the most pages one frame takes (`netif.NR_SLOTS_MIN` with
    ``feature-sg``, else 1).  `on_answered(packets, errors)`: told after each burst how many of
    the table's packets were answered, and how many of those with an error status.  `module`:
    the cffi module whose C to use (default: `ringkit._native._compiled`; tests pass a
    differently built one).

    Raises (constructor):
        RuntimeError: the compiled helper is unavailable (`unavailable`).
        ConfigError: the queue has several rings, no pool, or is not a netif tx queue.
    """

    def __init__(self, queue: RequestQueue, *, max_pages: int = netif.NR_SLOTS_MIN,
                 on_answered: Callable[[int, int], None] | None = None,
                 module: Any = None) -> None:
        if module is not None:
            ffi, lib = module.ffi, module.lib
        elif _lib is None:
            raise RuntimeError(_MISSING)
        else:
            ffi, lib = _ffi, _lib
        if len(queue._channels) != 1 or queue.pool is None:
            raise ConfigError("a tx table serves a queue of one ring with a grant pool")
        if queue.codec is not netif.TX_CODEC:
            raise ConfigError("a tx table speaks netif's tx ring")
        if not 1 <= max_pages <= netif.NR_SLOTS_MIN:
            raise ConfigError(f"frames of up to {max_pages} pages (netif allows "
                              f"1..{netif.NR_SLOTS_MIN})")
        self._ffi, self._lib = ffi, lib
        self._queue = queue
        self._pool = pool = queue.pool
        self._channel = queue._channels[0]
        self.max_pages = max_pages
        self.on_answered = on_answered
        window = queue.window
        self._window = window
        self._table = ffi.new("uint32_t[]", window)
        self._fifo = ffi.new("uint32_t[]", window)
        self._fifo_state = ffi.new("uint64_t[2]")
        self._frames = ffi.new("rk_nettx_frame[]", window)
        self._refs = ffi.new("uint32_t[]", list(pool.refs))
        self._npages = pool.size
        self._staging = bytearray(netif.TX_RING.slot_size * window)
        self._out = ffi.new("uint64_t[3]")
        self._info = ffi.new("uint64_t[5]")
        self.in_flight = 0
        """Ids (requests and extra slots) of the table's in flight."""
        queue._shadow = self

    # ------------------------------------------------------------------ sending

    def send_nowait(self, frames: Sequence[TxFrame]) -> int:
        """Put the first of `frames` -- as many whole frames as free ids, pool pages and ring
        slots allow -- on the ring with one push; return how many (0: no room for the first).

        Raises:
            ValueError: one of the first ``window`` frames (the most one call can send) is one
                the table cannot encode (empty, over 65,535 bytes, more than `max_pages`
                pages, an unknown GSO type); nothing is sent then.
            PeerGoneError, RemoteProtocolError: the queue failed.
        """
        queue, pool, ffi = self._queue, self._pool, self._ffi
        queue._check()
        count = min(len(frames), self._window)
        if not count:
            return 0
        cframes = self._frames
        keep = []   # the exports live until the call returns
        from_buffer = ffi.from_buffer
        for i in range(count):
            data, flags, gso_size, gso_type = frames[i]
            export = from_buffer("char[]", data)
            keep.append(export)
            entry = cframes[i]
            entry.data = export
            entry.length = len(export)
            entry.flags = flags
            entry.gso_size = gso_size
            entry.gso_type = gso_type
        room = _free_slots(self._queue)
        states, freemap, memory = self._export()
        staging = ffi.from_buffer("char[]", self._staging, require_writable=True)
        try:
            slots = self._lib.rk_nettx_submit(
                states, self._window, freemap, self._npages, memory, len(memory), self._refs,
                self._table, self._fifo, self._fifo_state, cframes, count, self.max_pages,
                room, staging, len(staging), self._out)
        finally:
            self._unexport(states, freemap, memory, staging)
            for export in keep:
                ffi.release(export)
        if slots < 0:
            raise ValueError(f"a frame the tx table cannot encode among {count} (empty, over "
                             f"{netif.MAX_TX_SIZE} bytes, over {self.max_pages} pages, or "
                             "an unknown GSO type)")
        sent = int(self._out[0])
        if not slots:
            return 0
        pool._free -= int(self._out[1])
        self.in_flight += int(self._out[2])
        try:
            put = self._channel.send_from_nowait(self._staging, slots)
        except anyio.WouldBlock:
            put = 0
        except anyio.BrokenResourceError as exc:
            self.failed()
            cause = exc.__cause__
            raise fresh_error(cause if cause is not None else exc) from exc
        except anyio.ClosedResourceError as exc:
            self.failed()
            raise PeerGoneError("the request queue's ring was closed") from exc
        queue.stats.sent += put
        queue.stats.pushes += 1
        if put < slots:  # `room` was asked of the ring just before: a bug of ours
            raise LocalProtocolError(f"the ring had room for {put} of {slots} requests it "
                                     "said it had")
        return sent

    async def room(self, frame: TxFrame) -> None:
        """Wait until `frame` fits: ids and ring slots for its requests and extra slot, pool
        pages for its pages (what frees them is an answer, matched by the queue's receive
        path).

        Raises:
            PeerGoneError, RemoteProtocolError: the queue failed.
            ConfigError: the frame can never fit the queue.
        """
        await _room(self._queue, frame)

    # ------------------------------------------------------------------ answers, the end

    def complete(self, buf: bytearray | memoryview, start: int, count: int) -> int:
        """Consume the leading responses of slots ``start .. count - 1`` of `buf` (a burst's
        private copy, at slot stride) that answer the table's requests; return how many.

        Raises:
            RemoteProtocolError: one carries a status netif does not define (the caller fails
                the queue).
        """
        ffi, info = self._ffi, self._info
        slot = netif.TX_RING.slot_size
        states = ffi.from_buffer("uint8_t[]", self._queue._states, require_writable=True)
        freemap = ffi.from_buffer("uint8_t[]", self._pool._freemap, require_writable=True)
        src = ffi.from_buffer("char[]", buf)
        try:
            done = self._lib.rk_nettx_complete(
                states, self._window, freemap, self._npages, self._table, self._fifo,
                self._fifo_state, src + start * slot, len(src) - start * slot, count - start,
                info)
        finally:
            self._unexport(states, freemap, src)
        if done < 0:
            raise LocalProtocolError(f"{count} response slots do not fit a {len(src)}-byte "
                                     "burst")
        if done:
            self._freed(int(info[2]), int(info[1]))
            if self.on_answered is not None and info[3]:
                self.on_answered(int(info[3]), int(info[4]))
        if info[0] == _E_STATUS:
            at = (start + done) * slot
            rid, status = netif.TX_RESPONSE.unpack_from(buf, at)
            raise RemoteProtocolError(f"netif tx: status {status} for request {rid}")
        return int(done)

    def failed(self) -> None:
        """The queue failed: what is in flight stays so, as the Python path's requests do (the
        connection's end revokes the pool's grants; the queue is not used again)."""

    def _export(self) -> tuple[Any, Any, Any]:
        """The id table, the pool's free map and its pages, exported for one C call."""
        ffi = self._ffi
        return (ffi.from_buffer("uint8_t[]", self._queue._states, require_writable=True),
                ffi.from_buffer("uint8_t[]", self._pool._freemap, require_writable=True),
                ffi.from_buffer("char[]", self._pool.memory, require_writable=True))

    def _unexport(self, *exports: Any) -> None:
        for export in exports:
            self._ffi.release(export)

    def _freed(self, ids: int, pages: int) -> None:
        """C freed `ids` ids and `pages` pool pages: keep the Python side's counters."""
        self.in_flight -= ids
        if pages:
            self._pool._free += pages
            self._pool._wake()
        self._queue._wake_id_waiters()


def _free_slots(queue: RequestQueue) -> int:
    """Request slots free on the queue's (one) ring."""
    engine = queue._channels[0].engine
    assert isinstance(engine, FrontRing)
    return engine.free_requests()


def _needs(frame: TxFrame) -> tuple[int, int]:
    """(pages, ring slots) one frame takes."""
    pages = max(1, -(-len(memoryview(frame[0])) // netif.PAGE_SIZE))
    return pages, pages + (1 if frame[3] else 0)


async def _room(queue: RequestQueue, frame: TxFrame) -> None:
    """Wait until `frame` fits `queue`: ids and ring slots for its requests and extra slot,
    pool pages for its pages (what frees them is an answer)."""
    pool = queue.pool
    assert pool is not None
    pages, slots = _needs(frame)
    if pages > pool.size or slots > queue.window:
        raise ConfigError(f"a frame of {pages} pages never fits this queue")
    while True:
        queue._check()
        if queue.window - queue.held < slots or _free_slots(queue) < slots:
            waiter = anyio.Event()
            queue._id_waiters.append(waiter)
            await waiter.wait()
        elif pool.free < pages:
            pool._check()
            waiter = anyio.Event()
            pool._waiters.append(waiter)
            await waiter.wait()
        else:
            return


class PythonTxPath:
    """`NetTxTable`'s work in Python, request by request: the reference the C is compared
    with, and the path where the compiled helper is unavailable.  Same interface, plus
    `reap`: the answered requests (from `completions`) must be handed to it, which frees them
    and counts the packets (the C table does that itself while matching)."""

    def __init__(self, queue: RequestQueue, *, max_pages: int = netif.NR_SLOTS_MIN,
                 on_answered: Callable[[int, int], None] | None = None) -> None:
        if len(queue._channels) != 1 or queue.pool is None:
            raise ConfigError("a tx path serves a queue of one ring with a grant pool")
        if queue.codec is not netif.TX_CODEC:
            raise ConfigError("a tx path speaks netif's tx ring")
        if not 1 <= max_pages <= netif.NR_SLOTS_MIN:
            raise ConfigError(f"frames of up to {max_pages} pages (netif allows "
                              f"1..{netif.NR_SLOTS_MIN})")
        self._queue = queue
        self.max_pages = max_pages
        self.on_answered = on_answered
        self.completions = queue.completions()
        """Where the answers to this path's requests go (for `reap`)."""

    def send_nowait(self, frames: Sequence[TxFrame]) -> int:
        """As `NetTxTable.send_nowait`."""
        queue = self._queue
        pool = queue.pool
        assert pool is not None
        queue._check()
        frames = frames[:queue.window]   # as many as the table's call looks at
        for data, _, _, gso_type in frames:
            size = len(memoryview(data))
            if not 0 < size <= netif.MAX_TX_SIZE or gso_type not in (0, 1, 2) \
                    or -(-size // netif.PAGE_SIZE) > self.max_pages:
                raise ValueError(f"a frame the tx path cannot encode among {len(frames)} "
                                 f"(empty, over {netif.MAX_TX_SIZE} bytes, over "
                                 f"{self.max_pages} pages, or an unknown GSO type)")
        pack = netif.TX_REQUEST.pack_into
        room = _free_slots(queue)
        ready: list[Request] = []
        sent = 0
        for frame in frames:
            data, flags, gso_size, gso_type = frame
            view = memoryview(data).cast("B")
            size = len(view)
            pages, slots = _needs(frame)
            if queue.window - queue.held < slots or pool.free < pages \
                    or len(ready) + slots > room:
                break
            held = [queue.prepare_nowait(1) for _ in range(pages)]
            if gso_type:
                held.append(queue.prepare_nowait(0))
            requests = [r for r in held if r is not None]
            if len(requests) < len(held):   # counted free just above: cannot happen
                for request in requests:
                    queue.release(request)
                raise LocalProtocolError("ids or pages counted free were not")
            first = (flags & _CHECKSUM) | (_EXTRA_INFO if gso_type else 0)
            for i in range(pages):
                request = requests[i]
                chunk = view[i * netif.PAGE_SIZE:(i + 1) * netif.PAGE_SIZE]
                request.page(0)[:len(chunk)] = chunk
                pack(request.slot, 0, request.refs[0], 0,
                     (_MORE_DATA if i < pages - 1 else 0) | (first if i == 0 else 0),
                     request.id, size if i == 0 else len(chunk))
            requests[0].tag = True    # a packet's first request: its status is counted
            if gso_type:
                extra = requests.pop()
                extra.slot[:8] = netif.encode_gso(gso_size, gso_type)
                requests.insert(1, extra)
            ready += requests
            sent += 1
        if ready:
            queue.send_batch_nowait(ready, self.completions)
        return sent

    async def room(self, frame: TxFrame) -> None:
        """As `NetTxTable.room`."""
        await _room(self._queue, frame)

    def reap(self, answered: Sequence[Request]) -> None:
        """Free answered requests (from `completions`), telling `on_answered` how many
        packets were answered and how many of them with an error status."""
        packets = errors = 0
        queue = self._queue
        for request in answered:
            if request.tag:
                packets += 1
                errors += netif.parse_tx_response(request.response)[1] != netif.Status.OKAY
            queue.release(request)
        if self.on_answered is not None and packets:
            self.on_answered(packets, errors)
