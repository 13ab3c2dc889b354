"""Hostile peers: one end of a driver's device that breaks the rules on purpose.

A hostile frontend does the handshake by hand with the driver's own `negotiate`/`publish`
hooks (so the backend sees a plausible frontend), then misbehaves; a hostile backend likewise
uses the driver's `advertise`/`rings_mapped` hooks.  Each runs in a child process of its own
(`ringkit.testing._child_main`), prints ``connected`` once it got as far as the mode needs, then
``done`` once it misbehaved, and stays (holding whatever it holds) until it is killed -- or
exits at once with everything still held, for the modes that vanish.

Modes are named after what the peer does; each names what the survivor must show (`Expect`).
Modes with `Mode.needs_codec` attack drivers built on `ringkit.requests` through the attacked
end's `request_codec` (`ringkit.testing._hostile_requests`): requests naming grant refs the
backend cannot use, duplicate ids; answers with ids never issued, twice, or to requests the
frontend cancelled.
"""

from __future__ import annotations

import enum
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ..abc import Domain, EventChannel
from ..device import Backend, Frontend, Nodes
from ..device._base import driver_hook
from ..proto.layout import (
    SRING_HEADER_SIZE,
    SRING_REQ_PROD,
    SRING_RSP_PROD,
    RingLayout,
)
from ..proto.ring import FrontRing
from ..requests.codec import Field, SlotCodec
from ._driver import DriverUnderTest
from ._hostile_requests import CANCELLED_MODE, answer_hostile, send_hostile_requests
from ._peer import STALE_REF, say

U32 = struct.Struct("<I")


class Expect(enum.Enum):
    """What the end under attack must do (besides never crashing, hanging or leaking, and
    serving a fresh well-behaved peer afterwards)."""

    REFUSE = "refuse"
    """Never say Connected with this peer; disconnect cleanly (state Closed)."""
    DISCONNECT = "disconnect"
    """Drop the connection with a typed error: Closing -> Closed, or start over."""
    ERROR_OR_SERVE = "error-or-serve"
    """Either answer the bad traffic with a typed error or keep serving; both are fine."""
    REFUSE_OR_SERVE = "refuse-or-serve"
    """A value only some drivers read: refuse it (Closing -> Closed) or ignore it."""
    NO_ANSWER = "no-answer"
    """The peer went quiet: the driver's traffic may wait, but closing must not hang."""
    SERVE = "serve"
    """The peer's traffic is odd but legal: stay connected and go on."""


def names_refs(codec: SlotCodec) -> bool:
    """Whether the codec's requests name grant refs at all."""
    refs = codec.refs
    return refs is not None and (isinstance(refs.count, Field) or refs.count > 0)


def counts_refs(codec: SlotCodec) -> bool:
    """Whether a request says how many refs it names (a count field the peer can set)."""
    return codec.refs is not None and isinstance(codec.refs.count, Field)


def any_codec(codec: SlotCodec) -> bool:
    """Every driver on `ringkit.requests`."""
    return True


@dataclass(frozen=True)
class Mode:
    """One way a hostile peer misbehaves, and what the end under attack must show."""

    name: str
    expect: Expect
    needs_ring: bool = False
    """Only for drivers with an io/ring.h `ring_layout`."""
    about: str = ""
    needs_codec: Callable[[SlotCodec], bool] | None = None
    """Only for drivers on `ringkit.requests` whose attacked end has a `request_codec` this
    says yes to (the backend's for a hostile frontend, the frontend's for a hostile backend)."""


