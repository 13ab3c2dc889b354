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

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._async.channel import BackRingChannel
from .._errors import ConfigError, LocalProtocolError, PeerGoneError, RemoteProtocolError
from .._native import compiled_part
from ..abc import GrantCopySegment
from ..proto import netif
from ..proto.ring import FrontRing
from .pool import fresh_error

if TYPE_CHECKING:
    from .front import Request, RequestQueue
    from .pool import GrantPool

__all__ = ("PACKET_FIELDS", "TX_FAULTS", "NetTxTable", "PythonTxPath", "TxBurst", "TxBursts",
           "TxFrame", "TxPacket", "parse_tx_burst", "unavailable")

_ffi, _lib, _MISSING = compiled_part("rk_nettx_submit", "the netfront tx table")

_E_STATUS = 1
_MORE_DATA = int(netif.TxFlag.MORE_DATA)
_EXTRA_INFO = int(netif.TxFlag.EXTRA_INFO)
_CHECKSUM = int(netif.TxFlag.CSUM_BLANK | netif.TxFlag.DATA_VALIDATED)
_CSUM_BLANK = int(netif.TxFlag.CSUM_BLANK)


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
        pool = _check_queue(queue, max_pages)
        self._ffi, self._lib = ffi, lib
        self._queue = queue
        self._pool = pool
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
            cause = exc.__cause__
            raise fresh_error(cause if cause is not None else exc) from exc
        except anyio.ClosedResourceError as exc:
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


def _check_queue(queue: RequestQueue, max_pages: int) -> GrantPool:
    """The queue's pool; or refuse a queue a tx path cannot serve: not one netif tx ring with
    a grant pool, or frames of a number of pages netif does not allow."""
    pool = queue.pool
    if len(queue._channels) != 1 or pool is None:
        raise ConfigError("a tx path serves a queue of one ring with a grant pool")
    if queue.codec is not netif.TX_CODEC:
        raise ConfigError("a tx path speaks netif's tx ring")
    if not 1 <= max_pages <= netif.NR_SLOTS_MIN:
        raise ConfigError(f"frames of up to {max_pages} pages (netif allows "
                          f"1..{netif.NR_SLOTS_MIN})")
    return pool


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
        _check_queue(queue, max_pages)
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


# ---------------------------------------------------------------------- the backend's half

PACKET_FIELDS = 9
"""uint32s per packet in `parse_tx_burst`'s output (see its docstring)."""

TX_FAULTS: dict[int, str] = {
    1: f"a chain of more than {netif.NR_SLOTS_MIN} requests",
    2: f"more than {netif.NR_SLOTS_MIN} extra-info slots",
    3: "an extra-info slot of an unknown type",
    4: "a GSO extra, but GSO was not offered",
    5: "two GSO extras on one packet",
    6: "a GSO extra of an unknown type",
    7: "a GSO extra with segment size 0",
    8: "a packet shorter than an Ethernet header, or whose later fragments hold more",
    9: "a fragment past the end of its page",
}
"""Why `parse_tx_burst` refuses a packet, by fault code (the C's ``RK_NETTX_F_*``)."""

_ERROR_STATUS = int(netif.Status.ERROR) & 0xFFFF
_LE16 = struct.Struct("<H")


