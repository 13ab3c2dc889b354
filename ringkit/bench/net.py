"""netif benchmark: TCP throughput, UDP round-trip latency and small-frame rate through a
ringkit netfront <-> netback pair on the simulated Xen, beside a veth pair moving the same
traffic in the same run.

Needs root (network namespaces, TAP devices).  Two pairs of namespaces are made:

- netif: ``ringkit net serve --tap`` (the vif backend, dom0) with its TAP in one namespace and
  ``ringkit net attach --tap`` (the frontend, a simulated guest) with its TAP in the other, so
  every frame crosses the netif tx and rx rings;
- veth: a veth pair between two other namespaces (the baseline).

On each pair the same plain-Python workers run (``ip netns exec NS python -m
ringkit.bench.net server|client ...``): one TCP connection sending `--mib` MiB of random
bytes (timed from the first byte sent to the server's acknowledgement of the last; the server
then sends the SHA-256 of what it received, which must be that of what was sent), `--pings`
UDP round trips of 64-byte datagrams (median and 99th percentile), and `--frames` 18-byte UDP
datagrams sent as fast as the sender can (frames per second that arrived, over the sender's
time).  The
namespaces and every process are removed at the end, also on failure.  Figures are printed,
never asserted; on a busy machine they say little.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import click

_PORT = 5201
_SERVER_IP, _CLIENT_IP = "10.78.20.1", "10.78.20.2"
_PING, _FLOOD, _COUNT, _QUIT = b"p", b"f", b"c", b"q"

# --------------------------------------------------------------------------- workers (children)


def _tcp_sink(listener: socket.socket) -> None:
    """Per connection: keep what arrives, answer its length after EOF (the end of the timed
    part), then its SHA-256 (hashed after, so that hashing is not timed)."""
    while True:
        conn, _ = listener.accept()
        with conn:
            total = 0
            chunks = []
            while data := conn.recv(1 << 20):
                chunks.append(data)
                total += len(data)
            conn.sendall(total.to_bytes(8, "big"))
            digest = hashlib.sha256()
            for data in chunks:
                digest.update(data)
            del chunks
            conn.sendall(digest.digest())


def _server(address: str) -> None:
    """Sink TCP connections (answering each with its byte count after EOF) and serve UDP:
    echo pings, count flood frames, answer a count query, exit on quit."""
    listener = socket.create_server((address, _PORT))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    udp.bind((address, _PORT))
    threading.Thread(target=_tcp_sink, args=(listener,), daemon=True).start()
    print("ready", flush=True)
    frames = 0
    while True:
        data, peer = udp.recvfrom(2048)
        kind = data[:1]
        if kind == _PING:
            udp.sendto(data, peer)
        elif kind == _FLOOD:
            frames += 1
        elif kind == _COUNT:
            udp.sendto(frames.to_bytes(8, "big"), peer)
        elif kind == _QUIT:
            return


def _client(address: str, total: int, pings: int, frames: int) -> None:
    """Run the three measurements against `_server` at `address`; print one JSON line."""
    stream = memoryview(os.urandom(total))      # no period a lost or repeated piece hides in
    want = hashlib.sha256(stream).hexdigest()
    chunk = 1 << 16
    with socket.create_connection((address, _PORT), timeout=60) as conn:
        start = time.perf_counter()
        for offset in range(0, total, chunk):
            conn.sendall(stream[offset:offset + chunk])
        conn.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < 8 and (piece := conn.recv(8 - len(ack))):
            ack += piece
        seconds = time.perf_counter() - start
        digest = b""
        while len(digest) < 32 and (piece := conn.recv(32 - len(digest))):
            digest += piece
    received = int.from_bytes(ack, "big") if len(ack) == 8 else -1

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect((address, _PORT))
    udp.settimeout(1.0)
    rtts: list[float] = []
    lost = 0
    payload = _PING + bytes(63)
    for i in range(pings):
        probe = payload[:1] + i.to_bytes(4, "big") + payload[5:]
        begin = time.perf_counter()
        udp.send(probe)
        try:
            while udp.recv(2048) != probe:   # a late answer to an earlier probe
                pass
        except TimeoutError:
            lost += 1
            continue
        rtts.append(time.perf_counter() - begin)

    frame = _FLOOD + bytes(17)
    begin = time.perf_counter()
    for _ in range(frames):
        # ENOBUFS: the queue is full; the frame is dropped, as one lost on the way would be
        with suppress(OSError):
            udp.send(frame)
    flood_seconds = time.perf_counter() - begin
    time.sleep(0.2)        # let the last frames drain before asking for the count
    arrived = -1
    for _ in range(10):    # the query or its answer may be dropped behind the flood
        udp.send(_COUNT)
        try:
            answer = udp.recv(2048)
        except TimeoutError:
            continue
        if len(answer) == 8:
            arrived = int.from_bytes(answer, "big")
            break
    udp.send(_QUIT)
    print(json.dumps({"bytes": received, "sent": total, "sha256_ok": digest.hex() == want,
                      "seconds": seconds, "rtts": rtts,
                      "lost": lost, "frames_sent": frames, "frames": arrived,
                      "flood_seconds": flood_seconds}), flush=True)


def _worker_main(argv: Sequence[str]) -> None:
    role, address, *args = argv
    if role == "server":
        _server(address)
    else:
        total, pings, frames = (int(a) for a in args)
        _client(address, total, pings, frames)


# --------------------------------------------------------------------------- parent


class BenchError(click.ClickException):
    """The benchmark could not set up or measure a pair."""


def unavailable() -> str:
    """Why the benchmark cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs ip (make deps installs iproute2)"
    return ""


