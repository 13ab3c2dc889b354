"""``ringkit xenstore`` against the simulated xenstored (the CLI runs in a subprocess so that
its own event loop does not meet the test's)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from ringkit.sim.xenstored import XenstoreServer
from ringkit.store import connect_unix

pytestmark = pytest.mark.anyio

RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]


@pytest.fixture
async def socket_path(tmp_path: Path) -> AsyncIterator[str]:
    server = XenstoreServer()
    path = str(tmp_path / "store.sock")
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve_unix, path, 0)
        yield path
        tg.cancel_scope.cancel()


async def cli(*args: str, env_socket: str | None = None, check: bool = True) -> tuple[int, str]:
    env = dict(os.environ)
    env.pop("XENSTORED_PATH", None)
    if env_socket:
        env["XENSTORED_PATH"] = env_socket
    with anyio.fail_after(30):
        result = await anyio.run_process([*RINGKIT, "xenstore", *args], env=env, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    if check:
        assert result.returncode == 0, output
    return result.returncode, output


async def test_write_read_ls_rm(socket_path: str) -> None:
    await cli("write", "--socket", socket_path, "/cli/a", "1", "/cli/b/c", "two words")
    assert (await cli("read", "--socket", socket_path, "/cli/a", "/cli/b/c"))[1] == "1\ntwo words\n"
    listing = (await cli("ls", "/cli", env_socket=socket_path))[1]
    assert listing == 'a = "1"\nb = ""\n c = "two words"\n'
    await cli("rm", "--socket", socket_path, "/cli/b")
    async with await connect_unix(socket_path) as store:
        assert await store.directory("/cli") == ["a"]
    code, output = await cli("read", "--socket", socket_path, "/cli/b", check=False)
    assert code != 0 and "ENOENT" in output


async def test_watch_prints_events(socket_path: str) -> None:
    async with await connect_unix(socket_path) as store:
        await store.mkdir("/cw")
        env = dict(os.environ, XENSTORED_PATH=socket_path)
        cmd = [*RINGKIT, "xenstore", "watch", "-n", "2", "/cw"]
        with anyio.fail_after(30):
            async with await anyio.open_process(cmd, env=env) as proc:
                assert proc.stdout is not None
                received = b""
                async for chunk in proc.stdout:
                    received += chunk
                    if received.count(b"\n") == 1:
                        await store.write("/cw/x", "1")
                assert await proc.wait() == 0
    assert received.decode().split() == ["/cw", "/cw/x"]


async def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    code, output = await cli("read", "--socket", str(tmp_path / "nothing"), "/x", check=False)
    assert code != 0 and "no xenstore at" in output
