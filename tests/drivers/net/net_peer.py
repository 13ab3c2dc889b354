"""One end of a vif in its own process, for the kill -9 tests.

    python net_peer.py backend  SIM_DIR FRONTEND_ID DEVID
    python net_peer.py frontend SIM_DIR GUEST_ID    DEVID

The backend serves the vif until killed with a loopback link -- every frame the guest sends
comes straight back to it -- and prints "ready".  The frontend connects, prints "connected",
then sends `networld.frame(n, size_of(n))` for n = 0, 1, ... without end while checking the
frames the host sends it (the same numbering, increasing; a frame the frontend's backlog had
no room for may be missing); it prints "rx <count>" after every 50th good one and exits with
status 3 on a frame it did not expect.
"""

from __future__ import annotations

import sys

import anyio
from anyio.streams.stapled import StapledObjectStream
from networld import frame
from ringkit.backends.net import NetBackend
from ringkit.frontends.net import NetFrontend

from ringkit.sim import connect


def size_of(n: int) -> int:
    """The size of frame `n` of a transfer: from a minimal frame to a three-page one."""
    return 60 + (n * 997) % 9000


async def backend(directory: str, frontend_id: int, devid: int) -> None:
    send, receive = anyio.create_memory_object_stream[bytes](256)
    async with connect(directory, 0) as dom0, NetBackend(
            dom0, frontend_id, devid, link=StapledObjectStream(send, receive)) as be:
        print("ready", flush=True)
        await be.run()


async def frontend(directory: str, guest: int, devid: int) -> None:
    async with connect(directory, guest) as dom, NetFrontend(dom, 0, devid) as vif:
        print("connected", flush=True)

        async def sender() -> None:
            n = 0
            while True:
                await vif.send(frame(n, size_of(n)))
                n += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            last, good = -1, 0
            while True:
                got = await vif.receive()
                n = int.from_bytes(got[14:18], "big")
                if n <= last or got != frame(n, size_of(n)):
                    print(f"unexpected frame {n} after {last}", flush=True)
                    sys.exit(3)
                last, good = n, good + 1
                if good % 50 == 0:
                    print(f"rx {good}", flush=True)


if __name__ == "__main__":
    role, directory, domid, devid = sys.argv[1:5]
    anyio.run(backend if role == "backend" else frontend, directory, int(domid), int(devid))