def ip(*args: str) -> None:
    """Run ``ip ARGS`` (iproute2); a failure raises `BenchError` with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _addresses(ns_server: str, dev_server: str, ns_client: str, dev_client: str) -> None:
    for ns, dev, address in ((ns_server, dev_server, _SERVER_IP),
                             (ns_client, dev_client, _CLIENT_IP)):
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")


class Processes:
    """Child processes started by the run, each ended (SIGINT, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []

    def start(self, args: list[str]) -> subprocess.Popen[str]:
        """Start `args` as a child whose stdout is read (`ready`)."""
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 text=True)
        self.children.append(child)
        return child

    def ready(self, child: subprocess.Popen[str], what: str) -> str:
        """The first line of `child`, which must say ``ready``; else `BenchError`."""
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith("ready"):
            raise BenchError(f"{what} said {line.strip()!r} (status {child.poll()})")
        return line.strip()

    def close(self) -> None:
        """End every child: SIGINT, then SIGKILL after a grace period."""
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            if child.stdout is not None:
                child.stdout.close()


@contextmanager
def _namespaces(*names: str) -> Iterator[None]:
    made: list[str] = []
    try:
        for ns in names:
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def measure(procs: Processes, ns_server: str, ns_client: str, total: int, pings: int,
            frames: int) -> dict[str, Any]:
    """One pair's figures: a server in `ns_server` and a client in `ns_client` (both started
    through `procs`) move `total` TCP bytes, `pings` UDP round trips and `frames` small frames.

    Raises:
        BenchError: a worker failed or its figures are incomplete or wrong.
    """
    me = [sys.executable, "-m", "ringkit.bench.net"]
    server = procs.start(["ip", "netns", "exec", ns_server, *me, "server", _SERVER_IP])
    procs.ready(server, "the benchmark server")
    return run_client(procs, ["ip", "netns", "exec", ns_client], _SERVER_IP, total, pings,
                      frames)


def run_client(procs: Processes, prefix: list[str], address: str, total: int, pings: int,
               frames: int) -> dict[str, Any]:
    """Run the benchmark client (through `procs`, its command line after `prefix`, e.g. ``ip
    netns exec NS``) against a server already listening at `address` (``python -m
    ringkit.bench.net server ADDRESS``, which ends when the client is done); return its
    figures once `check_result` passed them."""
    client = procs.start([*prefix, sys.executable, "-m", "ringkit.bench.net", "client",
                          address, str(total), str(pings), str(frames)])
    assert client.stdout is not None
    line = client.stdout.readline()
    if not line:
        raise BenchError(f"the benchmark client exited ({client.wait()})")
    result: dict[str, Any] = json.loads(line)
    with suppress(subprocess.TimeoutExpired):
        client.wait(timeout=30)     # it exits after its line; `procs` ends it otherwise
    check_result(result, total)
    return result


