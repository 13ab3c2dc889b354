"""Interop: ringkit's block frontend in a domU against Linux's own xen-blkback in dom0.

dom0 loads xen-blkback, puts a file behind a loop device and plugs it into a harness domU as
xvdb the way the toolstack does: both ends' xenstore entries in one transaction (what libxl's
``xl block-attach`` writes), then, once blkback has probed the device and answered InitWait,
``physical-device`` = "major:minor" in hex (what Xen's ``block`` hotplug script writes, and what
blkback waits for before it opens the disk).  ``xl block-attach`` itself is not used: in the
emulated dom0 its hotplug script overran libxl's fixed timeout on a loaded machine, so the
attach failed for reasons that have nothing to do with the drivers.

The domU does not load its own xen-blkfront, so the vbd is left to ringkit's userspace
`BlockFrontend`, which connects, reports what blkback offered and what it used, writes a
pattern of several MiB (whole-MiB requests that need indirect segments, an 11-segment direct one
at a sector-aligned but page-unaligned offset, single sectors), flushes, reads the whole disk
back and compares, then closes (both ends must reach Closed).  Finally dom0 compares the backing
file itself with the same expected image: the file starts as zeros, so the test cannot pass
unless the data really went through blkback.

This module is also the domU's program: ``python tests/xen/test_interop_blkback.py frontend``.
Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest

from ringkit.abc import Domain
from ringkit.xenvm.layout import ENV_DOMU_IMAGE

VDEV = "xvdb"
DEVID = (202 << 8) | (1 << 4)     # xvdb, as libxl numbers it: 51728
DISK_BYTES = 16 << 20
MIB = 1 << 20
PAGE = 4096
SECTOR = 512
SEED = 0x5EED_B10C
STEP_SECONDS = 240                 # generous: TCG is slow and the machine is shared
DOMU_SECONDS = 900                 # the domU's whole life: boot, Python, the I/O, power-off
REPORT = "blkback-report "
DATA_MISMATCH = 2                  # the domU's exit status when the read-back differed
VERIFIED = "frontend: whole disk read back and verified"

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc") or
                       not os.environ.get(ENV_DOMU_IMAGE),
                       reason="needs dom0 under `ringkit xen-vm run --domu`"),
]


def pattern_writes() -> list[tuple[int, bytes]]:
    """The writes the frontend makes, in order: (byte offset, data); the same on both sides."""
    rng = random.Random(SEED)
    spans = [
        (0, 6 * MIB),                          # split into whole-MiB (indirect) requests
        (6 * MIB + SECTOR, 11 * PAGE),         # 11 segments: the most a direct request holds
        (7 * MIB, 12 * PAGE + 2 * SECTOR),     # 13 segments, the last partial: indirect
        (8 * MIB + 3 * SECTOR, 3 * SECTOR),    # a few sectors inside one page
        (DISK_BYTES - SECTOR, SECTOR),         # the very last sector
        (MIB - SECTOR, 2 * SECTOR),            # overwrite across a request boundary
    ]
    return [(offset, rng.randbytes(length)) for offset, length in spans]


def expected_image() -> bytes:
    """The whole disk after `pattern_writes` on a disk of zeros."""
    image = bytearray(DISK_BYTES)
    for offset, data in pattern_writes():
        image[offset:offset + len(data)] = data
    return bytes(image)


def mismatched_pages(got: bytes, want: bytes) -> list[str]:
    """The 4 KiB pages that differ, as runs "first-last" of page numbers ("z" after a run whose
    pages all read as zeros)."""
    runs: list[list[int]] = []
    zero = bytes(PAGE)
    for page in range(len(want) // PAGE):
        piece = got[page * PAGE:(page + 1) * PAGE]
        if piece != want[page * PAGE:(page + 1) * PAGE]:
            is_zero = int(piece == zero)
            if runs and runs[-1][1] == page - 1 and runs[-1][2] == is_zero:
                runs[-1][1] = page
            else:
                runs.append([page, page, is_zero])
    return [f"{a}-{b}{'z' if z else ''}" for a, b, z in runs[:20]]


def first_difference(got: bytes, want: bytes) -> str:
    """Where two images first differ, for an assertion message."""
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    for start in range(0, len(want), MIB):
        if got[start:start + MIB] != want[start:start + MIB]:
            at = next(i for i in range(start, start + MIB) if got[i] != want[i])
            return (f"first difference at byte {at} (sector {at // SECTOR}): "
                    f"got {got[at:at + 16].hex()} want {want[at:at + 16].hex()}")
    return "no difference"


# ---------------------------------------------------------------------------- the domU side

async def exercise(dom: Domain, blkfront_loaded: bool) -> int:
    """Wait for vbd `DEVID` to be plugged, run the I/O through ringkit's frontend, print the
    report; return the exit status (0: everything read back as written)."""
    from ringkit.frontends.block import BlockFrontend, StaleReadError

    from ringkit import StoreError

    fe_dir = f"/local/domain/{dom.domid}/device/vbd/{DEVID}"
    with anyio.fail_after(DOMU_SECONDS):      # dom0 plugs the disk once we are running
        while True:
            try:
                backend_dir = await dom.store.read(f"{fe_dir}/backend")
                break
            except StoreError:
                await anyio.sleep(0.5)
    print(f"frontend: vbd {DEVID} is plugged, backend {backend_dir}", flush=True)
    # verify_reads: a read answered OKAY with unwritten sectors raises StaleReadError, saying
    # whether their data came late or never (the anomaly below, docs/real-xen.md)
    disk = BlockFrontend(dom, 0, DEVID, ring_page_order=4, queues=4, verify_reads=True)
    disk.connect_timeout = STEP_SECONDS
    t0 = time.monotonic()
    async with disk:
        t1 = time.monotonic()
        offered: dict[str, str | None] = {}
        for key in ("feature-persistent", "feature-max-indirect-segments",
                    "max-ring-page-order", "multi-queue-max-queues", "feature-flush-cache",
                    "feature-discard", "feature-barrier", "sector-size", "sectors", "mode"):
            try:
                offered[key] = await dom.store.read(f"{backend_dir}/{key}")
            except StoreError:
                offered[key] = None
        info = disk.info
        assert info is not None
        used = {"ring-page-order": disk.ring_page_order, "queues": disk.num_queues,
                "persistent": info.persistent,
                "max-indirect-segments": info.max_indirect_segments,
                "max-request-bytes": disk.client.max_request_bytes,
                "flush": info.flush, "sectors": info.sectors}
        with anyio.fail_after(STEP_SECONDS):
            for offset, data in pattern_writes():
                await disk.write(offset, data)
            await disk.flush()
        t2 = time.monotonic()
        stale: list[str] = []

        async def read(offset: int, length: int) -> bytes | None:
            try:
                return await disk.read(offset, length)
            except StaleReadError as exc:
                stale.append(str(exc))
                return None

        with anyio.fail_after(STEP_SECONDS):
            got = await read(0, DISK_BYTES)
            # and the odd-shaped pieces on their own, as the requests that wrote them
            pieces_ok = all([await read(offset, len(data)) == data
                             for offset, data in pattern_writes()[1:]])
            reread_ok = None
            if got != expected_image() or not pieces_ok:    # tell a lost write from a bad read
                reread_ok = await read(0, DISK_BYTES) == expected_image()
        t3 = time.monotonic()
    # a clean disconnect: we are Closed, and blkback follows to Closed (it answers a Closed
    # frontend with Closed and keeps the device, as it is still online)
    frontend_state = await dom.store.read(f"{fe_dir}/state")
    backend_state = ""
    with anyio.move_on_after(STEP_SECONDS):
        while (backend_state := await dom.store.read(f"{backend_dir}/state")) != "6":
            await anyio.sleep(0.2)
    leaks = dom.leaks()
    want = expected_image()
    report = {"offered": offered, "used": used, "blkfront_loaded": blkfront_loaded,
              "frontend_state_after_close": frontend_state,
              "backend_state_after_close": backend_state, "pieces_ok": pieces_ok,
              "whole_ok": got == want, "reread_ok": reread_ok, "stale_reads": stale,
              "leaks": str(leaks) if leaks else "",
              "seconds": {"connect": round(t1 - t0, 2), "write+flush": round(t2 - t1, 2),
                          "read": round(t3 - t2, 2)}}
    if got is not None and got != want:
        report["mismatch"] = mismatched_pages(got, want)
    print(REPORT + json.dumps(report), flush=True)
    if got != want or stale:
        print(f"frontend: MISMATCH {first_difference(got, want) if got else stale[0]}",
              flush=True)
        return DATA_MISMATCH
    if not pieces_ok or leaks:
        return 1
    print(VERIFIED, flush=True)
    return 0


async def _frontend() -> int:
    """The domU's program: `exercise` on the real transport, with xen-blkfront absent."""
    from ringkit.xen import open_domain

    async with open_domain() as dom:
        return await exercise(dom, os.path.exists("/sys/module/xen_blkfront"))


