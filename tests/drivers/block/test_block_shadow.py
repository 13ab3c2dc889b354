"""The block frontend's C shadow table (`ringkit.requests.shadow`) against its reference, the
Python path of `BlockClient.submit`.

Two identical worlds -- a disk in memory with the same random bytes, a pool of the same pages
and refs, a one-page blkif ring, a `BlockClient` -- one with the shadow table, one without, run
the same random batches (reads and writes of 1 sector to 125 pages -- direct requests, and
INDIRECT ones where the disk offers them -- at random depths, sometimes
next to a FLUSH on the Python path, sometimes cancelled halfway) against a test backend that
plays both worlds the same way: it takes what each client pushed, answers a random subset in
random order, with BLKIF_RSP_ERROR / EOPNOTSUPP now and then, and sometimes a hostile response
in the burst -- an id never issued, an id of a free slot, the same id twice, the wrong
operation, a status outside BLKIF_RSP_*.  After every step (each world left to run until all
its tasks wait) the two must agree on everything: the request slots each client pushed, byte
for byte; the pool's pages and free map; the queue's id table, its counters; the disk; the
callers' buffers; whether a burst was refused, and the error's kind; each batch's results.

Negative controls: the same C built with ``RK_SHADOW_SKIP_OPERATION_CHECK`` (it then accepts
an answer with the wrong operation), and with ``RK_SHADOW_WHOLE_LIST_PAGES`` (its INDIRECT
segment lists name a short final page whole), must make the comparison fail.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from _native_control import control_module
from ringkit.frontends.block import BlockIOError, ReadOp, WriteOp
from ringkit.frontends.block.client import BlockClient, DiskInfo

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import FrontRingChannel
from ringkit.proto import blkif
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import GrantPool
from ringkit.requests.shadow import unavailable
from ringkit.testing.memory import memory_event_pair

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "available")]

PAGE = blkif.PAGE_SIZE
SECTOR = blkif.SECTOR_SIZE
DISK = 2 << 20
BASE_REF = 7000
UNISSUED = 0xBAD


class World:
    """A client on a ring and pool of its own, and the backend's half of the ring."""

    def __init__(self, disk: bytes, pages: int, window: int, indirect: int,
                 module: ModuleType | None, shadow: bool) -> None:
        self.disk = bytearray(disk)
        self.memory = bytearray(pages * PAGE)
        self.ring = bytearray(PAGE)
        front = FrontRing.init(self.ring, blkif.RING_LAYOUT)
        self.back = BackRing.attach(self.ring, blkif.RING_LAYOUT)
        self.events = memory_event_pair()
        pool = GrantPool(memoryview(self.memory), range(BASE_REF, BASE_REF + pages))
        info = DiskInfo(sectors=len(disk) // SECTOR, max_indirect_segments=indirect,
                        flush=True, persistent=True)
        self.client = BlockClient([FrontRingChannel(front, self.events[0])], pool, info,
                                  window=window, fast_path=shadow, shadow_module=module)
        assert (self.client.shadow is not None) == shadow
        self.indirect = indirect
        self.outcomes: dict[str, Any] = {}

    def pull(self) -> list[bytes]:
        slots = []
        while (slot := self.back.take_request()) is not None:
            slots.append(bytes(slot))
        return slots

    def page(self, gref: int) -> memoryview:
        return memoryview(self.memory)[(gref - BASE_REF) * PAGE:(gref - BASE_REF + 1) * PAGE]

    def serve(self, slot: bytes, status: int) -> bytes:
        """Do what request `slot` asks (unless `status` fails it); its response."""
        request = blkif.parse_request(slot, max_indirect_segments=self.indirect)
        operation = request.operation
        if isinstance(request, blkif.IndirectRequest):
            lists = b"".join(bytes(self.page(g)) for g in request.indirect_grefs)
            segments = blkif.parse_indirect_segment_array(lists, request)
            operation = request.indirect_op
        elif isinstance(request, blkif.ReadWriteRequest):
            segments = request.segments
        else:
            segments = blkif.SegmentArray([], b"", b"")
        if status == blkif.Status.OKAY:
            at = request.sector_number * SECTOR
            for gref, first, last in zip(segments.grefs, segments.first, segments.last,
                                         strict=True):
                n = (last - first + 1) * SECTOR
                window = self.page(gref)[first * SECTOR:first * SECTOR + n]
                if operation == blkif.Op.READ:
                    window[:] = self.disk[at:at + n]
                elif operation == blkif.Op.WRITE:
                    self.disk[at:at + n] = window
                at += n
        return blkif.encode_response(request.id, operation, status)

    def respond(self, burst: list[bytes]) -> str | None:
        """Put `burst` on the ring and have the client take it; the error it raised."""
        for response in burst:
            self.back.put_response(response)
        self.back.push_responses()
        try:
            self.client.queue.poll()
        except RemoteProtocolError as exc:
            return type(exc).__name__
        return None

    def facts(self) -> dict[str, Any]:
        queue, pool = self.client.queue, self.client.pool
        # per id: its state and whether it is an orphan (not which path's it is)
        ids = bytes(code & ~8 for code in queue.id_table)
        return {"ids": ids, "freemap": pool.free_map,
                "free": pool.free, "held": queue.held, "in_flight": queue.in_flight,
                "sent": queue.stats.sent, "answered": queue.stats.answered,
                "orphans": queue.stats.orphans, "memory": bytes(self.memory),
                "disk": bytes(self.disk), "error": type(queue.error).__name__}


