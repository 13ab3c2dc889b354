"""A simulated Xen with a vif between dom0 and a guest: the net pair's test world.

`world` starts the sim (in process), creates the guest, writes the device with the
toolstack's ``mac`` node on both ends, and checks for leaks on the way out.  `running_backend`
runs a `NetBackend` (by default for one connection) whose link is a memory stream the test
holds the other end of (`Wire`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import StapledObjectStream
from ringkit.backends.net import NetBackend

from ringkit.abc import Domain
from ringkit.device import DeviceAddress, create_device
from ringkit.sim import SimXen

MAC = "00:16:3e:12:34:56"


@dataclass
class World:
    xen: SimXen
    guest: int
    dom0: Domain
    domu: Domain
    address: DeviceAddress


@dataclass
class Wire:
    """The host's end of the backend's link: frames the guest sent arrive on `from_guest`;
    frames put on `to_guest` go to the guest."""

    to_guest: MemoryObjectSendStream[bytes]
    from_guest: MemoryObjectReceiveStream[bytes]


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            address = DeviceAddress("vif", frontend_id=guest, backend_id=0, devid=0)
            await create_device(dom0.store, address, frontend_nodes={"mac": MAC},
                                backend_nodes={"mac": MAC})
            yield World(xen, guest, dom0, domu, address)
            assert not domu.leaks(), domu.leaks()
            assert not dom0.leaks(), dom0.leaks()
        leaks = await xen.settled_leaks()
        assert not leaks, leaks


@asynccontextmanager
async def running_backend(w: World, cls: type[NetBackend] = NetBackend, *, once: bool = True,
                          max_queues: int | None = None, offload: bool | None = None
                          ) -> AsyncIterator[tuple[NetBackend, Wire]]:
    to_guest, backend_in = anyio.create_memory_object_stream[bytes](64)
    backend_out, from_guest = anyio.create_memory_object_stream[bytes](4096)
    link = StapledObjectStream(backend_out, backend_in)
    async with anyio.create_task_group() as tg, cls(w.dom0, w.guest, 0, link=link,
                                                    max_queues=max_queues,
                                                    offload=offload) as be:
        tg.start_soon(lambda: be.run(once=once))
        yield be, Wire(to_guest, from_guest)


def frame(n: int, size: int) -> bytes:
    """A recognisable Ethernet frame of `size` bytes: broadcast, type 0x88b5, a counter."""
    header = b"\xff" * 6 + bytes.fromhex("00163e123456") + b"\x88\xb5"
    body = n.to_bytes(4, "big") + bytes((n + i) & 0xFF for i in range(max(0, size - 18)))
    return (header + body)[:size]
