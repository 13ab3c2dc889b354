"""A key-value device: a request/response driver whose values travel in granted pages.

The frontend asks the backend to ``put``, ``get`` or ``delete`` a value of up to 16 KiB under a
key of up to 32 bytes.  Keys ride in the request slot; values ride in pages the frontend grants
for the request, named by their grant refs in the slot -- as blkif's segments do.  Both ends are
built on `ringkit.requests`: the frontend's `RequestQueue` owns the ids, the in-flight window,
the page pool, cancellation and disconnects; the backend's `RequestServer` maps the pages and
answers.  What is left here is the slot format and what a request means.  Run it:

    python examples/kv.py            # a simulated Xen, a guest domain, both ends, then teardown

docs/request-queues.md walks through this file; tests/examples/test_kv.py tests it (on asyncio
and trio, with the conformance suite and a hostile frontend).
"""

from __future__ import annotations

import enum
import struct

import anyio

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import BackRingChannel
from ringkit.device import Backend, DeviceAddress, Frontend, Nodes, Queue, RingLayout, create_device
from ringkit.requests import (
    Field,
    GrantMapper,
    GrantPool,
    IncomingRequest,
    RefList,
    Request,
    RequestError,
    RequestQueue,
    RequestServer,
    SlotCodec,
)

PAGE = 4096
MAX_KEY = 32
MAX_PAGES = 4
MAX_VALUE = MAX_PAGES * PAGE  # 16 KiB


class Op(enum.IntEnum):
    GET = 0
    PUT = 1
    DELETE = 2


class Status(enum.IntEnum):
    OKAY = 0
    ERROR = -1
    NOT_FOUND = -2


# request (64 bytes): id u64 | op u8 | nr_refs u8 | key_len u8 | pad | value_len u32 |
#                     refs u32[4] | key 32 bytes
# response (16 bytes): id u64 | status i16 | pad | value_len u32
REQUEST = struct.Struct("<QBBBxI4I32s")
RESPONSE = struct.Struct("<QhxxI")
KV_RING = RingLayout("kv", request_size=REQUEST.size, response_size=RESPONSE.size)

CODEC = SlotCodec(
    KV_RING,
    request_id=Field(0, 8),
    response_id=Field(0, 8),
    operation=Field(8, 1),
    refs=RefList(offset=16, stride=4, maximum=MAX_PAGES, count=Field(9, 1),
                 writable_operations=frozenset({Op.GET})),  # the backend writes a GET's value
    status=Field(8, 2, signed=True),
    error_status=Status.ERROR,
)
"""Where the layer finds the id and the refs, and how it answers a request it must refuse."""


class KVError(Exception):
    """The backend refused a request (BLKIF_RSP_ERROR's counterpart)."""


class KVBackend(Backend):
    """Keeps the values in memory, across connections."""

    device_type = "kv"
    ring_layout = KV_RING
    request_codec = CODEC

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.values: dict[bytes, bytes] = {}

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        mapper = GrantMapper(self.domain.grants, self.peer_id, persistent=False)
        try:
            await RequestServer(queue.channel, CODEC, self.answer, mapper=mapper).run()
        finally:
            with anyio.CancelScope(shield=True):
                await mapper.aclose()

    async def answer(self, request: IncomingRequest) -> bytes:
        _, op, _, key_len, value_len, *_, raw_key = REQUEST.unpack(request.slot)
        if key_len > MAX_KEY or value_len > MAX_VALUE:
            raise RequestError(f"key of {key_len} or value of {value_len} bytes")
        key = raw_key[:key_len]
        if op == Op.PUT:
            pages = await request.pages()  # RequestError (-> an error response) if unmappable
            if value_len > len(pages) * PAGE:
                raise RequestError(f"a {value_len}-byte value in {len(pages)} page(s)")
            self.values[key] = b"".join(bytes(p) for p in pages)[:value_len]
            return RESPONSE.pack(request.id, Status.OKAY, 0)
        if op == Op.GET:
            value = self.values.get(key)
            if value is None:
                return RESPONSE.pack(request.id, Status.NOT_FOUND, 0)
            pages = await request.pages()
            if len(value) > len(pages) * PAGE:
                raise RequestError(f"the {len(value)}-byte value does not fit {len(pages)} pages")
            for i, page in enumerate(pages):
                chunk = value[i * PAGE:(i + 1) * PAGE]
                page[:len(chunk)] = chunk
            return RESPONSE.pack(request.id, Status.OKAY, len(value))
        if op == Op.DELETE:
            found = self.values.pop(key, None) is not None
            return RESPONSE.pack(request.id, Status.OKAY if found else Status.NOT_FOUND, 0)
        raise RequestError(f"unknown operation {op}")


def check_response(request: Request) -> None:
    """A response the protocol forbids fails the connection (never trust the backend)."""
    _, status, value_len = RESPONSE.unpack(request.response)
    if status not in tuple(Status):
        raise RemoteProtocolError(f"kv: status {status} for request {request.id}")
    if value_len > len(request.pages) * PAGE:
        raise RemoteProtocolError(f"kv: a {value_len}-byte value in {len(request.pages)} pages")


