"""One end of the echo device in its own process, for the peer-death tests (killed with -9).

    python tests/device/peer_main.py DIR backend FRONTEND_ID
    python tests/device/peer_main.py DIR frontend GUEST_ID
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drivers import EchoBackend, EchoFrontend

from ringkit.sim import connect


async def main(directory: str, role: str, domid: int) -> None:
    if role == "backend":
        async with connect(directory, 0) as dom0, EchoBackend(dom0, domid) as backend:
            print("ready", flush=True)
            await backend.run()
    else:
        async with connect(directory, domid) as domu, EchoFrontend(domu, 0) as front:
            assert await front.echo(1, b"alive") == b"ALIVE"
            print("connected", flush=True)
            await front.wait_finished()  # until the device goes away


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
