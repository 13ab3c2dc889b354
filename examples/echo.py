"""An echo device: the smallest complete Xen split driver written with ringkit.

The frontend sends short messages through an io/ring.h ring; the backend answers each with the
same bytes -- upper-cased when both ends agreed on the optional ``feature-upper``.  Run it:

    python examples/echo.py          # a simulated Xen, a guest domain, both ends, then teardown

docs/writing-a-driver.md walks through this file.
"""

from __future__ import annotations

import struct

import anyio

from ringkit import RemoteProtocolError
from ringkit.device import Backend, DeviceAddress, Frontend, Nodes, RingLayout, create_device

# One 64-byte slot: request id, payload length, payload.  Responses use the same layout.
ECHO_RING = RingLayout("echo", request_size=64, response_size=64)
MESSAGE = struct.Struct("<QH54s")


class EchoBackend(Backend):
    device_type = "echo"
    ring_layout = ECHO_RING

    async def advertise(self, nodes: Nodes) -> None:
        await nodes.write("feature-upper", 1)  # an optional feature we offer

    async def connecting(self, frontend: Nodes) -> None:
        self.upper = await frontend.read_flag("request-upper")  # did the frontend take it?

    async def handle(self, request: bytearray) -> bytes:
        ident, length, data = MESSAGE.unpack(request)  # a private copy: safe to parse
        data = data[: min(length, 54)]
        return MESSAGE.pack(ident, len(data), data.upper() if self.upper else data)


class EchoFrontend(Frontend):
    device_type = "echo"
    ring_layout = ECHO_RING

    async def negotiate(self, backend: Nodes) -> None:
        self.upper = await backend.read_flag("feature-upper")

    async def publish(self, nodes: Nodes) -> None:
        await nodes.write("request-upper", int(self.upper))

    async def echo(self, ident: int, text: bytes) -> bytes:
        await self.channel.send(MESSAGE.pack(ident, len(text), text))
        got, length, data = MESSAGE.unpack(await self.channel.receive())
        if got != ident:  # one request in flight at a time: anything else is the peer's lie
            error = RemoteProtocolError(f"echo: response for id {got}, expected {ident}")
            self.wake("hostile response", error)  # disconnect cleanly: Closing -> Closed
            raise error
        return bytes(data[: min(length, 54)])


async def main() -> None:
    from ringkit.sim import SimXen

    async with SimXen.start() as xen:
        guest = await xen.create_domain("guest")
        address = DeviceAddress("echo", frontend_id=guest, backend_id=0, devid=0)
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            await create_device(dom0.store, address)  # the toolstack's part
            async with anyio.create_task_group() as tg, EchoBackend(dom0, guest) as backend:
                tg.start_soon(lambda: backend.run(once=True))
                async with EchoFrontend(domu, backend_id=0) as frontend:
                    for i, word in enumerate([b"hello", b"xen", b"rings"]):
                        print(word.decode(), "->", (await frontend.echo(i, word)).decode())
                await backend.wait_finished()
            print("leaks:", dom0.leaks() or "none", "/", domu.leaks() or "none")


if __name__ == "__main__":
    anyio.run(main)
