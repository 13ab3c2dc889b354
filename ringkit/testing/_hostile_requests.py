"""Hostile requests and responses for drivers built on `ringkit.requests`.

Both peers build their slots from the attacked end's `request_codec`, and set only the fields it
names -- id, operation, grant refs and their count on a request; id, echoed fields and status on
a response -- leaving the rest zero: the attack is on the layer's part of the protocol, whatever
the driver keeps in the rest of the slot.

A hostile frontend sends bad requests and reports, one line each on stdout, what it sent and
what came back, so that the check can judge what nothing outside the ring sees (was every
request answered, and refused with the error status?)::

    sent <id> <op> <kind>       a request was published (op "-": the codec has none); kind
                                "unusable": it names a page the backend cannot use, "racy":
                                a page revoked just after it was told, "good": none of these
    answer <id> <status>        a response came ("-": the codec has no status field)
    closed <state>              the backend left Connected before answering everything
    broken <what>               the backend wrote impossible ring indices
    done                        everything sent was answered, or the backend left

Which operations it uses: each one `RefList.operations` names, or -- when any operation names
refs -- each of `RefList.writable_operations` (the backend writes into the pages) and the
smallest one that is not (it reads them).  A request naming a bad ref names good ones before it
when the ref list has room, pages granted to the backend: a backend that maps ref by ref must
let go of those when it meets the bad one.

A hostile backend answers the first requests the frontend sends (see `answer_hostile`).
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import NoReturn

import anyio

from .._errors import PeerGoneError, RemoteProtocolError, RingkitError
from ..abc import Domain, EventChannel, SharedPages
from ..device import Nodes
from ..proto.layout import SRING_HEADER_SIZE, SRING_REQ_PROD, SRING_RSP_PROD
from ..proto.ring import FrontRing
from ..requests.codec import Field, SlotCodec
from ._peer import STALE_REF, hear, say

__all__ = ("CANCELLED_MODE", "answer_hostile", "plausible_response", "request_slot",
           "send_hostile_requests")

U32 = struct.Struct("<I")

BYSTANDER_DOMID = 0x7FEF
"""The largest ordinary domid: a grantee for "granted to another domain" when no domain but the
backend's is known (dom0 loopback on real Xen; Xen checks a grant's domain only when it is
mapped)."""

POLL = 0.05
"""Seconds between looks at the ring and the peer's state while waiting."""

CANCELLED_MODE = "answers-cancelled"
"""The hostile backend takes the first requests, says ``holding`` and waits for ``release`` on
stdin (the check cancels the frontend's traffic in between), answers them, says ``answered``,
then says ``took`` when the frontend sends more -- and holds those."""


def request_slot(codec: SlotCodec, rid: int, operation: int | None, refs: Sequence[int],
                 count: int | None = None) -> bytearray:
    """A request naming `refs` with id `rid` and `operation`; its count field (if it has one)
    says `count` (default: ``len(refs)``).  At most `RefList.maximum` refs are written."""
    slot = bytearray(codec.layout.request_size)
    codec.request_id.write(slot, rid)
    if codec.operation is not None and operation is not None:
        codec.operation.write(slot, operation)
    spec = codec.refs
    if spec is not None:
        for i, ref in enumerate(refs[:spec.maximum]):
            U32.pack_into(slot, spec.offset + i * spec.stride + spec.ref_offset, ref)
        if isinstance(spec.count, Field):
            spec.count.write(slot, len(refs) if count is None else count)
    return slot


def plausible_response(codec: SlotCodec, request: bytes | bytearray | memoryview,
                       rid: int) -> bytearray:
    """A response that reads as a success: `rid` in its id field, the codec's `echo` fields
    copied from `request`, status 0 (if it has a status field), zeroes elsewhere."""
    out = bytearray(codec.layout.response_size)
    codec.response_id.write(out, rid % codec.response_id.limit)
    for to, frm in codec.echo:
        value = frm.read(request) % to.limit
        if to.signed and value >= to.limit // 2:
            value -= to.limit
        to.write(out, value)
    if codec.status is not None:
        codec.status.write(out, 0)
    return out


