"""Domain lifecycle and the simulator's own rules: destroying a domain, events before the bind,
fault hooks, kernel-enforced read-only pages, hostile clients."""

from __future__ import annotations

import errno
import json
import mmap
import os
import signal
import struct

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from ringkit import ConfigError, EventChannelError, GrantError, PeerGoneError, TransportError
from ringkit.abc import PAGE_SIZE
from ringkit.sim import SimEventChannel, SimXen, connect
from ringkit.sim._kernel import PageFile

TIMEOUT = 10


async def _quiet(channel: SimEventChannel | object, seconds: float = 0.2) -> bool:
    assert isinstance(channel, SimEventChannel)
    with anyio.move_on_after(seconds):
        await channel.wait()
        return False
    return True


@pytest.mark.anyio
async def test_destroy_domain_releases_and_fires_release_domain() -> None:
    async with SimXen.start(in_process=True) as xen:
        front_id = await xen.create_domain("front")
        back_id = await xen.create_domain("back")
        async with xen.connect(0) as dom0, xen.connect(front_id) as front:
            async with dom0.store.watch("@releaseDomain") as watch:
                events = watch.__aiter__()
                with anyio.fail_after(TIMEOUT):
                    assert await events.__anext__() == "@releaseDomain"  # initial event
                async with xen.connect(back_id) as back:
                    offered = await front.events.alloc_unbound(back_id)
                    bound = await back.events.bind_interdomain(front_id, offered.port)
                    with anyio.fail_after(TIMEOUT):
                        await bound.wait()  # the one event a bind leaves pending, as on Xen
                    pages = await back.grants.share(front_id, 1)
                    pages.buffer[0] = 9
                    mapped = await front.grants.map(back_id, pages.refs)

                    assert await xen.destroy_domain("back") == back_id
                    with anyio.fail_after(TIMEOUT):
                        assert await events.__anext__() == "@releaseDomain"
                        with pytest.raises(PeerGoneError):
                            await offered.wait()
                        with pytest.raises(PeerGoneError):
                            await bound.wait()  # the destroyed domain's own process
                    with pytest.raises(EventChannelError):
                        offered.notify()
                    with pytest.raises(PeerGoneError):
                        await back.grants.share(front_id, 1)
                    assert mapped.buffer[0] == 9, "mapped pages outlive the granting domain"
                    await mapped.aclose()
                    await offered.aclose()
            assert [d.name for d in await xen.list_domains()] == ["Domain-0", "front"]
            assert not (xen.directory / "domain" / str(back_id)).exists()
        assert not await xen.settled_leaks()
        with pytest.raises(ConfigError):
            await xen.destroy_domain("back")
        with pytest.raises(ConfigError):
            await xen.destroy_domain(0)
        with pytest.raises(ConfigError):
            await xen.create_domain("front")


@pytest.mark.anyio
async def test_unbound_port_of_destroyed_domain_reports_gone() -> None:
    async with SimXen.start(in_process=True) as xen:
        front_id = await xen.create_domain("front")
        back_id = await xen.create_domain("back")
        async with xen.connect(front_id) as front:
            offered = await front.events.alloc_unbound(back_id)
            await xen.destroy_domain(back_id)
            with anyio.fail_after(TIMEOUT), pytest.raises(PeerGoneError):
                await offered.wait()
            await offered.aclose()
        assert not await xen.settled_leaks()


@pytest.mark.anyio
async def test_events_before_the_bind_are_dropped_and_fault_hooks() -> None:
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        b_id = await xen.create_domain("b")
        async with xen.connect(a_id) as a, xen.connect(b_id) as b:
            offered = await a.events.alloc_unbound(b_id)
            assert isinstance(offered, SimEventChannel)
            for _ in range(3):
                offered.notify()  # nobody bound yet: dropped, as Xen does
            bound = await b.events.bind_interdomain(a_id, offered.port)
            assert isinstance(bound, SimEventChannel)
            # As Xen does, the bind leaves one event pending on the binder's port (for
            # notifications lost while unbound) instead of the three that were sent.
            with anyio.fail_after(TIMEOUT):
                await bound.wait()
            assert await _quiet(bound)
            assert await _quiet(offered)

            bound.drop_notifies = 2
            bound.notify()
            bound.notify()
            assert await _quiet(offered), "dropped notifications arrived"
            bound.notify()
            with anyio.fail_after(TIMEOUT):
                await offered.wait()

            offered.fire_spurious()
            with anyio.fail_after(TIMEOUT):
                await offered.wait()
            await xen.fire(b_id, bound.port)
            with anyio.fail_after(TIMEOUT):
                await bound.wait()
            await bound.aclose()
            await offered.aclose()
        assert not await xen.settled_leaks()