class KVFrontend(Frontend):
    """``await kv.put(key, value)``, ``await kv.get(key)``, ``await kv.delete(key)``, from any
    number of tasks at once."""

    device_type = "kv"
    ring_layout = KV_RING
    request_codec = CODEC
    pool_pages = 64

    _requests: RequestQueue | None = None

    async def peer_connected(self, backend: Nodes) -> None:
        pool = await GrantPool.share(self.domain.grants, self.peer_id, self.pool_pages)
        self._requests = RequestQueue([self.channel], CODEC, pool=pool, check=check_response)
        self.tasks.start_soon(self._requests.run)

    async def disconnected(self) -> None:
        requests, self._requests = self._requests, None
        if requests is not None:
            requests.fail(PeerGoneError(f"{self.address}: disconnected"))
            assert requests.pool is not None
            await requests.pool.aclose()

    @property
    def requests(self) -> RequestQueue:
        if self._requests is None:
            raise PeerGoneError(f"{self.address} is not connected")
        return self._requests

    async def put(self, key: bytes, value: bytes) -> None:
        if len(value) > MAX_VALUE:
            raise ValueError(f"values are at most {MAX_VALUE} bytes")
        async with self.requests.request(pages=max(1, -(-len(value) // PAGE))) as req:
            req.write_data(value)
            await self._call(req, Op.PUT, key, len(value))

    async def put_many(self, items: dict[bytes, bytes], *, batch: int = 8) -> None:
        """Put several values, `batch` at a time: each batch's requests go out with one push
        (at most one doorbell) and are waited for together."""
        pairs = list(items.items())
        for start in range(0, len(pairs), batch):
            held: list[Request] = []
            try:
                for key, value in pairs[start:start + batch]:
                    if len(value) > MAX_VALUE or len(key) > MAX_KEY:
                        raise ValueError(f"{key!r}: keys are at most {MAX_KEY} bytes, values "
                                         f"{MAX_VALUE}")
                    req = await self.requests.prepare(max(1, -(-len(value) // PAGE)))
                    held.append(req)
                    req.write_data(value)
                    self._encode(req, Op.PUT, key, len(value))
                await self.requests.call_batch(held)
                for req in held:
                    if RESPONSE.unpack(req.response)[1] != Status.OKAY:
                        raise KVError(f"PUT of one of {len(held)} values failed")
            finally:
                for req in held:
                    self.requests.release(req)

    async def get(self, key: bytes) -> bytes | None:
        async with self.requests.request(pages=MAX_PAGES) as req:
            status, length = await self._call(req, Op.GET, key, 0)
            if status == Status.NOT_FOUND:
                return None
            out = bytearray(length)
            req.read_data(out)
            return bytes(out)

    async def delete(self, key: bytes) -> bool:
        async with self.requests.request() as req:
            status, _ = await self._call(req, Op.DELETE, key, 0)
            return status == Status.OKAY

    def _encode(self, req: Request, op: Op, key: bytes, value_len: int) -> None:
        if len(key) > MAX_KEY:
            raise ValueError(f"keys are at most {MAX_KEY} bytes")
        refs = [*req.refs, 0, 0, 0, 0][:MAX_PAGES]
        REQUEST.pack_into(req.slot, 0, req.id, op, len(req.refs), len(key), value_len, *refs,
                          key)

    async def _call(self, req: Request, op: Op, key: bytes, value_len: int) -> tuple[int, int]:
        self._encode(req, op, key, value_len)
        _, status, length = RESPONSE.unpack(await self.requests.call(req))
        if status == Status.ERROR:
            raise KVError(f"{op.name} {key!r} failed")
        return status, length


async def exchange(kv: KVFrontend) -> None:
    """Some real traffic (the conformance suite's): values of 1 byte to 16 KiB, in batches."""
    values = {f"key{i}".encode(): bytes([i]) * (1 + i * 1400) for i in range(12)}
    await kv.put_many(values)
    for key, value in values.items():
        got = await kv.get(key)
        if got != value:
            raise AssertionError(f"{key!r}: got {None if got is None else len(got)} bytes back")
    assert await kv.delete(b"key0") and await kv.get(b"key0") is None


async def main() -> None:
    from ringkit.sim import SimXen

    async with SimXen.start() as xen:
        guest = await xen.create_domain("guest")
        address = DeviceAddress("kv", frontend_id=guest, backend_id=0, devid=0)
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            await create_device(dom0.store, address)  # the toolstack's part
            async with anyio.create_task_group() as tg, KVBackend(dom0, guest) as backend:
                tg.start_soon(lambda: backend.run(once=True))
                async with KVFrontend(domu, backend_id=0) as kv:
                    await kv.put(b"greeting", b"hello from a granted page")
                    await kv.put(b"big", bytes(range(256)) * 64)   # 16 KiB: four pages
                    print("greeting ->", (await kv.get(b"greeting") or b"").decode())
                    print("big ->", len(await kv.get(b"big") or b""), "bytes")
                    print("missing ->", await kv.get(b"missing"))
                    await exchange(kv)
                    print("requests sent:", kv.requests.stats.sent)
                await backend.wait_finished()
            print("leaks:", dom0.leaks() or "none", "/", domu.leaks() or "none")


if __name__ == "__main__":
    anyio.run(main)