def _summary(result: object) -> object:
    if isinstance(result, list):
        return [None if r is None else (type(r).__name__, str(r),
                                        r.sector if isinstance(r, BlockIOError) else None)
                for r in result]
    return result


async def _run(world: World, name: str, ops: list[ReadOp | WriteOp], depth: int | None,
               scope: anyio.CancelScope) -> None:
    with scope:
        try:
            world.outcomes[name] = _summary(await world.client.submit(ops, depth=depth))
        except RemoteProtocolError as exc:
            world.outcomes[name] = type(exc).__name__
        return
    world.outcomes[name] = "cancelled"


async def _flush(world: World) -> None:
    try:
        await world.client.flush()
        world.outcomes["flush"] = "ok"
    except (RemoteProtocolError, BlockIOError) as exc:
        world.outcomes["flush"] = type(exc).__name__


def _hostile(rng: random.Random, burst: list[bytes], window: int, states: bytes) -> None:
    """Replace one response of `burst` with a hostile one."""
    k = rng.randrange(len(burst))
    response = blkif.parse_response(burst[k])
    rid, operation, status = response.id, response.operation, response.status
    kind = rng.randrange(5)
    if kind == 0:
        burst[k] = blkif.encode_response(rng.choice([UNISSUED, window, 2**64 - 1]),
                                         operation, 0)
    elif kind == 1:
        free = [i for i, code in enumerate(states) if code == 0]
        burst[k] = blkif.encode_response(free[0] if free else UNISSUED, operation, 0)
    elif kind == 2 and len(burst) > 1:
        burst[k] = burst[(k + 1) % len(burst)]             # one id answered twice
    elif kind == 3:
        burst[k] = blkif.encode_response(rid, rng.choice([o for o in (0, 1, 3, 6, 9)
                                                          if o != operation]), status)
    else:
        burst[k] = blkif.encode_response(rid, operation, rng.choice([1, 5, -3, 0x7FFF]))


