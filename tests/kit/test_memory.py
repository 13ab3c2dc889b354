"""`ringkit.testing.memory`: the in-memory event channels and grants hold to the rules a driver
test relies on, and refuse what Xen refuses (each refusal is a control: a driver that breaks the
rule must see an error, not a silent success)."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import anyio
import pytest

from ringkit import ConfigError, EventChannelError, GrantError, PeerGoneError
from ringkit.abc import PAGE_SIZE
from ringkit.testing.memory import memory_event_pair, memory_grants

pytestmark = pytest.mark.anyio
FRONT, BACK = 3, 0


async def _wakes(wait: Callable[[], Awaitable[None]]) -> bool:
    """Whether `wait()` returns at once (within 50 ms)."""
    with anyio.move_on_after(0.05) as scope:
        await wait()
    return not scope.cancelled_caught


# --------------------------------------------------------------------------- event channels


async def test_an_event_pair_names_each_other_and_counts_doorbells() -> None:
    front, back = memory_event_pair(FRONT, BACK)
    assert (front.remote_domid, back.remote_domid) == (BACK, FRONT)
    assert front.port != back.port
    for _ in range(3):
        front.notify()
    assert (front.notifications, back.notifications) == (3, 0)


async def test_notifications_coalesce_into_one_wake_up() -> None:
    front, back = memory_event_pair()
    assert not await _wakes(back.wait)       # nothing sent: it sleeps
    front.notify()
    front.notify()
    assert await _wakes(back.wait)
    assert not await _wakes(back.wait)       # the two were one event
    assert not await _wakes(front.wait)      # and only the other end got it


async def test_a_sleeping_end_wakes_on_notify() -> None:
    front, back = memory_event_pair()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(back.wait)
            await anyio.wait_all_tasks_blocked()
            front.notify()


async def test_closing_one_end_makes_the_other_see_the_peer_gone() -> None:
    front, back = memory_event_pair()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                with pytest.raises(PeerGoneError):
                    await back.wait()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await front.aclose()
    with pytest.raises(EventChannelError):
        back.notify()                         # a doorbell to a closed port
    with pytest.raises(anyio.ClosedResourceError):
        front.notify()
    with pytest.raises(anyio.ClosedResourceError):
        await front.wait()


async def test_an_event_sent_before_the_peer_closed_is_still_taken() -> None:
    front, back = memory_event_pair()
    front.notify()
    await front.aclose()
    assert await _wakes(back.wait)
    with pytest.raises(PeerGoneError):
        await back.wait()


# --------------------------------------------------------------------------- grants


async def test_a_shared_page_is_the_mapped_page() -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK, 2)
    assert shared.peer == BACK and len(shared.refs) == 2 and shared.writable
    assert bytes(shared.buffer) == bytes(2 * PAGE_SIZE)       # granted pages start zeroed
    mapped = await back.map(FRONT, shared.refs)
    assert mapped.peer == FRONT and mapped.refs == shared.refs
    mapped.buffer[PAGE_SIZE + 5] = 0x42
    assert shared.buffer[PAGE_SIZE + 5] == 0x42
    shared.buffer[0] = 7
    assert mapped.buffer[0] == 7
    assert back.live == front.live == (2, 2)
    await mapped.aclose()
    await shared.aclose()
    assert back.live == (0, 0)


async def test_refs_out_of_order_map_as_a_copy_written_back_at_unmap() -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK, 2)
    mapped = await back.map(FRONT, shared.refs[::-1])
    mapped.buffer[0] = 1                      # the first page of the mapping is the second page
    mapped.buffer[PAGE_SIZE] = 2
    assert shared.buffer[0] == shared.buffer[PAGE_SIZE] == 0  # not yet: a copy
    await mapped.aclose()
    assert (shared.buffer[PAGE_SIZE], shared.buffer[0]) == (1, 2)
    await shared.aclose()


async def test_pages_mapped_counts_every_page_of_every_map() -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK, 3)
    for refs in (shared.refs, shared.refs[:1], shared.refs[:1]):
        await (await back.map(FRONT, refs)).aclose()
    with pytest.raises(GrantError):
        await back.map(FRONT, [shared.refs[-1] + 1])        # a refused map counts nothing
    assert (back.pages_mapped, front.pages_mapped) == (5, 0)
    assert back.live == (3, 0)
    await shared.aclose()


@pytest.mark.parametrize(("case", "code"), [
    ("unknown ref", errno.EINVAL),
    ("wrong granting domain", errno.EINVAL),
    ("granted to another domain", errno.EPERM),
    ("read-only grant mapped writable", errno.EPERM),
    ("revoked", errno.EINVAL),
    ("unshared", errno.EINVAL),
])
async def test_maps_xen_refuses_are_refused(case: str, code: int) -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK, writable=case != "read-only grant mapped writable")
    ref, peer, mapper = shared.refs[0], FRONT, back
    if case == "unknown ref":
        ref += 1
    elif case == "wrong granting domain":
        peer = FRONT + 1
    elif case == "granted to another domain":
        mapper = front                         # the frontend maps its own grant to dom0
    elif case == "revoked":
        front.revoke(ref)
    elif case == "unshared":
        await shared.aclose()
    with pytest.raises(GrantError) as info:
        await mapper.map(peer, [ref])
    assert info.value.errno == code
    assert back.live[1] == 0


async def test_a_read_only_grant_maps_read_only() -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK, writable=False)
    mapped = await back.map(FRONT, shared.refs, writable=False)
    assert mapped.buffer.readonly and not mapped.writable
    with pytest.raises(TypeError):
        mapped.buffer[0] = 1
    await mapped.aclose()
    await shared.aclose()


async def test_double_unmap_and_use_after_close_are_errors() -> None:
    front, back = memory_grants(FRONT, BACK)
    shared = await front.share(BACK)
    mapped = await back.map(FRONT, shared.refs)
    await mapped.aclose()
    with pytest.raises(GrantError):
        await mapped.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        _ = mapped.buffer
    await shared.aclose()
    with pytest.raises(GrantError):
        await shared.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        _ = shared.buffer
    assert back.live == (0, 0)


async def test_a_third_domain_sees_the_same_table_and_is_refused_grants_not_its_own() -> None:
    front, back = memory_grants(1, 0)
    third = front.domain(2)
    shared = await front.share(0, 1)
    with pytest.raises(GrantError) as caught:
        await third.map(1, shared.refs)
    assert caught.value.errno == errno.EPERM
    to_third = await front.share(2, 1)
    mapped = await third.map(1, to_third.refs)
    assert third.live == back.live == (2, 1)         # one table, seen from any domain
    await mapped.aclose()
    await to_third.aclose()
    await shared.aclose()
    with pytest.raises(ConfigError):
        front.domain(1)
