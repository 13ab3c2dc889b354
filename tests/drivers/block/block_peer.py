"""One end of a block device in its own process, for the multi-process tests.

    python block_peer.py backend SIM_DIR FRONTEND_ID DEVID IMAGE
    python block_peer.py writer  SIM_DIR GUEST_ID   DEVID SEED

The backend serves IMAGE until killed and prints "ready".  The writer connects, prints
"connected", then writes fresh blocks (never the same block twice) from 4 tasks, printing
"acked <offset> <length> <tag>" after each write returned; the data of a block is
`block_data(seed, tag, length)`, so the parent can check the image.
"""

from __future__ import annotations

import random
import sys

import anyio
from ringkit.backends.block.device import BlockBackend
from ringkit.frontends.block.device import BlockFrontend

from ringkit.sim import connect

BLOCK = 16384


def block_data(seed: int, tag: int, length: int) -> bytes:
    return random.Random(seed * 1_000_003 + tag).randbytes(length)


async def backend(directory: str, frontend_id: int, devid: int, image: str) -> None:
    async with connect(directory, 0) as dom0, \
            BlockBackend(dom0, frontend_id, devid, image=image) as be:
        print("ready", flush=True)
        await be.run()


async def writer(directory: str, guest: int, devid: int, seed: int) -> None:
    async with connect(directory, guest) as dom, BlockFrontend(dom, 0, devid) as disk:
        print("connected", flush=True)
        blocks = disk.size // BLOCK

        async def task(index: int) -> None:
            for n in range(index, blocks, 4):
                tag = n
                data = block_data(seed, tag, BLOCK)
                await disk.write(n * BLOCK, data)
                print(f"acked {n * BLOCK} {BLOCK} {tag}", flush=True)
                if n % 16 == 0:
                    await disk.flush()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(task, i)


if __name__ == "__main__":
    role, directory, domid, devid, extra = sys.argv[1:6]
    if role == "backend":
        anyio.run(backend, directory, int(domid), int(devid), extra)
    else:
        anyio.run(writer, directory, int(domid), int(devid), int(extra))