@pytest.mark.anyio
async def test_local_close_wakes_a_waiter_with_closed_resource_error() -> None:
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        async with xen.connect(a_id) as a:
            channel = await a.events.alloc_unbound(0)
            caught: list[BaseException] = []
            entered = False

            async def waiter() -> None:
                nonlocal entered
                entered = True
                try:
                    await channel.wait()
                except anyio.ClosedResourceError as exc:
                    caught.append(exc)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    # the waiter must be asleep inside wait() before the close: a wait that
                    # only starts after it raises anyway and proves nothing about the wake-up
                    await wait_all_tasks_blocked()
                    assert entered and not caught, "the waiter is not blocked in wait()"
                    await channel.aclose()
            assert caught
            await channel.aclose()  # closing a port twice is harmless
            assert not a.leaks()


@pytest.mark.anyio
async def test_domain_close_releases_everything_left_open() -> None:
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        b_id = await xen.create_domain("b")
        async with xen.connect(a_id) as a, xen.connect(b_id) as b:
            pages = await a.grants.share(b_id, 2)
            await b.grants.map(a_id, pages.refs)
            offered = await a.events.alloc_unbound(b_id)
            await b.events.bind_interdomain(a_id, offered.port)
            assert a.leaks().grants == 2 and b.leaks().maps == 1 and b.leaks().fds == 2
        assert not a.leaks() and not b.leaks()
        assert not await xen.settled_leaks()


@pytest.mark.anyio
async def test_bad_arguments_are_config_errors() -> None:
    async with SimXen.start(in_process=True) as xen:
        with pytest.raises(ConfigError, match="no domain 7"):
            async with connect(xen.directory, 7):
                pass
        async with xen.connect(0) as dom0:
            with pytest.raises(ConfigError):
                await dom0.grants.share(-1)
            with pytest.raises(ConfigError):
                await dom0.grants.share(0, 0)
            with pytest.raises(ConfigError):
                await dom0.grants.map(0, [])
            with pytest.raises(GrantError) as info:
                await dom0.grants.share(4242)
            assert info.value.errno == errno.ESRCH
            pages = await dom0.grants.share(0, 1, writable=False)
            with pytest.raises(ConfigError):
                pages.set_unmap_notify()
            with pytest.raises(ConfigError):
                pages.set_unmap_notify(offset=PAGE_SIZE)
            with pytest.raises(GrantError):
                pages.set_unmap_notify(port=99)
            mapped = await dom0.grants.map(0, pages.refs, writable=False)
            with pytest.raises(ConfigError):
                mapped.set_unmap_notify(offset=0)
            await mapped.aclose()
            await pages.aclose()
        assert not await xen.settled_leaks()


def test_read_only_pages_are_enforced_by_the_kernel() -> None:
    page = PageFile(1, writable=False)
    page.hold()
    try:
        granter = mmap.mmap(page.fd, PAGE_SIZE)  # the granter maps before the seal
        page.seal_read_only()
        granter[0] = 1  # its own mapping stays writable
        with pytest.raises(PermissionError):
            mmap.mmap(page.fd, PAGE_SIZE)  # nobody gets a new writable mapping
        with pytest.raises(PermissionError):
            os.pwrite(page.fd, b"x", 0)
        read_only = os.open(f"/proc/self/fd/{page.fd}", os.O_RDONLY)
        try:
            with pytest.raises(PermissionError):
                mmap.mmap(read_only, PAGE_SIZE)
            view = mmap.mmap(read_only, PAGE_SIZE, prot=mmap.PROT_READ)
            assert view[0] == 1
            view.close()
        finally:
            os.close(read_only)
        with pytest.raises(PermissionError):
            os.ftruncate(page.fd, 0)  # nobody can pull the pages from under the granter
        granter.close()
    finally:
        page.release()


