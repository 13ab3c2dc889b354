"""Soaks across dom0 <-> domU under real Xen, content checked at both ends and the kernels'
logs scanned: vchan with ringkit at both ends, ringkit's client against libxenvchan's server,
the control with libxenvchan at both ends (no ringkit in either process), and block with
ringkit's frontend in the domU (`verify_reads` on) against ringkit's backend in dom0.

Each pair gets a fresh domU running one half of tests/xen/vchan_soak.py (the server) while
dom0 runs the other half (the client) in a process of its own; round after round a new vchan
moves `SOAK_BYTES` each way with content checked at both ends.  A pair passes only if every
round of both halves was right, neither half died, and neither kernel logged a segfault.
Nothing is excused: the controls (``c-c``, and ``pipes`` with no Xen device at all) fail the
same way when the machine corrupts memory without ringkit (docs/real-xen.md records that they
do).

Opt-in (``make soak-xen``): ``RINGKIT_XEN_SOAK`` names what to soak, comma-separated: vchan
pairs of `PAIRS` (``+pvh`` after a pair boots its domU as PVH, which needs a CPU model with
SVM; ``+plain-mmap``, ``+no-notify``, ``+late-client`` or ``+flip`` is an experiment switch of
tests/xen/vchan_soak.py), ``block`` and ``pipes`` (``pipes+pvh`` adds a PVH domU);
``RINGKIT_XEN_SOAK_SECONDS`` (default 60) bounds each soak's traffic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from _harness import kernel_backends_off, needs_domus
from block_soak_peer import DEVID, DISK, LAST_NODE, round_pattern
from ringkit.backends.block.device import BlockBackend

from ringkit.device import DeviceAddress, create_device, destroy_device
from ringkit.xenvm.domu import DomU

PEER = Path(__file__).with_name("vchan_soak.py").resolve()
BLOCK_PEER = Path(__file__).with_name("block_soak_peer.py").resolve()
PIPE_PEER = Path(__file__).with_name("pipe_soak_peer.py").resolve()
PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
SECONDS = float(os.environ.get("RINGKIT_XEN_SOAK_SECONDS", "60"))
SOAK_BYTES = int(os.environ.get("RINGKIT_XEN_SOAK_BYTES", str(4 << 20)))
RINGS = (65536, 65536)
PAIRS = {
    # name: (server impl, client impl); the server runs in the domU, the client in dom0
    # (``+flip``: the other way round)
    "ringkit-ringkit": ("ringkit", "ringkit"),
    "ringkit-c": ("ringkit", "c"),
    "c-ringkit": ("c", "ringkit"),
    "c-c": ("c", "c"),
}
REQUESTED = [p for p in os.environ.get("RINGKIT_XEN_SOAK", "").split(",") if p]
"""What to soak: vchan pairs (`PAIRS`, each optionally with ``+switch`` suffixes), ``block``
and ``pipes`` (the control without any Xen device).  Nothing is soaked unless asked."""
SELECTED = [p for p in REQUESTED if p not in ("block", "pipes", "pipes+pvh")]



def wanted(asked: bool, what: str) -> pytest.MarkDecorator:
    """Opt-in: a soak that was not asked for is not marked `xen`, so `make test-xen` (-m xen)
    leaves it out rather than counting a skip (which RINGKIT_REQUIRE_XEN would fail)."""
    return pytest.mark.xen if asked else pytest.mark.skip(reason=f"{what} not in "
                                                                 "RINGKIT_XEN_SOAK")


pytestmark = [needs_domus]

KERNEL_ARGS = ("ignore_loglevel", "print-fatal-signals=1")
"""The domU kernel logs a process's fatal signal with its registers (on the console)."""
GUEST_TYPE = os.environ.get("RINGKIT_XEN_SOAK_GUEST", "pv")
"""The block soak's domU type (``pvh`` needs a CPU model with SVM: ``RINGKIT_XEN_VM_CPU``)."""
SEGFAULT = re.compile(r"segfault at|general protection|Bad page|BUG:|Oops")


def dmesg() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout


def say(text: str) -> None:
    print(f"[soak] {text}", file=sys.stderr, flush=True)