def attack_operations(codec: SlotCodec) -> Sequence[int | None]:
    """The operations the hostile requests use (see the module docstring)."""
    if codec.operation is None:
        return [None]
    spec = codec.refs
    if spec is None:
        return [0]
    if spec.operations is not None:
        return sorted(spec.operations)
    writable = spec.writable_operations
    reads = next(op for op in itertools.count() if op not in writable)
    return [*sorted(writable), reads]


def _largest(f: Field) -> int:
    return f.limit // 2 - 1 if f.signed else f.limit - 1


def _bad_list(codec: SlotCodec, bad: int, good: int) -> list[int]:
    """A ref list ending in `bad`, good refs before it while the list has room for them."""
    spec = codec.refs
    assert spec is not None
    length = min(2, spec.maximum) if isinstance(spec.count, Field) else spec.count
    return [good] * (length - 1) + [bad]


def _good_list(codec: SlotCodec, good: int) -> list[int]:
    spec = codec.refs
    if spec is None:
        return []
    return [good] * (1 if isinstance(spec.count, Field) else spec.count)


async def _bystander(dom: Domain, backend_id: int) -> int:
    """A domain other than the backend's: this one (the frontend's), else any other domain the
    store lists, else `BYSTANDER_DOMID`."""
    if dom.domid != backend_id:
        return dom.domid
    with suppress(RingkitError):
        for name in await dom.store.directory("/local/domain"):
            if name.isdigit() and int(name) != backend_id:
                return int(name)
    return BYSTANDER_DOMID


class _Requester:
    """The hostile frontend's ring: puts requests, takes and reports the answers."""

    def __init__(self, codec: SlotCodec, ring: FrontRing, port: EventChannel,
                 backend: Nodes) -> None:
        self.codec = codec
        self.ring = ring
        self.port = port
        self.backend = backend
        self.ids = itertools.count()
        self.outstanding: Counter[int] = Counter()
        self.over = False
        """The backend left Connected (or broke the ring): stop."""
        self.port_gone = False

    def put(self, rid: int, operation: int | None, refs: Sequence[int], kind: str,
            count: int | None = None) -> None:
        """Put one request on the ring (published by the next `push`); `kind` is reported."""
        if self.ring.full:
            raise AssertionError("the hostile requests do not fit the ring")
        self.ring.put_request(request_slot(self.codec, rid, operation, refs, count))
        self.outstanding[rid] += 1
        say(f"sent {rid} {'-' if operation is None else operation} {kind}")

    def push(self) -> None:
        self.ring.push_requests()

    @property
    def unanswered(self) -> int:
        """Requests sent and not answered yet."""
        return sum(n for n in self.outstanding.values() if n > 0)

    async def answers(self) -> None:
        """Report answers until everything sent was answered, or the backend left Connected."""
        codec, ring = self.codec, self.ring
        while not self.over and self.unanswered:
            try:
                response = ring.take_response()
            except RemoteProtocolError as exc:
                say(f"broken {exc}")
                self.over = True
                return
            if response is not None:
                rid = codec.response_id.read(response)
                status = "-" if codec.status is None else str(codec.status.read(response))
                self.outstanding[rid] -= 1
                say(f"answer {rid} {status}")
                continue
            if ring.final_check_for_responses():
                continue
            state = await self.backend.read_optional("state")
            if state != "4":
                say(f"closed {state}")
                self.over = True
                return
            if self.port_gone:
                await anyio.sleep(POLL)
                continue
            try:
                with anyio.move_on_after(POLL):
                    await self.port.wait()
            except PeerGoneError:
                self.port_gone = True  # the backend closed its end: its state node says why