FRONTEND_MODES = {m.name: m for m in (
    Mode("garbage-slots", Expect.ERROR_OR_SERVE, True, "random bytes in every request slot"),
    Mode("req-prod-ahead", Expect.DISCONNECT, True, "req_prod more than the ring size ahead"),
    Mode("req-prod-backwards", Expect.DISCONNECT, True, "req_prod behind req_cons"),
    Mode("req-prod-huge", Expect.DISCONNECT, True, "req_prod = 2**31 - 1"),
    Mode("scribbled-header", Expect.DISCONNECT, True, "0xff over the shared ring's header"),
    Mode("garbage-page", Expect.ERROR_OR_SERVE, False, "random bytes over the whole page"),
    Mode("closes-event-channel", Expect.DISCONNECT, False, "closes its event channel"),
    Mode("vanishes", Expect.DISCONNECT, False, "exits with its pages still granted"),
    Mode("ring-ref-missing", Expect.REFUSE, False, "no ring-ref node"),
    Mode("ring-ref-garbage", Expect.REFUSE, False, "ring-ref = 'x'"),
    Mode("ring-ref-stale", Expect.REFUSE, False, "ring-ref naming no grant"),
    Mode("event-channel-garbage", Expect.REFUSE, False, "event channel = 'x'"),
    Mode("event-channel-zero", Expect.REFUSE, False, "event channel = 0"),
    Mode("event-channel-unknown", Expect.REFUSE, False, "event channel nobody allocated"),
    Mode("ring-page-order-too-big", Expect.REFUSE, False, "ring-page-order = 9"),
    Mode("too-many-queues", Expect.REFUSE, False, "multi-queue-num-queues = 9999"),
    Mode("wrong-protocol", Expect.REFUSE_OR_SERVE, False, "protocol = x86_32-abi"),
    Mode("refs-never-granted", Expect.ERROR_OR_SERVE, True,
         "requests naming a grant ref nobody granted", names_refs),
    Mode("refs-granted-elsewhere", Expect.ERROR_OR_SERVE, True,
         "requests naming a page granted to another domain", names_refs),
    Mode("refs-revoked", Expect.ERROR_OR_SERVE, True,
         "requests naming a page revoked right after they were published", names_refs),
    Mode("ref-count-too-big", Expect.ERROR_OR_SERVE, True,
         "requests naming more grant refs than fit", counts_refs),
    Mode("duplicate-ids", Expect.ERROR_OR_SERVE, True,
         "two requests in flight with the same id", any_codec),
)}

BACKEND_MODES = {m.name: m for m in (
    Mode("garbage-responses", Expect.DISCONNECT, True, "random bytes as the responses"),
    Mode("unsolicited-responses", Expect.DISCONNECT, True, "responses before any request"),
    Mode("duplicate-responses", Expect.DISCONNECT, True,
         "each request slot copied back twice as its response"),
    Mode("rsp-prod-ahead", Expect.DISCONNECT, True, "rsp_prod more than the ring size ahead"),
    Mode("rsp-prod-backwards", Expect.DISCONNECT, True, "rsp_prod behind rsp_cons"),
    Mode("rsp-prod-huge", Expect.DISCONNECT, True, "rsp_prod = 2**31 - 1"),
    Mode("scribbled-header", Expect.DISCONNECT, True, "0xff over the shared ring's header"),
    Mode("garbage-page", Expect.DISCONNECT, False, "random bytes over the whole page"),
    Mode("stops-answering", Expect.NO_ANSWER, False, "takes requests, never answers"),
    Mode("closes-event-channel", Expect.DISCONNECT, False, "closes its event channel"),
    Mode("vanishes", Expect.DISCONNECT, False, "exits with the pages still mapped"),
    Mode("max-ring-page-order-garbage", Expect.REFUSE, False, "max-ring-page-order = 'x'"),
    Mode("answers-unissued-ids", Expect.DISCONNECT, True,
         "answers a request with an id the frontend never issued", any_codec),
    Mode("answers-twice", Expect.DISCONNECT, True,
         "answers a request twice (its id in two responses)", any_codec),
    Mode(CANCELLED_MODE, Expect.SERVE, True,
         "holds requests until the frontend cancelled them, then answers them", any_codec),
)}

def codec_of(end: object) -> SlotCodec | None:
    """The `request_codec` of a driver's end class (None for a driver not on the layer)."""
    codec = getattr(end, "request_codec", None)
    return codec if isinstance(codec, SlotCodec) else None


async def _await_state(nodes: Nodes, wanted: set[str]) -> str:
    while True:
        state = await nodes.read_optional("state")
        if state is not None and state in wanted:
            return state
        await anyio.sleep(0.01)


def _set(buf: memoryview, offset: int, value: int) -> None:
    U32.pack_into(buf, offset, value & 0xFFFF_FFFF)


def _get(buf: memoryview, offset: int) -> int:
    return int(U32.unpack_from(buf, offset)[0])


async def _until_requests(buf: memoryview, event: EventChannel) -> int:
    """Wait for the frontend to put requests on the ring; their count."""
    while not (prod := _get(buf, SRING_REQ_PROD)):
        with anyio.move_on_after(0.05):
            await event.wait()
    return prod


