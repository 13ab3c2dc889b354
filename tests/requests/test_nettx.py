"""The netfront's C tx table (`ringkit.requests.nettx.NetTxTable`) against its reference, the
Python path (`PythonTxPath`).

Two identical worlds -- a pool of the same pages and refs, a one-page netif tx ring, a request
queue -- one sending through the C table, one through the Python path, run the same random
steps: batches of frames (1 byte to 64 KiB, page-sized and odd sizes, checksum flags, GSO
frames of both kinds with their extra slot) sent whole as room allows, and bursts of answers
from a test backend that plays both worlds the same way: it takes what each pushed and
answers a prefix of it with OKAY, ERROR or DROPPED per packet -- its data responses shuffled,
its extra slots answered with NETIF_RSP_NULL and a random id, by position, as Linux's netback
leaves them -- and sometimes a hostile response in the burst: an id never issued, an id of a
free slot, the same id twice, a status netif does not define, a NETIF_RSP_NULL with no extra
slot in flight.  After every step the two must agree on everything: the slots each pushed,
byte for byte; the pool's pages and free map; the queue's id table and counters; the frames
each took; the packets and errors each reported; whether a burst was refused, and the error's
kind.

Negative controls: the same C built with ``RK_NETTX_SKIP_STATUS_CHECK`` (it accepts a status
netif does not define) and with ``RK_NETTX_NULL_BY_ID`` (it matches a NETIF_RSP_NULL by the id
field netif leaves unset) must make the comparison fail.
"""

from __future__ import annotations

import random
import struct
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from _native_control import control_module
from ringkit.frontends.net.device import check_tx

from ringkit import RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto import netif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantPool, RequestQueue
from ringkit.requests.nettx import (
    NetTxTable,
    PythonTxPath,
    TxBursts,
    TxFrame,
    parse_tx_burst,
    unavailable,
)
from ringkit.testing.memory import memory_event_pair

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")]

PAGE = netif.PAGE_SIZE
BASE_REF = 9000
SLOT = netif.TX_RING.slot_size


class World:
    """A tx queue on a ring and pool of its own, sending through one path, and the backend's
    half of the ring."""

    def __init__(self, pages: int, window: int, max_pages: int, module: ModuleType | None,
                 native: bool) -> None:
        self.memory = bytearray(pages * PAGE)
        self.ring = bytearray(PAGE)
        front = FrontRing.init(self.ring, netif.TX_RING)
        self.back = BackRing.attach(self.ring, netif.TX_RING)
        self.events = memory_event_pair()
        self.pool = GrantPool(memoryview(self.memory), range(BASE_REF, BASE_REF + pages))
        self.queue = RequestQueue([FrontRingChannel(front, self.events[0])], netif.TX_CODEC,
                                  pool=self.pool, window=window, check=check_tx)
        self.reported = [0, 0]
        self.path: NetTxTable | PythonTxPath
        if native:
            self.path = NetTxTable(self.queue, max_pages=max_pages, on_answered=self._answered,
                                   module=module)
        else:
            self.path = PythonTxPath(self.queue, max_pages=max_pages,
                                     on_answered=self._answered)
        self.outstanding: list[bytes] = []   # request slots taken, not yet answered

    def _answered(self, packets: int, errors: int) -> None:
        self.reported[0] += packets
        self.reported[1] += errors

    def send(self, frames: list[TxFrame]) -> Any:
        try:
            return self.path.send_nowait(frames)
        except (ValueError, RemoteProtocolError) as exc:
            return type(exc).__name__

    def pull(self) -> list[bytes]:
        slots = []
        while (slot := self.back.take_request()) is not None:
            slots.append(bytes(slot))
        self.outstanding += slots
        return slots

    def respond(self, burst: list[bytes]) -> str | None:
        """Put `burst` on the ring and have the queue take it; the error it raised."""
        for response in burst:
            self.back.put_response(response)
        self.back.push_responses()
        try:
            self.queue.poll()
        except RemoteProtocolError as exc:
            return type(exc).__name__
        finally:
            if isinstance(self.path, PythonTxPath):
                with suppress(RemoteProtocolError):
                    self.path.reap(self.path.completions.get_nowait())
        return None

    def facts(self) -> dict[str, Any]:
        queue, pool = self.queue, self.pool
        # per id: its state (not which path's it is)
        ids = bytes(code & ~8 for code in queue.id_table)
        return {"ids": ids, "freemap": pool.free_map, "free": pool.free, "held": queue.held,
                "in_flight": queue.in_flight, "sent": queue.stats.sent,
                "answered": queue.stats.answered, "memory": bytes(self.memory),
                "error": type(queue.error).__name__, "reported": list(self.reported)}


