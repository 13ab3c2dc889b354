"""ringkit's vchan against libxenvchan itself, across real domains under real Xen.

One domU (boots are expensive) and dom0 walk the steps of tests/xen/vchan_peer.py together:
ringkit server with Xen's C client and ringkit client with the C server (Debian's
``vchan-socket-proxy`` over libxenvchan, from xen-utils-4.17; copied into the domU with the
libraries it loads), each in both directions dom0 <-> domU, 1 MiB each way per step (4 MiB
through the 1 MiB ring) with content checked on both ends, in-page rings (1 KiB / 2 KiB) and
external rings of 64 KiB and 1 MiB (256 granted pages), orderly close from either side, and
SIGKILL of the C peer seen by ringkit as end of stream.  The domU's verdict is its exit status;
dom0's half runs in a process of its own and reports its failures.  dom0's half stops waiting
on a domU whose half has ended.  Wrong bytes or a crashed half fail the test: nothing is
walked again.  Under the harness's old CPU model they were the emulation's memory corruption
(docs/real-xen.md, "Memory corruption across domains"); the harness avoids it now.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from _harness import needs_domus
from vchan_peer import C_CLIENT_ENV, PROXY, STEP_SECONDS, STEPS, mismatch, pattern, say

from ringkit.vchan import VchanServer, VchanStream, connect, vchan_path
from ringkit.xenvm.domu import DomU, DomUResult

GUEST_TYPE = os.environ.get("RINGKIT_XEN_VCHAN_GUEST", "pv")
"""The domU's type (``pvh`` needs a CPU model with SVM: ``RINGKIT_XEN_VM_CPU``)."""

PEER = Path(__file__).with_name("vchan_peer.py").resolve()
BOOT_SECONDS = 900.0
WATCH_SECONDS = 2.0
"""How often the test looks whether the domU's half has ended."""
PEER_END_GRACE = 30.0
"""How long dom0's half may go on after the domU's ended: its last step may end a moment
later."""


@dataclass(frozen=True)
class Attempt:
    """How one domU and dom0's half walked the steps."""

    dom0_code: int | None
    """dom0's half's exit status (negative: the signal that killed it)."""
    dom0_failures: list[str]
    abandoned: bool
    """dom0's half was still waiting on a domU whose half had ended (it was killed)."""
    domu: DomUResult

    @property
    def crashed(self) -> str:
        """Which half died by a signal or without a word ("" if neither)."""
        code = self.domu.exit_code
        if (code is None and not self.domu.timed_out) or (code is not None and code >= 128):
            return f"the domU's half (exit {code})"
        if self.dom0_code is not None and self.dom0_code < 0 and not self.abandoned:
            return f"dom0's half (signal {-self.dom0_code})"
        return ""


async def attempt(name: str) -> Attempt:
    """One domU walking the steps with dom0's half, which runs in a process of its own (a
    crash there is seen and reported, not the end of the test session).  dom0's half is killed
    if it still waits on the domU `PEER_END_GRACE` seconds after the domU's half ended."""
    t0 = time.monotonic()
    env = {C_CLIENT_ENV: os.environ.get(C_CLIENT_ENV, "1")}
    with DomU(name, [sys.executable, str(PEER)], extra_files=[PROXY], env=env,
              guest_type=GUEST_TYPE) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        say(f"domU is domain {domid} (booted in {time.monotonic() - t0:.0f}s)")
        output = bytearray()
        abandoned = False
        async with await anyio.open_process(
                [sys.executable, str(PEER), "dom0", str(domid), str(BOOT_SECONDS)],
                stdout=subprocess.PIPE, stderr=None) as half:
            assert half.stdout is not None
            stdout = half.stdout

            async def collect() -> None:
                async for chunk in stdout:
                    output.extend(chunk)

            async def watch() -> None:
                nonlocal abandoned
                while not await anyio.to_thread.run_sync(vm.ended):
                    await anyio.sleep(WATCH_SECONDS)
                with anyio.move_on_after(PEER_END_GRACE):
                    await half.wait()
                    return
                say("dom0's half still waits on a domU whose half has ended: killing it")
                abandoned = True
                half.kill()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                async with anyio.create_task_group() as reading:
                    reading.start_soon(collect)
                    with anyio.fail_after(BOOT_SECONDS + len(STEPS) * STEP_SECONDS):
                        code = await half.wait()
                tg.cancel_scope.cancel()
        outcome = await vm.wait_async(STEP_SECONDS)
    failures = [line for line in output.decode(errors="replace").splitlines()
                if line.startswith("step ")]
    say(f"{name} done in {time.monotonic() - t0:.0f}s: dom0's half exit {code}, the domU's "
        f"{outcome.exit_code}")
    return Attempt(code, failures, abandoned, outcome)


