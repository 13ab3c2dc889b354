"""Hostile peers: one end of a driver's device that breaks the rules on purpose.

A hostile frontend does the handshake by hand with the driver's own `negotiate`/`publish`
hooks (so the backend sees a plausible frontend), then misbehaves; a hostile backend likewise
uses the driver's `advertise`/`rings_mapped` hooks.  Each runs in a child process of its own
(`ringkit.testing._child_main`), prints ``connected`` once it got as far as the mode needs, then
``done`` once it misbehaved, and stays (holding whatever it holds) until it is killed -- or
exits at once with everything still held, for the modes that vanish.

Modes are named after what the peer does; each names what the survivor must show (`Expect`)
and carries, as data in its table row (`Mode`), what the peer publishes, the state it says and
its attack once connected: the two plays below only walk the handshake and apply the row.
Modes with `Mode.needs_codec` attack drivers built on `ringkit.requests` through the attacked
end's `request_codec` (`ringkit.testing._hostile_requests`): requests naming grant refs the
backend cannot use, duplicate ids; answers with ids never issued, twice, or to requests the
frontend cancelled.

A driver may have several rings per queue, each on a page of its own named by a node of its
own (`ringkit.device.DeviceBase.ring_ref_keys`: netif's ``tx-ring-ref`` and ``rx-ring-ref``),
their layouts and codecs given by `ringkit.device.DeviceBase.request_codecs` (`rings_of`).
A hostile peer then shares or maps every ring, as the driver's own end would, and attacks one
of them -- the mode string ``<mode>@<ring>`` says which (`Mode.each_ring`; ``@0`` may be left
out), so that a check plays the attack on each ring in turn: an end that checks one ring's
indices and trusts the other's is caught.
"""

from __future__ import annotations

import enum
import os
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

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
from ..proto.xenbus import XenbusState
from ..requests.codec import Field, SlotCodec
from ._driver import DriverUnderTest
from ._hostile_requests import CANCELLED_MODE, answer_hostile, send_hostile_requests
from ._peer import STALE_REF, say

U32 = struct.Struct("<I")
S = XenbusState


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

    @property
    def refused(self) -> bool:
        """Whether the attacked end may refuse the peer before connecting: the peer then never
        waits for it to say Connected."""
        return self in (Expect.REFUSE, Expect.REFUSE_OR_SERVE)


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
class RingSpec:
    """One ring of a driver's queue as the hostile peers see it."""

    key: str
    """The frontend node naming its page (``ring-ref``, or one of `ring_ref_keys`)."""
    layout: RingLayout | None
    """Its io/ring.h layout (None: the driver interprets the page itself)."""
    codec: SlotCodec | None
    """Its `ringkit.requests` codec on the end this describes (None: not on the layer)."""


def rings_of(end: object) -> tuple[RingSpec, ...]:
    """The rings of one queue of a driver's end class (or instance): ``ring-ref`` with its
    `ring_layout` and `request_codec`, or -- for a protocol naming its ring pages itself --
    one per `ring_ref_keys` entry, with the layout and codec of the matching entry of
    `request_codecs` (none when it does not give one per ring)."""
    keys = tuple(getattr(end, "ring_ref_keys", ()) or ())
    if not keys:
        return (RingSpec("ring-ref", getattr(end, "ring_layout", None), codec_of(end)),)
    codecs = tuple(getattr(end, "request_codecs", ()) or ())
    if len(codecs) != len(keys) or not all(isinstance(c, SlotCodec) for c in codecs):
        return tuple(RingSpec(key, None, None) for key in keys)
    return tuple(RingSpec(key, codec.layout, codec)
                 for key, codec in zip(keys, codecs, strict=True))


def split_mode(mode: str) -> tuple[str, int]:
    """``(name, ring)`` of a hostile peer's mode string ``<name>[@<ring>]``."""
    name, _, ring = mode.partition("@")
    return name, int(ring or 0)


@dataclass
class Play:
    """What a hostile end holds once it got as far as its mode needs: the attack's material."""

    dom: Domain
    peer_id: int
    end: Frontend | Backend
    """The driver's own end (never entered: only its hooks are used)."""
    mode: str
    rng: random.Random
    own: Nodes
    peer: Nodes
    layout: RingLayout | None
    """The attacked ring's layout."""
    buf: memoryview
    """The attacked ring's page (granted by a hostile frontend, mapped by a hostile backend)."""
    port: EventChannel
    codec: SlotCodec | None
    """The attacked end's codec for that ring (None for a driver not on `ringkit.requests`)."""
    ring: FrontRing | None = None
    """A hostile frontend's own ring engine (None for a hostile backend, or no layout)."""

    @property
    def entries(self) -> int:
        """Slots of the ring (0 without an io/ring.h layout)."""
        return self.layout.entries(len(self.buf)) if self.layout is not None else 0

    @property
    def slot(self) -> int:
        assert self.layout is not None, f"{self.mode} needs a ring layout"
        return self.layout.slot_size