def _frame(rng: random.Random, max_pages: int) -> TxFrame:
    size = rng.choice([rng.randint(1, 80), rng.randint(14, 1514), PAGE, PAGE + 1,
                       rng.randint(1, max_pages * PAGE), max_pages * PAGE])
    size = min(size, netif.MAX_TX_SIZE, max_pages * PAGE)
    data = rng.randbytes(size)
    flags = rng.choice([0, 0, 1, 3])
    gso_type = rng.choice([0, 0, 0, 1, 2]) if max_pages > 1 else 0
    gso_size = rng.randint(1, 9000) if gso_type else 0
    return (data, flags, gso_size, gso_type)


def _answers(rng: random.Random, slots: list[bytes], hostile: str | None,
             window: int) -> tuple[list[bytes], int]:
    """Responses to a prefix of `slots` (whole packets, in ring order) and how many slots
    they answer: per packet one status for all its requests, data responses shuffled within
    the burst, extra slots answered by position."""
    taken = 0
    packets: list[list[tuple[int, int] | None]] = []  # per packet: (id, status) or None: extra
    want = rng.randint(0, len(slots))
    while taken < len(slots) and taken < want:
        _, _, flags, rid, _ = netif.TX_REQUEST.unpack(slots[taken])
        status = rng.choice([0, 0, 0, -1, -2])
        packet: list[tuple[int, int] | None] = [(rid, status)]
        taken += 1
        extras = bool(flags & netif.TxFlag.EXTRA_INFO)
        more = bool(flags & netif.TxFlag.MORE_DATA)
        while extras:
            packet.append(None)
            extras = bool(slots[taken][1] & netif.EXTRA_FLAG_MORE)
            taken += 1
        while more:
            _, _, flags, rid, _ = netif.TX_REQUEST.unpack(slots[taken])
            packet.append((rid, status))
            more = bool(flags & netif.TxFlag.MORE_DATA)
            taken += 1
        packets.append(packet)
    # the extra slots' NULLs keep their places; the data responses between are shuffled
    order = [entry for packet in packets for entry in packet]
    data = [entry for entry in order if entry is not None]
    rng.shuffle(data)
    it = iter(data)
    burst = []
    for entry in order:
        if entry is None:
            burst.append(netif.encode_tx_response(rng.randrange(1 << 16),
                                                  netif.Status.NULL))
        else:
            rid, status = next(it)
            burst.append(netif.encode_tx_response(rid, status))
    if hostile is not None and slots:
        if taken == len(slots):    # the ring takes no more responses than requests
            burst.pop()
        at = rng.randint(0, len(burst))
        if hostile == "unissued":
            bad = netif.encode_tx_response(window + rng.randrange(100), 0)
        elif hostile == "status":
            rid = netif.TX_RESPONSE.unpack(burst[0])[0] if burst and \
                netif.TX_RESPONSE.unpack(burst[0])[1] != netif.Status.NULL else 0
            bad = netif.encode_tx_response(rid, rng.choice([2, 7, -3, 0x7FFF]))
            at = 0
            if burst:
                burst.pop(0)
        elif hostile == "twice" and data:
            bad = netif.encode_tx_response(data[0][0], 0)
            at = len(burst)
        elif hostile == "null" and not any(
                netif.TX_REQUEST.unpack(slot)[2] & netif.TxFlag.EXTRA_INFO
                for slot in slots[taken:]):
            # (with an extra slot of a later packet in flight it would answer that one)
            bad = netif.encode_tx_response(0, netif.Status.NULL)
            at = len(burst)
        else:   # an id of a slot free now (or "twice" with nothing answered)
            bad = netif.encode_tx_response(window - 1, 0)
        burst.insert(at, bad)
    return burst, taken


