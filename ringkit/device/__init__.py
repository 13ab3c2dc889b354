"""Frontend and Backend bases for writing Xen PV split drivers.

A driver is two small classes, one per end, that say only what is specific to the device: its
xenstore type, its ring layout, the features it advertises or reads, and what to do with a
request.  The bases do the rest the way Linux's xenbus drivers do:

* **xenstore layout** -- frontend dir ``/local/domain/<fe>/device/<type>/<devid>``, backend dir
  ``/local/domain/<be>/backend/<type>/<fe>/<devid>``, each pointing at the other with
  ``backend``/``backend-id`` and ``frontend``/``frontend-id`` (`DeviceAddress`);
* **the XenbusState handshake** (`ringkit.proto.xenbus`): both ends write ``state`` and watch
  the other's; skipped states are tolerated;
* **ring setup**: the frontend shares the ring pages and allocates the event channel; the backend
  maps and binds.  Single page: ``ring-ref``; multi-page: ``ring-page-order`` + ``ring-ref0..N``
  (the backend advertises ``max-ring-page-order``); multi-queue: the backend advertises
  ``multi-queue-max-queues``, the frontend writes ``multi-queue-num-queues`` and puts each
  queue's keys under ``queue-<i>/``; the event channel is ``event-channel`` (console: ``port``);
* **teardown** in order (stop serving, unmap / unshare the ring, close the port, then Closing ->
  Closed), **reconnection** after the peer restarts, and **peer death** (its event channel
  closes or unmap-notify fires, or the domain is released) turned into the same clean teardown;
* a **toolstack helper** (`create_device`, `destroy_device`) that writes both ends' entries with
  their permissions as ``xl block-attach`` does.

Writing a driver (see examples/echo.py and docs/writing-a-driver.md)::

    ECHO = RingLayout("echo", request_size=64, response_size=64)

    class EchoBackend(Backend):
        device_type = "echo"
        ring_layout = ECHO

        async def advertise(self, nodes: Nodes) -> None:    # before InitWait
            await nodes.write("feature-upper", "1")

        async def handle(self, request: bytes) -> bytes:    # one request -> one response
            return request.upper()

    class EchoFrontend(Frontend):
        device_type = "echo"
        ring_layout = ECHO

    # toolstack (dom0):   await create_device(store, DeviceAddress("echo", fe, be, devid))
    # backend process:    async with EchoBackend(domain, frontend_id, devid) as be:
    #                         await be.run()                # serves until the device goes away
    # frontend process:   async with EchoFrontend(domain, backend_id, devid) as fe:
    #                         await fe.channel.send(b"hi".ljust(64, b"\\0"))
    #                         reply = await fe.channel.receive()

API for driver authors
----------------------
Class attributes (both ends):
    ``device_type: str``            xenstore device type ("vbd", "console", "echo", ...)
    ``ring_layout: RingLayout|None`` io/ring.h slot layout (`ringkit.proto.layout.RingLayout`);
                                    None = the driver interprets the shared pages itself (console)
    ``max_ring_page_order: int``    0 = single page ``ring-ref``; up to 4 (blkif)
    ``max_queues: int``             1 = no multi-queue keys
    ``event_channel_key: str``      "event-channel" (console: "port")

`Backend` hooks (all optional except `handle`, or override `serve`):
    ``async advertise(nodes)``      write feature-*/max-* nodes into the backend dir (before
                                    InitWait); ``max-ring-page-order`` and
                                    ``multi-queue-max-queues`` are written for you
    ``async connecting(frontend)``  read the frontend's nodes (``frontend.read(...)``) after it
                                    published its ring, before mapping; raise
                                    RemoteProtocolError to refuse it (-> Closing/Closed)
    ``async rings_mapped(nodes)``   the rings are mapped: write device properties (e.g.
                                    ``sectors``) before the backend says Connected
    ``make_channel(queue)``         attach to the mapped ring (default: `BackRingChannel`)
    ``async serve(queue)``          serve one `Queue` while connected; default: loop
                                    receive request -> ``await handle(request)`` -> send response
                                    (batched: one push + notify per burst)
    ``async handle(request) -> bytes``
    ``async disconnected()``        called after each connection is torn down
    ``async run()``                 the whole lifecycle; returns when the device is removed or
                                    closed for good; reconnects after a frontend restart

`Frontend` hooks (all optional):
    ``async negotiate(backend)``    read the backend's features before the ring is set up; may
                                    return a `RingChoice` (a smaller ring, fewer queues)
    ``make_channel(queue)``         initialise the freshly shared ring pages and build the
                                    channel (default: io/ring.h SHARED_RING_INIT for
                                    ``ring_layout`` and a `FrontRingChannel`; the console builds
                                    a byte stream instead)
    ``async publish(nodes)``        write extra frontend nodes (e.g. ``feature-persistent``),
                                    inside the transaction that publishes ring-ref/event-channel
    ``async peer_connected(backend)`` the backend said Connected: read its device properties
                                    before the frontend says Connected
    ``async disconnected()``        the connection went away (peer closed, died, or restarted);
                                    in-flight requests are lost and must be reissued

`Frontend` use:
    ``async with Frontend(domain, backend_id, devid)``: connects (handshake to Connected) and keeps
    a supervisor task running that follows the backend; ``fe.queues`` / ``fe.channel`` (queue 0)
    are the current connection's; ``await fe.wait_connected()`` after a reconnect;
    ``fe.generation`` increments on every new connection; ``fe.is_connected``; ``aclose()`` does
    Closing -> (backend unmaps and closes) -> unshare -> Closed.

Both ends: ``self.tasks.start_soon(fn, *args)`` runs a background task for the device's life
(a task failing because the peer died or misbehaved is handled like a broken ring; any other
failure is the driver's bug: it is logged and ends the connection in order -- error node,
Closing, rings released, Closed -- after which a backend serves the next connection, or finishes
with that error with ``once``, and a frontend finishes with it; losing the xenstore connection
finishes the device);
``await dev.wait_finished()`` returns once the device is gone for good.  A device owns a task
group: close it in the task that opened it, in LIFO order with the other devices that task
opened (nested ``async with`` does both); otherwise ``aclose`` raises `LocalProtocolError`
and leaves the device open.

`Queue` (one per ring): ``index``, ``buffer`` (the ring pages), ``event`` (`EventChannel`),
``channel`` (`ringkit.channel.RingChannel`: ``send``/``receive``/``send_nowait``/
``receive_nowait`` of whole slots as bytes; front sends requests and receives responses, back
the reverse), ``path`` (the frontend's node dir holding this queue's keys).

`Nodes`: ``read(name) -> str``, ``read_int(name, default)``, ``write(name, value)``,
``path`` -- a view on one device dir; values read from the peer's dir are untrusted (parse with
``read_int`` and friends, which raise RemoteProtocolError).

Errors: protocol violations by the peer -> `RemoteProtocolError` and a clean disconnect; the peer
gone -> `PeerGoneError` from channel operations (anyio `BrokenResourceError` chained from it);
bad arguments -> `ConfigError`.
"""

from __future__ import annotations

from ..proto.layout import RingLayout as RingLayout
from ..proto.xenbus import XenbusState as XenbusState
from .backend import Backend as Backend
from .frontend import Frontend as Frontend
from .frontend import RingChoice as RingChoice
from .paths import DeviceAddress as DeviceAddress
from .paths import Nodes as Nodes
from .paths import error_node as error_node
from .queue import Queue as Queue
from .toolstack import create_device as create_device
from .toolstack import destroy_device as destroy_device

__all__ = (
    "Backend",
    "DeviceAddress",
    "Frontend",
    "RingChoice",
    "Nodes",
    "Queue",
    "RingLayout",
    "XenbusState",
    "create_device",
    "destroy_device",
    "error_node",
)