@pytest.mark.xen
@needs_domus
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_vchan_against_libxenvchan(anyio_backend: str) -> None:
    assert Path(PROXY).is_file(), f"{PROXY} missing in dom0 (xen-utils-4.17)"
    # Strict: wrong bytes, a half that crashed or one left waiting fail the test.  (A domU
    # that cannot be created at all is retried inside DomU.start, before any step runs.)
    run = await attempt("ringkit-vchan")
    assert not run.crashed, f"{run.crashed} crashed: dom0 saw {run.dom0_failures}; the " \
        f"domU's output: {run.domu.output[-3000:]}"
    assert not run.abandoned, "dom0's half waited on a domU that had ended"
    assert run.dom0_code == 0 and not run.dom0_failures, run.dom0_failures
    assert run.domu.ok, run.domu.output


@pytest.mark.xen
@pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_ringkit_loopback_in_dom0(anyio_backend: str) -> None:
    """ringkit at both ends in dom0 (grants to ourselves, as libxenvchan allows), 1 MiB each
    way per round, a child process started during each round, content checked, and the
    control page's unused bytes checked to stay zero (nothing else writes into the page)."""
    from ringkit.xen import open_domain

    failures = []
    async with open_domain() as dom:
        me = dom.domid
        for round_ in range(12):
            sizes = [(1024, 2048), (65536, 65536), (0, 4096)][round_ % 3]
            path = vchan_path(me, me, 8000 + round_)
            offer = await VchanServer.offer(dom, me, path, read_min=sizes[0],
                                            write_min=sizes[1])
            cli = await connect(dom, me, path)
            srv = await offer.accept()
            unused = slice(24 + 4 * srv.engine.orders.grant_count, 1024)
            async with srv, cli:
                up, down = pattern(100 + round_), pattern(200 + round_)
                got: dict[str, bytes] = {}

                async def side(name: str, stream: VchanStream, data: bytes,
                               got: dict[str, bytes] = got) -> None:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(stream.send, data)
                        buf = bytearray()
                        while len(buf) < len(data):
                            buf += await stream.receive()
                        got[name] = bytes(buf)

                with anyio.fail_after(120):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(side, "srv", srv, down)
                        tg.start_soon(side, "cli", cli, up)
                        await anyio.run_process(["true"], stdout=subprocess.DEVNULL)
                page = bytes(cli.engine.page.read(0, 4096))
                if got["srv"] != up:
                    failures.append(f"round {round_} {sizes} up: {mismatch(got['srv'], up)}")
                if got["cli"] != down:
                    failures.append(f"round {round_} {sizes} down: "
                                    f"{mismatch(got['cli'], down)}")
                if any(page[unused]):
                    failures.append(f"round {round_} {sizes}: unused control bytes written: "
                                    f"{page[unused].rstrip(bytes(1))[:64].hex()}")
            say(f"loopback round {round_} {sizes}: {len(failures)} failure(s) so far")
        assert not dom.leaks(), dom.leaks()
    assert not failures, failures
