"""The netif pair carrying real traffic between two network namespaces (root only).

The backend's link is a TAP device (with IFF_VNET_HDR: the checksums the kernel leaves to the
device are completed in software) in one namespace; the frontend's frame stream is spliced to
a plain TAP in another.  ``ping -c 3`` both ways, then a TCP transfer of 8 MiB of random bytes
from one namespace to the other, compared by SHA-256.  The namespaces are removed at the end,
also on failure.  Negative control: with the frontend's frames dropped on the way, neither the
ping nor the transfer gets through.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from _tools import require_tools
from networld import world
from ringkit.backends.net import NetBackend
from ringkit.backends.net.tap import TapDevice, complete_checksum, splice
from ringkit.frontends.net import NetFrontend

pytestmark = pytest.mark.anyio

HOST_IP, GUEST_IP = "10.77.20.1", "10.77.20.2"
MIB = 8

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import socket, sys, time
data = open(sys.argv[2], "rb").read()
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], 5201), timeout=60); break
    except OSError:
        time.sleep(0.1)
c.sendall(data); c.close()
"""


def _needs_root() -> None:
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root and /dev/net/tun (network namespaces and TAP devices)")
    require_tools("ip", "ping", why="configure the namespaces and ping across the vif")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@asynccontextmanager
async def namespaces(tag: str) -> AsyncIterator[tuple[str, str]]:
    host, guest = f"rk{tag}h", f"rk{tag}g"
    try:
        for ns in (host, guest):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        yield host, guest
    finally:
        for ns in (host, guest):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def into(tap: TapDevice, ns: str, address: str) -> None:
    ip("link", "set", tap.name, "netns", ns)
    ip("-n", ns, "addr", "add", f"{address}/24", "dev", tap.name)
    ip("-n", ns, "link", "set", tap.name, "up")


async def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(["ip", "netns", "exec", ns, *argv], check=check)


class Lossy(NetFrontend):
    """Negative control: a frontend that loses every frame it is given to send."""

    async def send_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        del frames  # (`send` sends a batch of one)


async def _run(tmp_path: Path, frontend: type[NetFrontend], *, offload: bool = False,
               mib: int = MIB, stats: list[Any] | None = None) -> tuple[bool, bool, bool]:
    """(host pings guest, guest pings host, the transfer's checksums match).  With `offload`,
    the frontend asks for GSO and its TAP has a virtio-net header too, and the transfer goes
    both ways; `stats` gets both ends' counters."""
    tag = f"{os.getpid() % 10000}{frontend.__name__[0].lower()}{'o' if offload else ''}"
    payload = tmp_path / "payload"
    payload.write_bytes(secrets.token_bytes(mib << 20))
    async with namespaces(tag) as (host_ns, guest_ns), world() as w:
        host_tap = TapDevice.open(f"rkb{tag}", vnet_hdr=True)
        guest_tap = TapDevice.open(f"rkf{tag}", vnet_hdr=offload)
        try:
            into(host_tap, host_ns, HOST_IP)
            into(guest_tap, guest_ns, GUEST_IP)
            async with anyio.create_task_group() as tg, \
                    NetBackend(w.dom0, w.guest, 0, link=host_tap) as be:
                tg.start_soon(lambda: be.run(once=True))
                async with frontend(w.domu, 0, 0, offload=offload) as vif:
                    if offload:
                        guest_tap.set_offload(vif.tx_gso)
                    tg.start_soon(splice, vif.stream, guest_tap)
                    with anyio.fail_after(60):
                        pinged = (await in_ns(host_ns, "ping", "-c", "3", "-W", "2", GUEST_IP,
                                              check=False)).returncode == 0
                        ponged = (await in_ns(guest_ns, "ping", "-c", "3", "-W", "2", HOST_IP,
                                              check=False)).returncode == 0
                    transferred = False
                    if pinged and ponged:
                        with anyio.fail_after(240):
                            transferred = await _transfer(host_ns, guest_ns, payload)
                            if offload and transferred:
                                transferred = await _transfer(guest_ns, host_ns, payload,
                                                              HOST_IP)
                    if stats is not None:
                        stats += [be.stats, vif.stats]
                    tg.cancel_scope.cancel()
                await be.wait_finished()
        finally:
            await host_tap.aclose()
            await guest_tap.aclose()
    return pinged, ponged, transferred


