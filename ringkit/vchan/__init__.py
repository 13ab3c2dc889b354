"""vchan: libxenvchan's byte stream between two domains, wire-compatible with the C library.

A *server* grants a control page (and, for rings over 2 KiB, the rings' own pages) to one
client domain, allocates an event channel and publishes both under a xenstore directory; the
*client* maps them and the two exchange bytes through two rings (``left``: client -> server,
``right``: server -> client).  Either end is an `anyio.abc.ByteStream` (`VchanStream`), usable
from asyncio and trio, on the real transport or the simulated one::

    from ringkit.vchan import VchanServer, connect, vchan_path

    path = vchan_path(server_domid, client_domid, 5000)   # Qubes' convention
    # in the server's domain
    async with await VchanServer.offer(dom, client_domid, path, read_min=65536,
                                       write_min=65536) as offer:
        async with await offer.accept() as stream:
            await stream.send(b"hello")
    # in the client's domain
    async with await connect(dom, server_domid, path) as stream:
        print(await stream.receive())

`VchanListener` serves a path for one client after another.  `VchanStream.send_packet` /
`receive_packet` move whole packets (libxenvchan_send / _recv).  The wire protocol itself is in
`ringkit.proto.vchan`; the command line in ``ringkit vchan`` (vchan-socket-proxy's job).
"""

from ._connect import POLL_INTERVAL as POLL_INTERVAL
from ._connect import VchanListener as VchanListener
from ._connect import VchanServer as VchanServer
from ._connect import connect as connect
from ._connect import domain_gone as domain_gone
from ._connect import vchan_path as vchan_path
from ._stream import CLOSE_TIMEOUT as CLOSE_TIMEOUT
from ._stream import VchanStream as VchanStream

__all__ = (
    "CLOSE_TIMEOUT",
    "POLL_INTERVAL",
    "VchanListener",
    "VchanServer",
    "VchanStream",
    "connect",
    "domain_gone",
    "vchan_path",
)
