"""The real transport in one domain talking to itself (dom0 loopback), as libxenvchan allows.

Grants are shared with and mapped from our own domid; event channels are allocated for and
bound from our own domid.  Every case ends with the leak accounting at zero (fixture).
"""

from __future__ import annotations

import errno
import os
import resource
from contextlib import AsyncExitStack

import anyio
import pytest

from ringkit import ConfigError, GrantError, ResourceLimitError, _pagemap
from ringkit.abc import PAGE_SIZE
from ringkit.xen import XenDomain

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen"),
    pytest.mark.anyio,
]


async def test_domid_is_discovered(domain: XenDomain) -> None:
    assert domain.domid == 0  # the harness runs the suite in dom0
    assert not domain.leaks()


async def test_share_then_map_sees_the_same_pages(domain: XenDomain) -> None:
    me = domain.domid
    async with await domain.grants.share(me, 4) as shared:
        assert len(shared.refs) == 4 and shared.peer == me and shared.writable
        assert shared.buffer.nbytes == 4 * PAGE_SIZE
        assert bytes(shared.buffer[:16]) == bytes(16)  # gntalloc hands out zeroed pages
        for i in range(4):
            shared.buffer[i * PAGE_SIZE] = 0x40 + i
        assert domain.leaks().grants == 4
        async with await domain.grants.map(me, shared.refs) as mapped:
            assert domain.leaks().maps == 1
            view = mapped.buffer
            assert [view[i * PAGE_SIZE] for i in range(4)] == [0x40, 0x41, 0x42, 0x43]
            view[PAGE_SIZE + 7] = 0x99  # contiguous: page 1 right after page 0
            assert shared.buffer[PAGE_SIZE + 7] == 0x99
            del view
        with pytest.raises(anyio.ClosedResourceError):
            _ = mapped.buffer
    with pytest.raises(anyio.ClosedResourceError):
        _ = shared.buffer


async def test_map_in_another_order(domain: XenDomain) -> None:
    me = domain.domid
    async with await domain.grants.share(me, 2) as shared:
        shared.buffer[0] = 1
        shared.buffer[PAGE_SIZE] = 2
        refs = tuple(reversed(shared.refs))
        async with await domain.grants.map(me, refs, writable=False) as mapped:
            assert mapped.buffer[0] == 2 and mapped.buffer[PAGE_SIZE] == 1


async def test_read_only_grant_refuses_writable_map(domain: XenDomain) -> None:
    me = domain.domid
    async with await domain.grants.share(me, 1, writable=False) as shared:
        shared.buffer[0] = 0x33
        stranded = _pagemap.stranded()
        with pytest.raises(GrantError) as info:
            await domain.grants.map(me, shared.refs, writable=True)
        assert info.value.errno is not None
        assert domain.leaks().maps == 0
        assert _pagemap.stranded() == stranded    # gntdev's refusal left no range behind
        async with await domain.grants.map(me, shared.refs, writable=False) as mapped:
            assert mapped.buffer.readonly
            assert mapped.buffer[0] == 0x33
            with pytest.raises(ConfigError, match="read-only"):
                mapped.set_unmap_notify(offset=0)


async def test_unknown_ref_is_refused(domain: XenDomain) -> None:
    with pytest.raises(GrantError) as info:
        await domain.grants.map(domain.domid, [0xFFFF0])
    assert info.value.errno == errno.EINVAL
    assert domain.leaks().maps == 0


async def test_revoked_ref_is_refused(domain: XenDomain) -> None:
    shared = await domain.grants.share(domain.domid, 1)
    refs = shared.refs
    await shared.aclose()
    with pytest.raises(GrantError):
        await domain.grants.map(domain.domid, refs)


async def test_bad_arguments(domain: XenDomain) -> None:
    with pytest.raises(ConfigError):
        await domain.grants.share(domain.domid, 0)
    with pytest.raises(ConfigError):
        await domain.grants.map(domain.domid, [])
    with pytest.raises(ConfigError):
        await domain.grants.share(0x7FF5, 1)
    async with await domain.grants.share(domain.domid, 1) as shared:
        with pytest.raises(ConfigError):
            shared.set_unmap_notify(offset=PAGE_SIZE)
        with pytest.raises(ConfigError):
            shared.set_unmap_notify()


