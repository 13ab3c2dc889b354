"""Interop: Debian's xenstore-utils (libxenstore 4.17) against the simulated xenstored.

libxenstore's ``xs_open()`` connects to ``$XENSTORED_PATH`` when it names a socket
(``xenstore_daemon_path()`` in tools/include/xen-tools/xenstore-common.h), so pointing that
variable at `XenstoreServer.serve_unix`'s socket makes the real tools talk to our server.  The
tools come from the ``xenstore-utils`` package (in the Makefile's Debian list).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from _tools import require_tools

from ringkit.abc import Access, Permission
from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import StoreClient, connect_unix

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _xenstore_utils() -> None:
    require_tools("xenstore-ls", "xenstore-read", "xenstore-write", "xenstore-rm",
                  "xenstore-chmod", "xenstore-list", "xenstore-watch",
                  why="run Debian's xenstore tools against the simulated xenstored")

TOOL_TIMEOUT = 20


@pytest.fixture
async def socket_path(tmp_path: Path) -> AsyncIterator[str]:
    server = XenstoreServer()
    path = str(tmp_path / "xenstored.sock")
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve_unix, path, 0)
        yield path
        tg.cancel_scope.cancel()


async def run_tool(socket_path: str, *argv: str, check: bool = True) -> str:
    env = dict(os.environ, XENSTORED_PATH=socket_path)
    with anyio.fail_after(TOOL_TIMEOUT):
        result = await anyio.run_process(list(argv), env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr.decode()}")
    return result.stdout.decode()


@pytest.fixture
async def store(socket_path: str) -> AsyncIterator[StoreClient]:
    async with await connect_unix(socket_path) as client:
        yield client


async def test_xenstore_ls_lists_nodes_written_by_ringkit(
    socket_path: str, store: StoreClient
) -> None:
    await store.write("/vm/backend/vbd/1/51712/state", "4")
    await store.write("/vm/backend/vbd/1/51712/params", "/images/disk.img")
    await store.set_perms("/vm/backend", [Permission(0, Access.NONE), Permission(1, Access.READ)])
    listing = await run_tool(socket_path, "xenstore-ls", "/vm")
    assert listing.split("\n")[:5] == [
        'backend = ""',
        ' vbd = ""',
        '  1 = ""',
        '   51712 = ""',
        '    state = "4"',
    ]
    assert '    params = "/images/disk.img"' in listing
    with_perms = await run_tool(socket_path, "xenstore-ls", "-p", "/vm")
    assert with_perms.startswith('backend = ""')
    assert with_perms.split("\n")[0].endswith("(n0,r1)")
    assert "xenstored" in await run_tool(socket_path, "xenstore-ls")


async def test_xenstore_write_read_by_ringkit_and_back(
    socket_path: str, store: StoreClient
) -> None:
    await run_tool(socket_path, "xenstore-write", "/from/tools", "hello", "/from/other", "x")
    assert await store.read("/from/tools") == "hello"
    assert await store.directory("/from") == ["tools", "other"]
    await store.write("/from/ringkit", "value with spaces")
    assert await run_tool(socket_path, "xenstore-read", "/from/ringkit") == "value with spaces\n"
    await run_tool(socket_path, "xenstore-rm", "/from/tools")
    assert not await store.exists("/from/tools")
    missing = await run_tool(socket_path, "xenstore-read", "/from/tools", check=False)
    assert missing == ""
    await run_tool(socket_path, "xenstore-chmod", "/from/ringkit", "n0", "b3")
    assert await store.get_perms("/from/ringkit") == [
        Permission(0, Access.NONE),
        Permission(3, Access.BOTH),
    ]


async def test_xenstore_watch_sees_ringkit_writes(socket_path: str, store: StoreClient) -> None:
    await store.write("/watched", "")
    env = dict(os.environ, XENSTORED_PATH=socket_path)
    with anyio.fail_after(TOOL_TIMEOUT):
        async with await anyio.open_process(
            ["xenstore-watch", "-n", "2", "/watched"], env=env
        ) as proc:
            assert proc.stdout is not None
            received = b""
            async for chunk in proc.stdout:
                received += chunk
                if received.count(b"\n") == 1:
                    # The initial event arrived: the watch is registered.
                    await store.write("/watched/child", "1")
            assert await proc.wait() == 0
    assert received.decode().split() == ["/watched", "/watched/child"]


async def test_ringkit_watch_sees_xenstore_write(socket_path: str, store: StoreClient) -> None:
    async with store.watch("/tooltest") as watch:
        with anyio.fail_after(TOOL_TIMEOUT):
            assert await watch.__anext__() == "/tooltest"
            await run_tool(socket_path, "xenstore-write", "/tooltest/k", "v")
            assert await watch.__anext__() == "/tooltest/k"


async def test_libxenstore_reads_long_directories_in_parts(
    socket_path: str, store: StoreClient
) -> None:
    names = [f"a-rather-long-child-name-{i:04d}" for i in range(200)]  # listing > 4096 bytes
    async with store.transaction() as tx:
        for name in names:
            await tx.write(f"/big/{name}", "")
    # XS_DIRECTORY answers E2BIG, so libxenstore falls back to XS_DIRECTORY_PART.
    listed = await run_tool(socket_path, "xenstore-list", "/big")
    assert listed.split() == names