Attack = Callable[[Play], Awaitable[None]]
"""A mode's misbehaviour once connected (see `Mode.attack`)."""
NodeEdit = Callable[[dict[str, str], str, int, str], None]
"""A hostile frontend's change to the ring nodes it publishes: (nodes, event channel key, its
port, the node naming the attacked ring's page)."""


@dataclass(frozen=True)
class Mode:
    """One way a hostile peer misbehaves, and what the end under attack must show.  The row
    carries the behaviour: what the peer publishes, the state it says, and its attack."""

    name: str
    expect: Expect
    needs_ring: bool = False
    """Only for drivers with an io/ring.h `ring_layout`."""
    about: str = ""
    needs_codec: Callable[[SlotCodec], bool] | None = None
    """Only for drivers on `ringkit.requests` whose attacked end has a `request_codec` this
    says yes to (the backend's for a hostile frontend, the frontend's for a hostile backend)."""
    attack: Attack | None = None
    """What the peer does once connected (None: nothing but ring the doorbell)."""
    edit_nodes: NodeEdit | None = None
    """A hostile frontend: how it changes the ring nodes it publishes."""
    nodes: tuple[tuple[str, str], ...] = ()
    """Nodes written over the driver's own: a hostile frontend's after its `publish` hook, a
    hostile backend's before its `advertise` hook."""
    says: XenbusState = S.INITIALISED
    """A hostile frontend: the state it says once it published its rings (blkif.h lets it
    skip Initialised)."""
    notify: bool = True
    """Ring the attacked end's doorbell after the attack (not once the port is closed, nor
    for a peer that stays quiet)."""
    each_ring: bool = False
    """The attack is on one ring (its page, indices, slots or ref node): for a driver with
    several rings per queue it is played against each ring in turn."""
    not_for_named_rings: str = ""
    """Why the mode cannot apply to a driver that names its ring pages (`ring_ref_keys`);
    empty: it applies."""


# --------------------------------------------------------------------------- the attacks


def _set(buf: memoryview, offset: int, value: int) -> None:
    U32.pack_into(buf, offset, value & 0xFFFF_FFFF)


def _get(buf: memoryview, offset: int) -> int:
    return int(U32.unpack_from(buf, offset)[0])


async def _until_requests(play: Play) -> int:
    """Wait for the frontend to put requests on the ring; their count."""
    while not (prod := _get(play.buf, SRING_REQ_PROD)):
        with anyio.move_on_after(0.05):
            await play.port.wait()
    return prod


def _set_index(offset: int, value: Callable[[Play], int]) -> Attack:
    """Write `value` into the shared ring header's index at `offset`."""
    async def attack(play: Play) -> None:
        _set(play.buf, offset, value(play))
    return attack


async def _garbage_slots(play: Play) -> None:
    count = min(play.entries, 8)
    end = SRING_HEADER_SIZE + count * play.slot
    play.buf[SRING_HEADER_SIZE:end] = play.rng.randbytes(end - SRING_HEADER_SIZE)
    _set(play.buf, SRING_REQ_PROD, count)


async def _scribble_header(play: Play) -> None:
    play.buf[:SRING_HEADER_SIZE] = b"\xff" * SRING_HEADER_SIZE


async def _garbage_page(play: Play) -> None:
    play.buf[:] = play.rng.randbytes(len(play.buf))


def _after_requests(attack: Attack) -> Attack:
    """A hostile backend's `attack`, once the frontend put requests on a ring with a layout."""
    async def after(play: Play) -> None:
        if play.layout is not None:
            await _until_requests(play)
        await attack(play)
    return after


async def _close_port(play: Play) -> None:
    await play.port.aclose()


async def _vanish(play: Play) -> None:
    os._exit(0)


async def _send_requests(play: Play) -> None:
    assert play.codec is not None and play.ring is not None, f"{play.mode} needs a codec"
    await send_hostile_requests(play.dom, play.peer_id, play.codec, play.ring, play.port,
                                play.peer, play.mode)