# ---------------------------------------------------------------------------- the dom0 side

def _run(argv: list[str], timeout: float = STEP_SECONDS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _must(argv: list[str], timeout: float = STEP_SECONDS) -> str:
    proc = _run(argv, timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}): " \
                                 f"{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def _diagnostics(domid: int | None) -> str:
    """What the toolstack and the kernel said, for a failed attach or connection."""
    parts = []
    for argv in (["xenstore-ls", "-fp", "/local/domain/0/backend/vbd"],
                 ["xenstore-ls", "-fp", f"/local/domain/{domid}/device/vbd"],
                 ["sh", "-c", "tail -40 /var/log/xen/xen-hotplug.log; dmesg | tail -20"]):
        proc = _run(argv, 60)
        parts.append(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


async def plug_vbd(frontend_id: int, loop_dev: str) -> None:
    """Plug `loop_dev` into the domU as vbd `DEVID`, served by dom0's xen-blkback, as ``xl
    block-attach`` and Xen's ``block`` hotplug script together do
    (`ringkit.xenvm.toolstack.plug_linux_vbd`)."""
    from ringkit.device import DeviceAddress
    from ringkit.xen import open_domain
    from ringkit.xenvm.toolstack import plug_linux_vbd

    async with open_domain() as dom:
        await plug_linux_vbd(dom.store, DeviceAddress("vbd", frontend_id, 0, DEVID), loop_dev,
                             vdev=VDEV, timeout=STEP_SECONDS)


async def unplug_vbd(frontend_id: int) -> None:
    """Remove both ends' entries (``xl block-detach -f``); blkback then lets go of the disk."""
    from ringkit.device import DeviceAddress, destroy_device
    from ringkit.xen import open_domain

    async with open_domain() as dom:
        await destroy_device(dom.store, DeviceAddress("vbd", frontend_id, 0, DEVID))


def _wait_blkback_released(domid: int) -> None:
    """Wait for blkback's xenbus device to go away (it closes the loop device with it)."""
    device = Path(f"/sys/bus/xen-backend/devices/vbd-{domid}-{DEVID}")
    end = time.monotonic() + STEP_SECONDS
    while device.exists():
        if time.monotonic() > end:
            pytest.fail(f"blkback kept {device} after the vbd was removed: "
                        f"{_diagnostics(domid)}")
        time.sleep(0.5)


def test_ringkit_frontend_against_linux_blkback() -> None:
    from ringkit.xenvm.domu import DomU

    for module in ("xen_blkback", "loop"):
        _must(["busybox", "modprobe", module])
    workdir = Path(tempfile.mkdtemp(prefix="ringkit-blkback-", dir="/dev/shm"))
    image = workdir / "disk.img"
    with image.open("wb") as f:
        f.truncate(DISK_BYTES)
    loop: str | None = None
    domid: int | None = None
    try:
        loop = _must(["losetup", "--find", "--show", str(image)])
        with DomU("blkback-fe", [sys.executable, __file__, "frontend"]) as vm:
            try:
                domid = vm.start()
                anyio.run(plug_vbd, domid, loop)
                result = vm.wait(DOMU_SECONDS)
                if not result.ok:
                    print(_diagnostics(domid))
            finally:
                vm.destroy()
                if domid is not None:
                    anyio.run(unplug_vbd, domid)
                    _wait_blkback_released(domid)
        on_disk = image.read_bytes()
        want = expected_image()
        file_ok = on_disk == want
        assert result.exit_code in (0, DATA_MISMATCH) and not result.timed_out, \
            f"domU failed ({result.exit_code}):\n{result.output}"
        lines = [line for line in result.output.splitlines() if line.startswith(REPORT)]
        assert lines, result.output
        report = json.loads(lines[-1][len(REPORT):])
        report["backing_file_ok"] = file_ok
        if not file_ok:
            report["backing_file_mismatch"] = mismatched_pages(on_disk, want)
        print("blkback interop:", json.dumps(report, indent=1))
        offered, used = report["offered"], report["used"]
        assert not report["blkfront_loaded"], "the domU's own xen-blkfront took the device"
        assert offered["mode"] == "w" and int(offered["sectors"]) == DISK_BYTES // SECTOR
        assert used["sectors"] == DISK_BYTES // SECTOR
        # ringkit took what Linux's blkback offered (up to its own limits)
        indirect = int(offered["feature-max-indirect-segments"] or 0)
        assert indirect > 11, "blkback offered no indirect segments: the test would not use them"
        assert used["max-indirect-segments"] == indirect
        assert used["max-request-bytes"] > 11 * PAGE
        assert used["persistent"] == (offered["feature-persistent"] == "1")
        assert used["ring-page-order"] == min(4, int(offered["max-ring-page-order"] or 0))
        assert used["queues"] == min(4, int(offered["multi-queue-max-queues"] or 1))
        assert used["flush"] == (offered["feature-flush-cache"] == "1")
        assert not report["leaks"]
        assert (report["frontend_state_after_close"], report["backend_state_after_close"]) \
            == ("6", "6"), "the frontend's close did not end with both ends Closed"
        # Strict: a read-back that differs from what was written fails, whatever its shape
        # (the report above says which pages, whether a second read and the backing file
        # were right, and what `verify_reads` saw).
        assert report["whole_ok"] and report["pieces_ok"], \
            f"read-back differed from what was written: {json.dumps(report)}"
        assert VERIFIED in result.output
        # dom0's own look at the bytes blkback wrote into the file
        assert file_ok, f"backing file: {first_difference(on_disk, want)}"
    finally:
        if loop is not None:
            _run(["losetup", "--detach", loop])
        image.unlink(missing_ok=True)
        workdir.rmdir()


if __name__ == "__main__" and sys.argv[1:] == ["frontend"]:
    sys.exit(anyio.run(_frontend))
