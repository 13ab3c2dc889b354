"""The sans-I/O protocol core: shared-page layouts, ring and pipe engines, wire codecs.

Nothing here does I/O, sleeps or knows a transport.  Engines work on any writable buffer (a
bytearray in tests, the mmap of granted pages in production) through `ringkit._native`, and
return decisions ("notify the peer?", "work pending?") for the async shells to act on.

Modules (import the one you need; this package deliberately re-exports nothing, so that using
one codec never drags in another):

- `ringkit.proto.layout`  offsets of the io/ring.h sring, console and libxenvchan pages;
  `RingLayout`, the request/response/slot sizes of one ring type
- `ringkit.proto.ring`    `FrontRing` / `BackRing`: Xen's io/ring.h request/response rings
- `ringkit.proto.pipe`    `PipeProducer` / `PipeConsumer`: the byte-stream rings of the console
  page and libxenvchan
- `ringkit.proto.blkif`   blkif requests and responses
- `ringkit.proto.netif`   netif's tx and rx messages, flags and codecs
- `ringkit.proto.xenbus`  XenbusState and the handshake transition table
- `ringkit.proto.xs_wire` the xenstore wire protocol
"""

__all__ = ()
