"""The domU's half of tests/xen/test_interop_net.py (run as the domU's command).

Part A -- Linux's xen-netfront against ringkit's netback in dom0: find the interface with the
vif's MAC, give it an address, ping dom0's TAP, then serve one TCP exchange (`net_exchange`).
Then switch this kernel's frontend autoprobe off, so that Linux's netfront leaves the next vif
to ringkit.

Part B -- ringkit's netfront against Linux's xen-netback in dom0: ``ringkit net attach --tap``
(a child process) on vif 1, the TAP given the vif's MAC and an address, ping dom0's
``vif<domid>.1``, serve one TCP exchange, stop the child.

Progress and results go to dom0 through xenstore (``data/net-*``, which a domU may write);
the exit status is 0 when every step here ran.  dom0 judges the results.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from net_exchange import serve_once

STEP_SECONDS = 300
PORT = 5201


def say(message: str) -> None:
    print(f"guest: {message}", flush=True)


def put(key: str, value: str) -> None:
    subprocess.run(["xenstore-write", f"data/{key}", value], check=True, timeout=60)


def get(key: str) -> str | None:
    proc = subprocess.run(["xenstore-read", key], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


def phase(name: str) -> None:
    put("net-phase", name)
    say(f"phase {name}")


def run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=STEP_SECONDS)
    if proc.returncode != 0:
        raise SystemExit(f"guest: {' '.join(argv)} exited {proc.returncode}: "
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_for(what: str, check: object) -> object:
    end = time.monotonic() + STEP_SECONDS
    while time.monotonic() < end:
        got = check()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.25)
    raise SystemExit(f"guest: no {what} after {STEP_SECONDS} s")


def interface_with(mac: str) -> str | None:
    for dev in Path("/sys/class/net").iterdir():
        try:
            if (dev / "address").read_text().strip().lower() == mac.lower():
                return dev.name
        except OSError:
            continue
    return None


def ping(address: str) -> str:
    """busybox ping, three echoes; the summary line goes to dom0, which judges it."""
    proc = subprocess.run(["ping", "-c", "3", "-W", "10", address], capture_output=True,
                          text=True, timeout=STEP_SECONDS)
    lines = [line for line in proc.stdout.splitlines() if "packet loss" in line]
    return f"rc={proc.returncode} {lines[-1] if lines else proc.stdout + proc.stderr}"


def kernel_says(*words: str) -> str:
    """This kernel's log lines naming any of `words` (netfront's complaints), last first,
    cut to fit a xenstore value."""
    lines = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:
                continue                    # EPIPE: records overwritten meanwhile
            text = record.split(";", 1)[-1].split("\n")[0].strip()
            if any(word in text for word in words):
                lines.append(text)
    finally:
        os.close(fd)
    return " | ".join(reversed(lines))[:2000]


def counters(dev: str) -> str:
    stats = Path(f"/sys/class/net/{dev}/statistics")
    snmp = Path("/proc/net/snmp").read_text().splitlines()
    tcp = [line for line in snmp if line.startswith("Tcp:")]
    tcp_fields = dict(zip(tcp[0].split()[1:], tcp[1].split()[1:], strict=False)) if tcp else {}
    tcp_text = " ".join(f"tcp {name}={tcp_fields.get(name)}"
                        for name in ("InSegs", "InCsumErrors", "InErrs"))
    kernel = kernel_says("vif", "netfront", "Grant", "isabled", dev)
    return f"kernel: {kernel}; {tcp_text} " + " ".join(
        f"{name}={(stats / name).read_text().strip()}"
        for name in ("rx_packets", "rx_errors", "rx_dropped", "tx_packets", "tx_errors",
                     "tx_dropped"))


def serve(prefix: str, address: str, size: int, dev: str) -> None:
    """Listen, tell dom0, serve one exchange, publish this end's report."""
    with socket.create_server((address, PORT)) as listener:
        put(f"net-{prefix}-counters", counters(dev))
        phase(f"{prefix}-listening")
        try:
            report = serve_once(listener, secrets.token_bytes(size), STEP_SECONDS)
        finally:
            put(f"net-{prefix}-counters", counters(dev))
    put(f"net-{prefix}-report", report.to_json())
    say(f"{prefix}: exchange served: {report}")


def part_a(env: dict[str, str], size: int) -> None:
    dev = wait_for("interface with the vif's MAC", lambda: interface_with(env["NET_A_MAC"]))
    assert isinstance(dev, str)
    say(f"a: Linux's netfront made {dev}")
    run("ip", "addr", "add", f"{env['NET_A_GUEST']}/24", "dev", dev)
    run("ip", "link", "set", dev, "up")
    wait_for(f"carrier on {dev}",
             lambda: Path(f"/sys/class/net/{dev}/carrier").read_text().strip() == "1")
    put("net-a-ping", ping(env["NET_A_HOST"]))
    serve("a", env["NET_A_GUEST"], size, dev)
    # The next vif is ringkit's: Linux's netfront must not bind it.
    Path("/sys/bus/xen/drivers_autoprobe").write_text("0")
    phase("a-done")


def part_b(env: dict[str, str], size: int) -> None:
    wait_for("vif 1", lambda: get("device/vif/1/backend"))
    tap = "rkvif1"
    attach = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ringkit.cli import main; "
         "sys.argv[0] = 'ringkit'; main()",
         "net", "attach", "--devid", "1", "--tap", tap, "--connect-timeout", str(STEP_SECONDS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert attach.stdout is not None
    try:
        line = attach.stdout.readline()
        say(f"b: ringkit net attach: {line.strip()}")
        if not line.startswith("ready:"):
            raise SystemExit(f"guest: ringkit net attach did not connect: {line}"
                             f"{attach.stdout.read() if attach.poll() is not None else ''}")
        run("ip", "link", "set", tap, "address", env["NET_B_MAC"])
        run("ip", "addr", "add", f"{env['NET_B_GUEST']}/24", "dev", tap)
        run("ip", "link", "set", tap, "up")
        put("net-b-ping", ping(env["NET_B_HOST"]))
        serve("b", env["NET_B_GUEST"], size, tap)
    finally:
        if attach.poll() is None:
            attach.send_signal(signal.SIGINT)
        try:
            rest = attach.communicate(timeout=STEP_SECONDS)[0]
        except subprocess.TimeoutExpired:
            attach.kill()
            rest = attach.communicate()[0]
        say(f"b: ringkit net attach exited {attach.returncode}: {rest.strip()}")
    put("net-b-attach-exit", str(attach.returncode))
    phase("b-done")


def main() -> int:
    env = dict(os.environ)
    size = int(env["NET_BYTES"])
    part_a(env, size)
    part_b(env, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