async def fuzz(seed: int, module: ModuleType | None = None, steps: int = 60
               ) -> dict[str, int]:
    """One seed's run; what it exercised (frames sent with GSO and over a page, packets
    answered with errors, bursts refused)."""
    seen = {"gso": 0, "pages": 0, "errors": 0, "refused": 0}
    rng = random.Random(seed)
    window = rng.choice([8, 32, 256])
    pages = rng.choice([18, 40, 256])
    max_pages = rng.choice([1, netif.NR_SLOTS_MIN])
    worlds = [World(pages, window, max_pages, module, native)
              for native in (True, False)]
    for step in range(steps):
        if rng.random() < 0.5:
            frames = [_frame(rng, max_pages) for _ in range(rng.randint(1, 12))]
            if rng.random() < 0.03:
                frames.insert(rng.randrange(len(frames) + 1), (b"", 0, 0, 0))
            results = [world.send(frames) for world in worlds]
            assert results[0] == results[1], (seed, step, "send", results)
            if isinstance(results[0], int):
                seen["gso"] += sum(1 for f in frames[:results[0]] if f[3])
                seen["pages"] += sum(1 for f in frames[:results[0]] if len(f[0]) > PAGE)
            pushed = [world.pull() for world in worlds]
            assert pushed[0] == pushed[1], (seed, step, "slots differ")
        else:
            hostile = None
            if rng.random() < 0.08:
                hostile = rng.choice(["unissued", "free", "twice", "status", "null"])
            state = rng.getstate()
            outcomes = []
            for world in worlds:
                rng.setstate(state)
                burst, taken = _answers(rng, world.outstanding, hostile, window)
                outcomes.append(world.respond(burst))
                del world.outstanding[:taken]
            assert outcomes[0] == outcomes[1], (seed, step, "respond", hostile, outcomes)
            if outcomes[0] is not None:
                facts = [world.facts() for world in worlds]
                assert facts[0] == facts[1], (seed, step, "facts differ after refusal")
                seen["refused"] += 1
                break
        facts = [world.facts() for world in worlds]
        if facts[0] != facts[1]:
            diff = [k for k in facts[0] if facts[0][k] != facts[1][k]]
            raise AssertionError(f"seed {seed} step {step}: the worlds differ in {diff}")
    seen["errors"] += worlds[0].reported[1]
    return seen


async def test_the_c_table_matches_the_python_path() -> None:
    """150 seeds agree; and they reach what matters: GSO frames, frames over a page, packets
    refused by the backend, hostile bursts."""
    seen = {"gso": 0, "pages": 0, "errors": 0, "refused": 0}
    with anyio.fail_after(300):
        for seed in range(150):
            for key, count in (await fuzz(seed)).items():
                seen[key] += count
    assert seen["gso"] > 100 and seen["pages"] > 100 and seen["errors"] > 100 \
        and seen["refused"] > 10, seen


async def test_a_gso_frame_goes_out_with_its_extra_slot_second() -> None:
    world = World(40, 32, netif.NR_SLOTS_MIN, None, True)
    data = bytes(range(256)) * 40    # 10,240 bytes: three pages
    assert world.send([(data, 3, 1448, 1)]) == 1
    slots = world.pull()
    assert len(slots) == 4
    first = netif.TX_REQUEST.unpack(slots[0])
    assert first[2] == netif.TxFlag.CSUM_BLANK | netif.TxFlag.DATA_VALIDATED \
        | netif.TxFlag.EXTRA_INFO | netif.TxFlag.MORE_DATA and first[4] == len(data)
    assert slots[1][:8] == netif.encode_gso(1448, netif.GsoType.TCPV4)
    assert [netif.TX_REQUEST.unpack(s)[4] for s in slots[2:]] == [PAGE, len(data) - 2 * PAGE]
    copied = b"".join(bytes(world.memory[(netif.TX_REQUEST.unpack(s)[0] - BASE_REF) * PAGE:]
                            [:netif.TX_REQUEST.unpack(s)[4] if s is not slots[0] else PAGE])
                      for s in (slots[0], *slots[2:]))
    assert copied == data
    # the extra's NULL answers it by position, whatever its id field says
    burst = [netif.encode_tx_response(netif.TX_REQUEST.unpack(slots[0])[3], 0),
             netif.encode_tx_response(0xFFFF, netif.Status.NULL),
             *[netif.encode_tx_response(netif.TX_REQUEST.unpack(s)[3], 0) for s in slots[2:]]]
    assert world.respond(burst) is None
    assert world.queue.held == 0 and world.pool.free == 40 and world.reported == [1, 0]


async def test_a_frame_the_table_cannot_encode_sends_nothing() -> None:
    world = World(40, 32, 1, None, True)
    assert world.send([(b"x" * 100, 0, 0, 0), (b"y" * (PAGE + 1), 0, 0, 0)]) == "ValueError"
    assert world.pull() == [] and world.queue.held == 0