async def fuzz(seed: int, module: ModuleType | None = None, rounds: int = 12
               ) -> tuple[int, int]:
    """Run `rounds` random batches in both worlds, asserting they agree; return how many
    requests the shadow world pushed, and how many INDIRECT ones its C table wrote (so a test
    can tell the C path really ran)."""
    rng = random.Random(seed)
    shadow_requests = indirect_total = 0
    for _ in range(rounds):
        indirect = rng.choice([0, 0, 32, 600])
        pages = rng.choice([11, 24, 64, 160])
        window = rng.choice([4, 8, 32])
        disk = rng.randbytes(DISK)
        worlds = [World(disk, pages, window, indirect, module, shadow)
                  for shadow in (False, True)]
        ops: list[list[ReadOp | WriteOp]] = [[], []]
        for _op in range(rng.randrange(1, 24)):
            sectors = rng.choice([1, 7, 8, 8, 8, 16, 24, 88, 96, 160, 257, 1000])
            offset = rng.randrange(0, DISK // SECTOR - sectors) * SECTOR
            if rng.random() < 0.4:
                data = rng.randbytes(sectors * SECTOR)
                for k in range(2):
                    ops[k].append(WriteOp(offset, data))
            else:
                fill = rng.randbytes(sectors * SECTOR)
                for k in range(2):
                    ops[k].append(ReadOp(offset, bytearray(fill)))
        depth = rng.choice([None, None, 1, 3, 8])
        flush = rng.random() < 0.3
        cancel_at = rng.randrange(8) if rng.random() < 0.3 else -1
        scopes = [anyio.CancelScope(), anyio.CancelScope()]
        try:
            await _round(rng, worlds, ops, depth, flush, cancel_at, scopes, window)
        except BaseExceptionGroup as group:   # a divergence, raised inside the task group
            leaf: BaseException = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
        assert worlds[0].outcomes == worlds[1].outcomes
        shadow_requests += worlds[1].client.queue.stats.sent
        indirect_total += worlds[1].outcomes.get("c_indirect", 0)
    return shadow_requests, indirect_total


async def _round(rng: random.Random, worlds: list[World], ops: list[list[ReadOp | WriteOp]],
                 depth: int | None, flush: bool, cancel_at: int,
                 scopes: list[anyio.CancelScope], window: int) -> None:
    """One batch in both worlds, answered step by step (see the module docstring)."""
    async with anyio.create_task_group() as tg:
        for k, world in enumerate(worlds):
            if flush:
                tg.start_soon(_flush, world)
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(_run, world, "batch", ops[k], depth, scopes[k])
        await anyio.wait_all_tasks_blocked()
        held: list[list[bytes]] = [[], []]
        for step in range(200):
            pulled = [world.pull() for world in worlds]
            assert pulled[0] == pulled[1], f"step {step}: the pushed requests differ"
            states = worlds[1].client.queue.id_table
            for slot in pulled[1]:   # INDIRECT requests the C table wrote (its ids are marked)
                rid = int.from_bytes(slot[8:16], "little")
                if slot[0] == blkif.Op.INDIRECT and rid < len(states) and states[rid] & 8:
                    worlds[1].outcomes["c_indirect"] = worlds[1].outcomes.get("c_indirect", 0) + 1
                    worlds[0].outcomes["c_indirect"] = worlds[1].outcomes["c_indirect"]
            for k in range(2):
                held[k] += pulled[k]
            if not held[0]:
                break
            if step == cancel_at:
                for scope in scopes:
                    scope.cancel()
                await anyio.wait_all_tasks_blocked()
            order = list(range(len(held[0])))
            rng.shuffle(order)
            order = order[:rng.randrange(1, len(order) + 1)]
            flushes = [i for i in order if held[0][i][0] == blkif.Op.FLUSH_DISKCACHE]
            if flushes:
                # answered alone: with batch answers in the same burst, which caller runs
                # first -- and so which ids the next requests get -- is the scheduler's
                order = flushes
            statuses = [rng.choice([0] * 12 + [-1, -2]) for _ in order]
            bursts = [[worlds[k].serve(held[k][i], s) for i, s in zip(order, statuses,
                                                                     strict=True)]
                      for k in range(2)]
            states = worlds[0].client.queue.id_table
            if rng.random() < 0.12:
                state = rng.getstate()
                for k in range(2):
                    rng.setstate(state)
                    _hostile(rng, bursts[k], window, states)
            for k in range(2):
                held[k] = [slot for i, slot in enumerate(held[k]) if i not in order]
            refused = [world.respond(burst) for world, burst in zip(worlds, bursts,
                                                                    strict=True)]
            await anyio.wait_all_tasks_blocked()
            assert refused[0] == refused[1], f"step {step}: {refused}"
            facts = [world.facts() for world in worlds]
            for key in facts[0]:
                assert facts[0][key] == facts[1][key], \
                    f"step {step}: {key} differs ({refused}, {worlds[0].outcomes}, " \
                    f"{worlds[1].outcomes}, {facts[0]['error']}, {facts[1]['error']}," \
                    f"{facts[0]['held'], facts[1]['held'], facts[0]['in_flight']}" \
                    f"{facts[1]['in_flight']})"
            for a, b in zip(ops[0], ops[1], strict=True):
                if isinstance(a, ReadOp):
                    assert a.buffer == b.buffer, f"step {step}: a read buffer differs"
            if refused[0]:
                break
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(6))
async def test_shadow_table_agrees_with_the_python_path(seed: int) -> None:
    with anyio.fail_after(120):
        sent, indirect = await fuzz(seed)
    assert sent > 0
    assert indirect > 0, "the C table wrote no INDIRECT request"