@pytest.mark.anyio
async def test_hostile_client_is_dropped_and_others_carry_on() -> None:
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        path = str(xen.directory / "domain" / str(a_id) / "xen.sock")
        for garbage in (struct.pack("<IHxx", 1 << 30, 0), struct.pack("<IHxx", 3, 0) + b"[1]",
                        struct.pack("<IHxx", 13, 0) + b'{"op":"nope"}'):
            async with await anyio.connect_unix(path) as stream:
                await stream.send(garbage)
                with anyio.fail_after(TIMEOUT), pytest.raises(anyio.EndOfStream):
                    await stream.receive()  # the server hung up
        async with xen.connect(a_id) as a:
            pages = await a.grants.share(0, 1)
            await pages.aclose()
        assert not await xen.settled_leaks()


@pytest.mark.anyio
async def test_too_long_directory_is_a_config_error() -> None:
    long_dir = f"/tmp/{'x' * 90}"
    with pytest.raises(ConfigError, match="too long"):
        async with SimXen.start(long_dir, in_process=True):
            pass
    assert not os.path.exists(long_dir) or not os.listdir(long_dir)


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_killed_under_its_clients() -> None:
    """If the hypervisor itself dies, waits raise PeerGoneError and calls fail cleanly; the
    pages already mapped stay readable."""
    async with SimXen.start() as xen:
        a_id = await xen.create_domain("a")
        b_id = await xen.create_domain("b")
        async with xen.connect(a_id) as a, xen.connect(b_id) as b:
            pages = await a.grants.share(b_id, 1)
            pages.buffer[0] = 5
            mapped = await b.grants.map(a_id, pages.refs)
            offered = await a.events.alloc_unbound(b_id)
            listing = await xen.list_domains()
            assert [d.processes for d in listing] == [0, 1, 1]
            assert xen.server_pid is not None
            os.kill(xen.server_pid, signal.SIGKILL)
            with anyio.fail_after(TIMEOUT), pytest.raises(PeerGoneError):
                await offered.wait()
            with pytest.raises(PeerGoneError):
                await a.grants.share(b_id, 1)
            assert mapped.buffer[0] == 5
        with pytest.raises(TransportError):
            await xen.list_domains()


@pytest.mark.anyio
async def test_a_client_that_never_reads_replies_is_throttled() -> None:
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        path = str(xen.directory / "domain" / str(a_id) / "xen.sock")
        request = json.dumps({"id": 1, "op": "close_port", "port": 424242}).encode()
        frame = struct.pack("<IHxx", len(request), 0) + request
        async with await anyio.connect_unix(path) as stream:
            with anyio.move_on_after(1.5):
                for _ in range(200_000):  # replies it never reads pile up, then it blocks
                    await stream.send(frame)
                raise AssertionError("the server kept reading a client that does not read")
        async with xen.connect(a_id) as a:  # everyone else is still served
            pages = await a.grants.share(0, 1)
            await pages.aclose()
        leaks = await xen.settled_leaks()
        assert not leaks and leaks.clients == 0, leaks  # the hung-up client was released


@pytest.mark.anyio
async def test_rebind_before_the_survivor_noticed_the_close() -> None:
    """The peer closes after sending, and binds again before the survivor waited: the survivor
    gets one wake-up for what was sent, then the channel simply works; nobody but the offered
    domain may take the port, and a destroyed domain's ports are not offered any more."""
    async with SimXen.start(in_process=True) as xen:
        a_id = await xen.create_domain("a")
        b_id = await xen.create_domain("b")
        c_id = await xen.create_domain("c")
        async with xen.connect(a_id) as a, xen.connect(b_id) as b, xen.connect(c_id) as c:
            offered = await a.events.alloc_unbound(b_id)
            assert isinstance(offered, SimEventChannel)
            bound = await b.events.bind_interdomain(a_id, offered.port)
            bound.notify()
            await bound.aclose()
            with pytest.raises(EventChannelError):
                await c.events.bind_interdomain(a_id, offered.port)  # offered to b only
            rebound = await b.events.bind_interdomain(a_id, offered.port)
            with anyio.fail_after(TIMEOUT):
                await rebound.wait()  # the one event every bind leaves pending, as on Xen
                await offered.wait()  # the event sent before the close
                while True:  # until a's process has seen the "bound" event
                    try:
                        offered.notify()
                        break
                    except EventChannelError:
                        await anyio.sleep(0.01)
                await rebound.wait()
            assert await _quiet(offered), "the old peer's close still shows"
            rebound.notify()
            with anyio.fail_after(TIMEOUT):
                await offered.wait()

            await xen.destroy_domain(b_id)
            with anyio.fail_after(TIMEOUT), pytest.raises(PeerGoneError):
                await offered.wait()
            await offered.aclose()
        assert not await xen.settled_leaks()
