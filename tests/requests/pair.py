"""A request queue and a request server over one in-memory ring: the layer with no transport.

The ring is a plain bytearray both halves attach to; the event channels and grants are the
kit's in-memory ones (`ringkit.testing.memory`), which check what real grants check (granted to
this domain, not revoked, writable).  The test protocol: a 64-byte request (id u32, operation
u8, ref count u8, a value, up to 8 refs) and a 16-byte response (id u32, status i16, value).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.proto.layout import RingLayout
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.requests import (
    Field,
    GrantMapper,
    GrantPool,
    IncomingRequest,
    RefList,
    Request,
    RequestQueue,
    RequestServer,
    SlotCodec,
)
from ringkit.testing.memory import (
    MemoryEventChannel,
    MemoryGrantTable,
    memory_event_pair,
    memory_grants,
)

LAYOUT = RingLayout("test", request_size=64, response_size=16)
REQUEST = struct.Struct("<IBBxxQ8I")
RESPONSE = struct.Struct("<IhxxQ")
READ, WRITE, PLAIN = 0, 1, 2

CODEC = SlotCodec(
    LAYOUT,
    request_id=Field(0, 4),
    response_id=Field(0, 4),
    operation=Field(4, 1),
    refs=RefList(offset=16, stride=4, maximum=8, count=Field(5, 1),
                 operations=frozenset({READ, WRITE}), writable_operations=frozenset({READ})),
    status=Field(4, 2, signed=True),
    error_status=-1,
)
FRONT, BACK = 1, 0


def encode(slot: bytearray, op: int, refs: tuple[int, ...] | list[int], value: int = 0,
           count: int | None = None) -> None:
    padded = [*refs, *[0] * (8 - len(refs))][:8]
    REQUEST.pack_into(slot, 0, 0, op, len(refs) if count is None else count, value, *padded)


def decode(response: bytes | bytearray) -> tuple[int, int, int]:
    return RESPONSE.unpack(response)


Handler = Callable[[IncomingRequest], Awaitable[bytes]]


async def echo_handler(request: IncomingRequest) -> bytes:
    """READ fills the pages with the value's low byte; WRITE sums the first byte of each page;
    PLAIN echoes the value."""
    _, op, _, value, *_ = REQUEST.unpack_from(request.slot)
    if op == READ:
        for page in await request.pages():
            page[:] = bytes([value & 0xFF]) * len(page)
        return RESPONSE.pack(request.id, 0, value)
    if op == WRITE:
        pages = await request.pages()
        return RESPONSE.pack(request.id, 0, sum(page[0] for page in pages))
    return RESPONSE.pack(request.id, 0, value)


@dataclass
class Pair:
    queue: RequestQueue
    server: RequestServer
    front_events: MemoryEventChannel
    back_events: MemoryEventChannel
    front_grants: MemoryGrantTable
    back_grants: MemoryGrantTable
    front_channel: FrontRingChannel
    back_channel: BackRingChannel
    ring: bytearray
    tg: anyio.abc.TaskGroup
    ended: list[BaseException]
    """How `queue.run` / `server.run` ended, when they did (a peer-caused error)."""


@asynccontextmanager
async def pair(handler: Handler = echo_handler, *, pool_pages: int = 16,
               window: int | None = None, concurrency: int = 1, persistent: bool = False,
               serve: bool = True, pages: int = 1,
               queue_class: type[RequestQueue] = RequestQueue,
               check: Callable[[Request], None] | None = None) -> AsyncIterator[Pair]:
    ring = bytearray(4096 * pages)
    front_ring = FrontRing.init(ring, LAYOUT)
    back_ring = BackRing.attach(ring, LAYOUT)
    fe, be = memory_event_pair(FRONT, BACK)
    fg, bg = memory_grants(FRONT, BACK)
    front_ch = FrontRingChannel(front_ring, fe)
    back_ch = BackRingChannel(back_ring, be)
    pool = await GrantPool.share(fg, BACK, pool_pages)
    queue = queue_class([front_ch], CODEC, pool=pool, window=window, check=check)
    mapper = GrantMapper(bg, FRONT, persistent=persistent)
    server = RequestServer(back_ch, CODEC, handler, mapper=mapper, concurrency=concurrency)
    ended: list[BaseException] = []

    async def run(what: Callable[[], Awaitable[None]]) -> None:
        try:
            await what()
        except (PeerGoneError, RemoteProtocolError, anyio.BrokenResourceError) as exc:
            ended.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, queue.run)
        if serve:
            tg.start_soon(run, server.run)
        yield Pair(queue, server, fe, be, fg, bg, front_ch, back_ch, ring, tg, ended)
        tg.cancel_scope.cancel()
    await mapper.aclose()
    await pool.aclose()
    await front_ch.aclose()
    await back_ch.aclose()
    assert fg.live == (0, 0), f"still shared, mapped: {fg.live}"
