"""The control of the soaks that uses no Xen device at all (tests/xen/test_soak.py, ``pipes``):
Python pipes 4 MiB a round through ``cat`` and back, received into a growing bytearray and
compared -- the data path of the vchan soaks' C halves with the vchan taken out.  One line per
round that goes wrong (``round N WRONG ...``), a summary at the end; exit status 0 only if every
round was right.  ``pipe_soak_peer.py SECONDS``.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import anyio
import anyio.abc

SIZE = 4 << 20


async def _feed(stdin: anyio.abc.ByteSendStream, data: bytes) -> None:
    await stdin.send(data)
    await stdin.aclose()


async def main(seconds: float) -> int:
    t0 = time.monotonic()
    rounds = wrong = 0
    while time.monotonic() - t0 < seconds:
        data = random.Random(rounds).randbytes(SIZE)
        got = bytearray()
        async with await anyio.open_process(["cat"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE) as cat:
            assert cat.stdin is not None and cat.stdout is not None
            stdin, stdout = cat.stdin, cat.stdout

            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, stdin, data)
                try:
                    while True:
                        got += await stdout.receive()
                except anyio.EndOfStream:
                    pass
            code = await cat.wait()
        if got != data or code != 0:
            bad = [i for i in range(0, SIZE, 4096) if got[i:i + 4096] != data[i:i + 4096]]
            print(f"round {rounds} WRONG: cat exited {code}, {len(got)} bytes back, {len(bad)} "
                  f"of {SIZE // 4096} 4 KiB blocks wrong (at {bad[:8]})", flush=True)
            wrong += 1
            break
        print(f"round {rounds} ok", flush=True)
        rounds += 1
    print(f"pipe soak: {rounds} rounds right, {wrong} wrong", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, float(sys.argv[1])))