def check_result(result: dict[str, Any], total: int) -> None:
    """Refuse a client's figures that are incomplete or whose TCP bytes arrived wrong.

    Raises:
        BenchError: fewer than `total` TCP bytes arrived, their SHA-256 differs from what was
            sent, no UDP round trip came back, or the frame count never arrived.
    """
    if result["bytes"] != total:
        raise BenchError(f"{result['bytes']} of {total} TCP bytes arrived")
    if not result["sha256_ok"]:
        raise BenchError(f"the {total} TCP bytes arrived, but not the bytes sent (SHA-256 "
                         f"differs)")
    if not result["rtts"]:
        raise BenchError("no UDP round trip came back")
    if result["frames"] < 0:
        raise BenchError("the server never answered the frame count")


def _netif_pair(procs: Processes, directory: str, tag: str,
                offload: bool = True) -> tuple[str, str]:
    """A simulated guest, its vif backend and frontend on TAPs in two namespaces (`offload`:
    the frontend asks for GSO and checksum offload, ``ringkit net attach --offload``)."""
    from ..sim import SimXen

    async def guest() -> int:
        async with SimXen.attach(directory) as xen:
            return await xen.create_domain(f"net-bench-{tag}")

    domid = anyio.run(guest)
    ns_back, ns_front = f"rkbn{tag}b", f"rkbn{tag}f"
    tap_back, tap_front = f"rkbvif{tag}", f"rkbeth{tag}"
    ringkit = [sys.executable, "-c", "from ringkit.cli import main; main()", "net"]
    backend = procs.start([*ringkit, "serve", "--dir", directory, "--frontend", str(domid),
                           "--tap", tap_back, "--once"])
    procs.ready(backend, "the vif backend")
    ip("link", "set", tap_back, "netns", ns_back)
    frontend = procs.start([*ringkit, "attach", "--dir", directory, "--domain", str(domid),
                            "--tap", tap_front, "--offload" if offload else "--no-offload"])
    procs.ready(frontend, "the vif frontend")
    ip("link", "set", tap_front, "netns", ns_front)
    _addresses(ns_back, tap_back, ns_front, tap_front)
    return ns_back, ns_front


def run(total: int, pings: int, frames: int,
        offload: bool = True) -> dict[str, dict[str, Any]]:
    """One measurement per column ("netif" through ringkit, "veth" the baseline); `offload`:
    GSO negotiated on the netif pair."""
    why = unavailable()
    if why:
        raise BenchError(f"ringkit bench net {why}")
    tag = str(os.getpid() % 100000)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rk-bench-net-", dir="/tmp") as directory, \
            _namespaces(f"rkbn{tag}b", f"rkbn{tag}f", f"rkbv{tag}s", f"rkbv{tag}c"):
        procs = Processes()
        try:
            sim = procs.start([sys.executable, "-m", "ringkit.sim", "serve", "--dir",
                               directory])
            procs.ready(sim, "the simulated Xen")
            ns_back, ns_front = _netif_pair(procs, directory, tag, offload)
            results["netif"] = measure(procs, ns_back, ns_front, total, pings, frames)
        finally:
            procs.close()
        ns_s, ns_c = f"rkbv{tag}s", f"rkbv{tag}c"
        ip("link", "add", f"rkbv{tag}a", "netns", ns_s, "type", "veth", "peer", "name",
            f"rkbv{tag}z", "netns", ns_c)
        _addresses(ns_s, f"rkbv{tag}a", ns_c, f"rkbv{tag}z")
        procs = Processes()
        try:
            results["veth"] = measure(procs, ns_s, ns_c, total, pings, frames)
        finally:
            procs.close()
    return results