async def _pose(end: Frontend | Backend, mode: str
                ) -> tuple[random.Random, Nodes, Nodes, RingLayout | None]:
    """Start posing as `end` (an instance of the driver's class, never entered: only its hooks
    are used): a random source for `mode`, own and peer dirs, the ring layout; says
    Initialising."""
    await end.own_nodes.write("state", "1")
    return random.Random(mode), end.own_nodes, end.peer_nodes, end.ring_layout


async def hostile_frontend(dom: Domain, backend_id: int, driver: DriverUnderTest,
                           mode: str) -> None:
    front = driver.make_frontend(dom, backend_id)  # never entered: its hooks only
    rng, own, backend, layout = await _pose(front, mode)
    await _await_state(backend, {"2"})
    await front.negotiate(backend)
    pages = await dom.grants.share(backend_id, 1, writable=True)
    port = await dom.events.alloc_unbound(backend_id)
    ring = FrontRing.init(pages.buffer, layout) if layout is not None else None
    entries = ring.entries if ring is not None else 0
    key = front.event_channel_key
    nodes = {"ring-ref": str(pages.refs[0]), key: str(port.port)}
    if mode == "ring-ref-missing":
        del nodes["ring-ref"]
    elif mode == "ring-ref-garbage":
        nodes["ring-ref"] = "x"
    elif mode == "ring-ref-stale":
        nodes["ring-ref"] = str(STALE_REF)
    elif mode == "event-channel-garbage":
        nodes[key] = "x"
    elif mode == "event-channel-zero":
        nodes[key] = "0"
    elif mode == "event-channel-unknown":
        nodes[key] = str(port.port + 4000)
    elif mode == "ring-page-order-too-big":
        nodes["ring-page-order"] = "9"
        nodes.update({f"ring-ref{i}": nodes["ring-ref"] for i in range(4)})
    elif mode == "too-many-queues":
        nodes["multi-queue-num-queues"] = "9999"
    for name, value in nodes.items():
        await own.write(name, value)
    await front.publish(own)
    if mode == "wrong-protocol":
        await own.write("protocol", "x86_32-abi")
    # blkif.h lets a frontend skip Initialised: "skips-initialised" goes straight to Connected
    await own.write("state", "4" if mode == "skips-initialised" else "3")
    if mode in FRONTEND_MODES and FRONTEND_MODES[mode].expect in (Expect.REFUSE,
                                                                  Expect.REFUSE_OR_SERVE):
        say("done")
        await anyio.sleep_forever()
    await _await_state(backend, {"4"})
    say("connected")
    attack = FRONTEND_MODES.get(mode)
    if attack is not None and attack.needs_codec is not None:
        codec = codec_of(driver.backend)
        assert codec is not None and ring is not None, f"{mode} needs a request codec"
        await send_hostile_requests(dom, backend_id, codec, ring, port, backend, mode)
    buf = pages.buffer
    if mode == "garbage-slots":
        assert layout is not None
        count = min(entries, 8)
        end = SRING_HEADER_SIZE + count * layout.slot_size
        buf[SRING_HEADER_SIZE:end] = rng.randbytes(end - SRING_HEADER_SIZE)
        _set(buf, SRING_REQ_PROD, count)
    elif mode == "req-prod-ahead":
        _set(buf, SRING_REQ_PROD, entries + 5)
    elif mode == "req-prod-backwards":
        _set(buf, SRING_REQ_PROD, -1)
    elif mode == "req-prod-huge":
        _set(buf, SRING_REQ_PROD, 2**31 - 1)
    elif mode == "scribbled-header":
        buf[:SRING_HEADER_SIZE] = b"\xff" * SRING_HEADER_SIZE
    elif mode == "garbage-page":
        buf[:] = rng.randbytes(len(buf))
    elif mode == "closes-event-channel":
        await port.aclose()
    elif mode == "closes-port-then-closes":
        await _close_port_then_close(dom, backend_id, front, own, backend, port)
    elif mode == "vanishes":
        os._exit(0)
    if not port_closed(mode):
        port.notify()
    say("done")
    await anyio.sleep_forever()


CLOSE_PORT_MODE = "closes-port-then-closes"
"""The frontend closes its event channel, then closes in order (Closing, then Closed, each
waiting for the backend to follow), then connects again -- what Linux's xenbus_reset_frontend
asks of a backend after a frontend lost its connection."""


