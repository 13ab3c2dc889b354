"""The /dev/xen/xenbus stream and how the client finds a store.

The device cannot exist here, so the stream is exercised on a SOCK_SEQPACKET socketpair, which
keeps write boundaries the way the kernel device sees them: the server side checks that every
write carries exactly one whole message.  The real device is used under Xen (marker ``xen``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

from ringkit import StoreError
from ringkit.abc import Access, Permission
from ringkit.proto.xs_wire import HEADER, HEADER_SIZE
from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import (
    XENBUS_DEVICE,
    StoreClient,
    XenbusDeviceStream,
    connect_xenbus,
    daemon_socket_path,
    domain_device_path,
    open_path,
    open_store,
)

pytestmark = pytest.mark.anyio


class OneMessagePerWrite(anyio.abc.ByteStream):
    """Server-side wrapper asserting each received packet is exactly one xs_wire message."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner
        self.packets = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        assert len(data) >= HEADER_SIZE
        assert HEADER.unpack_from(data)[3] == len(data) - HEADER_SIZE, "partial/merged message"
        self.packets += 1
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_device_stream_writes_whole_messages(server: XenstoreServer) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    checker = OneMessagePerWrite(XenbusDeviceStream(theirs.detach()))
    device = XenbusDeviceStream(ours.detach())
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve_connection, checker, 0)
        async with StoreClient(device) as store:
            await store.write("/dev/test", b"v" * 3000)
            assert await store.read_bytes("/dev/test") == b"v" * 3000
            async with store.watch("/dev") as watch:
                with anyio.fail_after(5):
                    assert await watch.__anext__() == "/dev"
            async with anyio.create_task_group() as burst:
                for i in range(20):
                    burst.start_soon(store.write, f"/dev/n{i}", str(i))
    assert checker.packets == 24  # write, read, watch, unwatch and 20 writes: one write each
    assert device.fileno >= 0


async def test_device_stream_end_of_stream_and_close() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = XenbusDeviceStream(ours.detach())
    theirs.close()
    with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
        await device.receive()
    await device.aclose()
    await device.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await device.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await device.send(b"x")


@pytest.fixture
async def sim_socket(tmp_path: Path) -> AsyncIterator[str]:
    server = XenstoreServer()
    path = str(tmp_path / "socket")
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve_unix, path, 0)
        yield path
        tg.cancel_scope.cancel()


async def test_store_discovery_like_libxenstore(
    sim_socket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XENSTORED_PATH", sim_socket)
    assert daemon_socket_path() == sim_socket == domain_device_path()
    async with await open_store() as store:
        assert await store.read("/local/domain/0/name") == "Domain-0"

    monkeypatch.delenv("XENSTORED_PATH")
    monkeypatch.setenv("XENSTORED_RUNDIR", str(tmp_path))  # <rundir>/socket is sim_socket
    assert daemon_socket_path() == sim_socket
    assert domain_device_path() == XENBUS_DEVICE
    async with await open_store() as store:
        assert await store.get_domain_path(3) == "/local/domain/3"

    monkeypatch.setenv("XENSTORED_RUNDIR", str(tmp_path / "nowhere"))
    if not os.path.exists(XENBUS_DEVICE):
        with pytest.raises(StoreError) as info:
            await open_store()
        assert info.value.code == "ENOENT"


async def test_open_path_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        await open_path(str(tmp_path / "missing"))
    assert info.value.code == "ENOENT"
    with pytest.raises(StoreError) as info:
        connect_xenbus(str(tmp_path / "missing"))
    assert info.value.code == "ENOENT"


@pytest.mark.parametrize("way", ["device", "socket"])
@pytest.mark.xen
@pytest.mark.skipif(not os.path.exists(XENBUS_DEVICE), reason="needs /dev/xen/xenbus (real Xen)")
async def test_real_xenstored(way: str) -> None:
    """The client against Xen's own xenstored, through the kernel device or the daemon socket
    (dom0 under the Xen-in-QEMU harness): watches, transactions with a real conflict,
    permissions, errors and the XS_DIRECTORY_PART fallback."""

    async def connect() -> StoreClient:
        if way == "device":
            return connect_xenbus()
        if not os.path.exists(daemon_socket_path()):
            pytest.skip("no xenstored socket in this domain")
        return await open_path(daemon_socket_path())

    base = f"/ringkit-test-{way}-{os.getpid()}"
    async with await connect() as store, await connect() as other:
        try:
            assert (await store.get_domain_path(0)) == "/local/domain/0"
            await store.write(f"{base}/x", "1")
            assert await store.read(f"{base}/x") == "1"
            async with store.watch(base) as watch:
                with anyio.fail_after(30):
                    assert await watch.__anext__() == base
                    await other.write(f"{base}/y", "2")
                    assert await watch.__anext__() == f"{base}/y"
            with pytest.raises(StoreError) as info:
                async with store.transaction() as tx:
                    await tx.read(f"{base}/x")
                    await other.write(f"{base}/x", "changed")
                    await tx.write(f"{base}/x", "mine")
            assert info.value.code == "EAGAIN"
            perms = [Permission(0, Access.NONE), Permission(3, Access.READ)]
            await store.set_perms(f"{base}/x", perms)
            assert await store.get_perms(f"{base}/x") == perms
            with pytest.raises(StoreError) as info:
                await store.read(f"{base}/missing")
            assert info.value.code == "ENOENT"
            names = [f"child-with-a-long-name-{i:04d}" for i in range(200)]
            async with store.transaction() as tx:
                for name in names:
                    await tx.write(f"{base}/big/{name}", "")
            assert await store.directory(f"{base}/big") == names
        finally:
            await store.rm(base)


async def test_device_refusal_is_a_store_error_not_a_broken_connection(
    server: XenstoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux's xenbus device reports xenstored refusing a watch as the errno of write() (no
    reply comes); the request fails with that code and the connection carries on."""
    import errno

    import ringkit.store.connect as connect_module

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = XenbusDeviceStream(ours.detach())
    real_write = os.write
    refuse = {"pending": True}

    def write(fd: int, data: bytes) -> int:
        if fd == device.fileno and refuse["pending"] and bytes(data[:4]) == b"\x04\0\0\0":
            refuse["pending"] = False
            raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
        return real_write(fd, data)

    monkeypatch.setattr(connect_module.os, "write", write)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve_connection, XenbusDeviceStream(theirs.detach()), 0)
        async with StoreClient(device) as store:
            with pytest.raises(StoreError) as info:
                async with store.watch("/refused"):
                    pass
            assert info.value.code == "E2BIG" and info.value.errno == errno.E2BIG
            assert store.watch_count == 0
            await store.write("/after", "fine")
            assert await store.read("/after") == "fine"
