"""Conformance checks of the transport interface (`ringkit.abc`).

Each check takes a *pair maker*: a callable returning an async context manager that yields two
`Domain` handles, ``a`` and ``b`` -- two processes' views, in two domains where the transport
can (the simulator), or both in dom0 on a real machine.  A check drives the pair through one
behaviour, raises ``AssertionError`` when the transport deviates, and ends by asserting that
both handles hold nothing any more (ocaml-vchan's ``assert_cleaned_up``).

As on Xen, binding a port leaves one event pending on the binder's new port
(evtchn_bind_interdomain makes up for notifications lost while the remote port was unbound):
`check_bind_pending` holds transports to that, and every other check consumes that one event
right after binding, then requires the behaviour it is about.  Nothing here imports
pytest: run the checks from any test runner, on any anyio backend.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import anyio
import cffi
from anyio import wait_all_tasks_blocked

from .._errors import EventChannelError, GrantError, PeerGoneError, ResourceLimitError
from ..abc import PAGE_SIZE, Domain, EventChannel

PairMaker = Callable[[], AbstractAsyncContextManager[tuple[Domain, Domain]]]
"""Makes two connected domain handles (see the module docstring)."""

TIMEOUT = 10.0
"""Generous bound on any single wait, only so that a broken transport fails instead of hanging."""

QUIET = 0.2
"""How long a wait that must not return is given to (wrongly) return."""

UNKNOWN_REF = 0x7FFF_FFF0
"""A grant reference no test ever creates (far beyond any grant table in use)."""


def assert_no_leaks(*domains: Domain) -> None:
    """Every handle holds nothing: no grants, mappings, ports, descriptors or watches."""
    for dom in domains:
        leaks = dom.leaks()
        assert not leaks, f"domain {dom.domid} handle still holds {leaks}"


async def _wait(channel: EventChannel) -> None:
    with anyio.fail_after(TIMEOUT):
        await channel.wait()


async def _stays_quiet(channel: EventChannel) -> bool:
    """True when no event arrives on `channel` for `QUIET` seconds."""
    with anyio.move_on_after(QUIET):
        await channel.wait()
        return False
    return True


async def _bind(b: Domain, remote: int, port: int) -> EventChannel:
    """`b` binds `port` of domain `remote` and takes the one event the bind leaves pending."""
    bound = await b.events.bind_interdomain(remote, port)
    await _wait(bound)
    return bound


async def _connect(a: Domain, b: Domain) -> tuple[EventChannel, EventChannel]:
    """A port `a` offers, bound by `b`; both ends quiet (the bind-time event consumed)."""
    offered = await a.events.alloc_unbound(b.domid)
    return offered, await _bind(b, a.domid, offered.port)


async def _raises(
    exc_type: type[BaseException], call: Callable[[], Awaitable[object]], what: str
) -> BaseException:
    try:
        result = await call()
    except exc_type as exc:
        return exc
    # A resource that was created despite the refusal would leak; close it for the report.
    closer = getattr(result, "aclose", None)
    if closer is not None:
        await closer()
    raise AssertionError(f"{what}: expected {exc_type.__name__}, got {result!r}")


# --------------------------------------------------------------------------- grants


async def check_share_map_round_trip(make_pair: PairMaker) -> None:
    """Data written by either side is seen by the other; the pages outlive the granter's early
    close for as long as the grantee keeps them mapped."""
    async with make_pair() as (a, b):
        shared = await a.grants.share(b.domid, 1)
        assert shared.peer == b.domid and shared.writable and len(shared.refs) == 1
        assert len(shared.buffer) == PAGE_SIZE
        assert bytes(shared.buffer) == bytes(PAGE_SIZE), "shared pages must start zeroed"
        shared.buffer[0:5] = b"hello"
        mapped = await b.grants.map(a.domid, shared.refs)
        assert mapped.peer == a.domid and mapped.refs == shared.refs and mapped.writable
        assert bytes(mapped.buffer[0:5]) == b"hello"
        mapped.buffer[PAGE_SIZE - 5 :] = b"world"
        assert bytes(shared.buffer[PAGE_SIZE - 5 :]) == b"world"
        await shared.aclose()  # early dealloc: the mapping stays valid
        mapped.buffer[100] = 42
        assert mapped.buffer[100] == 42 and bytes(mapped.buffer[0:5]) == b"hello"
        await mapped.aclose()
        assert_no_leaks(a, b)


async def check_close_while_buffer_exported(make_pair: PairMaker) -> None:
    """Closing pages while the caller still holds a raw export of `buffer` (cffi's from_buffer,
    as a ring attached to them holds) succeeds: the grant and the mapping are released at once,
    the local unmap waits until the export is released, so the export never points at unmapped
    memory; a second close is still a double unmap."""
    ffi = cffi.FFI()
    async with make_pair() as (a, b):
        shared = await a.grants.share(b.domid, 1)
        mapped = await b.grants.map(a.domid, shared.refs)
        shared_export = ffi.from_buffer(shared.buffer)
        mapped_export = ffi.from_buffer(mapped.buffer)
        shared.buffer[3] = 7
        await mapped.aclose()
        await shared.aclose()
        assert shared_export[3] == b"\x07" and mapped_export[3] == b"\x07"
        for pages in (shared, mapped):
            await _raises(GrantError, pages.aclose, "closing pages twice")
        ffi.release(shared_export)
        ffi.release(mapped_export)
        assert_no_leaks(a, b)


async def check_read_only_grant(make_pair: PairMaker) -> None:
    """A read-only grant maps read-only; the granter's writes show through; the mapping cannot
    be written (the memoryview is read-only)."""
    async with make_pair() as (a, b):
        shared = await a.grants.share(b.domid, 1, writable=False)
        assert not shared.writable
        mapped = await b.grants.map(a.domid, shared.refs, writable=False)
        assert not mapped.writable and mapped.buffer.readonly
        shared.buffer[7] = 0x5A
        assert mapped.buffer[7] == 0x5A
        try:
            mapped.buffer[7] = 1
        except TypeError:
            pass
        else:
            raise AssertionError("a read-only mapping accepted a write")
        await mapped.aclose()
        await shared.aclose()
        assert_no_leaks(a, b)


async def check_multi_page_contiguous(make_pair: PairMaker) -> None:
    """Several refs map as one contiguous buffer, in the order the refs are given."""
    async with make_pair() as (a, b):
        shared = await a.grants.share(b.domid, 3)
        for page in range(3):
            shared.buffer[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = bytes([page + 1]) * PAGE_SIZE
        mapped = await b.grants.map(a.domid, shared.refs)
        assert len(mapped.buffer) == 3 * PAGE_SIZE
        assert bytes(mapped.buffer) == bytes(shared.buffer)
        # a record straddling the page boundary reads back whole
        mapped.buffer[PAGE_SIZE - 2 : PAGE_SIZE + 2] = b"ABCD"
        assert bytes(shared.buffer[PAGE_SIZE - 2 : PAGE_SIZE + 2]) == b"ABCD"
        reversed_map = await b.grants.map(a.domid, list(reversed(shared.refs)))
        for page in range(3):
            got = reversed_map.buffer[page * PAGE_SIZE + 10]
            assert got == 3 - page, f"page {page} of the reversed mapping holds {got}"
        await reversed_map.aclose()
        # pages of separate grants, mapped together, are contiguous too
        other = await a.grants.share(b.domid, 1)
        other.buffer[0:4] = b"next"
        mixed = await b.grants.map(a.domid, [shared.refs[2], other.refs[0], shared.refs[0]])
        assert mixed.buffer[10] == 3 and mixed.buffer[2 * PAGE_SIZE + 10] == 1
        assert bytes(mixed.buffer[PAGE_SIZE : PAGE_SIZE + 4]) == b"next"
        mixed.buffer[PAGE_SIZE + 4] = 0x77
        assert other.buffer[4] == 0x77
        await mixed.aclose()
        await other.aclose()
        await mapped.aclose()
        await shared.aclose()
        assert_no_leaks(a, b)


# --------------------------------------------------------------------------- event channels


async def check_event_channel(make_pair: PairMaker) -> None:
    """notify/wait both ways; events sent between two waits coalesce into one wake-up."""
    async with make_pair() as (a, b):
        offered, bound = await _connect(a, b)
        assert offered.remote_domid == b.domid and bound.remote_domid == a.domid
        for _ in range(3):
            bound.notify()
            await _wait(offered)
            offered.notify()
            await _wait(bound)
        for _ in range(5):
            bound.notify()
        await _wait(offered)
        assert await _stays_quiet(offered), "five notifications woke the waiter twice"
        for _ in range(10_000):  # notify never blocks, however far ahead of the waiter
            bound.notify()
        await _wait(offered)
        # The flood may straddle that wake-up: the kernel masks the port while we read it, and
        # events landing before the unmask fire once more after it (seen under real Xen, on
        # trio).  At most one such wake-up, then quiet -- and a wait cancelled before anything
        # arrived loses nothing that arrives later.
        await _stays_quiet(offered)
        assert await _stays_quiet(offered), "a flood of notifications woke the waiter 3 times"
        bound.notify()
        await _wait(offered)
        # a waiter blocked before the notification is woken by it
        async with anyio.create_task_group() as tg:
            woke = anyio.Event()

            async def waiter() -> None:
                await _wait(bound)
                woke.set()

            tg.start_soon(waiter)
            # notify only once the waiter sleeps in wait(): a notification that lands before
            # it waits is consumed without ever blocking, which is not the path checked here
            await wait_all_tasks_blocked()
            assert not woke.is_set()
            offered.notify()
            with anyio.fail_after(TIMEOUT):
                await woke.wait()
        await bound.aclose()
        await offered.aclose()
        assert_no_leaks(a, b)


async def check_bind_pending(make_pair: PairMaker) -> None:
    """Binding leaves exactly one event pending on the binder's new port, none on the offering
    side's, whatever was sent on the port while it was unbound (Xen drops those, and sets the
    binder's port pending in evtchn_bind_interdomain to make up for them); after it, events
    flow both ways as usual."""
    async with make_pair() as (a, b):
        offered = await a.events.alloc_unbound(b.domid)
        for _ in range(3):  # sent on an unbound port: dropped
            offered.notify()
        bound = await b.events.bind_interdomain(a.domid, offered.port)
        await _wait(bound)
        assert await _stays_quiet(bound), "binding left more than one event pending"
        assert await _stays_quiet(offered), "binding signalled the offering side's port"
        bound.notify()
        await _wait(offered)
        offered.notify()
        await _wait(bound)
        await bound.aclose()
        await offered.aclose()
        assert_no_leaks(a, b)


async def check_peer_gone(make_pair: PairMaker) -> None:
    """When one end closes, the other's wait returns for what was sent before, then raises
    PeerGoneError; its notify is refused; closing it afterwards is clean."""
    async with make_pair() as (a, b):
        offered, bound = await _connect(a, b)
        bound.notify()
        await bound.aclose()
        await _wait(offered)  # the event sent before the close is delivered
        with anyio.fail_after(TIMEOUT):
            await _raises(PeerGoneError, offered.wait, "wait after the peer closed")
        await _raises(PeerGoneError, offered.wait, "a second wait after the peer closed")
        try:
            offered.notify()
        except EventChannelError:
            pass
        else:
            raise AssertionError("notify on a port whose peer closed was accepted")
        await offered.aclose()
        try:
            offered.notify()
        except anyio.ClosedResourceError:
            pass
        else:
            raise AssertionError("notify on a closed port was accepted")
        assert_no_leaks(a, b)


async def check_rebind_after_peer_close(make_pair: PairMaker) -> None:
    """Xen puts a port whose peer closed back into the unbound state, offered to the same
    domain (evtchn_close: the remote end becomes ECS_UNBOUND): that domain may bind it again,
    and the channel then works both ways.  Another bind of it while bound is still refused.

    Not in `TRANSPORT_CHECKS`: the real transport's channel stays gone once it saw its peer
    leave, so only the simulator runs this (see docs/simulator.md)."""
    async with make_pair() as (a, b):
        offered, bound = await _connect(a, b)
        await bound.aclose()
        with anyio.fail_after(TIMEOUT):
            try:
                await offered.wait()
            except PeerGoneError:
                pass
            else:
                raise AssertionError("a wait after the peer closed returned")
        rebound = await _bind(b, a.domid, offered.port)  # a bind like the first one
        assert rebound.remote_domid == a.domid
        await _raises(EventChannelError, lambda: b.events.bind_interdomain(a.domid, offered.port),
                      "binding a port bound again")
        with anyio.fail_after(TIMEOUT):
            while True:  # the survivor learns of the new binding asynchronously
                try:
                    offered.notify()
                    break
                except EventChannelError:
                    await anyio.sleep(0.01)
        await _wait(rebound)
        rebound.notify()
        await _wait(offered)
        await rebound.aclose()
        with anyio.fail_after(TIMEOUT):
            try:
                await offered.wait()
            except PeerGoneError:
                pass
            else:
                raise AssertionError("a wait after the second peer closed returned")
        await offered.aclose()
        assert_no_leaks(a, b)


async def check_unmap_notify(make_pair: PairMaker) -> None:
    """Unmapping runs the unmap-notify: the byte is cleared and the port signalled, for the
    grantee's mapping and for the granter's pages alike."""
    async with make_pair() as (a, b):
        offered, bound = await _connect(a, b)
        shared = await a.grants.share(b.domid, 2)
        mapped = await b.grants.map(a.domid, shared.refs)
        shared.buffer[PAGE_SIZE + 9] = 1
        mapped.set_unmap_notify(offset=PAGE_SIZE + 9, port=bound.port)
        await mapped.aclose()
        await _wait(offered)
        assert shared.buffer[PAGE_SIZE + 9] == 0, "the grantee's unmap did not clear the byte"

        mapped = await b.grants.map(a.domid, shared.refs)
        shared.buffer[3] = 1
        shared.set_unmap_notify(offset=3, port=offered.port)
        await shared.aclose()
        await _wait(bound)
        assert mapped.buffer[3] == 0, "the granter's unmap did not clear the byte"
        await mapped.aclose()

        # either action alone
        shared = await a.grants.share(b.domid, 1)
        mapped = await b.grants.map(a.domid, shared.refs)
        shared.buffer[5] = 1
        mapped.set_unmap_notify(offset=5)
        await mapped.aclose()
        assert shared.buffer[5] == 0, "an offset-only unmap-notify did not clear the byte"
        assert await _stays_quiet(offered), "an offset-only unmap-notify sent an event"
        shared.set_unmap_notify(port=offered.port)
        await shared.aclose()
        await _wait(bound)

        # the granter's byte is cleared in a read-only grant too (liveness for RO mappers)
        shared = await a.grants.share(b.domid, 1, writable=False)
        mapped = await b.grants.map(a.domid, shared.refs, writable=False)
        shared.buffer[8] = 1
        shared.set_unmap_notify(offset=8, port=offered.port)
        await shared.aclose()
        await _wait(bound)
        assert mapped.buffer[8] == 0, "unmap-notify did not clear the byte of a read-only grant"
        await mapped.aclose()
        await bound.aclose()
        await offered.aclose()
        assert_no_leaks(a, b)


# --------------------------------------------------------------------------- refusals


async def check_refusals(make_pair: PairMaker, grant_limit: int = 1024) -> None:
    """Every misuse is refused with a typed error, and leaves nothing behind.

    `grant_limit` is the transport's limit of pages one process may have granted.
    """
    async with make_pair() as (a, b):
        shared = await a.grants.share(b.domid, 1)
        read_only = await a.grants.share(b.domid, 1, writable=False)

        async def map_unknown() -> object:
            return await b.grants.map(a.domid, [UNKNOWN_REF])

        exc = await _raises(GrantError, map_unknown, "mapping an unknown ref")
        assert getattr(exc, "errno", None) is not None, "grant errors carry an errno"

        async def map_read_only_writable() -> object:
            return await b.grants.map(a.domid, read_only.refs, writable=True)

        await _raises(GrantError, map_read_only_writable, "a writable map of a read-only grant")

        if a.domid != b.domid:

            async def map_by_wrong_domain() -> object:
                return await a.grants.map(a.domid, shared.refs)

            await _raises(GrantError, map_by_wrong_domain, "a map by a domain not granted")

        revoked = shared.refs
        await shared.aclose()

        async def map_revoked() -> object:
            return await b.grants.map(a.domid, revoked)

        await _raises(GrantError, map_revoked, "mapping a revoked ref")

        mapped = await b.grants.map(a.domid, read_only.refs, writable=False)
        await mapped.aclose()
        await _raises(GrantError, mapped.aclose, "a double unmap")
        await _raises(GrantError, shared.aclose, "a double unshare")
        await read_only.aclose()

        async def share_too_many() -> object:
            return await a.grants.share(b.domid, grant_limit + 1)

        exc = await _raises(ResourceLimitError, share_too_many, "sharing over the grant limit")
        assert getattr(exc, "errno", None) in (errno.ENOSPC, errno.ENOMEM, None)

        async def bind_nonexistent() -> object:
            return await b.events.bind_interdomain(a.domid, 0x7FFF)

        await _raises(EventChannelError, bind_nonexistent, "binding a port that does not exist")
        offered, bound = await _connect(a, b)

        async def bind_twice() -> object:
            return await b.events.bind_interdomain(a.domid, offered.port)

        await _raises(EventChannelError, bind_twice, "binding a port that is bound already")
        await offered.aclose()
        with anyio.fail_after(TIMEOUT):  # the bind-time event was consumed: nothing else
            await _raises(PeerGoneError, bound.wait, "wait after the peer closed")
        try:
            bound.notify()
        except EventChannelError:
            pass
        else:
            raise AssertionError("notify on a port that is no longer bound was accepted")
        await bound.aclose()
        assert_no_leaks(a, b)


async def check_grant_limit(make_pair: PairMaker, grant_limit: int) -> None:
    """Exactly `grant_limit` pages may be granted at once; one more is refused until some are
    closed."""
    async with make_pair() as (a, b):
        held = await a.grants.share(b.domid, grant_limit)

        async def one_more() -> object:
            return await a.grants.share(b.domid, 1)

        await _raises(ResourceLimitError, one_more, "one page over the grant limit")
        await held.aclose()
        again = await a.grants.share(b.domid, 1)
        await again.aclose()
        assert_no_leaks(a, b)


TRANSPORT_CHECKS: dict[str, Callable[[PairMaker], Awaitable[None]]] = {
    "share_map_round_trip": check_share_map_round_trip,
    "read_only_grant": check_read_only_grant,
    "close_while_buffer_exported": check_close_while_buffer_exported,
    "multi_page_contiguous": check_multi_page_contiguous,
    "event_channel": check_event_channel,
    "bind_pending": check_bind_pending,
    "peer_gone": check_peer_gone,
    "unmap_notify": check_unmap_notify,
}
"""The checks that need nothing but a pair maker, by name (`check_refusals` and
`check_grant_limit` also need the transport's grant limit)."""
