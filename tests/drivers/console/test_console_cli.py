"""`ringkit console serve` and `ringkit console attach` as two processes on a simulated Xen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from ringkit.sim import SimXen

RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_serve_and_attach_in_separate_processes(tmp_path: Path) -> None:
    log = tmp_path / "guest.log"
    with anyio.fail_after(60):
        async with SimXen.start() as xen:
            guest = await xen.create_domain("guest")
            d = str(xen.directory)
            async with await anyio.open_process(
                [*RINGKIT, "console", "serve", "--dir", d, "--frontend", str(guest),
                 "--log", str(log), "--once"],
                stdout=subprocess.PIPE,
            ) as server:
                assert server.stdout is not None
                ready = b""
                while b"\n" not in ready:
                    ready += await server.stdout.receive()
                assert ready.startswith(b"ready: console 1 of domain 1 on pty /dev/")
                done = await anyio.run_process(
                    [*RINGKIT, "console", "attach", "--dir", d, "--domain", str(guest)],
                    input=b"hello from stdin\n",
                )
                assert done.returncode == 0
                assert await server.wait() == 0
            assert log.read_bytes() == b"hello from stdin\n"
            assert not await xen.settled_leaks()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_attach_without_backend_says_so(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with SimXen.start() as xen:
            guest = await xen.create_domain("guest")
            done = await anyio.run_process(
                [*RINGKIT, "console", "attach", "--dir", str(xen.directory), "--domain",
                 str(guest), "--banner", "x", "--connect-timeout", "0.5"],
                check=False,
            )
            assert done.returncode == 1
            assert b"no console backend in domain 0 connected" in done.stderr
            assert not await xen.settled_leaks()


def test_devid_0_is_refused_before_touching_xen() -> None:
    done = subprocess.run(
        [*RINGKIT, "console", "serve", "--frontend", "1", "--devid", "0"],
        capture_output=True, check=False,
    )
    assert done.returncode == 2
    assert b"--devid" in done.stderr
