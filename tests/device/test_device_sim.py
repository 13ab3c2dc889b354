"""The Frontend/Backend bases on the simulated Xen, both ends in this process."""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from ringkit import LocalProtocolError, StoreError
from ringkit.abc import Access, Domain, Permission
from ringkit.device import DeviceAddress, XenbusState, create_device, destroy_device
from ringkit.sim import SimXen

from .drivers import MESSAGE, EchoBackend, EchoFrontend, WideEchoBackend, WideEchoFrontend

pytestmark = pytest.mark.anyio
S = XenbusState


@dataclass
class World:
    xen: SimXen
    guest: int
    dom0: Domain
    domu: Domain
    address: DeviceAddress


@asynccontextmanager
async def world(device_type: str = "echo") -> AsyncIterator[World]:
    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            address = DeviceAddress(device_type, frontend_id=guest, backend_id=0, devid=0)
            await create_device(dom0.store, address)
            yield World(xen, guest, dom0, domu, address)
            assert not domu.leaks(), domu.leaks()
            assert not dom0.leaks(), dom0.leaks()


@asynccontextmanager
async def running(
    cls: type[EchoBackend], w: World, *, once: bool = True
) -> AsyncIterator[EchoBackend]:
    """A backend serving `w`'s device in a background task."""
    async with anyio.create_task_group() as tg, cls(w.dom0, w.guest) as backend:
        tg.start_soon(lambda: backend.run(once=once))
        yield backend


async def test_echo_round_trip_and_orderly_close() -> None:
    with anyio.fail_after(20):
        async with world() as w, running(EchoBackend, w) as backend:
                async with EchoFrontend(w.domu, backend_id=0) as front:
                    assert front.is_connected and front.generation == 1
                    assert await front.echo(7, b"split drivers") == b"SPLIT DRIVERS"
                    fe_dir = w.address.frontend_path
                    assert await w.dom0.store.read(f"{fe_dir}/request-upper") == "1"
                    assert await w.dom0.store.read(f"{fe_dir}/state") == "4"
                    assert await w.dom0.store.exists(f"{fe_dir}/ring-ref")
                    assert await w.dom0.store.exists(f"{fe_dir}/event-channel")
                    assert not await w.dom0.store.exists(f"{fe_dir}/ring-page-order")
                await backend.wait_finished()
                assert backend.state is S.CLOSED and front.state is S.CLOSED
                assert await w.dom0.store.read(f"{w.address.backend_path}/state") == "6"
                assert await w.dom0.store.read(f"{w.address.frontend_path}/state") == "6"


async def test_a_closed_device_pair_leaves_no_unclosed_resource() -> None:
    # Resources a device forgets to close show only as a ResourceWarning when they are
    # collected, which Python ignores by default: make it an error, collect, and look.
    unraisable: list[sys.UnraisableHookArgs] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with anyio.fail_after(20):
            async with world() as w, running(EchoBackend, w) as backend:
                async with EchoFrontend(w.domu, backend_id=0) as front:
                    assert await front.echo(1, b"x") == b"X"
                await backend.wait_finished()
        del w, backend, front
        hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook
    assert not [u.exc_value for u in unraisable if isinstance(u.exc_value, ResourceWarning)]


async def test_toolstack_writes_both_dirs_with_xl_permissions() -> None:
    async with world() as w:
        a, store = w.address, w.dom0.store
        assert await store.read(f"{a.frontend_path}/backend") == a.backend_path
        assert await store.read(f"{a.frontend_path}/backend-id") == "0"
        assert await store.read(f"{a.backend_path}/frontend") == a.frontend_path
        assert await store.read(f"{a.backend_path}/frontend-id") == str(w.guest)
        assert await store.read(f"{a.backend_path}/online") == "1"
        for path in (a.frontend_path, a.backend_path):
            assert await store.read(f"{path}/state") == "1"
        assert await store.get_perms(a.frontend_path) == [
            Permission(w.guest, Access.NONE), Permission(0, Access.READ)
        ]
        assert await store.get_perms(f"{a.backend_path}/state") == [
            Permission(0, Access.NONE), Permission(w.guest, Access.READ)
        ]
        # The guest may read the backend dir but not write it.
        assert await w.domu.store.read(f"{a.backend_path}/online") == "1"
        with pytest.raises(StoreError) as info:
            await w.domu.store.write(f"{a.backend_path}/online", "0")
        assert info.value.code == "EACCES"
        await destroy_device(store, a)
        assert not await store.exists(a.frontend_path)
        assert not await store.exists(a.backend_path)