async def _answer_requests(play: Play) -> None:
    assert play.codec is not None, f"{play.mode} needs a request codec"
    await answer_hostile(play.codec, play.buf, play.port, play.mode)


def _response(play: Play, index: int, data: bytes) -> None:
    assert play.layout is not None
    start = SRING_HEADER_SIZE + (index % play.entries) * play.slot
    play.buf[start:start + play.layout.response_size] = data


async def _unsolicited_responses(play: Play) -> None:
    assert play.layout is not None
    for i in range(2):
        _response(play, i, play.rng.randbytes(play.layout.response_size))
    _set(play.buf, SRING_RSP_PROD, 2)


async def _garbage_responses(play: Play) -> None:
    assert play.layout is not None
    prod = await _until_requests(play)
    for i in range(prod):
        _response(play, i, play.rng.randbytes(play.layout.response_size))
    _set(play.buf, SRING_RSP_PROD, prod)


async def _duplicate_responses(play: Play) -> None:
    assert play.layout is not None
    prod = await _until_requests(play)
    size = play.layout.response_size
    copies = [bytes(play.buf[SRING_HEADER_SIZE + i * play.slot:][:size]) for i in range(prod)]
    for i, copy in enumerate(copies + copies):
        _response(play, i, copy)
    _set(play.buf, SRING_RSP_PROD, 2 * prod)


def _rsp_prod(value: Callable[[Play, int], int]) -> Attack:
    """Once the frontend put requests on the ring, say rsp_prod = `value(play, req_prod)`."""
    async def attack(play: Play) -> None:
        prod = await _until_requests(play)
        _set(play.buf, SRING_RSP_PROD, value(play, prod))
    return attack


CLOSE_PORT_MODE = "closes-port-then-closes"
"""The frontend closes its event channel, then closes in order (Closing, then Closed, each
waiting for the backend to follow), then connects again -- what Linux's xenbus_reset_frontend
asks of a backend after a frontend lost its connection."""


async def _close_port_then_close(play: Play) -> None:
    front, own, backend = play.end, play.own, play.peer
    assert isinstance(front, Frontend)
    await play.port.aclose()
    rings = rings_of(front)
    # the backend stops serving a frontend whose port is gone (it leaves Connected) ...
    await _await_state(backend, {S.UNKNOWN, S.INITIALISING, S.INIT_WAIT, S.INITIALISED,
                                 S.CLOSING, S.CLOSED})
    say("port-seen")
    # ... and must still follow the orderly close that comes after
    await own.write("state", S.CLOSING.to_wire())
    await _await_state(backend, {S.CLOSING, S.CLOSED})
    say("closing-followed")
    await own.write("state", S.CLOSED.to_wire())
    await _await_state(backend, {S.CLOSED})
    say("closed-followed")
    await own.write("state", S.INITIALISING.to_wire())
    await _await_state(backend, {S.INIT_WAIT})
    await front.negotiate(backend)
    again = await play.dom.events.alloc_unbound(play.peer_id)
    for ring in rings:
        pages = await play.dom.grants.share(play.peer_id, 1, writable=True)
        if ring.layout is not None:
            FrontRing.init(pages.buffer, ring.layout)
        await own.write(ring.key, str(pages.refs[0]))
    await own.write(front.event_channel_key, str(again.port))
    await front.publish(own)
    await own.write("state", S.INITIALISED.to_wire())
    await _await_state(backend, {S.CONNECTED})
    say("reconnected")


def _node(name: str, value: Callable[[str, int], str]) -> NodeEdit:
    """Publish ring node `name` ("event-channel": the driver's event channel key; "ring-ref":
    the node naming the attacked ring's page) as `value(event channel key, own port)`."""
    def edit(nodes: dict[str, str], key: str, port: int, ring_key: str) -> None:
        target = {"event-channel": key, "ring-ref": ring_key}.get(name, name)
        nodes[target] = value(key, port)
    return edit


def _no_ring_ref(nodes: dict[str, str], key: str, port: int, ring_key: str) -> None:
    del nodes[ring_key]


def _order_too_big(nodes: dict[str, str], key: str, port: int, ring_key: str) -> None:
    nodes["ring-page-order"] = "9"
    nodes.update({f"ring-ref{i}": nodes["ring-ref"] for i in range(4)})


# --------------------------------------------------------------------------- the tables


