"""vchan benchmark under real Xen: ringkit's vchan against libxenvchan itself, tool for tool.

Both columns are the same job -- a vchan bridged to stdin/stdout at each end, the server's stdin
carried to the client's stdout -- done by Xen's ``vchan-socket-proxy`` (C, libxenvchan) and by
``ringkit vchan`` (the same arguments and wire).  Both ends run in this domain (a loopback vchan:
the server grants to its own domain, as libxenvchan allows), so the figures compare the two
implementations on one machine, pipes and all.  The proxy asks for libxenvchan's smallest rings
(1 KiB and 2 KiB in the control page), so ringkit's columns do too, sleeping and with both
ends polling (`--poll-us`); a last column shows ringkit with 64 KiB rings, which the proxy
cannot ask for.

The parent writes ``--mib`` MiB into the server's stdin and reads them back from the client's
stdout, timing the first write to the last byte read; it checks every byte.  It never closes
the server's input early: vchan-socket-proxy closes the vchan as soon as its input ends, and its
client then discards what it has not read yet.  Run it in dom0 under the harness::

    ringkit xen-vm run -- .venv/bin/ringkit bench vchan-xen

Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import click

PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
"""Xen's vchan-to-socket proxy (Debian's xen-utils-4.17)."""
_CHUNK = 1 << 16
_DEADLINE = 600.0
POLL_US = 1000
"""Polling window of the polling column (both ends)."""
"""Seconds one transfer may take before the benchmark gives up on it."""


def _pattern(total: int) -> bytes:
    block = bytes((i * 7 + 3) & 0xFF for i in range(4093))   # a period no ring size divides
    return (block * (total // len(block) + 1))[:total]


def _ringkit_argv(mode: str, path: str, ring: int, poll_us: int = 0) -> list[str]:
    argv = [sys.executable, "-c", "from ringkit.cli import main; main()", "vchan", "-m", mode,
            "--poll-us", str(poll_us)]
    if mode == "server" and ring:
        argv += ["--read-min", str(ring), "--write-min", str(ring)]
    return [*argv, "0", path, "-"]


def _ringkit_polling_argv(mode: str, path: str, ring: int) -> list[str]:
    return _ringkit_argv(mode, path, ring, POLL_US)


def _proxy_argv(mode: str, path: str, ring: int) -> list[str]:
    return [PROXY, "-m", mode, "0", path, "-"]


Argv = Callable[[str, str, int], list[str]]
"""(mode, xenstore path, ring bytes) -> the command line of one end."""


def transfer(make_argv: Argv, path: str, total: int, ring: int) -> float:
    """Seconds to carry `total` bytes from a server's stdin to its client's stdout (MB/s is
    the caller's business); raises ClickException on a wrong or short transfer."""
    data = _pattern(total)
    server = subprocess.Popen(make_argv("server", path, ring), stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL)
    client: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_node(f"{path}/event-channel", server)
        client = subprocess.Popen(make_argv("client", path, ring), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        assert server.stdin is not None and client.stdout is not None
        failure: list[BaseException] = []

        def feed() -> None:
            assert server.stdin is not None
            try:
                view = memoryview(data)
                for offset in range(0, total, _CHUNK):
                    server.stdin.write(view[offset:offset + _CHUNK])
                server.stdin.flush()
            except BaseException as exc:  # reported by the reader's check
                failure.append(exc)

        received = bytearray()
        start = time.perf_counter()
        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        deadline = time.monotonic() + _DEADLINE
        while len(received) < total and time.monotonic() < deadline:
            piece = os.read(client.stdout.fileno(), min(total - len(received), 1 << 20))
            if not piece:
                break
            received += piece
        seconds = time.perf_counter() - start
        writer.join(timeout=10)
        if received != data:
            raise click.ClickException(
                f"{make_argv('server', path, ring)[0]}: {len(received)} of {total} bytes "
                f"arrived{' intact' if data.startswith(received) else ', some wrong'}"
                f"{f' (writer: {failure[0]!r})' if failure else ''}")
        return seconds
    finally:
        for proc in (client, server):
            if proc is None:
                continue
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        subprocess.run(["xenstore-rm", path], capture_output=True, check=False)


def _wait_for_node(node: str, server: subprocess.Popen[bytes]) -> None:
    """Wait until the server has published `node` (its offer is ready)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException(f"the vchan server exited ({server.returncode}) "
                                       f"before offering")
        if subprocess.run(["xenstore-read", node], capture_output=True,
                          check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise click.ClickException(f"no {node} within 60 s")


COLUMNS: Sequence[tuple[str, Argv, int]] = (
    ("vchan-socket-proxy", _proxy_argv, 0),
    ("ringkit vchan", _ringkit_argv, 0),
    ("ringkit, polling", _ringkit_polling_argv, 0),
    ("ringkit, 64K rings", _ringkit_argv, 65536),
)


@click.command("vchan-xen")
@click.option("--mib", default=32, show_default=True, type=click.IntRange(min=1),
              help="MiB to carry per run.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Keep each column's best of this many runs.")
def command(mib: int, repeat: int) -> None:
    """ringkit vchan vs libxenvchan (vchan-socket-proxy) under real Xen: stdin of a server to
    stdout of its client, both in this domain, best of --repeat runs, with the ratio."""
    if not os.path.exists("/dev/xen/gntalloc"):
        raise click.ClickException("needs real Xen (/dev/xen/gntalloc); run it in dom0 under "
                                   "`ringkit xen-vm run`")
    if not os.path.exists(PROXY):
        raise click.ClickException(f"{PROXY} is missing (Debian's xen-utils-4.17)")
    total = mib << 20
    best: dict[str, float] = {}
    for round_ in range(repeat):
        for index, (name, make_argv, ring) in enumerate(COLUMNS):
            path = f"/local/domain/0/data/vchan/0/{9000 + round_ * 10 + index}"
            rate = total / transfer(make_argv, path, total, ring) / 1e6
            best[name] = max(best.get(name, 0.0), rate)
    load = os.getloadavg()
    click.echo(f"vchan under real Xen (dom0 loopback), {os.cpu_count()} CPUs, {mib} MiB per run "
               f"server stdin -> client stdout, best of {repeat}, load average "
               f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    base = best["vchan-socket-proxy"]
    for name, make_argv, ring in COLUMNS:
        rings = "64 KiB rings" if ring else "1 KiB/2 KiB in-page rings"
        if make_argv is _ringkit_polling_argv:
            rings += f", both ends polling {POLL_US} us"
        click.echo(f"  {name:22} {best[name]:8.1f} MB/s  {best[name] / base:5.2f}x the C proxy"
                   f"  ({rings})")


__all__ = ("COLUMNS", "POLL_US", "PROXY", "Argv", "command", "transfer")
