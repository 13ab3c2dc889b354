"""`RingChannel`: an anyio object stream over one io/ring.h ring and its event channel.

Theory of operation
-------------------
The sans-I/O halves (`ringkit.proto.ring.FrontRing` / `BackRing`) hold the indices and answer
"notify the peer?" / "anything pending?".  This shell does the waiting and the doorbells:

* **receive** drains whatever the ring holds; when it is empty it does ring.h's *final check*
  (publish "wake me at the next item", fence, look again) and only then sleeps on the event
  channel.  Spurious and coalesced events are harmless: every wake-up looks at the ring again.
* **send** puts one slot (or a batch) and pushes; the peer's doorbell rings only when the
  engine's hold-off rule says the peer asked for it.
* A frontend's `send` waits for a free slot, which appears when a response is received: some
  task must be receiving responses while others send.
* **Polling** (opt-in, `poll_us` > 0; the NAPI / io_uring SQPOLL idea): before the final
  check, a receiver that expects items soon spins on the ring for up to `poll_us`
  microseconds, yielding to the event loop between looks, and sleeps only if nothing came.
  While it spins it has not republished its event index, so by ring.h's hold-off the peer rings
  no doorbell: both sides save the event channel's system calls and wake-ups.  A frontend
  spins only while requests are outstanding; a backend only while the ring is busy (its last
  take found requests): a window that ends empty sends it back to sleeping until the peer
  notifies.  Off by default: spinning burns a CPU the peer may need.
* `stats` (`LinkStats`) counts pushes, doorbells, sleeps and polling windows.

Only one task may receive at a time and only one may send at a time (`anyio.BusyResourceError`
otherwise).  A hostile peer (`RemoteProtocolError` from the engine) or a dead one
(`PeerGoneError` from the event channel) surfaces as `anyio.BrokenResourceError` chained
``from`` that error, after which the channel stays broken.  Items are whole slots as bytes:
requests and responses are encoded and parsed by the driver (copied out of the page once).
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import anyio.lowlevel
from anyio.abc import ObjectStream

from .._errors import LocalProtocolError, PeerGoneError, RemoteProtocolError
from ..abc import EventChannel
from ..proto.ring import BackRing, FrontRing
from ._link import PeerLink
from ._poll import MAX_POLL_US, poll_seconds, poll_until

__all__ = ("MAX_POLL_US", "BackRingChannel", "FrontRingChannel", "RingChannel", "poll_seconds")

Msg = bytes | bytearray | memoryview

SETTLE_ROUNDS = 4
"""With polling on, how many scheduling rounds a receiver with nothing expected gives the
other tasks to send something before it sleeps (a yield each, not a timed spin)."""


class RingChannel(PeerLink, ObjectStream[bytearray]):
    """Common part of `FrontRingChannel` and `BackRingChannel`."""

    def __init__(self, engine: FrontRing | BackRing, event: EventChannel, *,
                 poll_us: int = 0) -> None:
        PeerLink.__init__(self, event)
        self._engine = engine
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        self._space = anyio.Event()
        self._space_wanted = False
        self._slot_size = engine.layout.slot_size
        self._rx_buf = bytearray()
        """Where bursts are copied out of the ring; reused (grown, never shrunk)."""
        self._poll_seconds = poll_seconds(poll_us)
        self._busy = False
        """The last take found items (a backend polls only then)."""

    @property
    def poll_us(self) -> int:
        """Microseconds a receiver spins on the ring before sleeping (0: never; the default),
        as given to the constructor (which raises `ConfigError` outside 0..`MAX_POLL_US`)."""
        return round(self._poll_seconds * 1e6)

    @property
    def engine(self) -> FrontRing | BackRing:
        """The sans-I/O ring half (for introspection: entries, indices, error)."""
        return self._engine

    @property
    def event(self) -> EventChannel:
        """The event channel this ring's doorbells go through."""
        return self._event

    # ------------------------------------------------------------------ engine hooks

    def _take(self) -> bytearray | None:
        raise NotImplementedError

    def _take_into(self, buf: bytearray | memoryview, max_count: int) -> int:
        raise NotImplementedError

    def _final_check(self) -> bool:
        raise NotImplementedError

    def _room(self) -> int:
        raise NotImplementedError

    def _put(self, msg: Msg) -> None:
        raise NotImplementedError

    def _push(self) -> bool:
        raise NotImplementedError

    def _pending(self) -> int:
        raise NotImplementedError

    def _expecting(self) -> bool:
        """Whether items are likely soon, so that polling for them is worth a CPU."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state checks

    def _wake_sleepers(self) -> None:
        self._space.set()

    def _wake_senders(self) -> None:
        # Only when a sender sleeps: a fresh anyio.Event per receive costs about a microsecond.
        if self._space_wanted:
            self._space_wanted = False
            self._space.set()
            self._space = anyio.Event()

    # ------------------------------------------------------------------ receive

    def receive_nowait(self) -> bytearray:
        """The next item if one is pending, else `anyio.WouldBlock`.

        Raises:
            anyio.WouldBlock: nothing pending.
            anyio.BrokenResourceError: the peer broke the protocol (chained from it).
            anyio.ClosedResourceError: closed locally.
        """
        self._check()
        try:
            item = self._take()
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if item is None:
            raise anyio.WouldBlock
        self._wake_senders()
        return item

    def receive_batch_nowait(self, max_count: int = 64) -> list[bytearray]:
        """Up to `max_count` pending items (possibly none), each a private copy the caller may
        keep.  The burst is copied out of the ring in one or two moves into a buffer the channel
        reuses, and each item is cut from it: one allocation per item.  (Handing out views of
        that buffer instead measured no faster: a memoryview slice is an allocation too.)"""
        count = self._take_burst(max_count)
        buf, slot, size = self._rx_buf, self._slot_size, self._item_size()
        return [buf[i * slot : i * slot + size] for i in range(count)]

    def _take_burst(self, max_count: int) -> int:
        """Copy up to `max_count` pending slots into the reused `_rx_buf`; return how many."""
        self._check()
        if len(self._rx_buf) < self._slot_size * max_count:
            self._rx_buf = bytearray(self._slot_size * max_count)
        try:
            count = self._take_into(self._rx_buf, max_count)
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if count:
            self._busy = True
            self._wake_senders()
        return count

    def _item_size(self) -> int:
        raise NotImplementedError

    async def _wait_for_items(self) -> None:
        """Sleep until the peer may have produced something (after the final check), polling
        the ring first when that is switched on and items are expected."""
        if self._poll_seconds:
            # a sender woken by what was just received may be about to send again: let it run
            # a few scheduling rounds, so that a receive loop in its own task (as drivers have)
            # polls for that answer too instead of going to sleep just before it is sent
            for _ in range(SETTLE_ROUNDS):
                if self._expecting():
                    break
                await anyio.lowlevel.checkpoint()
                self._check()
        if self._poll_seconds and self._expecting():
            self.stats.polls += 1
            if await self._poll():
                self.stats.poll_hits += 1
                return
            self._busy = False  # idle for a whole window: sleep until the peer notifies
        try:
            if self._final_check():
                return
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        self.stats.sleeps += 1
        try:
            await self._event.wait()
        except PeerGoneError as exc:
            raise self._break(exc) from exc

    async def _poll(self) -> bool:
        """Look at the ring until items are pending (True) or the window is over (False)."""
        return await poll_until(self._poll_seconds, self._ready, self._check)

    def _ready(self) -> bool:
        try:
            return bool(self._pending())
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc

    async def receive(self) -> bytearray:
        """The next item, waiting for the peer as needed.

        Raises:
            anyio.BrokenResourceError: the peer broke the protocol or went away.
            anyio.ClosedResourceError: closed locally.
            anyio.BusyResourceError: another task is already receiving.
        """
        return (await self.receive_batch(1))[0]

    async def receive_batch(self, max_count: int = 64) -> list[bytearray]:
        """At least one and up to `max_count` items, waiting for the first as needed."""
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                items = self.receive_batch_nowait(max_count)
                if items:
                    return items
                await self._wait_for_items()
        finally:
            self._receiving = False

    def receive_into_nowait(self, buf: bytearray | memoryview, max_count: int = 64) -> int:
        """`receive_into` without waiting: copy up to `max_count` pending items into `buf`
        (item i at ``i * slot_size``); return how many (possibly 0)."""
        size = buf.nbytes if isinstance(buf, memoryview) else len(buf)
        max_count = min(max_count, size // self._slot_size)
        if max_count < 1:
            raise ValueError(f"a {size}-byte buffer holds no {self._slot_size}-byte slot")
        self._check()
        try:
            count = self._take_into(buf, max_count)
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if count:
            self._busy = True
            self._wake_senders()
        return count

    async def receive_into(self, buf: bytearray | memoryview, max_count: int = 64) -> int:
        """Copy at least one and up to `max_count` items into `buf`, item i at ``i *
        slot_size`` (whole slots: the request-queue layer reads their fields from there in
        one call), waiting for the first as needed; return how many.  Nothing is allocated.

        Raises: as `receive_batch`; ValueError if `buf` holds no whole slot.
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        size = buf.nbytes if isinstance(buf, memoryview) else len(buf)
        max_count = min(max_count, size // self._slot_size)
        if max_count < 1:
            raise ValueError(f"a {size}-byte buffer holds no {self._slot_size}-byte slot")
        self._receiving = True
        try:
            await anyio.lowlevel.checkpoint()
            while True:
                count = self.receive_into_nowait(buf, max_count)
                if count:
                    return count
                await self._wait_for_items()
        finally:
            self._receiving = False

    # ------------------------------------------------------------------ send

    def send_from_nowait(self, src: bytes | bytearray | memoryview, count: int) -> int:
        """Put as many as fit of the `count` items laid out at slot stride in `src` (item i at
        ``i * slot_size``, the bytes after its message zero), then push once; return how many.

        Raises:
            anyio.WouldBlock: no free slot for the first item.
            LocalProtocolError: `src` is too short, or (backend) more responses than requests.
            anyio.BrokenResourceError / ClosedResourceError: as `send_batch_nowait`.
        """
        self._check()
        if self._eof_sent:
            raise anyio.ClosedResourceError
        if count <= 0:
            return 0
        room = self._room_for(count)
        if room == 0:
            raise anyio.WouldBlock
        try:
            self._put_from(src, room)
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        self._publish()
        return room

    def _room_for(self, count: int) -> int:
        return min(count, self._room())

    def _put_from(self, src: bytes | bytearray | memoryview, count: int) -> None:
        raise NotImplementedError

    def send_nowait(self, item: Msg) -> None:
        """Put `item` into the ring and push it (notifying the peer if it asked).

        Raises:
            anyio.WouldBlock: no free slot (frontend: wait for responses to be received).
            LocalProtocolError: the item is too long, or (backend) no request awaits a response.
        """
        self.send_batch_nowait((item,))

    def send_batch_nowait(self, items: Iterable[Msg]) -> int:
        """Put as many of `items` as fit, then push once; return how many were sent.

        If putting an item fails (`LocalProtocolError`: too long, or a response nobody asked
        for), the items before it are still pushed -- they are sent, and the peer is notified
        if it asked -- and the error, which notes how many were sent, is raised; that item and
        the ones after it are not sent.  The ring never keeps put-but-unpushed slots.

        Raises:
            anyio.WouldBlock: no free slot for the first item.
            LocalProtocolError: an item could not be put (see above).
            anyio.BrokenResourceError: the peer broke the protocol or went away.
        """
        self._check()
        if self._eof_sent:
            raise anyio.ClosedResourceError
        sent = 0
        try:
            for item in items:
                if self._room() == 0:
                    if sent == 0:
                        raise anyio.WouldBlock
                    break
                self._put(item)
                sent += 1
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        except LocalProtocolError as exc:
            exc.add_note(f"the {sent} item(s) before it in this batch were sent")
            raise
        finally:
            if sent and self._broken is None:
                self._publish()
        return sent

    def _publish(self) -> None:
        """Push what was put and ring the peer's doorbell if it asked."""
        self.stats.pushes += 1
        try:
            notify = self._push()
        except RemoteProtocolError as exc:
            raise self._break(exc) from exc
        if notify:
            self._notify()

    async def send(self, item: Msg) -> None:
        """Send one item, waiting for a free slot if needed."""
        await self.send_batch((item,))

    async def send_batch(self, items: Iterable[Msg]) -> None:
        """Send all `items`, pushing once per run of items that fit.  If one cannot be put
        (`LocalProtocolError`), every item before it was sent and none after it."""
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint()
            pending = list(items)
            while pending:
                space = self._space
                try:
                    sent = self.send_batch_nowait(pending)
                except anyio.WouldBlock:
                    sent = 0
                del pending[:sent]
                if pending:
                    self._space_wanted = True
                    await space.wait()
                    self._check()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Refuse further sends on this side (rings have no end-of-stream marker)."""
        self._eof_sent = True

    async def aclose(self) -> None:
        """Stop using the ring and release the shared buffer; the event channel and the pages
        belong to whoever opened them and are closed by them."""
        if not self._closed:
            self._closed = True
            self._space.set()
            self._engine.release()
        await anyio.lowlevel.checkpoint()


class FrontRingChannel(RingChannel):
    """Frontend side: `send` requests, `receive` responses."""

    _engine: FrontRing

    def __init__(self, engine: FrontRing, event: EventChannel, *, poll_us: int = 0) -> None:
        super().__init__(engine, event, poll_us=poll_us)

    def _take(self) -> bytearray | None:
        return self._engine.take_response()

    def _take_into(self, buf: bytearray | memoryview, max_count: int) -> int:
        return self._engine.take_responses_into(buf, max_count)

    def _item_size(self) -> int:
        return self._engine.layout.response_size

    def _final_check(self) -> bool:
        return self._engine.final_check_for_responses()

    def _room(self) -> int:
        return self._engine.free_requests()

    def _put(self, msg: Msg) -> None:
        self._engine.put_request(msg)

    def _put_from(self, src: bytes | bytearray | memoryview, count: int) -> None:
        self._engine.put_requests_from(src, count)

    def _push(self) -> bool:
        return self._engine.push_requests()

    def _pending(self) -> int:
        return self._engine.pending_responses()

    def _expecting(self) -> bool:
        # requests outstanding: their responses are coming
        return self._engine.free_requests() < self._engine.entries


class BackRingChannel(RingChannel):
    """Backend side: `receive` requests, `send` responses (one per consumed request)."""

    _engine: BackRing

    def __init__(self, engine: BackRing, event: EventChannel, *, poll_us: int = 0) -> None:
        super().__init__(engine, event, poll_us=poll_us)

    def _take(self) -> bytearray | None:
        return self._engine.take_request()

    def _take_into(self, buf: bytearray | memoryview, max_count: int) -> int:
        return self._engine.take_requests_into(buf, max_count)

    def _item_size(self) -> int:
        return self._engine.layout.request_size

    def _final_check(self) -> bool:
        return self._engine.final_check_for_requests()

    def _room(self) -> int:
        # Never "full": a response without a consumed request is the caller's bug, which
        # put_response reports as LocalProtocolError instead of waiting forever.
        return 1

    def _put(self, msg: Msg) -> None:
        self._engine.put_response(msg)

    def _room_for(self, count: int) -> int:
        # every response answers a consumed request: more is the caller's bug, which
        # put_responses_from reports (LocalProtocolError)
        return count

    def _put_from(self, src: bytes | bytearray | memoryview, count: int) -> None:
        self._engine.put_responses_from(src, count)

    def _push(self) -> bool:
        return self._engine.push_responses()

    def _pending(self) -> int:
        return self._engine.pending_requests()

    def _expecting(self) -> bool:
        # the frontend was busy a moment ago: more requests are likely
        return self._busy
