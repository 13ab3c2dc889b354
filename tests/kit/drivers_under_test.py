"""ringkit's own drivers -- the echo and key-value examples, block, console and net -- described
for the test kit, with one exchange each (module-level, so that child processes can rebuild
them)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.streams.stapled import StapledObjectStream
from ringkit.backends.block.device import BlockBackend
from ringkit.backends.console import ConsoleBackend
from ringkit.backends.net import NetBackend
from ringkit.frontends.block.device import BlockFrontend
from ringkit.frontends.console import ConsoleFrontend
from ringkit.frontends.net import NetFrontend

from ringkit import PeerGoneError
from ringkit.abc import Domain
from ringkit.proto.console import DEFAULT_CONSOLE_DEVID
from ringkit.testing import DriverUnderTest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import echo  # (examples/ is not a package)
import kv

DISK = 1 << 20


async def echo_exchange(front: echo.EchoFrontend) -> None:
    for i, word in enumerate((b"ring", b"kit")):
        reply = await front.echo(i, word)
        assert reply == word.upper(), f"echo answered {reply!r} to {word!r}"


def echo_driver() -> DriverUnderTest:
    return DriverUnderTest(echo.EchoBackend, echo.EchoFrontend, echo_exchange, name="echo")


def kv_driver() -> DriverUnderTest:
    return DriverUnderTest(kv.KVBackend, kv.KVFrontend, kv.exchange, name="kv")


async def block_exchange(disk: BlockFrontend) -> None:
    data = os.urandom(8192)
    await disk.write(4096, data)
    got = await disk.read(4096, len(data))
    assert got == data, "the block device read back other data than it wrote"


def block_driver(tmp: Path) -> DriverUnderTest:
    image = tmp / "disk.img"
    image.write_bytes(bytes(DISK))
    return DriverUnderTest(
        BlockBackend, BlockFrontend, block_exchange, name="block",
        backend_args={"image": str(image)}, frontend_args={"pool_pages": 16},
        backend_nodes={"params": str(image), "mode": "w", "type": "raw"},
        frontend_nodes={"virtual-device": 51712, "device-type": "disk"}, devid=51712)


@dataclass(frozen=True)
class ConsoleExchange:
    """Write a line to the console: the backend takes it out of the ring (what the frontend
    can see) and it reaches the backend's log."""

    log: str

    async def __call__(self, console: ConsoleFrontend) -> None:
        token = os.urandom(6).hex().encode()
        await console.stream.send(b"hello " + token + b"\n")
        await console.stream.drain()
        with anyio.move_on_after(5):
            while token not in Path(self.log).read_bytes():
                await anyio.sleep(0.01)
            return
        raise AssertionError("the console backend took the line but did not log it")


def console_driver(tmp: Path) -> DriverUnderTest:
    log = tmp / "console.log"
    log.touch()
    return DriverUnderTest(
        ConsoleBackend, ConsoleFrontend, ConsoleExchange(str(log)), name="console",
        backend_args={"log_path": str(log), "pty": False}, devid=DEFAULT_CONSOLE_DEVID)


class LoopbackNetBackend(NetBackend):
    """A vif backend whose link sends every frame from the guest straight back to it."""

    def __init__(self, domain: Domain, frontend_id: int, devid: int = 0) -> None:
        send, receive = anyio.create_memory_object_stream[bytes](64)
        super().__init__(domain, frontend_id, devid, link=StapledObjectStream(send, receive))


NET_SIZES = (14, 60, 1514, 4096, 4097, 9000)
"""Frames of the net exchange: a bare Ethernet header up to one over three pages."""


async def net_exchange(vif: NetFrontend) -> None:
    """Frames both ways through the loopback: each sent (tx ring, from the guest's granted
    pages) and received back (rx ring, into its posted buffers) unchanged, one at a time.

    `NetFrontend.send` returns once the frame is queued, and `receive` waits across
    reconnections; so that the traffic fails when its connection does, waiting for the echo
    gives up once that connection ended: `PeerGoneError` from what broke it."""
    for size in NET_SIZES:
        sent = (b"\xff" * 6 + b"\x00\x16\x3e\x00\x00\x01" + b"\x88\xb5"
                + os.urandom(size))[:size]
        generation = vif.generation
        await vif.send(sent)
        got = await _echo(vif, generation)
        assert got == sent, f"the vif got back {len(got)} other bytes for a {size}-byte frame"


async def _echo(vif: NetFrontend, generation: int) -> bytes:
    while True:
        with anyio.move_on_after(0.02):
            return await vif.receive()
        if not vif.is_connected or vif.generation != generation:
            raise PeerGoneError(f"{vif.address}: the connection ended before the frame came "
                                "back") from vif.connection_error


def net_driver() -> DriverUnderTest:
    return DriverUnderTest(LoopbackNetBackend, NetFrontend, net_exchange, name="net",
                           frontend_args={"tx_pages": 32, "rx_buffers": 32},
                           backend_nodes={"mac": "00:16:3e:00:00:01"},
                           frontend_nodes={"mac": "00:16:3e:00:00:01"})