async def _transfer(host_ns: str, guest_ns: str, payload: Path, to: str = GUEST_IP) -> bool:
    """Send the payload from the host namespace to a server in the guest's (at `to`; the
    other way round when the namespaces are swapped); compare SHA-256."""
    import hashlib

    expected = f"{payload.stat().st_size} {hashlib.sha256(payload.read_bytes()).hexdigest()}"
    async with await anyio.open_process(
            ["ip", "netns", "exec", guest_ns, sys.executable, "-c", SERVER, to],
            stdout=subprocess.PIPE) as server:
        assert server.stdout is not None
        lines = b""
        while b"listening" not in lines:
            lines += await server.stdout.receive()
        await in_ns(host_ns, sys.executable, "-c", CLIENT, to, str(payload))
        async for chunk in server.stdout:
            lines += chunk
        await server.wait()
    return lines.decode().split("\n")[-2].strip() == expected


async def test_ping_and_a_tcp_transfer_between_namespaces(tmp_path: Path) -> None:
    _needs_root()
    assert await _run(tmp_path, NetFrontend) == (True, True, True)


async def test_gso_tcp_transfers_both_ways(tmp_path: Path) -> None:
    """GSO negotiated at both ends: 24 MiB each way by TCP, compared by SHA-256, with frames
    longer than the MTU (GSO extras) counted crossing the tx and the rx ring."""
    _needs_root()
    stats: list[Any] = []
    assert await _run(tmp_path, NetFrontend, offload=True, mib=24, stats=stats) == (
        True, True, True)
    backend, frontend = stats
    assert backend.tx_gso > 0 and frontend.tx_gso == backend.tx_gso, stats
    assert backend.rx_gso > 0 and frontend.rx_gso == backend.rx_gso, stats


async def test_without_gso_only_mtu_sized_frames_cross(tmp_path: Path) -> None:
    """Negative control of the counters: without offloads (the default frontend), the same
    transfer carries no GSO frame either way."""
    _needs_root()
    stats: list[Any] = []
    assert await _run(tmp_path, NetFrontend, stats=stats) == (True, True, True)
    backend, frontend = stats
    assert backend.tx_gso == backend.rx_gso == frontend.rx_gso == 0, stats


async def test_negative_control_a_lossy_frontend_gets_nothing_through(tmp_path: Path) -> None:
    _needs_root()
    assert await _run(tmp_path, Lossy) == (False, False, False)


def test_complete_checksum_matches_a_known_udp_datagram() -> None:
    # RFC 1071's example words, as a "frame" whose checksum field (at 8) holds 0: the folded
    # sum of 0001 f203 f4f5 f6f7 is ddf2, so the checksum is ~ddf2 = 220d
    frame = bytearray(bytes.fromhex("0001f203f4f5f6f7") + b"\0\0")
    complete_checksum(frame, 0, 8)
    assert frame[8:] == bytes.fromhex("220d")
    with pytest.raises(ValueError):
        complete_checksum(bytearray(4), 0, 3)


async def test_receive_batch_takes_what_waits_up_to_its_limit(tmp_path: Path) -> None:
    """Frames the host sent out of a TAP before any was read come out of `receive_batch` in
    bursts of its limit, every frame once and in order."""
    _needs_root()
    tag = f"{os.getpid() % 10000}b"
    async with namespaces(tag) as (host_ns, _):
        tap = TapDevice.open(f"rkb{tag}")
        try:
            into(tap, host_ns, HOST_IP)
            ip("-n", host_ns, "neigh", "add", GUEST_IP, "lladdr", "02:00:00:00:00:02",
               "dev", tap.name)
            sender = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "for i in range(7): s.sendto(b'rk%d' % i, (sys.argv[1], 9))\n")
            await in_ns(host_ns, sys.executable, "-c", sender, GUEST_IP)
            payloads: list[bytes] = []
            sizes: list[int] = []
            with anyio.fail_after(10):
                while len(payloads) < 7:
                    batch = await tap.receive_batch(limit=3)
                    sizes.append(len(batch))
                    payloads += [f[42:] for f in batch if f[12:14] == b"\x08\x00"   # IPv4
                                 and f[23] == 17 and f[36:38] == b"\0\x09"]         # UDP to 9
            assert payloads == [b"rk%d" % i for i in range(7)]
            assert max(sizes) == 3, sizes
        finally:
            await tap.aclose()