async def test_mappings_hold_no_file_descriptors(domain: XenDomain) -> None:
    """A backend keeping Linux blkfront's persistent grants holds ~1000 single-page mappings
    per ring: far more than a small open-files limit, which no mapping may need a slot of."""
    me, count = domain.domid, 600           # gntalloc allows 1024 grants in all
    fds = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 16, hard))
    try:
        async with AsyncExitStack() as stack:
            shares = [await stack.enter_async_context(await domain.grants.share(me, 1))
                      for _ in range(count)]
            maps = [await stack.enter_async_context(await domain.grants.map(me, s.refs))
                    for s in shares]
            assert domain.leaks().grants == count and domain.leaks().maps == count
            assert len(os.listdir("/proc/self/fd")) <= fds + 2      # the two device files
            for i, (shared, mapped) in enumerate(zip(shares, maps, strict=True)):
                shared.buffer[:4] = i.to_bytes(4, "little")
                mapped.buffer[4:8] = (i ^ 0x5A5A).to_bytes(4, "little")
            for i, (shared, mapped) in enumerate(zip(shares, maps, strict=True)):
                assert bytes(mapped.buffer[:4]) == i.to_bytes(4, "little")
                assert bytes(shared.buffer[4:8]) == (i ^ 0x5A5A).to_bytes(4, "little")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(os.listdir("/proc/self/fd")) <= fds


async def test_grant_limit_is_a_resource_limit(domain: XenDomain) -> None:
    with pytest.raises(ResourceLimitError) as info:
        await domain.grants.share(domain.domid, 1025)  # gntalloc's default limit: 1024
    assert info.value.errno == errno.ENOSPC


async def test_event_channels_both_ways(domain: XenDomain) -> None:
    me = domain.domid
    a = await domain.events.alloc_unbound(me)
    async with a, await domain.events.bind_interdomain(me, a.port) as b:
        assert a.remote_domid == me and b.remote_domid == me and a.port != b.port
        assert domain.leaks().ports == 2 and domain.leaks().fds == 1
        with anyio.fail_after(10):
            await b.wait()  # Xen's bind-time event on the binder's port, then a quiet port
            b.notify()
            await a.wait()
            a.notify()
            await b.wait()
            for _ in range(3):  # several notifications, one wait: they coalesce
                a.notify()
            await b.wait()
    assert domain.leaks().fds == 0


async def test_closed_channel_refuses(domain: XenDomain) -> None:
    channel = await domain.events.alloc_unbound(domain.domid)
    await channel.aclose()
    await channel.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        channel.notify()
    with pytest.raises(anyio.ClosedResourceError):
        await channel.wait()


async def test_close_wakes_a_waiter(domain: XenDomain) -> None:
    channel = await domain.events.alloc_unbound(domain.domid)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async def waiter() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await channel.wait()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await channel.aclose()


async def test_bind_to_a_missing_port_is_refused(domain: XenDomain) -> None:
    from ringkit import EventChannelError

    with pytest.raises(EventChannelError):
        await domain.events.bind_interdomain(domain.domid, 4000)
    assert domain.leaks().fds == 0


async def test_unmap_notify_in_process(domain: XenDomain) -> None:
    """Closing a mapping with an unmap-notify clears the byte and signals the port."""
    me = domain.domid
    async with await domain.grants.share(me, 1) as shared, \
            await domain.events.alloc_unbound(me) as ours:
        theirs = await domain.events.bind_interdomain(me, ours.port)
        mapped = await domain.grants.map(me, shared.refs)
        shared.buffer[100] = 0x5A
        mapped.set_unmap_notify(offset=100, port=theirs.port)
        await mapped.aclose()
        with anyio.fail_after(10):
            await ours.wait()
        assert shared.buffer[100] == 0
        await theirs.aclose()


async def test_binding_delivers_one_event_and_peer_close_is_noticed(domain: XenDomain) -> None:
    """Xen sets the freshly bound port pending (notifications sent to the unbound port were
    dropped); when the other end closes, the next idle wait finds the port unbound."""
    from ringkit import EventChannelError, PeerGoneError

    me = domain.domid
    offered = await domain.events.alloc_unbound(me)
    bound = await domain.events.bind_interdomain(me, offered.port)
    with anyio.fail_after(10):
        await bound.wait()  # the bind-time event
        await offered.aclose()
        with pytest.raises(PeerGoneError):
            await bound.wait()
    with pytest.raises(EventChannelError):
        bound.notify()
    await bound.aclose()