async def soak(name: str) -> list[str]:
    """Run pair `name`; return what went wrong (empty: every round right, nobody crashed)."""
    pair, *patches = name.split("+")
    server_impl, client_impl = PAIRS[pair]
    rounds = 100000
    env = {"RINGKIT_SOAK_PATCH": ",".join(patches), "PYTHONFAULTHANDLER": "1"}
    args = [str(rounds), str(SECONDS), str(SOAK_BYTES), str(RINGS[0]), str(RINGS[1])]
    subprocess.run(["xenstore-rm", "/local/domain/0/data/soak-next"], check=False,
                   capture_output=True)
    before = len(dmesg())
    problems: list[str] = []
    t0 = time.monotonic()
    # the server in the domU and the client in dom0, or (+flip) the other way round
    domu_role, domu_impl, dom0_role, dom0_impl = ("server", server_impl, "client", client_impl)
    if "flip" in patches:
        domu_role, domu_impl, dom0_role, dom0_impl = ("client", client_impl, "server",
                                                      server_impl)
    with DomU(f"soak-{pair}", [sys.executable, str(PEER), domu_role, domu_impl, "0", *args],
              env=env, extra_files=[PROXY] if domu_impl == "c" else [],
              kernel_args=KERNEL_ARGS, guest_type="pvh" if "pvh" in patches else "pv") as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        say(f"{name}: domU {domid} up in {time.monotonic() - t0:.0f}s")
        result = await anyio.run_process(
            [sys.executable, str(PEER), dom0_role, dom0_impl, str(domid), *args],
            check=False, stderr=None, env={**os.environ, **env})
        out = result.stdout.decode(errors="replace")
        outcome = await vm.wait_async(120.0)
    wrong = [line for line in out.splitlines() + outcome.output.splitlines()
             if "WRONG" in line]
    problems += wrong
    if result.returncode != 0 and not wrong:
        problems.append(f"dom0's half exited {result.returncode}: {out[-2000:]}")
    if not outcome.ok and not wrong:
        problems.append(f"the domU's half: exit {outcome.exit_code}: {outcome.output[-2000:]}")
    rounds_done = [line for line in out.splitlines() if re.match(r"round \d+ ok", line)]
    kernel = [line for line in dmesg()[before:].splitlines() if SEGFAULT.search(line)]
    kernel += [line for line in outcome.output.splitlines() if SEGFAULT.search(line)]
    problems += [f"kernel: {line}" for line in kernel]
    say(f"{name}: {len(rounds_done)} rounds of {SOAK_BYTES} bytes each way in "
        f"{time.monotonic() - t0:.0f}s; problems: {problems}")
    return problems


@wanted(bool(SELECTED), "no vchan pair")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("pair", SELECTED)
async def test_vchan_soak(anyio_backend: str, pair: str) -> None:
    problems = await soak(pair)
    assert not problems, problems


@wanted("block" in REQUESTED, "block")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_block_soak(anyio_backend: str, tmp_path: Path) -> None:
    """ringkit's block frontend in a domU (verify_reads) against its backend in dom0: every
    round's read-back right, no segfault, and the image file holds the last round's data."""
    from ringkit.xen import open_domain

    image = tmp_path / "soak.img"
    with image.open("wb") as f:
        f.truncate(DISK)
    before = len(dmesg())
    t0 = time.monotonic()
    with kernel_backends_off(), DomU("soak-block", [sys.executable, str(BLOCK_PEER),
                                                    str(SECONDS)],
                                     kernel_args=KERNEL_ARGS, guest_type=GUEST_TYPE) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        vbd = DeviceAddress("vbd", domid, 0, DEVID)
        async with open_domain() as dom:
            with anyio.fail_after(600):
                while not await dom.store.exists(f"/local/domain/{domid}/data/soak-block-ready"):
                    await anyio.sleep(0.5)
            await create_device(dom.store, vbd, backend_nodes={"params": str(image),
                                                               "mode": "w", "type": "raw"},
                                frontend_nodes={"virtual-device": DEVID, "device-type": "disk"})
            try:
                backend = BlockBackend(dom, domid, DEVID, image=image)
                with anyio.fail_after(SECONDS + 900):
                    async with backend:
                        await backend.run(once=True)
                last = await dom.store.read(f"/local/domain/{domid}/{LAST_NODE}")
            finally:
                with anyio.CancelScope(shield=True):
                    await destroy_device(dom.store, vbd)
            assert not dom.leaks(), dom.leaks()
        outcome = await vm.wait_async(120.0)
    out = outcome.output
    rounds = len(re.findall(r"^round \d+ ok", out, re.M))
    kernel = [line for line in (dmesg()[before:] + out).splitlines() if SEGFAULT.search(line)]
    say(f"block: {rounds} rounds of {DISK} bytes written and read back in "
        f"{time.monotonic() - t0:.0f}s; {backend.totals}")
    assert outcome.ok, out
    assert not kernel, kernel
    assert rounds >= 1, out
    assert image.read_bytes() == round_pattern(int(last)), "the image file does not hold " \
        f"round {last}'s data"


@wanted("pipes" in REQUESTED or "pipes+pvh" in REQUESTED, "pipes")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("where", ["dom0", "pv", *(["pvh"] if "pipes+pvh" in REQUESTED else [])])
async def test_pipe_soak(anyio_backend: str, where: str) -> None:
    """The control with no Xen device at all: 4 MiB a round through `cat` and back, in dom0 and
    in a PV and a PVH domU; where it fails, nothing else there can be judged on ringkit's
    account."""
    before = len(dmesg())
    if where == "dom0":
        done = await anyio.run_process([sys.executable, str(PIPE_PEER), str(SECONDS)],
                                       check=False, stderr=None)
        ok, out = done.returncode == 0, done.stdout.decode(errors="replace")
    else:
        with DomU(f"soak-pipes-{where}", [sys.executable, str(PIPE_PEER), str(SECONDS)],
                  kernel_args=KERNEL_ARGS, guest_type=where) as vm:
            await anyio.to_thread.run_sync(vm.start)
            outcome = await vm.wait_async(SECONDS + 300.0)
        ok, out = outcome.ok, outcome.output
    kernel = [line for line in (dmesg()[before:] + out).splitlines() if SEGFAULT.search(line)]
    summary = [line for line in out.splitlines() if "WRONG" in line or "pipe soak" in line]
    say(f"pipes in {where}: {summary}; kernel: {kernel}")
    assert ok and not kernel, (summary, kernel, out[-2000:])
