"""One end of a demo device, run as its own process by ``ringkit demo``.

    python -m ringkit.cli._demo_peer echo-backend  SIM_DIR FRONTEND_ID
    python -m ringkit.cli._demo_peer echo-frontend SIM_DIR GUEST_ID COUNT

Each prints one JSON object per line on stdout (``{"event": ...}``) for the demo to render.
The echo device is the framework's example driver (examples/echo.py), included here so the
installed CLI does not depend on the examples folder.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from typing import Any

import anyio

from ..device import Backend, Frontend, RingLayout

ECHO_RING = RingLayout("echo", request_size=64, response_size=64)
MESSAGE = struct.Struct("<QH54s")


def emit(event: str, **fields: Any) -> None:
    """One line of progress for the parent process."""
    print(json.dumps({"event": event, **fields}), flush=True)


def pattern(ident: int) -> bytes:
    """The 54 payload bytes of message `ident`: recognisable and different for every id."""
    return (ident.to_bytes(8, "little") * 7)[:54]


class EchoBackend(Backend):
    """Answers every request with the same bytes (see examples/echo.py)."""

    device_type = "echo"
    ring_layout = ECHO_RING

    async def handle(self, request: bytearray) -> bytes:
        ident, length, data = MESSAGE.unpack(request)
        return MESSAGE.pack(ident, min(length, 54), data)


class EchoFrontend(Frontend):
    """Sends requests, many in flight, and checks every answer."""

    device_type = "echo"
    ring_layout = ECHO_RING

    async def pump(self, count: int) -> int:
        """Send `count` requests pipelined; return how many answers matched their request."""
        good = 0

        async def receive() -> None:
            nonlocal good
            for expected in range(count):
                ident, length, data = MESSAGE.unpack(await self.channel.receive())
                good += ident == expected and length == 54 and data == pattern(ident)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            burst = 16
            for start in range(0, count, burst):
                ids = range(start, min(start + burst, count))
                await self.channel.send_batch([MESSAGE.pack(i, 54, pattern(i)) for i in ids])
        return good


async def echo_backend(directory: str, frontend_id: int) -> None:
    from ..sim import connect

    async with connect(directory, 0) as dom0, EchoBackend(dom0, frontend_id) as backend:
        emit("ready", state=backend.state.xen_name)
        await backend.run(once=True)
        emit("closed", state=backend.state.xen_name, connections=backend.generation)
    emit("released", leaks=dom0.leaks().__bool__())


async def echo_frontend(directory: str, guest: int, count: int) -> None:
    from ..sim import connect

    async with connect(directory, guest) as domu:
        async with EchoFrontend(domu, backend_id=0) as front:
            emit("connected", entries=front.channel.engine.entries)
            started = time.perf_counter()
            good = await front.pump(count)
            seconds = time.perf_counter() - started
            emit("result", count=count, good=good, seconds=seconds)
        emit("closed", state=front.state.xen_name)
    emit("released", leaks=domu.leaks().__bool__())


def main(argv: list[str]) -> None:
    role, directory, domid = argv[0], argv[1], int(argv[2])
    if role == "echo-backend":
        anyio.run(echo_backend, directory, domid)
    elif role == "echo-frontend":
        anyio.run(echo_frontend, directory, domid, int(argv[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