async def send_hostile_requests(dom: Domain, backend_id: int, codec: SlotCodec,
                                ring: FrontRing, port: EventChannel, backend: Nodes,
                                mode: str) -> NoReturn:
    """Play hostile frontend mode `mode` on a connected ring (see the module docstring), say
    ``done``, and hold every page until killed."""
    r = _Requester(codec, ring, port, backend)
    ops = attack_operations(codec)
    held: list[SharedPages] = []  # kept until the process is killed, like the ring

    async def share(to: int) -> int:
        pages = await dom.grants.share(to, 1, writable=True)
        held.append(pages)
        return pages.refs[0]

    good = await share(backend_id)

    async def batch(bad: int | None = None, *, twice: bool = False, count: int | None = None,
                    revoke: Callable[[], Awaitable[None]] | None = None,
                    before_notify: bool = False
                    ) -> None:
        kind = "racy" if revoke is not None and not before_notify else "unusable"
        for op in ops:
            rid = next(r.ids)
            for _ in range(2 if twice else 1):
                if count is not None:
                    spec = codec.refs
                    assert spec is not None
                    r.put(rid, op, [good] * spec.maximum, kind, count)
                elif bad is not None:
                    r.put(rid, op, _bad_list(codec, bad, good), kind)
                else:
                    r.put(rid, op, _good_list(codec, good), "good")
        r.push()
        if revoke is not None and before_notify:
            await revoke()
        port.notify()
        if revoke is not None and not before_notify:
            await revoke()
        await r.answers()

    if mode == "refs-never-granted":
        await batch(STALE_REF)
    elif mode == "refs-granted-elsewhere":
        await batch(await share(await _bystander(dom, backend_id)))
    elif mode == "refs-revoked":
        # revoked after the requests were published: before the backend was told, then right
        # after (mid-request: the backend may or may not have mapped the page by then)
        for before_notify in (True, False):
            doomed = await dom.grants.share(backend_id, 1, writable=True)
            await batch(doomed.refs[0], revoke=doomed.aclose, before_notify=before_notify)
            if r.over:
                break
    elif mode == "ref-count-too-big":
        spec = codec.refs
        assert spec is not None and isinstance(spec.count, Field)
        for count in sorted({spec.maximum + 1, _largest(spec.count)}):
            await batch(count=count)
            if r.over:
                break
    elif mode == "duplicate-ids":
        await batch(twice=True)
    else:
        raise SystemExit(f"unknown request mode {mode!r}")
    say("done")
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def answer_hostile(codec: SlotCodec, buf: memoryview, port: EventChannel,
                         mode: str) -> NoReturn:
    """Play hostile backend mode `mode` on a connected ring `buf` (the frontend's page): wait
    for the first requests, then answer with an id never issued, answer one request twice, or
    (`CANCELLED_MODE`) hold them until told, answer them, and report the next ones; then hold
    the ring until killed."""
    layout = codec.layout
    slot = layout.slot_size
    entries = layout.entries(len(buf))
    prod = min(await _requests_after(buf, port, 0), entries)
    requests = [bytes(buf[SRING_HEADER_SIZE + i * slot:][:layout.request_size])
                for i in range(prod)]
    first = requests[0]
    if mode == "answers-unissued-ids":
        # a RequestQueue (like Linux's blkfront) issues ids 0 .. ring size - 1 per ring
        answers = [plausible_response(codec, first, _largest(codec.response_id))]
    elif mode == "answers-twice":
        # both in one push: with two requests in flight the second copy is an id answered
        # already (with one, it is a response for no request: the ring itself says so)
        rid = codec.request_id.read(first)
        answers = [plausible_response(codec, first, rid)] * 2
    elif mode == CANCELLED_MODE:
        say("holding")
        await hear("release")
        answers = [plausible_response(codec, req, codec.request_id.read(req))
                   for req in requests]
    else:
        raise SystemExit(f"unknown request mode {mode!r}")
    for i, answer in enumerate(answers):
        start = SRING_HEADER_SIZE + (i % entries) * slot
        buf[start:start + slot] = answer + bytes(slot - len(answer))
    U32.pack_into(buf, SRING_RSP_PROD, len(answers))
    port.notify()
    if mode == CANCELLED_MODE:
        say("answered")
        await _requests_after(buf, port, prod)
        say("took")
    else:
        say("done")
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _requests_after(buf: memoryview, port: EventChannel, seen: int) -> int:
    """Wait until the frontend published requests past `seen`; its req_prod then.  If the
    frontend closes its port first, hold everything until killed (the check judges that)."""
    while (prod := int(U32.unpack_from(buf, SRING_REQ_PROD)[0])) == seen:
        try:
            with anyio.move_on_after(POLL):
                await port.wait()
        except PeerGoneError:
            await anyio.sleep_forever()
    return prod