async def test_a_batch_runs_in_c() -> None:
    """The shadow world's batch is the C table's: its ids are marked ID_SHADOW in flight."""
    world = World(bytes(DISK), 24, 32, 0, None, True)
    buffers = [bytearray(PAGE) for _ in range(8)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(world.client.submit, [ReadOp(i * PAGE, b) for i, b in enumerate(buffers)])
        await anyio.wait_all_tasks_blocked()
        assert world.client.queue.id_table[:8] == b"\x0a" * 8   # in flight, the C table's
        assert world.client.shadow is not None and world.client.shadow.in_flight == 8
        slots = world.pull()
        world.respond([world.serve(slot, 0) for slot in slots])
    assert world.client.queue.held == 0 and world.client.pool.free == 24


async def test_a_cancelled_batch_keeps_its_ids_and_pages_until_answered() -> None:
    """Orphans: the backend may still write into a cancelled read's pages, so its id and
    pages come back only with its answer, and the answer goes nowhere near the caller's
    buffer."""
    world = World(bytes(range(256)) * (DISK // 256), 24, 32, 0, None, True)
    buffers = [bytearray(b"\x5a" * PAGE) for _ in range(4)]
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(world.client.submit,
                          [ReadOp(i * PAGE, b) for i, b in enumerate(buffers)])
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert world.client.queue.id_table[:4] == b"\x0e" * 4   # in flight, orphans, the C's
    assert world.client.pool.free == 20
    world.respond([world.serve(slot, 0) for slot in world.pull()])
    assert world.client.queue.held == 0 and world.client.pool.free == 24
    assert world.client.queue.stats.orphans == 4
    assert all(b == b"\x5a" * PAGE for b in buffers)


async def test_the_peer_gone_fails_the_batch_and_frees_everything() -> None:
    world = World(bytes(DISK), 24, 32, 0, None, True)
    buffers = [bytearray(PAGE) for _ in range(6)]
    failed: list[BaseException] = []

    async def batch() -> None:
        try:
            await world.client.submit([ReadOp(i * PAGE, b) for i, b in enumerate(buffers)])
        except PeerGoneError as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        await anyio.wait_all_tasks_blocked()
        assert world.client.in_flight == 6
        world.client.fail(PeerGoneError("the backend went away"))
    assert len(failed) == 1
    assert world.client.queue.held == 0 and world.client.pool.free == 24


def _broken_module(tmp: Path, macro: str = "RK_SHADOW_SKIP_OPERATION_CHECK") -> ModuleType:
    """The shipped C built with `macro` defined (a check left out, or a field written wrong)."""
    return control_module(tmp, macro, "_rk_shadow_")


async def test_negative_control_no_operation_check_is_caught(tmp_path: Path) -> None:
    module = _broken_module(tmp_path)
    with anyio.fail_after(300):
        with pytest.raises(AssertionError):
            for seed in range(40):
                await fuzz(seed, module)


async def test_negative_control_indirect_lists_of_whole_pages_are_caught(tmp_path: Path) -> None:
    """A C that writes every INDIRECT segment as a whole page (a short final page too)."""
    module = _broken_module(tmp_path, "RK_SHADOW_WHOLE_LIST_PAGES")
    with anyio.fail_after(300):
        with pytest.raises(AssertionError, match="differ"):
            for seed in range(40):
                await fuzz(seed, module)