FRONTEND_MODES = {m.name: m for m in (
    Mode("garbage-slots", Expect.ERROR_OR_SERVE, True, "random bytes in every request slot",
         attack=_garbage_slots, each_ring=True),
    Mode("req-prod-ahead", Expect.DISCONNECT, True, "req_prod more than the ring size ahead",
         attack=_set_index(SRING_REQ_PROD, lambda p: p.entries + 5), each_ring=True),
    Mode("req-prod-backwards", Expect.DISCONNECT, True, "req_prod behind req_cons",
         attack=_set_index(SRING_REQ_PROD, lambda p: -1), each_ring=True),
    Mode("req-prod-huge", Expect.DISCONNECT, True, "req_prod = 2**31 - 1",
         attack=_set_index(SRING_REQ_PROD, lambda p: 2**31 - 1), each_ring=True),
    Mode("scribbled-header", Expect.DISCONNECT, True, "0xff over the shared ring's header",
         attack=_scribble_header, each_ring=True),
    Mode("garbage-page", Expect.ERROR_OR_SERVE, False, "random bytes over the whole page",
         attack=_garbage_page, each_ring=True),
    Mode("closes-event-channel", Expect.DISCONNECT, False, "closes its event channel",
         attack=_close_port, notify=False),
    Mode("vanishes", Expect.DISCONNECT, False, "exits with its pages still granted",
         attack=_vanish),
    Mode("ring-ref-missing", Expect.REFUSE, False, "no ring-ref node", edit_nodes=_no_ring_ref,
         each_ring=True),
    Mode("ring-ref-garbage", Expect.REFUSE, False, "ring-ref = 'x'",
         edit_nodes=_node("ring-ref", lambda key, port: "x"), each_ring=True),
    Mode("ring-ref-stale", Expect.REFUSE, False, "ring-ref naming no grant",
         edit_nodes=_node("ring-ref", lambda key, port: str(STALE_REF)), each_ring=True),
    Mode("event-channel-garbage", Expect.REFUSE, False, "event channel = 'x'",
         edit_nodes=_node("event-channel", lambda key, port: "x")),
    Mode("event-channel-zero", Expect.REFUSE, False, "event channel = 0",
         edit_nodes=_node("event-channel", lambda key, port: "0")),
    Mode("event-channel-unknown", Expect.REFUSE, False, "event channel nobody allocated",
         edit_nodes=_node("event-channel", lambda key, port: str(port + 4000))),
    Mode("ring-page-order-too-big", Expect.REFUSE, False, "ring-page-order = 9",
         edit_nodes=_order_too_big,
         not_for_named_rings="ring-page-order is not read by a protocol that names its "
         "ring pages (one page per ring-ref key: ring_ref_keys), as Linux's netback reads none"),
    Mode("too-many-queues", Expect.REFUSE, False, "multi-queue-num-queues = 9999",
         edit_nodes=_node("multi-queue-num-queues", lambda key, port: "9999")),
    Mode("wrong-protocol", Expect.REFUSE_OR_SERVE, False, "protocol = x86_32-abi",
         nodes=(("protocol", "x86_32-abi"),)),
    Mode("refs-never-granted", Expect.ERROR_OR_SERVE, True,
         "requests naming a grant ref nobody granted", names_refs,
         _send_requests, each_ring=True),
    Mode("refs-granted-elsewhere", Expect.ERROR_OR_SERVE, True,
         "requests naming a page granted to another domain", names_refs,
         _send_requests, each_ring=True),
    Mode("refs-revoked", Expect.ERROR_OR_SERVE, True,
         "requests naming a page revoked right after they were published", names_refs,
         _send_requests, each_ring=True),
    Mode("ref-count-too-big", Expect.ERROR_OR_SERVE, True,
         "requests naming more grant refs than fit", counts_refs, _send_requests, each_ring=True),
    Mode("duplicate-ids", Expect.ERROR_OR_SERVE, True,
         "two requests in flight with the same id", any_codec, _send_requests, each_ring=True),
)}
"""The hostile frontends the conformance suite sends against a backend, one check each."""

SKIPS_INITIALISED_MODE = "skips-initialised"
"""A frontend going from Initialising straight to Connected, as blkif.h allows."""

FRONTEND_SCENARIOS = {m.name: m for m in (
    Mode(SKIPS_INITIALISED_MODE, Expect.SERVE, False, "says Connected without Initialised",
         says=S.CONNECTED),
    Mode(CLOSE_PORT_MODE, Expect.DISCONNECT, False,
         "closes its event channel, then closes in order and connects again",
         attack=_close_port_then_close, notify=False),
)}
"""Frontends that break no rule but take an unusual path, for checks of their own."""

