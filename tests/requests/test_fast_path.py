"""`RequestServer`'s fast path hook: a driver answers a burst's leading requests itself.

The fast path here answers leading PLAIN requests with twice their value (so its answers are
told apart from the handler's); the handler gets the rest of the burst, in order, and the burst
still goes out with one push.  A fast path that claims more answers than the burst holds ends
the server with ConfigError instead of pushing garbage.
"""

from __future__ import annotations

import anyio
import pytest
from pair import PLAIN, READ, REQUEST, RESPONSE, decode, encode, pair

from ringkit import ConfigError
from ringkit.requests import IncomingRequest

pytestmark = pytest.mark.anyio


def plain_prefix(burst: bytearray, count: int, out: memoryview) -> int:
    slot = 64
    for i in range(count):
        rid, op, _, value, *_ = REQUEST.unpack_from(burst, i * slot)
        if op != PLAIN:
            return i
        out[i * slot:(i + 1) * slot] = bytes(slot)
        RESPONSE.pack_into(out, i * slot, rid, 0, value * 2)
    return count


async def test_the_fast_path_answers_the_prefix_and_the_handler_the_rest() -> None:
    seen: list[int] = []

    async def handler(request: IncomingRequest) -> bytes:
        value = REQUEST.unpack_from(request.slot)[3]
        seen.append(value)
        return RESPONSE.pack(request.id, 0, value)

    async with pair(serve=False) as p:
        p.server.handler = handler
        p.server.fast_path = plain_prefix
        p.tg.start_soon(p.server.run)
        requests = [await p.queue.prepare(pages=1 if n == 2 else 0) for n in range(5)]
        for n, req in enumerate(requests):
            encode(req.slot, READ if n == 2 else PLAIN, req.refs, value=n + 1)
        with anyio.fail_after(10):
            await p.queue.call_batch(requests)
        assert [decode(r.response)[2] for r in requests] == [2, 4, 3, 4, 5]
        assert seen == [3, 4, 5]           # after the first slot the fast path handed back
        assert p.server.stats.fast == 2 and p.server.stats.requests == 5
        assert p.server.stats.pushes == 1
        for req in requests:
            p.queue.release(req)


async def test_negative_control_a_fast_path_claiming_too_much_ends_the_server() -> None:
    async with pair(serve=False) as p:
        p.server.fast_path = lambda burst, count, out: count + 1
        req = await p.queue.prepare()
        encode(req.slot, PLAIN, (), value=1)
        p.queue.send_nowait(req)
        with anyio.fail_after(10), pytest.raises(ConfigError, match="answered 2 of 1"):
            await p.server.run()