def _broken_module(tmp: Path, macro: str) -> ModuleType:
    return control_module(tmp, macro, "_rk_nettx_")


async def test_negative_control_no_status_check_is_caught(tmp_path: Path) -> None:
    module = _broken_module(tmp_path, "RK_NETTX_SKIP_STATUS_CHECK")
    with anyio.fail_after(300), pytest.raises(AssertionError, match="respond"):
        for seed in range(150):
            await fuzz(seed, module)


async def test_negative_control_null_matched_by_id_is_caught(tmp_path: Path) -> None:
    module = _broken_module(tmp_path, "RK_NETTX_NULL_BY_ID")
    with anyio.fail_after(300), pytest.raises(AssertionError):
        for seed in range(150):
            await fuzz(seed, module)


# ---------------------------------------------------------------------- the backend's half

def _burst(rng: random.Random) -> bytes:
    """Random tx request slots: mostly well-formed packets (some with GSO or other extras,
    over several pages), with bad sizes, offsets, extra types, over-long chains and garbage
    mixed in; the last packet sometimes cut short."""
    slots: list[bytes] = []
    while len(slots) < rng.randint(1, 256):
        if rng.random() < 0.05:
            slots.append(rng.randbytes(SLOT))
            continue
        nreq = rng.choice([1, 1, 2, 3, 17, 18, 19, 25]) if rng.random() < 0.3 else 1
        sizes = [rng.randint(0, PAGE) for _ in range(nreq)]
        total = sum(sizes) if rng.random() > 0.05 else rng.randint(0, 0xFFFF)
        if rng.random() < 0.05:
            total = rng.randint(0, 13)
        extras: list[bytes] = []
        if rng.random() < 0.3:
            for _ in range(rng.choice([1, 1, 1, 2, 19])):
                kind = rng.choice([1, 1, 1, 2, 3, 4, 0, 5, 200])
                extras.append(bytes([kind, 1]) + struct.pack(
                    "<HBBH", rng.choice([0, 1448, rng.randrange(1 << 16)]),
                    rng.choice([1, 2, 0, 3]), 0, 0) + bytes(4))
            extras[-1] = extras[-1][:1] + bytes([extras[-1][1] & ~1]) + extras[-1][2:]
        first_flags = rng.randrange(4) | (netif.TxFlag.EXTRA_INFO if extras else 0)
        for k in range(nreq):
            more = netif.TxFlag.MORE_DATA if k < nreq - 1 else 0
            offset = rng.choice([0, 0, rng.randrange(PAGE)])
            size = total if k == 0 else sizes[k]
            flags = (first_flags if k == 0 else rng.randrange(4)) | more
            slots.append(netif.TX_REQUEST.pack(rng.randrange(1 << 32), offset, flags,
                                               rng.randrange(1 << 16), size & 0xFFFF))
            if k == 0:
                slots += extras
    if rng.random() < 0.2:
        slots = slots[:rng.randint(1, len(slots))]
    return b"".join(slots[:256])


def _c_parse(module: Any, buf: bytes, count: int, gso: bool, packets_cap: int,
             segments_cap: int) -> tuple[list[int], list[int], bytes, tuple[int, int, bool]]:
    ffi, lib = module.ffi, module.lib
    packets = ffi.new("uint32_t[]", 9 * max(packets_cap, 1))
    segments = ffi.new("uint32_t[]", 3 * max(segments_cap, 1))
    out = bytearray(count * SLOT)
    info = ffi.new("uint64_t[3]")
    n = lib.rk_nettx_parse(buf, len(buf), count, int(gso), packets, packets_cap, segments,
                           3 * segments_cap, ffi.from_buffer(out), len(out), info)
    assert n >= 0
    used = int(info[0])
    return (list(ffi.unpack(packets, 9 * n)), list(ffi.unpack(segments, 3 * int(info[1]))),
            bytes(out[:used * SLOT]), (used, int(info[1]), bool(info[2])))


def _parse_both(seed: int, module: Any) -> tuple[dict[str, int], set[int]]:
    """Parse one random burst with the C and with the reference; they must agree.  Returns
    counts of what the burst held and the fault codes met."""
    rng = random.Random(seed)
    buf = _burst(rng)
    count = len(buf) // SLOT
    gso = rng.random() < 0.7
    packets_cap = rng.choice([1, 5, 64, 256])
    segments_cap = rng.choice([3, 40, 768])
    c = _c_parse(module, buf, count, gso, packets_cap, segments_cap)
    packets, segments, out, info = parse_tx_burst(buf, count, gso=gso, packets_cap=packets_cap,
                                                  segments_cap=segments_cap)
    py = (packets, segments, bytes(out[:info[0] * SLOT]), info)
    assert c == py, f"seed {seed}: the C and Python parsers differ"
    faults = [packets[i + 3] for i in range(0, len(packets), 9)]
    return ({"packets": len(faults), "refused": sum(1 for f in faults if f),
             "incomplete": int(info[2])}, set(faults))