BACKEND_MODES = {m.name: m for m in (
    Mode("garbage-responses", Expect.DISCONNECT, True, "random bytes as the responses",
         attack=_garbage_responses, each_ring=True),
    Mode("unsolicited-responses", Expect.DISCONNECT, True, "responses before any request",
         attack=_unsolicited_responses, each_ring=True),
    Mode("duplicate-responses", Expect.DISCONNECT, True,
         "each request slot copied back twice as its response",
         attack=_duplicate_responses, each_ring=True),
    Mode("rsp-prod-ahead", Expect.DISCONNECT, True, "rsp_prod more than the ring size ahead",
         attack=_rsp_prod(lambda p, prod: prod + p.entries + 5), each_ring=True),
    Mode("rsp-prod-backwards", Expect.DISCONNECT, True, "rsp_prod behind rsp_cons",
         attack=_rsp_prod(lambda p, prod: -1), each_ring=True),
    Mode("rsp-prod-huge", Expect.DISCONNECT, True, "rsp_prod = 2**31 - 1",
         attack=_rsp_prod(lambda p, prod: 2**31 - 1), each_ring=True),
    Mode("scribbled-header", Expect.DISCONNECT, True, "0xff over the shared ring's header",
         attack=_after_requests(_scribble_header), each_ring=True),
    Mode("garbage-page", Expect.DISCONNECT, False, "random bytes over the whole page",
         attack=_after_requests(_garbage_page), each_ring=True),
    Mode("stops-answering", Expect.NO_ANSWER, False, "takes requests, never answers",
         notify=False),
    Mode("closes-event-channel", Expect.DISCONNECT, False, "closes its event channel",
         attack=_close_port, notify=False),
    Mode("vanishes", Expect.DISCONNECT, False, "exits with the pages still mapped",
         attack=_vanish),
    Mode("max-ring-page-order-garbage", Expect.REFUSE, False, "max-ring-page-order = 'x'",
         nodes=(("max-ring-page-order", "x"),)),
    Mode("answers-unissued-ids", Expect.DISCONNECT, True,
         "answers a request with an id the frontend never issued", any_codec,
         _answer_requests, each_ring=True),
    Mode("answers-twice", Expect.DISCONNECT, True,
         "answers a request twice (its id in two responses)", any_codec, _answer_requests,
         each_ring=True),
    Mode(CANCELLED_MODE, Expect.SERVE, True,
         "holds requests until the frontend cancelled them, then answers them", any_codec,
         _answer_requests, each_ring=True),
)}
"""The hostile backends the conformance suite sends against a frontend, one check each."""


def codec_of(end: object) -> SlotCodec | None:
    """The `request_codec` of a driver's end class (None for a driver not on the layer)."""
    codec = getattr(end, "request_codec", None)
    return codec if isinstance(codec, SlotCodec) else None


def _mode(table: dict[str, Mode], name: str, side: str) -> Mode:
    try:
        return table[name]
    except KeyError:
        raise SystemExit(f"no hostile {side} mode {name!r}") from None


async def _await_state(nodes: Nodes, wanted: set[XenbusState]) -> str:
    """Wait for the state node under `nodes` to read one of `wanted`; what it read."""
    words = {state.to_wire() for state in wanted}
    while True:
        state = await nodes.read_optional("state")
        if state is not None and state in words:
            return state
        await anyio.sleep(0.01)


async def _pose(end: Frontend | Backend, mode: str
                ) -> tuple[random.Random, Nodes, Nodes, RingLayout | None]:
    """Start posing as `end` (an instance of the driver's class, never entered: only its hooks
    are used): a random source for `mode`, own and peer dirs, the ring layout; says
    Initialising."""
    await end.own_nodes.write("state", S.INITIALISING.to_wire())
    return random.Random(mode), end.own_nodes, end.peer_nodes, end.ring_layout