async def test_multi_page_multi_queue_rings() -> None:
    with anyio.fail_after(20):
        async with world() as w, running(WideEchoBackend, w) as backend:
                async with WideEchoFrontend(w.domu, backend_id=0) as front:
                    fe_dir = w.address.frontend_path
                    store = w.dom0.store
                    assert await store.read(f"{fe_dir}/ring-page-order") == "2"
                    assert await store.read(f"{fe_dir}/multi-queue-num-queues") == "2"
                    for q in (0, 1):
                        for i in range(4):
                            assert await store.exists(f"{fe_dir}/queue-{q}/ring-ref{i}")
                        assert await store.exists(f"{fe_dir}/queue-{q}/event-channel")
                    assert [len(q.buffer) for q in front.queues] == [4 * 4096, 4 * 4096]
                    # 4 pages of 64-byte slots: (16384 - 64) // 64 -> 255 -> 128 entries
                    for queue in front.queues:
                        channel = queue.channel
                        assert channel.engine.entries == 128
                        many = [MESSAGE.pack(i, 2, b"ab") for i in range(300)]
                        async with anyio.create_task_group() as io:
                            io.start_soon(channel.send_batch, many)
                            for i in range(300):
                                ident, _, data = MESSAGE.unpack(await channel.receive())
                                assert (ident, data[:2]) == (i, b"AB")
                await backend.wait_finished()


async def test_frontend_capped_by_what_the_backend_offers() -> None:
    with anyio.fail_after(20):
        async with world() as w, running(EchoBackend, w) as backend:
                async with WideEchoFrontend(w.domu, backend_id=0) as front:
                    assert (front.ring_page_order, front.num_queues) == (0, 1)
                    assert await front.echo(1, b"x") == b"X"
                await backend.wait_finished()


async def test_removing_the_device_ends_both_sides() -> None:
    with anyio.fail_after(20):
        async with world() as w, running(EchoBackend, w, once=False) as backend:
                front = EchoFrontend(w.domu, backend_id=0)
                async with front:
                    await destroy_device(w.dom0.store, w.address)
                    await backend.wait_finished()
                    await front.wait_finished()
                assert not backend.queues and not front.queues


async def test_frontend_follows_an_orderly_backend_restart() -> None:
    """A backend that closes in order (Closing, Closed) and a new one that comes up: the
    frontend closes with it, then connects to the new one."""
    with anyio.fail_after(30):
        async with world() as w, anyio.create_task_group() as tg:

            async def serve(stop: anyio.CancelScope) -> None:
                with stop:
                    async with EchoBackend(w.dom0, w.guest) as backend:
                        await backend.run()

            first = anyio.CancelScope()
            tg.start_soon(serve, first)
            async with EchoFrontend(w.domu, backend_id=0) as front:
                assert await front.echo(1, b"a") == b"A"
                first.cancel()  # the first backend closes in order
                while front.state is not S.CLOSED:
                    await anyio.sleep(0.01)
                second = anyio.CancelScope()
                tg.start_soon(serve, second)
                await front.wait_connected()
                assert front.generation == 2
                assert await front.echo(2, b"b") == b"B"
            second.cancel()


async def test_closing_out_of_order_or_from_another_task_is_a_clear_local_error() -> None:
    with anyio.fail_after(20):
        async with world() as w:
            backend = await EchoBackend(w.dom0, w.guest).__aenter__()
            other = DeviceAddress("echo", frontend_id=w.guest, backend_id=0, devid=1)
            await create_device(w.dom0.store, other)
            later = await EchoBackend(w.dom0, w.guest, 1).__aenter__()
            # `backend`'s task group is below `later`'s: closing it first would break anyio's
            # cancel-scope nesting with the device half closed.
            with pytest.raises(LocalProtocolError, match="reverse order"):
                await backend.aclose()
            assert backend.state is S.INIT_WAIT  # untouched

            async def close_elsewhere() -> None:
                with pytest.raises(LocalProtocolError, match="task that opened it"):
                    await later.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(close_elsewhere)
            await later.aclose()
            await backend.aclose()
            assert backend.state is S.CLOSED and later.state is S.CLOSED
            await destroy_device(w.dom0.store, other)