def parse_tx_burst(buf: bytes | bytearray | memoryview, count: int, *, gso: bool,
                   packets_cap: int, segments_cap: int
                   ) -> tuple[list[int], list[int], bytearray, tuple[int, int, bool]]:
    """The Python reference of ``rk_nettx_parse`` (ringkit/_native/_build.py): cut `count` tx
    request slots of `buf` into packets as netif chains them, check each as a netback must,
    and encode every slot's answer.  Returns the packets (`PACKET_FIELDS` ints each: first
    slot, slots, requests, fault code or 0 (`TX_FAULTS`), first segment, segments, bytes, the
    first request's flags, GSO size | GSO type << 16), the segments (ref, offset, length
    each), the answers (12 bytes a slot, `count` slots: those of the packets returned are
    written), and (slots consumed, segments, whether a packet did not end inside `count`).
    At most `packets_cap` packets and `segments_cap` segments (whole packets only).
    """
    slot = netif.TX_RING.slot_size
    le16 = _LE16.unpack_from
    packets: list[int] = []
    segments: list[int] = []
    out = bytearray(count * slot)
    at = 0
    incomplete = False
    while at < count and len(packets) < packets_cap * PACKET_FIELDS:
        base = at * slot
        flags = le16(buf, base + 6)[0]
        pos, extras = 1, 0
        if flags & _EXTRA_INFO:
            more = True
            while more:
                if at + pos >= count:
                    incomplete = True
                    break
                more = bool(buf[(at + pos) * slot + 1] & netif.EXTRA_FLAG_MORE)
                pos += 1
                extras += 1
        if not incomplete and flags & _MORE_DATA:
            more = True
            while more:
                if at + pos >= count:
                    incomplete = True
                    break
                more = bool(le16(buf, (at + pos) * slot + 6)[0] & _MORE_DATA)
                pos += 1
        if incomplete:
            break
        slots = pos
        nreq = slots - extras
        if nreq <= netif.NR_SLOTS_MIN and len(segments) // 3 + nreq > segments_cap:
            break
        fault = 0
        gso_info = 0
        if nreq > netif.NR_SLOTS_MIN:
            fault = 1
        elif extras > netif.NR_SLOTS_MIN:
            fault = 2
        for j in range(1, extras + 1):
            if fault:
                break
            e = (at + j) * slot
            kind = buf[e]
            if not 0 < kind < netif.EXTRA_TYPE_MAX:
                fault = 3
            elif kind == netif.ExtraType.GSO:
                if not gso:
                    fault = 4
                elif gso_info:
                    fault = 5
                elif buf[e + 4] not in (netif.GsoType.TCPV4, netif.GsoType.TCPV6):
                    fault = 6
                elif le16(buf, e + 2)[0] == 0:
                    fault = 7
                else:
                    gso_info = le16(buf, e + 2)[0] | buf[e + 4] << 16
        total = le16(buf, base + 10)[0]
        rest = 0
        if not fault:
            rest = sum(le16(buf, (at + j) * slot + 10)[0] for j in range(1 + extras, slots))
            if total < netif.ETH_HLEN or rest > total:
                fault = 8
        first_seg = len(segments) // 3
        mine: list[int] = []
        for k in range(nreq if not fault else 0):
            r = (at if k == 0 else at + extras + k) * slot
            gref, offset, _, _, size = netif.TX_REQUEST.unpack_from(buf, r)
            if k == 0:
                size = total - rest
            if offset + size > netif.PAGE_SIZE:
                fault = 9
                mine = []
                break
            if size:
                mine += (gref, offset, size)
        segments += mine
        for j in range(slots):
            r = (at + j) * slot
            if 1 <= j <= extras:
                netif.TX_RESPONSE.pack_into(out, r, 0, netif.Status.NULL)
            else:
                out[r:r + 4] = bytes(buf[r + 8:r + 10]) + \
                    (_ERROR_STATUS if fault else 0).to_bytes(2, "little")
        packets += (at, slots, nreq, fault, first_seg if not fault else len(segments) // 3,
                    len(mine) // 3, 0 if fault else total, flags, 0 if fault else gso_info)
        at += slots
    return packets, segments, out, (at, len(segments) // 3, incomplete)


@dataclass(slots=True)
class TxPacket:
    """One packet of a `TxBurst`: what to copy out of the frontend's grants and how the link
    takes it, or why it is refused."""

    segments: list[GrantCopySegment]
    """The packet's bytes in the frontend's pages, in order (none when refused)."""
    size: int
    """The packet's length."""
    csum_blank: bool
    """NETTXF_csum_blank: its checksum is left to the backend."""
    gso: netif.GsoInfo | None
    """Its GSO extra's segmentation, if it has one."""
    fault: str | None
    """Why it is refused (its requests are answered NETIF_RSP_ERROR), or None."""
    first: int
    """Its first slot in the burst."""
    slots: int
    """Ring slots it took (requests and extra-info slots)."""
    requests: int
    """Of those, requests (the rest are extra-info slots, right after the first)."""


class TxBurst:
    """The packets published together, checked, with their answers encoded (`TxBursts.take`;
    answer them with `TxBursts.respond`)."""

    __slots__ = ("_responses", "packets")

    def __init__(self, packets: list[TxPacket], responses: bytearray) -> None:
        self.packets = packets
        self._responses = responses

    def refuse(self, index: int) -> None:
        """Answer packet `index` NETIF_RSP_ERROR (its copy or its frame failed)."""
        packet = self.packets[index]
        extras = packet.slots - packet.requests
        slot = netif.TX_RING.slot_size
        for j in range(packet.slots):
            if 1 <= j <= extras:
                continue
            at = (packet.first + j) * slot + 2
            self._responses[at:at + 2] = _ERROR_STATUS.to_bytes(2, "little")


class TxBursts:
    """A netback's tx ring taken a burst at a time, its chains cut, checked and answered in C
    (``rk_nettx_parse``) -- or, with `native` False or without the compiled helper, by
    `parse_tx_burst`, the reference.  `gso`: whether GSO extras are allowed (GSO was offered).
    One task takes at a time; answers go back in the order the bursts were taken.
    """

    def __init__(self, channel: BackRingChannel, *, gso: bool, native: bool = True,
                 module: Any = None) -> None:
        if channel.engine.layout.slot_size != netif.TX_RING.slot_size:
            raise ConfigError("TxBursts serve netif's tx ring")
        self.channel = channel
        self.gso = gso
        if module is not None:
            self._ffi, self._lib = module.ffi, module.lib
        elif native and _lib is not None:
            self._ffi, self._lib = _ffi, _lib
        else:
            self._ffi = self._lib = None
        self._entries = entries = channel.engine.entries
        self._slot = netif.TX_RING.slot_size
        self._in = bytearray(self._slot * entries)
        self._have = 0
        if self._ffi is not None:
            self._packets = self._ffi.new("uint32_t[]", PACKET_FIELDS * entries)
            self._segments = self._ffi.new("uint32_t[]", 3 * entries)
            self._info = self._ffi.new("uint64_t[3]")

    @property
    def native(self) -> bool:
        """Whether bursts are parsed in C."""
        return self._lib is not None

    async def take(self, limit: int = 64) -> TxBurst:
        """The next packets published (at least one, at most `limit`), waiting for the first.

        Raises:
            RemoteProtocolError: a packet runs past the requests the frontend published (a
                whole packet is published with one push).
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        slot, view = self._slot, memoryview(self._in)
        while True:
            if self._have == 0:
                self._have = await self.channel.receive_into(self._in, self._entries)
            packets, segments, responses, (used, _, incomplete) = self._parse(limit)
            if packets:
                break
            if not incomplete:   # cannot happen: a burst holds at least one slot
                raise LocalProtocolError("a tx burst with no packet")
            more = 0
            if self._have < self._entries:
                more = self.channel.receive_into_nowait(view[self._have * slot:],
                                                        self._entries - self._have)
            if not more:
                rid = _LE16.unpack_from(self._in, 8)[0]
                raise RemoteProtocolError(
                    f"{netif.TX_RING.name}: a chain of requests from id {rid} runs past the "
                    f"{self._have} request(s) published")
            self._have += more
        rest = self._have - used
        if rest:
            self._in[:rest * slot] = self._in[used * slot:self._have * slot]
        self._have = rest
        return TxBurst(self._packets_of(packets, segments), responses[:used * slot])

    def respond(self, burst: TxBurst) -> None:
        """Push the answers of `burst` (with one push).

        Raises:
            anyio.BrokenResourceError: the frontend broke the ring or went away.
        """
        count = len(burst._responses) // self._slot
        if count:
            sent = self.channel.send_from_nowait(burst._responses, count)
            if sent != count:  # answers never outnumber the requests taken: a bug of ours
                raise LocalProtocolError(f"the ring took {sent} of {count} answers")

    def _parse(self, limit: int) -> tuple[list[int], list[int], bytearray,
                                          tuple[int, int, bool]]:
        count = self._have
        limit = min(limit, self._entries)
        if self._lib is None:
            return parse_tx_burst(self._in, count, gso=self.gso, packets_cap=limit,
                                  segments_cap=self._entries)
        ffi, info = self._ffi, self._info
        responses = bytearray(count * self._slot)
        src = ffi.from_buffer("char[]", self._in)
        out = ffi.from_buffer("char[]", responses, require_writable=True)
        try:
            n = self._lib.rk_nettx_parse(src, len(self._in), count, int(self.gso),
                                         self._packets, limit, self._segments, 3 * self._entries,
                                         out, len(responses), info)
        finally:
            ffi.release(src)
            ffi.release(out)
        if n < 0:
            raise LocalProtocolError(f"rk_nettx_parse refused {count} slots")
        packets = list(ffi.unpack(self._packets, PACKET_FIELDS * n))
        segments = list(ffi.unpack(self._segments, 3 * int(info[1])))
        return packets, segments, responses, (int(info[0]), int(info[1]), bool(info[2]))

    @staticmethod
    def _packets_of(packets: list[int], segments: list[int]) -> list[TxPacket]:
        out = []
        for i in range(0, len(packets), PACKET_FIELDS):
            first, slots, nreq, fault, seg, nseg, size, flags, gso = packets[i:i + PACKET_FIELDS]
            out.append(TxPacket(
                [GrantCopySegment(segments[3 * k], segments[3 * k + 1], segments[3 * k + 2])
                 for k in range(seg, seg + nseg)],
                size, bool(flags & _CSUM_BLANK),
                netif.GsoInfo(gso & 0xFFFF, gso >> 16) if gso else None,
                TX_FAULTS[fault] if fault else None, first, slots, nreq))
        return out