async def _carry_out(mode: Mode, play: Play) -> NoReturn:
    """Say ``connected``, misbehave as `mode` says, ring the doorbell (unless the mode says
    not to), say ``done``, and hold everything until killed."""
    say("connected")
    if mode.attack is not None:
        await mode.attack(play)
    if mode.notify:
        play.port.notify()
    say("done")
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _refused() -> NoReturn:
    """The attacked end is to refuse what was published: say ``done`` and hold it."""
    say("done")
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def hostile_frontend(dom: Domain, backend_id: int, driver: DriverUnderTest,
                           mode: str) -> None:
    """Play the frontend of `driver`'s device as `mode` (``<mode>[@<ring>]``, a mode of
    `FRONTEND_MODES` or `FRONTEND_SCENARIOS`) says, against the backend in domain
    `backend_id`: every ring of the queue shared and published, ring number `ring` attacked."""
    attack_name, index = split_mode(mode)
    row = _mode({**FRONTEND_MODES, **FRONTEND_SCENARIOS}, attack_name, "frontend")
    front = driver.make_frontend(dom, backend_id)  # never entered: its hooks only
    rng, own, backend, _ = await _pose(front, mode)
    specs = rings_of(front)
    attacked = _ring(specs, index, "frontend")
    await _await_state(backend, {S.INIT_WAIT})
    await front.negotiate(backend)
    port = await dom.events.alloc_unbound(backend_id)
    key = front.event_channel_key
    nodes: dict[str, str] = {}
    shared = []
    for spec in specs:
        pages = await dom.grants.share(backend_id, 1, writable=True)
        shared.append(pages)
        nodes[spec.key] = str(pages.refs[0])
    nodes[key] = str(port.port)
    rings = [FrontRing.init(pages.buffer, spec.layout) if spec.layout is not None else None
             for pages, spec in zip(shared, specs, strict=True)]
    if row.edit_nodes is not None:
        row.edit_nodes(nodes, key, port.port, attacked.key)
    for name, value in nodes.items():
        await own.write(name, value)
    await front.publish(own)
    for name, value in row.nodes:
        await own.write(name, value)
    await own.write("state", row.says.to_wire())
    if row.expect.refused:
        await _refused()
    await _await_state(backend, {S.CONNECTED})
    back_specs = rings_of(driver.backend)
    codec = back_specs[index].codec if index < len(back_specs) else None
    await _carry_out(row, Play(dom, backend_id, front, attack_name, rng, own, backend,
                               attacked.layout, shared[index].buffer, port, codec,
                               rings[index]))


async def hostile_backend(dom: Domain, frontend_id: int, driver: DriverUnderTest,
                          mode: str) -> None:
    """Play the backend of `driver`'s device as `mode` (``<mode>[@<ring>]``, a mode of
    `BACKEND_MODES`) says, against the frontend in domain `frontend_id`: every ring of the
    queue mapped, ring number `ring` attacked."""
    attack_name, index = split_mode(mode)
    row = _mode(BACKEND_MODES, attack_name, "backend")
    back = driver.make_backend(dom, frontend_id)  # never entered: its hooks only
    rng, own, frontend, _ = await _pose(back, mode)
    specs = rings_of(back)
    attacked = _ring(specs, index, "backend")
    for name, value in row.nodes:
        await own.write(name, value)
    await back.advertise(own)
    await own.write("state", S.INIT_WAIT.to_wire())
    if row.expect is Expect.REFUSE:
        await _refused()
    await _await_state(frontend, {S.INITIALISED, S.CONNECTED})
    refs = [await frontend.read_int(spec.key) for spec in specs]
    split = back.split_event_channel_keys
    if split and await frontend.read_optional(split[0]) is not None:
        # split event channels (the frontend took the driver's offer): bind every ring's,
        # play on the attacked ring's
        numbers = [await frontend.read_int(key) for key in split]
    else:
        numbers = [await frontend.read_int(back.event_channel_key)]
    mapped = [await dom.grants.map(frontend_id, [ref], writable=True) for ref in refs]
    ports = [await dom.events.bind_interdomain(frontend_id, n) for n in numbers]
    port = ports[index] if index < len(ports) else ports[0]
    await driver_hook(back, Backend, "rings_mapped")(own)
    await own.write("state", S.CONNECTED.to_wire())
    front_specs = rings_of(driver.frontend)
    codec = front_specs[index].codec if index < len(front_specs) else None
    await _carry_out(row, Play(dom, frontend_id, back, attack_name, rng, own, frontend,
                               attacked.layout, mapped[index].buffer, port, codec))


def _ring(specs: tuple[RingSpec, ...], index: int, side: str) -> RingSpec:
    if not 0 <= index < len(specs):
        raise SystemExit(f"the hostile {side} has no ring {index} to attack (the driver has "
                         f"{len(specs)})")
    return specs[index]
