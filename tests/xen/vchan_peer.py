"""Both halves of the libxenvchan interop run (tests/xen/test_interop_vchan.py): the steps, the
ringkit side and the C side (Xen's own ``vchan-socket-proxy`` over libxenvchan, driven through
its stdin/stdout), and, run as a script, the domU's half.

Every step is one vchan between dom0 and the domU.  Its server lives in `server_dom`, its client
in the other domain; one end is ringkit, the other libxenvchan.  Each side generates the bytes
the other must receive from the step's seed, so both check content.  `closer` says who ends the
step: ``"c"`` (the C proxy's stdin is closed: it flushes, closes the vchan, ringkit must read
the rest and then end of stream), ``"ringkit"`` (ringkit closes after the exchange: the proxy
must exit 0 with every byte delivered), ``"kill"`` (ringkit only sends; the C proxy is killed
with SIGKILL once it has read everything: ringkit must see end of stream, then refused sends).

Both domains walk the same list in order; clients wait for their server's xenstore entries, so
no other synchronisation is needed.  The domU prints one line per step and exits 0 if all passed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import anyio
import anyio.abc

from ringkit.abc import Domain
from ringkit.vchan import VchanServer, VchanStream, connect, vchan_path

PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
STEP_SECONDS = 300.0
"""Per step, with generous room for an emulated CPU shared by two guests."""
BYTES = 1 << 20
"""Per direction and step (by default): 16x a 64 KiB ring, 1024x the smallest."""
CHUNK = 65536
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[vchan +{time.monotonic() - _T0:.1f}s] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Step:
    name: str
    server_dom: str             # "dom0" or "domU"
    server_impl: str            # "ringkit" or "c"
    sizes: tuple[int, int]      # ringkit server's (read_min, write_min); the C proxy asks 0, 0
    closer: str                 # "c", "ringkit" or "kill"
    client_impl: str = ""       # default: the other implementation
    size: int = BYTES           # bytes each way

    def impl(self, dom: str) -> str:
        """Who plays this step in domain `dom`: "ringkit" or "c"."""
        if dom == self.server_dom:
            return self.server_impl
        if self.client_impl:
            return self.client_impl
        return "c" if self.server_impl == "ringkit" else "ringkit"

    def seeds(self, index: int) -> tuple[int, int]:
        """(ringkit -> C, C -> ringkit) pattern seeds."""
        return 2 * index + 1, 2 * index + 2


ALL_STEPS = (
    # first, ringkit at both ends across the domains: the baseline the C steps compare with
    Step("dom0 ringkit server 1K/2K in-page <- domU ringkit client, server closes", "dom0",
         "ringkit", (1024, 2048), "ringkit", client_impl="ringkit"),
    Step("dom0 ringkit server 1K/2K in-page <- domU C client, C closes", "dom0", "ringkit",
         (1024, 2048), "c"),
    Step("dom0 ringkit server 64K external <- domU C client, ringkit closes", "dom0", "ringkit",
         (65536, 65536), "ringkit"),
    Step("dom0 C server (in-page) <- domU ringkit client, ringkit closes", "dom0", "c",
         (0, 0), "ringkit"),
    Step("domU C server (in-page) <- dom0 ringkit client, C closes", "domU", "c", (0, 0), "c"),
    Step("domU ringkit server 2K/1K in-page <- dom0 C client, ringkit closes", "domU", "ringkit",
         (2048, 1024), "ringkit"),
    Step("domU ringkit server 1M/64K external <- dom0 C client, C closes", "domU", "ringkit",
         (1 << 20, 65536), "c", size=4 << 20),
    Step("dom0 ringkit server 64K <- domU C client killed with SIGKILL", "dom0", "ringkit",
         (65536, 65536), "kill"),
    Step("domU ringkit client -> dom0 C server killed with SIGKILL", "dom0", "c", (0, 0),
         "kill"),
)


C_CLIENT_ENV = "RINGKIT_XEN_VCHAN_C_CLIENT"
"""Set to 0 to leave out the steps where libxenvchan is the client (they are walked by default;
under the harness's old CPU model they met its memory corruption first: docs/real-xen.md)."""


def client_impl(step: Step) -> str:
    """Who maps the pages in `step`: the client ("ringkit" or "c")."""
    return step.client_impl or ("c" if step.server_impl == "ringkit" else "ringkit")


STEPS = tuple(step for step in ALL_STEPS
              if os.environ.get(C_CLIENT_ENV) != "0" or client_impl(step) == "ringkit")
"""The steps both halves walk (the same list in both domains: the test passes the variable)."""


def pattern(seed: int, size: int = BYTES) -> bytes:
    return random.Random(seed).randbytes(size)


def mismatch(got: bytes, expected: bytes) -> str:
    """Where `got` first differs from `expected`, and where that stretch really came from."""
    if len(got) != len(expected):
        return f"{len(got)} bytes instead of {len(expected)}"
    first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    piece = got[first:first + 64]
    source = expected.find(piece)
    bad = sum(got[i:i + 4096] != expected[i:i + 4096] for i in range(0, len(got), 4096))
    return (f"first difference at byte {first}; the 64 bytes there are expected at "
            f"{source} (delta {source - first if source >= 0 else None}); {bad} of "
            f"{len(got) // 4096} 4 KiB blocks differ; got[first:+16]={piece[:16].hex()}")


def step_path(step_index: int, server: int, client: int) -> str:
    return vchan_path(server, client, 7000 + step_index)


# ----------------------------------------------------------------------------- ringkit side


async def _receive_exactly(stream: VchanStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await stream.receive(size - len(got))
    return bytes(got)


async def ringkit_side(dom: Domain, step: Step, index: int, server: int, client: int) -> None:
    path = step_path(index, server, client)
    to_c, from_c = step.seeds(index)
    if step.client_impl == "ringkit" and dom.domid != server:
        to_c, from_c = from_c, to_c        # ringkit at both ends: the client plays "C"
    if dom.domid == server:
        offer = await VchanServer.offer(dom, client, path, read_min=step.sizes[0],
                                        write_min=step.sizes[1])
        stream = await offer.accept()
    else:
        stream = await connect(dom, server, path)
    async with stream:
        sizes = (stream.engine.tx_size, stream.engine.rx_size)
        if step.closer == "kill":
            await stream.send(pattern(to_c, step.size))
            try:
                extra = await stream.receive()
            except anyio.EndOfStream:
                pass
            else:
                raise AssertionError(f"{len(extra)} bytes from a peer that sends none")
            try:
                await stream.send(b"after the end")
            except anyio.BrokenResourceError:
                pass
            else:
                raise AssertionError("a send to a killed peer succeeded")
            say(f"  ringkit: end of stream after the C peer was killed (rings {sizes})")
            return
        received = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, pattern(to_c, step.size))
            received += await _receive_exactly(stream, step.size)
        if bytes(received) != pattern(from_c, step.size):
            raise AssertionError("ringkit received wrong bytes from libxenvchan: "
                                 + mismatch(bytes(received), pattern(from_c, step.size)))
        page = stream.engine.page.read(0, 4096)
        unused = page[24 + 4 * stream.engine.orders.grant_count:1024]
        if any(unused):
            raise AssertionError("something wrote into the control page's unused bytes: "
                                 + unused.rstrip(bytes(1))[:64].hex())
        if step.closer == "c":
            try:
                extra = await stream.receive()
            except anyio.EndOfStream:
                pass
            else:
                raise AssertionError(f"{len(extra)} extra bytes instead of end of stream")
        say(f"  ringkit: {step.size} bytes each way, content checked (rings {sizes})")


# ----------------------------------------------------------------------------- C side


async def c_side(step: Step, index: int, server: int, client: int, own: int) -> None:
    path = step_path(index, server, client)
    to_c, from_c = step.seeds(index)
    if own == server:
        argv = [PROXY, "-m", "server", str(client), path, "-"]
    else:
        argv = [PROXY, "-m", "client", str(server), path, "-"]
    proc = await anyio.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=None)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        received = bytearray()
        async with anyio.create_task_group() as tg:
            if step.closer != "kill":
                tg.start_soon(stdin.send, pattern(from_c, step.size))
            while len(received) < step.size:
                received += await stdout.receive()
        if bytes(received) != pattern(to_c, step.size):
            raise AssertionError("libxenvchan received wrong bytes: "
                                 + mismatch(bytes(received), pattern(to_c, step.size)))
        if step.closer == "kill":
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            say("  C: killed with SIGKILL after reading everything")
            return
        if step.closer == "c":
            await stdin.aclose()
        tail = bytearray()
        try:
            while True:
                tail += await stdout.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        code = await proc.wait()
        if tail or code != 0:
            raise AssertionError(f"vchan-socket-proxy: {len(tail)} extra bytes, exit {code}")
        say(f"  C: {step.size} bytes each way, content checked, exit 0")
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.aclose()


