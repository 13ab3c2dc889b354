"""One domain's half of a vchan soak across dom0 <-> domU (tests/xen/test_vchan_soak.py).

Round after round, a fresh vchan is set up at a new path between the two domains and both
ends send `size` bytes of a seeded pattern while receiving and checking the other's.  Either
end is ringkit (`ringkit.vchan`) or libxenvchan (Xen's ``vchan-socket-proxy`` driven through its
stdin/stdout).  Each round prints one line: ``round N ok ...`` or ``round N WRONG ...`` with
where the first wrong byte is and whether those bytes occur anywhere in the stream.  The half
stops after `rounds` rounds or `seconds` seconds, whichever is first, and after the first wrong
round (the next rounds would only repeat it); exit 0 if every round it ran was right.

The server's half waits for the client's "next" xenstore node before each offer, so both halves
walk the rounds in step without any other channel.

Usage: ``vchan_soak.py ROLE IMPL PEER ROUNDS SECONDS SIZE READ_MIN WRITE_MIN`` with ROLE
``server`` or ``client`` and IMPL ``ringkit`` or ``c``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from ringkit.abc import Domain

PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
ROUND_SECONDS = 120.0
"""A round (setup, 4 MiB each way, close) takes 1-30 s under emulation."""
PATCHES = [p for p in os.environ.get("RINGKIT_SOAK_PATCH", "").split(",") if p]
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[soak +{time.monotonic() - _T0:.1f}s] {text}", file=sys.stderr, flush=True)


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def mismatch(got: bytes, expected: bytes) -> str:
    """Where `got` first differs from `expected`, whether that stretch occurs anywhere in the
    stream (a ring bug moves, repeats or keeps stale data; bytes found nowhere were never
    written by the peer), and how much is wrong."""
    if len(got) != len(expected):
        return f"{len(got)} bytes instead of {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    piece = got[first:first + 64]
    source = expected.find(piece)
    bad = [i for i in range(0, len(got), 4096) if got[i:i + 4096] != expected[i:i + 4096]]
    where = "nowhere in the stream" if source < 0 else f"at stream byte {source}"
    zeros = sum(got[i:i + 4096] == bytes(4096) for i in bad)
    return (f"first wrong byte {first}, the 64 bytes there occur {where}; {len(bad)} of "
            f"{len(got) // 4096} 4 KiB blocks wrong (at {bad[:8]}, {zeros} all zeros); "
            f"got[first:+16]={piece[:16].hex()}")


def seeds(round_: int) -> tuple[int, int]:
    """(server -> client, client -> server) pattern seeds of a round."""
    return 1000 + 2 * round_, 1001 + 2 * round_


async def ringkit_round(dom: Domain, role: str, peer: int, path: str, size: int,
                        sizes: tuple[int, int], send: bytes) -> bytes:
    from ringkit.vchan import VchanServer, connect

    if role == "server":
        offer = await VchanServer.offer(dom, peer, path, read_min=sizes[0], write_min=sizes[1])
        stream = await offer.accept()
    else:
        stream = await connect(dom, peer, path)
    async with stream:
        got = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, send)
            while len(got) < size:
                got += await stream.receive(size - len(got))
    return bytes(got)


async def c_round(role: str, peer: int, path: str, size: int, send: bytes) -> bytes:
    if role == "client" and "late-client" in PATCHES:
        # start the C client only once the server's offer is complete
        while not await xenstore("xenstore-read", f"{path}/event-channel"):
            await anyio.sleep(0.1)
    argv = [PROXY, "-m", role, str(peer), path, "-"]
    proc = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=None)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        got = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdin.send, send)
            while len(got) < size:
                got += await stdout.receive()
        await stdin.aclose()
        try:
            while True:
                got += await stdout.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        code = await proc.wait()
        if code != 0:
            raise AssertionError(f"vchan-socket-proxy exited {code}")
        return bytes(got)
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.aclose()


async def xenstore(*argv: str) -> str:
    """Xen's own xenstore tools (no ringkit in the process of the C-only control)."""
    done = await anyio.run_process(list(argv), check=False, stderr=subprocess.DEVNULL)
    return done.stdout.decode().strip() if done.returncode == 0 else ""


END = "end"
"""What the client writes to the sync node when it stops (its time is up)."""


