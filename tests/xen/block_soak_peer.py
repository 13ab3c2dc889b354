"""The domU's half of the block soak (tests/xen/test_soak.py): ringkit's block frontend, with
`verify_reads` on, against ringkit's block backend in dom0, round after round.

Each round writes a fresh seeded pattern over the whole disk in 1 MiB requests (four in
flight), flushes, reads it all back (again four in flight) and compares; the reads are checked
by the frontend too (a sector still holding the canary it stamped raises `StaleReadError`).
One line per round: ``round N ok ...`` or ``round N WRONG ...``.  It stops after `SECONDS`
(first argument) and after the first wrong round, and writes the last complete round's number
to ``data/soak-block-last`` so dom0 can check the image file holds that round's pattern.
Exit status 0 only if every round was right.
"""

from __future__ import annotations

import os
import random
import sys
import time

import anyio
from ringkit.frontends.block.device import BlockFrontend

from ringkit import StoreError
from ringkit.xen import open_domain

DEVID = 51712
MIB = 1 << 20
DISK = 16 * MIB
IN_FLIGHT = 4
LAST_NODE = "data/soak-block-last"
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[block-soak +{time.monotonic() - _T0:.1f}s] {text}", file=sys.stderr, flush=True)


def round_pattern(round_: int) -> bytes:
    """The disk's content after round `round_` (dom0 recomputes it to check the image)."""
    return random.Random(5000 + round_).randbytes(DISK)


async def main(seconds: float) -> int:
    with open("/sys/bus/xen/drivers_autoprobe", "w") as f:
        f.write("0")   # Linux's xen-blkfront must not take the vbd dom0 creates for ringkit's
    async with open_domain() as dom:
        home = f"/local/domain/{dom.domid}"
        await dom.store.write(f"{home}/data/soak-block-ready", "1")
        with anyio.fail_after(600):
            while True:
                try:
                    await dom.store.read(f"{home}/device/vbd/{DEVID}/backend")
                    break
                except StoreError:
                    await anyio.sleep(0.25)
        disk = BlockFrontend(dom, 0, DEVID, ring_page_order=2, queues=2, verify_reads=True)
        disk.connect_timeout = 600
        wrong = 0
        async with disk:
            deadline = time.monotonic() + seconds
            round_ = 0
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                data = round_pattern(round_)

                async def write(first: int, data: bytes = data) -> None:
                    for offset in range(first * MIB, DISK, IN_FLIGHT * MIB):
                        await disk.write(offset, data[offset:offset + MIB])

                got = bytearray(DISK)

                async def read(first: int, got: bytearray = got) -> None:
                    for offset in range(first * MIB, DISK, IN_FLIGHT * MIB):
                        got[offset:offset + MIB] = await disk.read(offset, MIB)

                async with anyio.create_task_group() as tg:
                    for first in range(IN_FLIGHT):
                        tg.start_soon(write, first)
                await disk.flush()
                async with anyio.create_task_group() as tg:
                    for first in range(IN_FLIGHT):
                        tg.start_soon(read, first)
                if got != data:
                    first_bad = next(i for i in range(DISK) if got[i] != data[i])
                    bad = sum(got[i:i + 4096] != data[i:i + 4096] for i in range(0, DISK, 4096))
                    print(f"round {round_} WRONG: first wrong byte {first_bad}, {bad} of "
                          f"{DISK // 4096} 4 KiB blocks wrong; got "
                          f"{bytes(got[first_bad:first_bad + 16]).hex()}", flush=True)
                    wrong += 1
                    break
                await dom.store.write(f"{home}/{LAST_NODE}", str(round_))
                print(f"round {round_} ok ({DISK} bytes written, flushed and read back in "
                      f"{time.monotonic() - t0:.1f}s)", flush=True)
                round_ += 1
        leaks = dom.leaks()
        if leaks:
            raise AssertionError(f"the domU's handle leaked: {leaks}")
    print(f"block soak: {round_} rounds, {wrong} wrong", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(anyio.run(main, float(sys.argv[1])))
