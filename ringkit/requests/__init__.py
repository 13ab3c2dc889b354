"""Request queues on grants: the layer between "a ring of slots" and "a request/response driver".

"A request naming grant refs, answered by id" is the shape of blkif, netif, scsiif and 9pfs, as
a virtqueue's ``add_sgs`` / ``get_buf`` is virtio's.  This package does that part once, so that
a driver supplies only its slot format and its handler:

* frontend: `RequestQueue` -- ids and matching, a bounded in-flight window (it waits, never
  `ResourceLimitError`), any number of concurrent callers, batches sent with one push,
  cancellation (a late answer is dropped and its pages are reused only then), and every
  waiter failed with a typed error on disconnect; buffers in pages of a `GrantPool` granted
  once per connection, read and written in place (zero-copy) or copied;
* backend: `RequestServer` -- requests taken in bursts, their refs mapped through a
  `GrantMapper` (persistent or per request, bounded), answered in ring order or
  concurrently up to a limit (`ServerStats.reordered` counts the answers pushed out of ring
  order, tallied by an `AnswerOrder`), responses pushed in batches with ring.h's hold-off;
* backend, pulling: `PostedRequests` -- requests taken when the backend has work for them
  (buffers posted ahead, as netif's rx ring), and whole chains of requests (a packet over
  several slots, `Chain`: netif's ``more_data`` and extra-info slots);
* `SharedEventChannel`: one event channel serving several rings (netif's tx and rx);
* `Turns`: work taken in ring order, done concurrently, finished in ring order;
* both: a `SlotCodec` saying where a slot keeps its id, operation and grant refs -- read for a
  whole burst in one call, in C when the compiled helper is built.

A minimal pair::

    CODEC = SlotCodec(LAYOUT, request_id=Field(0, 8), response_id=Field(0, 8),
                      refs=RefList(offset=16, stride=4, maximum=4, count=Field(8, 1)),
                      status=Field(8, 2, signed=True))

    # frontend, once connected
    queue = RequestQueue([q.channel for q in self.queues], CODEC,
                         pool=await GrantPool.share(self.domain.grants, self.peer_id, 64))
    self.tasks.start_soon(queue.run)
    async with queue.request(pages=1) as req:
        req.write_data(b"hello")
        encode(req.slot, req.refs)          # the driver's own fields
        response = await queue.call(req)

    # backend, in serve(queue)
    await RequestServer(queue.channel, CODEC, self.answer,
                        mapper=GrantMapper(self.domain.grants, self.peer_id,
                                           persistent=False)).run()

docs/request-queues.md walks through a whole driver (examples/kv).
"""

from .back import (
    AnswerOrder,
    ConcurrentFastPath,
    FastPath,
    Handler,
    IncomingRequest,
    RequestServer,
    ServerStats,
    answer_slot,
)
from .codec import Chain, Field, RefList, RequestError, ResponseExtra, SlotCodec
from .events import SharedEventChannel
from .front import Completions, QueueStats, Request, RequestQueue
from .mapping import DEFAULT_MAX_PERSISTENT, GrantMapper, PageSet, PersistentGrantWatcher
from .pool import GrantPool
from .posted import PostedRequests, RequestChain
from .turns import Turns

__all__ = (
    "DEFAULT_MAX_PERSISTENT",
    "AnswerOrder",
    "Chain",
    "Completions",
    "ConcurrentFastPath",
    "FastPath",
    "Field",
    "GrantMapper",
    "GrantPool",
    "Handler",
    "IncomingRequest",
    "PageSet",
    "PersistentGrantWatcher",
    "PostedRequests",
    "QueueStats",
    "RefList",
    "Request",
    "RequestChain",
    "RequestError",
    "ResponseExtra",
    "RequestQueue",
    "RequestServer",
    "ServerStats",
    "SharedEventChannel",
    "SlotCodec",
    "Turns",
    "answer_slot",
)
