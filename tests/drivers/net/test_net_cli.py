"""`ringkit net serve` and `ringkit net attach` as separate processes on the simulated Xen
(root only): the backend's TAP in one network namespace, the frontend's in another, ping both
ways; then the frontend process is killed with SIGKILL and the backend offers the device again
(InitWait); the simulator's accounting is back to zero at the end.  Negative control: with the
frontend process stopped (SIGSTOP), the ping does not get through.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from networld import world
from test_net_tap import GUEST_IP, HOST_IP, _needs_root, in_ns, ip, namespaces

from ringkit.device import Nodes, XenbusState

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLI = [sys.executable, "-c", "from ringkit.cli import main; main()"]


@pytest.fixture
def anyio_backend() -> str:
    """The ends are separate processes: run once."""
    return "asyncio"


@asynccontextmanager
async def child(argv: list[str]) -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    async with await anyio.open_process(argv, stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            line = b""
            with anyio.fail_after(30):
                while b"\n" not in line:
                    try:
                        line += await proc.stdout.receive()
                    except anyio.EndOfStream:
                        raise AssertionError(f"{argv[3:6]} exited early") from None
            yield proc, line.decode().splitlines()[0]
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def ping(ns: str, address: str) -> bool:
    return (await in_ns(ns, "ping", "-c", "3", "-W", "2", address, check=False)).returncode == 0


@pytest.mark.parametrize(("queues", "offload"), [(1, False), (2, False), (1, True)])
async def test_serve_and_attach_carry_a_ping_between_namespaces(queues: int,
                                                                 offload: bool) -> None:
    _needs_root()
    tag = f"{os.getpid() % 10000}c{queues}{'o' if offload else ''}"
    host_tap, guest_tap = f"rkb{tag}", f"rkf{tag}"
    with anyio.fail_after(120):
        async with namespaces(tag) as (host_ns, guest_ns), world() as w:
            address = w.address
            await w.dom0.store.rm(address.backend_path)  # the serve command creates it
            await w.dom0.store.rm(address.frontend_path)
            d = str(w.xen.directory)
            serve = [*CLI, "net", "serve", "--dir", d, "--frontend", str(w.guest),
                     "--tap", host_tap, "--mac", "00:16:3e:aa:bb:cc", "--max-queues", str(queues)]
            attach = [*CLI, "net", "attach", "--dir", d, "--domain", str(w.guest),
                      "--tap", guest_tap, "--max-queues", str(queues),
                      "--offload" if offload else "--no-offload"]
            async with child(serve) as (server, ready):
                assert ready.startswith("ready: vif"), ready
                ip("link", "set", host_tap, "netns", host_ns)
                ip("-n", host_ns, "addr", "add", f"{HOST_IP}/24", "dev", host_tap)
                ip("-n", host_ns, "link", "set", host_tap, "up")
                async with child(attach) as (guest, ready):
                    assert "mac 00:16:3e:aa:bb:cc" in ready, ready
                    asked = await Nodes(w.dom0.store, address.frontend_path).read_optional(
                        "multi-queue-num-queues")
                    assert asked == (str(queues) if queues > 1 else None), asked
                    gso = await Nodes(w.dom0.store, address.frontend_path).read_optional(
                        "feature-gso-tcpv4")
                    assert gso == ("1" if offload else None), gso
                    ip("link", "set", guest_tap, "netns", guest_ns)
                    ip("-n", guest_ns, "addr", "add", f"{GUEST_IP}/24", "dev", guest_tap)
                    ip("-n", guest_ns, "link", "set", guest_tap, "up")
                    assert await ping(host_ns, GUEST_IP)
                    assert await ping(guest_ns, HOST_IP)
                    guest.send_signal(signal.SIGSTOP)  # negative control: nobody forwards
                    try:
                        assert not await ping(host_ns, GUEST_IP)
                    finally:
                        guest.send_signal(signal.SIGCONT)
                    assert await ping(host_ns, GUEST_IP)
                    guest.kill()
                # the backend sees the frontend die and offers the device again
                state = f"{address.backend_path}/state"
                with anyio.fail_after(30):
                    while (await w.dom0.store.read(state)).strip() != \
                            XenbusState.INIT_WAIT.to_wire():
                        await anyio.sleep(0.05)
                assert server.returncode is None
                server.send_signal(signal.SIGTERM)
