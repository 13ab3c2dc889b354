"""netif benchmark under real Xen: Linux's xen-netfront in one domU, talking to dom0 through a
vif served by dom0's xen-netback and through one served by ringkit's `NetBackend`, same boot.

The domU has two vifs, both taken by its own xen-netfront (default module parameters):

- vif 1, served by Linux's xen-netback (``vif<domid>.1`` in dom0, plugged as ``xl
  network-attach`` and the ``vif`` hotplug script do, `plug_linux_vif`), subnet 10.79.1.0/24;
- vif 0, served by ringkit's `NetBackend` in this process, bridged to a TAP device (with
  IFF_VNET_HDR, as ``ringkit net serve --tap`` makes it), subnet 10.79.2.0/24, with dom0's
  kernel backends kept off that device.

Each round the domU starts the `ringkit.bench.net` server on each of its two addresses, and dom0
runs the same `ringkit.bench.net` client against each in turn (alternating which goes first):
one TCP connection carrying `--mib` MiB of random bytes from dom0 to the domU (timed to the
server's acknowledgement of the last byte; the server then returns the SHA-256 of what it got,
which must be that of what was sent), `--pings` UDP round trips of 64 bytes, and `--frames`
18-byte UDP frames sent as fast as the client can (frames per second that arrived).  Each
figure keeps its best of `--repeat` rounds.  Run it in dom0 under the harness::

    ringkit xen-vm run --domu -- .venv/bin/ringkit bench net-xen

Figures are printed, never asserted; under emulation only the ratio means anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from .net import ROWS, BenchError, Processes, figures, run_client

__all__ = ("COLUMNS", "ROUND_KEY", "TAP", "command", "guest", "run", "tcp_retransmissions")

COLUMNS = (("linux", 1, "00:16:3e:79:01:02", "10.79.1.1", "10.79.1.2"),
           ("ringkit", 0, "00:16:3e:79:02:02", "10.79.2.1", "10.79.2.2"))
"""(column, vif devid, the domU's MAC, dom0's address, the domU's address)."""
TAP = "rkbxen0"
"""dom0's TAP device behind ringkit's backend."""
ROUND_KEY = "data/net-bench-round"
"""Where the domU says which round its servers listen for (then ``done``)."""
_SECONDS = 1800.0


# --------------------------------------------------------------------------- the domU side

def _xenstore_write(key: str, value: str) -> None:
    subprocess.run(["xenstore-write", key, value], check=True, timeout=120)


def _run(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")


def _interface_with(mac: str) -> str | None:
    for dev in Path("/sys/class/net").iterdir():
        try:
            if (dev / "address").read_text().strip().lower() == mac.lower():
                return dev.name
        except OSError:
            continue
    return None


def _wait(what: str, check: Any, seconds: float = 600) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if got := check():
            return got
        time.sleep(0.25)
    raise BenchError(f"no {what} after {seconds:.0f} s")


def guest() -> int:
    """The domU's program: both interfaces up, then per round a server on each address until
    dom0's clients are done with them."""
    repeat = int(os.environ["BENCH_REPEAT"])
    for name, _, mac, _, address in COLUMNS:
        dev = _wait(f"interface with MAC {mac}", lambda mac=mac: _interface_with(mac))
        _run("ip", "addr", "add", f"{address}/24", "dev", dev)
        _run("ip", "link", "set", dev, "up")
        _wait(f"carrier on {dev}",
              lambda dev=dev: Path(f"/sys/class/net/{dev}/carrier").read_text().strip() == "1")
        print(f"guest: {name}'s vif is {dev}, {address}", flush=True)
    procs = Processes()
    try:
        for round_ in range(repeat):
            servers = [procs.start([sys.executable, "-m", "ringkit.bench.net", "server",
                                    address]) for _, _, _, _, address in COLUMNS]
            for server in servers:
                procs.ready(server, "the benchmark server")
            _xenstore_write(ROUND_KEY, str(round_))
            for server in servers:                  # each ends after its client's "quit"
                server.wait()
            print(f"guest: round {round_ + 1} served", flush=True)
    finally:
        procs.close()
    _xenstore_write(ROUND_KEY, "done")
    # leave once dom0 has detached ringkit's vif (so that it closes while we still run)
    _wait("detach of ringkit's vif",
          lambda: subprocess.run(["xenstore-read", f"device/vif/{COLUMNS[1][1]}/state"],
                                 capture_output=True, check=False).returncode != 0, 300)
    return 0


# --------------------------------------------------------------------------- the dom0 side

def _sh(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                         f"{proc.stdout}{proc.stderr}".strip())


def tcp_retransmissions() -> int:
    """This domain's count of TCP segments retransmitted (``RetransSegs``, /proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RetransSegs"])


def _client(address: str, total: int, pings: int, frames: int) -> dict[str, Any]:
    """One client run against `address`, with the TCP segments dom0 retransmitted meanwhile
    (``retransmitted``: only one transfer runs at a time)."""
    procs = Processes()
    before = tcp_retransmissions()
    try:
        result = run_client(procs, [], address, total, pings, frames)
    finally:
        procs.close()
    result["retransmitted"] = tcp_retransmissions() - before
    return result


async def _measure(total: int, pings: int, frames: int, repeat: int) -> dict[str, Any]:
    import anyio

    from .. import StoreError
    from ..backends.net import NetBackend
    from ..backends.net.tap import TapDevice
    from ..device import DeviceAddress, create_device, destroy_device
    from ..xen import open_domain
    from ..xenvm.domu import DomU
    from ..xenvm.toolstack import detach_device, kernel_backends_off, plug_linux_vif, vif_nodes

    results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in COLUMNS}
    (_, linux_devid, linux_mac, linux_host, _), (_, ours_devid, ours_mac, ours_host, _) = \
        COLUMNS
    async with open_domain() as dom:
        with DomU("net-xen", [sys.executable, "-m", "ringkit.bench.net_xen", "guest"],
                  vcpus=2, env={"BENCH_REPEAT": str(repeat)},
                  modules=["xen_netfront"]) as vm:
            domid = await anyio.to_thread.run_sync(vm.start)
            linux = DeviceAddress("vif", domid, dom.domid, linux_devid)
            ours = DeviceAddress("vif", domid, dom.domid, ours_devid)
            tap = None
            try:
                vif = await plug_linux_vif(dom.store, linux, linux_mac)
                _sh("ip", "addr", "add", f"{linux_host}/24", "dev", vif)
                _sh("ip", "link", "set", vif, "up")
                with kernel_backends_off():
                    tap = TapDevice.open(TAP, vnet_hdr=True)
                    _sh("ip", "addr", "add", f"{ours_host}/24", "dev", tap.name)
                    _sh("ip", "link", "set", tap.name, "up")
                    front, back = vif_nodes(ours_mac, ours_devid)
                    await create_device(dom.store, ours, frontend_nodes=front,
                                        backend_nodes=back)
                    async with anyio.create_task_group() as tg, \
                            NetBackend(dom, domid, ours_devid, link=tap) as backend:
                        tg.start_soon(backend.run)
                        key = f"/local/domain/{domid}/{ROUND_KEY}"
                        for round_ in range(repeat):
                            with anyio.fail_after(_SECONDS):
                                while True:
                                    try:
                                        if await dom.store.read(key) == str(round_):
                                            break
                                    except StoreError:
                                        pass
                                    if vm.ended():
                                        raise BenchError("the domU ended early:\n" + (
                                            await vm.wait_async(30)).output[-4000:])
                                    await anyio.sleep(0.5)
                            order = COLUMNS if round_ % 2 == 0 else COLUMNS[::-1]
                            for name, _, _, _, address in order:
                                results[name].append(await anyio.to_thread.run_sync(
                                    _client, address, total, pings, frames))
                        stats = str(backend.stats)
                        with anyio.fail_after(300):
                            await detach_device(dom.store, ours)
                            await backend.wait_finished()
                        tg.cancel_scope.cancel()
                outcome = await vm.wait_async(300)
            finally:
                with anyio.CancelScope(shield=True):
                    for device in (linux, ours):
                        await destroy_device(dom.store, device)
                    if tap is not None:
                        await tap.aclose()
        leaks = dom.leaks()
    if outcome.exit_code != 0:
        raise BenchError(f"the domU failed (exit {outcome.exit_code}):\n"
                         f"{outcome.output[-4000:]}")
    if leaks:
        raise BenchError(f"ringkit's backend left {leaks}")
    return {"results": results, "ringkit_backend_stats": stats}


def run(mib: int, pings: int, frames: int, repeat: int) -> dict[str, Any]:
    """Measure both columns (`repeat` rounds in one domU); returns every client result per
    column, ringkit's backend counters and the load averages."""
    import anyio

    if not os.path.exists("/dev/xen/gntalloc"):
        raise BenchError("needs real Xen (/dev/xen/gntalloc); run it in dom0 under "
                         "`ringkit xen-vm run --domu`")
    for module in ("tun", "xen_netback"):
        _sh("busybox", "modprobe", module)
    load_before = os.getloadavg()
    result = anyio.run(_measure, mib << 20, pings, frames, repeat)
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    return result


@click.command("net-xen")
@click.option("--mib", default=8, show_default=True, type=click.IntRange(min=1),
              help="MiB to send over the TCP connection, dom0 to the domU.")
@click.option("--pings", default=200, show_default=True, type=click.IntRange(min=1),
              help="UDP round trips to time.")
@click.option("--frames", default=5_000, show_default=True, type=click.IntRange(min=1),
              help="Small UDP frames to send for the frame rate.")
@click.option("--repeat", default=2, show_default=True, type=click.IntRange(min=1),
              help="Keep each figure's best of this many rounds.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the figures and load averages to this JSON file.")
def command(mib: int, pings: int, frames: int, repeat: int, json_path: str | None) -> None:
    """Linux's xen-netfront in a domU through Linux's xen-netback vs through ringkit's netback
    (TAP), same domU, same boot: TCP dom0 -> domU, UDP round trips, small-frame rate, as a
    ratio (run in dom0 under `ringkit xen-vm run --domu`)."""
    result = run(mib, pings, frames, repeat)
    best: dict[str, dict[str, float]] = {}
    for name, runs in result["results"].items():
        for one in runs:
            got = figures(one)
            kept = best.setdefault(name, got)
            for key, value in got.items():
                kept[key] = (min if key.startswith("rtt") else max)(kept[key], value)
    lost = {name: sum(one["lost"] for one in runs) for name, runs in result["results"].items()}
    retransmitted = {name: [one["retransmitted"] for one in runs]
                     for name, runs in result["results"].items()}
    before, after = result["load_average_before"], result["load_average_after"]
    click.echo(f"net under real Xen: Linux xen-netfront in a domU (2 vCPUs), {mib} MiB TCP "
               f"dom0 -> domU, {pings} UDP round trips, {frames} small frames, best of "
               f"{repeat}, {os.cpu_count()} CPUs in dom0, load average {before[0]:.2f} "
               f"before, {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} at the end")
    click.echo(f"{'figure':28} {'Linux netback':>14} {'ringkit':>10} {'ringkit/Linux':>14}")
    for key, label, spec in ROWS:
        linux, ours = best["linux"][key], best["ringkit"][key]
        click.echo(f"{label:28} {linux:>14{spec}} {ours:>10{spec}} {ours / linux:>13.2f}x")
    click.echo(f"UDP round trips lost: Linux {lost['linux']}, ringkit {lost['ringkit']}; "
               f"TCP segments dom0 retransmitted per round: Linux {retransmitted['linux']}, "
               f"ringkit {retransmitted['ringkit']}")
    click.echo(f"ringkit's backend: {result['ringkit_backend_stats']}")
    if json_path:
        record = {"benchmark": "net-xen", "cpus": os.cpu_count(), "mib": mib, "pings": pings,
                  "frames": frames, "repeat": repeat, "lost": lost,
                  "tcp_retransmitted": retransmitted,
                  "load_average_before": before, "load_average_after": after,
                  "ringkit_backend_stats": result["ringkit_backend_stats"],
                  "rows": [{"key": key, "label": label, "linux": best["linux"][key],
                            "ringkit": best["ringkit"][key]} for key, label, _ in ROWS]}
        Path(json_path).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["guest"]:
    try:
        sys.exit(guest())
    except BenchError as exc:
        print(f"guest: FAIL: {exc.message}", flush=True)
        sys.exit(1)