async def _close_port_then_close(dom: Domain, backend_id: int, front: Frontend, own: Nodes,
                                 backend: Nodes, port: EventChannel) -> None:
    await port.aclose()
    # the backend stops serving a frontend whose port is gone (it leaves Connected) ...
    await _await_state(backend, {"0", "1", "2", "3", "5", "6"})
    say("port-seen")
    # ... and must still follow the orderly close that comes after
    await own.write("state", "5")
    await _await_state(backend, {"5", "6"})
    say("closing-followed")
    await own.write("state", "6")
    await _await_state(backend, {"6"})
    say("closed-followed")
    await own.write("state", "1")
    await _await_state(backend, {"2"})
    await front.negotiate(backend)
    pages = await dom.grants.share(backend_id, 1, writable=True)
    again = await dom.events.alloc_unbound(backend_id)
    if front.ring_layout is not None:
        FrontRing.init(pages.buffer, front.ring_layout)
    await own.write("ring-ref", str(pages.refs[0]))
    await own.write(front.event_channel_key, str(again.port))
    await front.publish(own)
    await own.write("state", "3")
    await _await_state(backend, {"4"})
    say("reconnected")


def port_closed(mode: str) -> bool:
    return mode in ("closes-event-channel", CLOSE_PORT_MODE)


async def hostile_backend(dom: Domain, frontend_id: int, driver: DriverUnderTest,
                          mode: str) -> None:
    back = driver.make_backend(dom, frontend_id)  # never entered: its hooks only
    rng, own, frontend, layout = await _pose(back, mode)
    if mode == "max-ring-page-order-garbage":
        await own.write("max-ring-page-order", "x")
    await back.advertise(own)
    await own.write("state", "2")
    if BACKEND_MODES[mode].expect is Expect.REFUSE:
        say("done")
        await anyio.sleep_forever()
    await _await_state(frontend, {"3", "4"})
    ref = await frontend.read_int("ring-ref")
    port_number = await frontend.read_int(back.event_channel_key)
    pages = await dom.grants.map(frontend_id, [ref], writable=True)
    port = await dom.events.bind_interdomain(frontend_id, port_number)
    await driver_hook(back, Backend, "rings_mapped")(own)
    await own.write("state", "4")
    say("connected")
    buf = pages.buffer
    if BACKEND_MODES[mode].needs_codec is not None:
        codec = codec_of(driver.frontend)
        assert codec is not None, f"{mode} needs a request codec"
        await answer_hostile(codec, buf, port, mode)
    if layout is not None and mode not in ("closes-event-channel", "vanishes", "garbage-page",
                                           "scribbled-header", "stops-answering"):
        slot, size = layout.slot_size, layout.response_size
        entries = (len(buf) - SRING_HEADER_SIZE) // slot
        entries = 1 << (entries.bit_length() - 1)
        if mode == "unsolicited-responses":
            for i in range(2):
                start = SRING_HEADER_SIZE + i * slot
                buf[start:start + size] = rng.randbytes(size)
            _set(buf, SRING_RSP_PROD, 2)
        else:
            prod = await _until_requests(buf, port)
            if mode == "garbage-responses":
                for i in range(prod):
                    start = SRING_HEADER_SIZE + (i % entries) * slot
                    buf[start:start + size] = rng.randbytes(size)
                _set(buf, SRING_RSP_PROD, prod)
            elif mode == "duplicate-responses":
                copies = [bytes(buf[SRING_HEADER_SIZE + i * slot:][:size]) for i in range(prod)]
                for i, copy in enumerate(copies + copies):
                    start = SRING_HEADER_SIZE + (i % entries) * slot
                    buf[start:start + size] = copy
                _set(buf, SRING_RSP_PROD, 2 * prod)
            elif mode == "rsp-prod-ahead":
                _set(buf, SRING_RSP_PROD, prod + entries + 5)
            elif mode == "rsp-prod-backwards":
                _set(buf, SRING_RSP_PROD, -1)
            elif mode == "rsp-prod-huge":
                _set(buf, SRING_RSP_PROD, 2**31 - 1)
    elif mode in ("scribbled-header", "garbage-page"):
        if layout is not None:
            await _until_requests(buf, port)
        if mode == "scribbled-header":
            buf[:SRING_HEADER_SIZE] = b"\xff" * SRING_HEADER_SIZE
        else:
            buf[:] = rng.randbytes(len(buf))
    elif mode == "closes-event-channel":
        await port.aclose()
    elif mode == "vanishes":
        os._exit(0)
    if not port_closed(mode) and mode != "stops-answering":
        port.notify()
    say("done")
    await anyio.sleep_forever()