def test_the_c_parser_matches_the_python_reference() -> None:
    """1,000 random bursts parse the same -- packets, segments, answers, what is left -- and
    they reach every fault a netif backend checks for, and packets cut short."""
    from ringkit._native import _compiled
    seen: dict[str, int] = {"packets": 0, "refused": 0, "incomplete": 0}
    faults: set[int] = set()
    for seed in range(1000):
        got, met = _parse_both(seed, _compiled)
        for key in seen:
            seen[key] += got[key]
        faults |= met
    assert seen["packets"] > 3000 and seen["refused"] > 500 and seen["incomplete"] > 50, seen
    assert faults == set(range(10)), sorted(faults)


def test_negative_control_a_parser_that_misreads_the_gso_type_is_caught(tmp_path: Path) -> None:
    module = _broken_module(tmp_path, "RK_NETTX_ANY_GSO_TYPE")
    with pytest.raises(AssertionError, match="differ"):
        for seed in range(1000):
            _parse_both(seed, module)


class TxRing:
    """A netif tx ring: the frontend's half to publish on, `TxBursts` on the backend's."""

    def __init__(self, *, native: bool = True) -> None:
        page = bytearray(PAGE)
        self.front = FrontRing.init(page, netif.TX_RING)
        events = memory_event_pair()
        self.bursts = TxBursts(BackRingChannel(BackRing.attach(page, netif.TX_RING),
                                               events[1]), gso=True, native=native)
        self._events = events

    def publish(self, *slots: bytes) -> None:
        for slot in slots:
            self.front.put_request(slot)
        self.front.push_requests()


def _request(rid: int, size: int, flags: int = 0, offset: int = 0) -> bytes:
    return netif.TX_REQUEST.pack(5000 + rid, offset, flags, rid, size)


@pytest.mark.parametrize("native", [True, False])
async def test_a_burst_over_the_limit_leaves_the_rest_for_the_next_take(native: bool) -> None:
    ring = TxRing(native=native)
    assert ring.bursts.native == native
    more = int(netif.TxFlag.MORE_DATA)
    ring.publish(_request(0, 60), _request(1, 5000, more), _request(2, 904),
                 _request(3, 70), _request(4, 20, 0, PAGE - 4))
    first = await ring.bursts.take(limit=2)
    assert [(p.size, p.fault, len(p.segments)) for p in first.packets] == \
        [(60, None, 1), (5000, None, 2)]
    ring.bursts.respond(first)
    second = await ring.bursts.take(limit=2)
    assert second.packets[0].size == 70 and second.packets[0].fault is None
    assert second.packets[1].fault == "a fragment past the end of its page"    # 4092 + 20
    second.refuse(0)     # its copy failed, say
    ring.bursts.respond(second)
    answers = []
    while (response := ring.front.take_response()) is not None:
        answers.append(netif.TX_RESPONSE.unpack_from(response))
    assert answers == [(0, 0), (1, 0), (2, 0), (3, -1), (4, -1)]


@pytest.mark.parametrize("native", [True, False])
async def test_a_chain_longer_than_the_ring_ends_the_connection(native: bool) -> None:
    """A hostile frontend fills the ring with requests that all say more_data: the chain can
    never end, which is a ring-level violation (a typed error, not a hang)."""
    ring = TxRing(native=native)
    more = int(netif.TxFlag.MORE_DATA)
    ring.publish(*[_request(i, 100, more) for i in range(netif.TX_RING_SIZE)])
    with anyio.fail_after(10), pytest.raises(RemoteProtocolError, match="runs past"):
        await ring.bursts.take()


@pytest.mark.parametrize("native", [True, False])
async def test_a_chain_cut_short_ends_the_connection(native: bool) -> None:
    ring = TxRing(native=native)
    ring.publish(_request(0, 200, int(netif.TxFlag.MORE_DATA)))
    with anyio.fail_after(10), pytest.raises(RemoteProtocolError, match="runs past"):
        await ring.bursts.take()