def figures(result: dict[str, Any]) -> dict[str, float]:
    """A client's result as figures: TCP MB/s, round-trip median and p99 in us, frames/s."""
    rtts = sorted(result["rtts"])
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    return {"tcp": result["bytes"] / result["seconds"] / 1e6,
            "rtt_median": statistics.median(rtts) * 1e6, "rtt_p99": p99 * 1e6,
            "fps": result["frames"] / result["flood_seconds"]}


ROWS = (("tcp", "TCP, one connection (MB/s)", ".1f"),
        ("rtt_median", "UDP round trip median (us)", ".0f"),
        ("rtt_p99", "UDP round trip p99 (us)", ".0f"),
        ("fps", "18-byte UDP frames/s", ",.0f"))
"""(key, label, format) of each figure `figures` gives, in the order printed."""


@click.command("net")
@click.option("--mib", default=256, show_default=True, type=click.IntRange(min=1),
              help="MiB to send over the TCP connection.")
@click.option("--pings", default=500, show_default=True, type=click.IntRange(min=1),
              help="UDP round trips to time.")
@click.option("--frames", default=200_000, show_default=True, type=click.IntRange(min=1),
              help="Small UDP frames to send for the frame rate.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Keep each figure's best of this many runs.")
@click.option("--offload/--no-offload", default=True, show_default=True,
              help="Negotiate GSO and checksum offload on the netif pair (the frontend's "
                   "ringkit net attach --offload).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write the figures and load averages to this JSON file.")
def command(mib: int, pings: int, frames: int, repeat: int, offload: bool,
            json_path: str | None) -> None:
    """ringkit netfront <-> netback on the simulated Xen vs a veth pair, each between two
    network namespaces (as root): TCP throughput, UDP round trips, small-frame rate, side by
    side with the ratio."""
    load_before = os.getloadavg()
    best: dict[str, dict[str, float]] = {}
    lost: dict[str, int] = {}
    arrived: dict[str, int] = {}
    for _ in range(repeat):
        for name, result in run(mib << 20, pings, frames, offload).items():
            lost[name] = lost.get(name, 0) + result["lost"]
            arrived[name] = arrived.get(name, 0) + result["frames"]
            got = figures(result)
            kept = best.setdefault(name, got)
            for key, value in got.items():
                better = min if key.startswith("rtt") else max
                kept[key] = better(kept[key], value)
    load = os.getloadavg()
    click.echo(f"net benchmark: {os.cpu_count()} CPUs (load average {load_before[0]:.2f} "
               f"before, {load[0]:.2f} at the end), {mib} MiB TCP, {pings} UDP round trips, "
               f"{frames} small frames, best of {repeat}, GSO {'on' if offload else 'off'}")
    click.echo(f"{'':28} {'netif (sim)':>12} {'veth':>12} {'netif/veth':>11}")
    for key, label, spec in ROWS:
        ours, base = best["netif"][key], best["veth"][key]
        click.echo(f"{label:28} {ours:>12{spec}} {base:>12{spec}} {ours / base:>10.2f}x")
    click.echo(f"UDP round trips lost: netif {lost['netif']}, veth {lost['veth']}; small "
               f"frames arrived: netif {arrived['netif']}, veth {arrived['veth']} of "
               f"{frames * repeat} sent")
    if json_path:
        record = {"benchmark": "net", "cpus": os.cpu_count(), "offload": offload,
                  "mib": mib, "pings": pings,
                  "frames": frames, "repeat": repeat, "load_average_before": load_before,
                  "load_average_after": load, "lost": lost, "frames_arrived": arrived,
                  "rows": [{"key": key, "label": label, "netif": best["netif"][key],
                            "veth": best["veth"][key]} for key, label, _ in ROWS]}
        Path(json_path).write_text(json.dumps(record, indent=1) + "\n")


__all__ = ("ROWS", "BenchError", "Processes", "check_result", "command", "figures", "ip",
           "measure", "run", "run_client", "unavailable")


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