async def play(dom: Domain, role: str, peer: int, first_wait: float = 0.0) -> list[str]:
    """Walk every step as domain role `role` ("dom0"/"domU"); return the failures.  The first
    step may wait `first_wait` more seconds (for the other domain to boot)."""
    failures = []
    for index, step in enumerate(STEPS):
        server, client = (dom.domid, peer) if step.server_dom == role else (peer, dom.domid)
        say(f"step {index}: {step.name}")
        try:
            with anyio.fail_after(STEP_SECONDS + (first_wait if index == 0 else 0.0)):
                if step.impl(role) == "ringkit":
                    await ringkit_side(dom, step, index, server, client)
                else:
                    await c_side(step, index, server, client, dom.domid)
        except Exception as exc:  # report every step, not just the first failure
            say(f"  FAILED: {exc!r}")
            failures.append(f"step {index} ({step.name}) in {role}: {exc!r}")
    assert not dom.leaks(), dom.leaks()
    return failures


async def main(role: str, peer: int, first_wait: float) -> int:
    """One domain's half: walk the steps, print each failure on stdout, exit 1 if any."""
    from ringkit.xen import open_domain

    async with open_domain() as dom:
        say(f"{role} is domain {dom.domid}, its peer domain {peer}")
        failures = await play(dom, role, peer, first_wait)
    for failure in failures:
        print(failure, flush=True)
    print(f"vchan {role}: " + ("FAILED" if failures else "all steps passed"), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    # the domU runs this with no arguments; dom0's half is run as `vchan_peer.py dom0 DOMID
    # FIRST_WAIT` by the test, in a process of its own
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = sys.argv[1:] or ["domU", "0", "0"]
    sys.exit(anyio.run(main, args[0], int(args[1]), float(args[2])))
