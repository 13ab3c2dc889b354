"""Micro-benchmark of RingChannel's receive path (prints figures; asserts nothing).

    .venv/bin/python -m tests.device.bench_channel

The backend fills the ring with a burst of responses and pushes; the frontend channel takes
the burst with `receive_batch_nowait`.  No event-channel waits: this is the copy-and-allocate
cost, in CPU time (the machine may be shared).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from ringkit.channel import FrontRingChannel
from ringkit.proto.layout import RingLayout
from ringkit.proto.ring import BackRing, FrontRing
from ringkit.testing.memory import memory_event_pair

ROUNDS = 20_000


def _bench(layout: RingLayout, burst: int, take: Callable[[FrontRingChannel], int]) -> float:
    page = bytearray(4096)
    fe_evt, _ = memory_event_pair()
    front = FrontRingChannel(FrontRing.init(page, layout), fe_evt)
    back = BackRing.attach(page, layout)
    request = bytes(layout.request_size)
    response = bytes(layout.response_size)
    elapsed = 0.0
    for _ in range(ROUNDS):
        for _ in range(burst):
            front.engine.put_request(request)
        front.engine.push_requests()
        while back.take_request() is not None:
            back.put_response(response)
        back.push_responses()
        start = time.process_time()
        got = take(front)
        elapsed += time.process_time() - start
        assert got == burst
    return elapsed / (ROUNDS * burst) * 1e9


async def main() -> None:
    for layout in (RingLayout("small", 16, 8), RingLayout("blkif", 112, 16)):
        for burst in (1, 8, 32):
            copies = _bench(layout, burst, lambda ch: len(ch.receive_batch_nowait(64)))
            print(f"{layout.name:>6} burst {burst:>2}: receive_batch_nowait {copies:5.0f} ns/item")


if __name__ == "__main__":
    anyio.run(main)
