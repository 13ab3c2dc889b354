"""Block benchmark under real Xen: Linux's xen-blkfront in one domU, reading and writing a disk
served by dom0's xen-blkback and one served by ringkit's `BlockBackend`, in the same boot.

dom0 makes two image files of the same random content in /dev/shm.  One goes behind a loop
device and is plugged into the domU as ``xvdb``, served by Linux's xen-blkback (``phy:``, as
``xl block-attach`` and the ``block`` hotplug script do, `plug_linux_vbd`); the other is plugged
as ``xvdc`` and served by ringkit's `BlockBackend` in this process (its default offer, as
``ringkit block serve`` makes it), with dom0's kernel backends kept off that device.  The domU
loads its own xen-blkfront (default module parameters) and runs busybox ``dd`` on each disk in
turn, alternating which goes first, with the same arguments on both:

- 4 KiB reads with ``iflag=direct`` by one dd (one request in flight), over the first
  `--small-mib` MiB of the disk (as the next figure: 4 KiB requests are slow under emulation);
- 4 KiB reads by `--jobs` dd processes at once, each on its own slice of the disk (busybox
  ``dd`` at depth 1 each: the domU image has no fio, so this is the "at depth" figure);
- 1 MiB reads with ``iflag=direct`` by one dd;
- 1 MiB writes with ``oflag=direct conv=fsync`` by one dd (the data written ends with a cache
  flush through the backend).

Every read lands in a file in the domU's tmpfs; its SHA-256 after the timed part must equal that
of the image dom0 made.  Every write is read back (untimed, ``iflag=direct``) and compared with
what was written, and at the end dom0 compares each image file with the SHA-256 of the last data
the domU wrote.  A wrong byte anywhere fails the run.  Each figure keeps its best of
`--repeat` runs.  Run it in dom0 under the harness::

    ringkit xen-vm run --domu -- .venv/bin/ringkit bench block-xen

Figures are printed, never asserted; under emulation only the ratio means anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import click

__all__ = ("DEVICES", "FIGURES", "PHASE_KEY", "RESULT", "BenchError", "command", "guest",
           "pattern", "read_disk", "run", "verify_parts", "write_disk")

DEVICES = (("linux", 51728, "xvdb"), ("ringkit", 51744, "xvdc"))
"""(column, vbd devid, the domU's device name) of the disk each backend serves."""
FIGURES = (
    ("read_4k", "4 KiB direct reads, 1 dd (MB/s)"),
    ("read_4k_jobs", "4 KiB direct reads, N dd at once (MB/s)"),
    ("read_1m", "1 MiB direct reads, 1 dd (MB/s)"),
    ("write_1m", "1 MiB direct writes + fsync, 1 dd (MB/s)"),
)
"""(key, label) of each figure, in the order measured and printed."""
RESULT = "block-xen-result "
"""The prefix of the domU's one line of results on its console."""
PHASE_KEY = "data/block-bench-phase"
"""Where the domU says it has measured (relative to its xenstore home)."""
_SECONDS = 1800.0
"""How long the domU may take in all (TCG is slow and the machine shared)."""


class BenchError(click.ClickException):
    """The benchmark could not set up, or a transfer's bytes were wrong."""


def pattern(seed: int, size: int) -> bytes:
    """The image's content: `size` pseudo-random bytes from `seed` (the same in dom0 and the
    domU)."""
    return random.Random(seed).randbytes(size)


def verify_parts(parts: list[Path], want_sha256: str, what: str) -> None:
    """Check that the concatenation of `parts` has SHA-256 `want_sha256`.

    Raises:
        BenchError: it does not (`what` says which transfer).
    """
    digest = hashlib.sha256()
    length = 0
    for part in parts:
        data = part.read_bytes()
        length += len(data)
        digest.update(data)
    if digest.hexdigest() != want_sha256:
        raise BenchError(f"{what}: the {length} bytes read differ from the image (SHA-256 "
                         f"{digest.hexdigest()[:16]}..., want {want_sha256[:16]}...)")


# --------------------------------------------------------------------------- the domU side

def _dd(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["dd", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(procs: list[subprocess.Popen[bytes]], what: str) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise BenchError(f"{what}: dd exited {proc.returncode}: {err.decode().strip()}")


def read_disk(dev: str, bs: int, jobs: int, size: int, want: str, work: Path, what: str) -> float:
    """Seconds for `jobs` dd processes to read the first `size` bytes of `dev` (a path) in `bs`
    blocks with ``iflag=direct`` (a slice each) into files in `work`; then their bytes are
    checked against `want` (SHA-256), which raises `BenchError` (`what` says which transfer)
    if they differ."""
    blocks = size // bs
    per = blocks // jobs
    parts = [work / f"part{i}" for i in range(jobs)]
    start = time.perf_counter()
    procs = [_dd(f"if={dev}", f"of={part}", f"bs={bs}", "iflag=direct", f"skip={i * per}",
                 f"count={per if i < jobs - 1 else blocks - i * per}")
             for i, part in enumerate(parts)]
    _finish(procs, what)
    seconds = time.perf_counter() - start
    verify_parts(parts, want, what)
    for part in parts:
        part.unlink()
    return seconds


def write_disk(dev: str, source: Path, want: str, size: int, work: Path, what: str) -> float:
    """Seconds to write `source` over `dev` (a path) in 1 MiB direct writes ending with a
    flush; then read back (untimed) into `work` and checked against `want` (SHA-256), which
    raises `BenchError` if they differ."""
    start = time.perf_counter()
    _finish([_dd(f"if={source}", f"of={dev}", "bs=1M", "oflag=direct", "conv=fsync")],
            what)
    seconds = time.perf_counter() - start
    back = work / "back"
    _finish([_dd(f"if={dev}", f"of={back}", "bs=1M", "iflag=direct",
                 f"count={size >> 20}")], what + " (read back)")
    verify_parts([back], want, what + " (read back)")
    back.unlink()
    return seconds


def _wait_for_disks(size: int) -> None:
    end = time.monotonic() + 600
    while time.monotonic() < end:
        try:
            if all(int(Path(f"/sys/block/{dev}/size").read_text()) * 512 == size
                   and Path(f"/dev/{dev}").exists() for _, _, dev in DEVICES):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.25)
    raise BenchError(f"the disks {[dev for _, _, dev in DEVICES]} never appeared "
                     f"(or with the wrong size)")


def _phase(value: str) -> None:
    subprocess.run(["xenstore-write", PHASE_KEY, value], check=True, timeout=120)


def guest() -> int:
    """The domU's program: measure each figure on each disk, print the results line."""
    size = int(os.environ["BENCH_BYTES"])
    repeat = int(os.environ["BENCH_REPEAT"])
    jobs = int(os.environ["BENCH_JOBS"])
    want = os.environ["BENCH_SHA256"]
    small = int(os.environ["BENCH_SMALL_BYTES"])
    want_small = os.environ["BENCH_SMALL_SHA256"]
    _wait_for_disks(size)
    print(f"guest: both disks present ({size >> 20} MiB each)", flush=True)
    _phase("connected")
    work = Path(tempfile.mkdtemp(prefix="block-xen-"))
    best: dict[str, dict[str, float]] = {name: {} for name, _, _ in DEVICES}
    written = ""
    for round_ in range(repeat):
        order = DEVICES if round_ % 2 == 0 else DEVICES[::-1]
        source = work / "source"
        data = os.urandom(size)
        source.write_bytes(data)
        written = hashlib.sha256(data).hexdigest()
        del data
        for key, _ in FIGURES:
            for name, _, vdev in order:
                dev = f"/dev/{vdev}"
                what = f"{key} on {dev} ({name}), round {round_ + 1}"
                moved = small if key.startswith("read_4k") else size
                if key == "read_4k":
                    seconds = read_disk(dev, 4096, 1, small, want_small, work, what)
                elif key == "read_4k_jobs":
                    seconds = read_disk(dev, 4096, jobs, small, want_small, work, what)
                elif key == "read_1m":
                    seconds = read_disk(dev, 1 << 20, 1, size, want, work, what)
                else:
                    seconds = write_disk(dev, source, written, size, work, what)
                rate = moved / seconds / 1e6
                best[name][key] = max(best[name].get(key, 0.0), rate)
                print(f"guest: {what}: {rate:.1f} MB/s", flush=True)
        # the next round reads the image again: put its content back
        if round_ < repeat - 1:
            image = work / "image"
            image.write_bytes(pattern(int(os.environ["BENCH_SEED"]), size))
            for _, _, vdev in DEVICES:
                _finish([_dd(f"if={image}", f"of=/dev/{vdev}", "bs=1M", "oflag=direct",
                             "conv=fsync")], f"restoring {vdev}")
            image.unlink()
    source.unlink()
    print(RESULT + json.dumps({"best": best, "written_sha256": written}), flush=True)
    _phase("measured")
    # leave once dom0 has detached ringkit's disk (so that it closes while we still run)
    ringkit_devid = DEVICES[1][1]
    end = time.monotonic() + 300
    while time.monotonic() < end and subprocess.run(
            ["xenstore-read", f"device/vbd/{ringkit_devid}/state"], capture_output=True,
            check=False).returncode == 0:
        time.sleep(0.5)
    return 0


# --------------------------------------------------------------------------- the dom0 side

def _sh(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                         f"{proc.stdout}{proc.stderr}".strip())
    return proc.stdout.strip()


async def _negotiated(store: Any, address: Any) -> dict[str, str]:
    """What the backend offered and the domU's blkfront chose (their nodes), for the report."""
    from .. import StoreError

    out = {}
    for path, keys in ((address.backend_path, ("max-ring-page-order", "multi-queue-max-queues",
                                               "feature-max-indirect-segments",
                                               "feature-persistent")),
                       (address.frontend_path, ("ring-page-order", "multi-queue-num-queues",
                                                "feature-persistent"))):
        side = "backend" if path == address.backend_path else "frontend"
        for key in keys:
            with suppress(StoreError):
                out[f"{side} {key}"] = await store.read(f"{path}/{key}")
    return out


async def _measure(work: Path, size: int, small: int, repeat: int, jobs: int, seed: int,
                   want: str, want_small: str) -> dict[str, Any]:
    import anyio

    from .. import StoreError
    from ..backends.block import BlockBackend, ServiceConfig
    from ..device import DeviceAddress, create_device, destroy_device
    from ..xen import open_domain
    from ..xenvm.domu import DomU
    from ..xenvm.toolstack import detach_device, kernel_backends_off, plug_linux_vbd

    images = {name: work / f"{name}.img" for name, _, _ in DEVICES}
    loop = _sh("losetup", "--find", "--show", str(images["linux"]))
    negotiated: dict[str, dict[str, str]] = {}
    domid: int | None = None
    env = {"BENCH_BYTES": str(size), "BENCH_REPEAT": str(repeat), "BENCH_JOBS": str(jobs),
           "BENCH_SHA256": want, "BENCH_SEED": str(seed), "BENCH_SMALL_BYTES": str(small),
           "BENCH_SMALL_SHA256": want_small}
    try:
        async with open_domain() as dom:
            with DomU("block-xen", [sys.executable, "-m", "ringkit.bench.block_xen", "guest"],
                      vcpus=2, memory_mb=512 + 3 * (size >> 20), env=env,
                      modules=["xen_blkfront"]) as vm:
                domid = await anyio.to_thread.run_sync(vm.start)
                address = {name: DeviceAddress("vbd", domid, dom.domid, devid)
                           for name, devid, _ in DEVICES}
                try:
                    await plug_linux_vbd(dom.store, address["linux"], loop, vdev="xvdb")
                    with kernel_backends_off():
                        await create_device(
                            dom.store, address["ringkit"],
                            backend_nodes={"params": str(images["ringkit"]), "mode": "w",
                                           "type": "raw"},
                            frontend_nodes={"virtual-device": address["ringkit"].devid,
                                            "device-type": "disk"})
                        async with anyio.create_task_group() as tg, \
                                BlockBackend(dom, domid, address["ringkit"].devid,
                                             image=images["ringkit"],
                                             config=ServiceConfig()) as backend:
                            tg.start_soon(backend.run)
                            home = f"/local/domain/{domid}/{PHASE_KEY}"
                            with anyio.move_on_after(_SECONDS):
                                while not vm.ended():
                                    phase = None
                                    with suppress(StoreError):
                                        phase = await dom.store.read(home)
                                    if phase in ("connected", "measured") and not negotiated:
                                        for name in address:     # while both are connected
                                            negotiated[name] = await _negotiated(
                                                dom.store, address[name])
                                    if phase == "measured":
                                        break
                                    await anyio.sleep(1.0)
                            with anyio.fail_after(300):
                                await detach_device(dom.store, address["ringkit"])
                                await backend.wait_finished()
                            tg.cancel_scope.cancel()
                    outcome = await vm.wait_async(300)
                finally:
                    with anyio.CancelScope(shield=True):
                        for name in address:
                            await destroy_device(dom.store, address[name])
            leaks = dom.leaks()
    finally:
        if domid is not None:               # blkback lets go of the loop device with it
            device = Path(f"/sys/bus/xen-backend/devices/vbd-{domid}-{DEVICES[0][1]}")
            end = time.monotonic() + 120
            while device.exists() and time.monotonic() < end:
                time.sleep(0.5)
        subprocess.run(["losetup", "--detach", loop], capture_output=True, check=False)
    lines = [line for line in outcome.output.splitlines() if line.startswith(RESULT)]
    if outcome.exit_code != 0 or not lines:
        raise BenchError(f"the domU failed (exit {outcome.exit_code}):\n"
                         f"{outcome.output[-4000:]}")
    if leaks:
        raise BenchError(f"ringkit's backend left {leaks}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    for name, path in images.items():
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != result["written_sha256"]:
            raise BenchError(f"the {name} image file does not hold what the domU wrote last "
                             f"(SHA-256 {got[:16]}..., want "
                             f"{result['written_sha256'][:16]}...)")
    result["negotiated"] = negotiated
    return result


def run(mib: int, small_mib: int, repeat: int, jobs: int) -> dict[str, Any]:
    """Measure both columns once (best of `repeat` rounds inside one domU; the 4 KiB figures
    read the first `small_mib` MiB, the others all `mib`); returns the domU's best figures per
    column, what blkfront negotiated with each backend, and the load."""
    import anyio

    if not os.path.exists("/dev/xen/gntalloc"):
        raise BenchError("needs real Xen (/dev/xen/gntalloc); run it in dom0 under "
                         "`ringkit xen-vm run --domu`")
    for module in ("xen_blkback", "loop"):
        _sh("busybox", "modprobe", module)
    size = mib << 20
    seed = 0xB10C + mib
    data = pattern(seed, size)
    want = hashlib.sha256(data).hexdigest()
    small = min(small_mib, mib) << 20
    want_small = hashlib.sha256(data[:small]).hexdigest()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ringkit-block-xen-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        for name, _, _ in DEVICES:
            (work / f"{name}.img").write_bytes(data)
        del data
        result = anyio.run(_measure, work, size, small, repeat, jobs, seed, want, want_small)
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    return result


@click.command("block-xen")
@click.option("--mib", default=16, show_default=True, type=click.IntRange(min=1),
              help="Size of each disk: the 1 MiB figures move all of it.")
@click.option("--small-mib", default=2, show_default=True, type=click.IntRange(min=1),
              help="The 4 KiB figures read the first this many MiB of the disk.")
@click.option("--repeat", default=2, show_default=True, type=click.IntRange(min=1),
              help="Keep each figure's best of this many rounds.")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(min=1, max=64),
              help="dd processes reading at once for the parallel figure.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the figures and load averages to this JSON file.")
def command(mib: int, small_mib: int, repeat: int, jobs: int, json_path: str | None) -> None:
    """Linux's xen-blkfront in a domU on a disk served by Linux's xen-blkback vs one served by
    ringkit's block backend, same domU, same boot, as a ratio (run in dom0 under
    `ringkit xen-vm run --domu`)."""
    result = run(mib, small_mib, repeat, jobs)
    before, after = result["load_average_before"], result["load_average_after"]
    click.echo(f"block under real Xen: Linux xen-blkfront in a domU (2 vCPUs), {mib} MiB "
               f"disks on /dev/shm ({min(small_mib, mib)} MiB of 4 KiB reads), {jobs} dd for the "
               f"parallel figure, best of {repeat}, "
               f"{os.cpu_count()} CPUs in dom0, load average {before[0]:.2f} before, "
               f"{after[0]:.2f} {after[1]:.2f} {after[2]:.2f} at the end")
    click.echo(f"{'figure':44} {'Linux blkback':>14} {'ringkit':>10} {'ringkit/Linux':>14}")
    for key, label in FIGURES:
        linux, ours = result["best"]["linux"][key], result["best"]["ringkit"][key]
        click.echo(f"{label.replace('N dd', f'{jobs} dd'):44} {linux:>14.1f} {ours:>10.1f} "
                   f"{ours / linux:>13.2f}x")
    for name, _, _ in DEVICES:
        click.echo(f"blkfront negotiated with {name}: {result['negotiated'].get(name)}")
    if json_path:
        record = {"benchmark": "block-xen", "cpus": os.cpu_count(), "mib": mib,
                  "small_mib": min(small_mib, mib),
                  "repeat": repeat, "jobs": jobs, **result,
                  "rows": [{"key": key, "label": label,
                            "linux": result["best"]["linux"][key],
                            "ringkit": result["best"]["ringkit"][key]}
                           for key, label in FIGURES]}
        Path(json_path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["guest"]:
    try:
        sys.exit(guest())
    except BenchError as exc:
        print(f"guest: FAIL: {exc.message}", flush=True)
        sys.exit(1)