async def wait_for(node: str, value: str) -> bool:
    """Wait until the client asks for round `value` (True) or says it stopped (False)."""
    while True:
        seen = await xenstore("xenstore-read", node)
        if seen in (value, END):
            return seen == value
        await anyio.sleep(0.1)


def domid() -> int:
    """This domain's id, without ringkit."""
    out = subprocess.run(["xenstore-read", "domid"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def apply_patches(names: list[str]) -> None:
    """Experiment switches, one change each to ringkit's real transport (docs/real-xen.md)."""
    import mmap

    names = [n for n in names if n not in ("late-client", "flip", "pvh")]
    if not names:
        return
    from ringkit.xen import grants

    for name in names:
        if name == "plain-mmap":
            class PlainMap:
                """Python's own mmap of the device range (no reservation, no MAP_FIXED)."""

                def __init__(self, pieces: list[grants.Piece], *, writable: bool) -> None:
                    (piece,) = pieces
                    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                    self._area: mmap.mmap | None = mmap.mmap(
                        piece.fd, piece.length, flags=mmap.MAP_SHARED, prot=prot,
                        offset=piece.offset)
                    self.view = memoryview(self._area)
                    self.length = piece.length

                def close(self) -> None:
                    if self._area is None:
                        return
                    area, self._area = self._area, None
                    try:
                        self.view.release()
                        area.close()
                    except BufferError:
                        pass
                    self.view = memoryview(b"")

            grants.PageMap = PlainMap  # type: ignore[misc,assignment]
        elif name == "no-notify":
            grants.XenSharedPages.set_unmap_notify = (  # type: ignore[method-assign]
                lambda self, **kw: None)
            grants.XenMappedPages.set_unmap_notify = (  # type: ignore[method-assign]
                lambda self, **kw: None)
        elif name in ("late-client", "flip", "pvh"):
            pass  # the harness's own switches (c_round, which domain serves, the domU's type)
        elif name:
            raise SystemExit(f"unknown patch {name!r}")
    if names:
        say(f"patched: {names}")


async def main(role: str, impl: str, peer: int, rounds: int, seconds: float, size: int,
               read_min: int, write_min: int) -> int:
    if impl == "ringkit":
        from ringkit.xen import open_domain

    apply_patches(PATCHES)
    async with AsyncExitStack() as stack:
        dom = await stack.enter_async_context(open_domain()) if impl == "ringkit" else None
        me = dom.domid if dom is not None else domid()
        server, client = (me, peer) if role == "server" else (peer, me)
        base = f"/local/domain/{server}/data/vchan/{client}/soak"
        # the client says which round it is ready for; the server offers only then
        sync = f"/local/domain/{client}/data/soak-next"
        say(f"{role} ({impl}) in domain {me}, peer {peer}, {size} bytes each way per round")
        deadline = time.monotonic() + seconds
        wrong = 0
        done = 0
        for round_ in range(rounds):
            if time.monotonic() > deadline and role == "client":
                await xenstore("xenstore-write", sync, END)
                break
            path = f"{base}/{round_}"
            down, up = seeds(round_)
            send, expect = (pattern(down, size), pattern(up, size)) if role == "server" else (
                pattern(up, size), pattern(down, size))
            t0 = time.monotonic()
            with anyio.fail_after(ROUND_SECONDS):
                if role == "server":
                    if not await wait_for(sync, str(round_)):
                        break
                else:
                    await xenstore("xenstore-write", sync, str(round_))
                    await xenstore("xenstore-chmod", sync, f"n{client}", f"r{server}")
                if dom is not None:
                    got = await ringkit_round(dom, role, peer, path, size,
                                              (read_min, write_min), send)
                else:
                    got = await c_round(role, peer, path, size, send)
            took = time.monotonic() - t0
            done += 1
            if got != expect:
                wrong += 1
                print(f"round {round_} WRONG ({role} {impl} in domain {me}): "
                      f"{mismatch(got, expect)}", flush=True)
                break
            print(f"round {round_} ok ({role} {impl}, {size} bytes each way in {took:.1f}s)",
                  flush=True)
        if dom is not None:
            assert not dom.leaks(), dom.leaks()
    print(f"soak {role} {impl}: {done} rounds, {wrong} wrong", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    a = sys.argv[1:]
    sys.exit(anyio.run(main, a[0], a[1], int(a[2]), int(a[3]), float(a[4]), int(a[5]),
                       int(a[6]), int(a[7])))
