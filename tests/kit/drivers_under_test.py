"""ringkit's own drivers -- the echo and key-value examples, block and console -- described
for the test kit, with one exchange each (module-level, so that child processes can rebuild
them)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
from ringkit.backends.block.device import BlockBackend
from ringkit.backends.console import ConsoleBackend
from ringkit.frontends.block.device import BlockFrontend
from ringkit.frontends.console import ConsoleFrontend

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
