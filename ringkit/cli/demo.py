"""``ringkit demo``: ringkit end to end on a simulated Xen, with nothing to set up."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .._errors import RingkitError

_RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]
_BANNER = "Welcome to the ringkit guest -- this line crossed a Xen console ring"


class DemoError(RingkitError):
    """A demo step did not do what it should."""


class Command:
    """A ``ringkit`` command running as its own process; its stdout is read line by line."""

    def __init__(self, args: list[str], process: anyio.abc.Process) -> None:
        self.args = args
        self.process = process
        self._buffer = b""
        self.lines: list[str] = []

    @classmethod
    async def start(cls, console: Console, *args: str) -> Command:
        console.print(f"  [dim]$ ringkit {shlex.join(args)}[/dim]")
        process = await anyio.open_process(
            [*_RINGKIT, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None
        )
        return cls(list(args), process)

    async def line(self) -> str:
        """The next line it prints."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self.process.stdout.receive()
            except anyio.EndOfStream:
                code = await self.process.wait()
                raise DemoError(
                    f"`ringkit {shlex.join(self.args)}` exited (status {code}) early"
                ) from None
        raw, self._buffer = self._buffer.split(b"\n", 1)
        text = raw.decode(errors="replace").strip()
        self.lines.append(text)
        return text

    async def finish(self) -> list[str]:
        """Wait for it to exit successfully; return the lines it printed."""
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self._buffer += chunk
        self.lines += [x.decode().strip() for x in self._buffer.splitlines() if x.strip()]
        self._buffer = b""
        code = await self.process.wait()
        if code != 0:
            raise DemoError(f"`ringkit {shlex.join(self.args)}` exited with status {code}")
        return self.lines

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.process.aclose()


def _ok(console: Console, text: str) -> None:
    console.print(f"[green]✓[/green] {text}")


async def _block(console: Console, directory: Path, guest: int, size_mib: int) -> None:
    console.print("\n[bold]Block device[/bold]: a disk image served by dom0 to the guest")
    image = directory / "disk.img"
    with image.open("wb") as f:
        f.truncate(max(64, size_mib) << 20)
    _ok(console, f"created a {max(64, size_mib)} MiB sparse disk image {image}")
    d, g = str(directory), str(guest)
    backend = await Command.start(
        console, "block", "serve", str(image), "--dir", d, "--frontend", g, "--once"
    )
    frontend: Command | None = None
    try:
        ready = await backend.line()
        if not ready.startswith("ready"):
            raise DemoError(f"the block backend said {ready!r}")
        _ok(console, f"backend process {backend.process.pid} (dom0) waits for the guest")
        frontend = await Command.start(
            console, "block", "attach", "--dir", d, "--domain", g, "--check", f"{size_mib}M"
        )
        result = "\n".join(await frontend.finish())
        _ok(console, f"frontend process {frontend.process.pid} (dom{guest}) connected, "
                     "wrote a pattern, flushed, read it back")
        done = await backend.finish()
    finally:
        for command in (frontend, backend):
            if command is not None:
                await command.kill()
    found = re.search(r"verified (\d+) bytes: write ([\d.]+) MiB/s, read ([\d.]+) MiB/s", result)
    if found is None:
        raise DemoError(f"the block frontend did not verify the disk: {result!r}")
    table = Table(title="blkif across two processes (ring pages + event channel)")
    for column in ("verified", "write", "read"):
        table.add_column(column, justify="right")
    table.add_row(f"{int(found[1]) >> 20} MiB", f"{found[2]} MiB/s", f"{found[3]} MiB/s")
    console.print(table)
    _ok(console, f"backend: {done[-1] if done else 'done'}; both ends closed in order")


async def _console(console: Console, directory: Path, guest: int) -> None:
    console.print("\n[bold]Console[/bold]: the guest's PV console, served by dom0")
    log = directory / "guest-console.log"
    d, g = str(directory), str(guest)
    backend = await Command.start(
        console, "console", "serve", "--dir", d, "--frontend", g, "--log", str(log),
        "--drop-unread", "--once",
    )
    frontend: Command | None = None
    try:
        ready = await backend.line()
        if not ready.startswith("ready"):
            raise DemoError(f"the console backend said {ready!r}")
        pty = re.search(r"pty (\S+)", ready)
        _ok(console, f"backend process {backend.process.pid} (dom0) serves the console"
                     + (f" on {pty[1]} (a terminal could attach there)" if pty else ""))
        frontend = await Command.start(
            console, "console", "attach", "--dir", d, "--domain", g, "--banner", _BANNER
        )
        await frontend.finish()
        await backend.finish()
    finally:
        for command in (frontend, backend):
            if command is not None:
                await command.kill()
    text = log.read_text(errors="replace").strip()
    if text != _BANNER:
        raise DemoError(f"the console log holds {text!r} instead of the banner")
    console.print(Panel(text, title=f"{log.name} (written by the backend)", expand=False))
    _ok(console, "the banner went through the console ring, byte for byte")


_HOST_IP, _GUEST_IP = "10.77.21.1", "10.77.21.2"


def _net_unavailable() -> str:
    """Why the network step cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TAP devices)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    missing = [tool for tool in ("ip", "ping") if shutil.which(tool) is None]
    return f"needs {' and '.join(missing)} (make deps installs iproute2, iputils-ping)" \
        if missing else ""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoError(f"`ip {shlex.join(args)}` failed: {done.stderr.strip()}")


async def net_step(console: Console, directory: Path, guest: int, *,
               frontend_stopped: bool = False) -> bool:
    """A ping from a namespace behind dom0's vif backend to one behind the guest's frontend;
    whether it got its replies.  `frontend_stopped`: the frontend process is stopped (SIGSTOP)
    before the ping -- the demo's own negative control, for its test."""
    console.print("\n[bold]Network[/bold]: a ping through the guest's vif, between two network "
                  "namespaces")
    why = _net_unavailable()
    if why:
        console.print(f"[yellow]-[/yellow] skipped: {why}")
        return False
    tag = str(os.getpid() % 100000)
    host_ns, guest_ns = f"rkdemo{tag}h", f"rkdemo{tag}g"
    host_tap, guest_tap = f"rkdvif{tag}", f"rkdeth{tag}"
    d, g = str(directory), str(guest)
    backend: Command | None = None
    frontend: Command | None = None
    try:
        for ns in (host_ns, guest_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        backend = await Command.start(console, "net", "serve", "--dir", d, "--frontend", g,
                                      "--tap", host_tap, "--once")
        ready = await backend.line()
        if not ready.startswith("ready"):
            raise DemoError(f"the net backend said {ready!r}")
        for args in (("link", "set", host_tap, "netns", host_ns),
                     ("-n", host_ns, "addr", "add", f"{_HOST_IP}/24", "dev", host_tap),
                     ("-n", host_ns, "link", "set", host_tap, "up")):
            _ip(*args)
        frontend = await Command.start(console, "net", "attach", "--dir", d, "--domain", g,
                                       "--tap", guest_tap)
        ready = await frontend.line()
        if not ready.startswith("ready"):
            raise DemoError(f"the net frontend said {ready!r}")
        for args in (("link", "set", guest_tap, "netns", guest_ns),
                     ("-n", guest_ns, "addr", "add", f"{_GUEST_IP}/24", "dev", guest_tap),
                     ("-n", guest_ns, "link", "set", guest_tap, "up")):
            _ip(*args)
        _ok(console, f"backend process {backend.process.pid} (dom0) bridges the vif to TAP "
                     f"{host_tap} in namespace {host_ns} ({_HOST_IP}); frontend process "
                     f"{frontend.process.pid} (dom{guest}) puts its frames on TAP {guest_tap} in "
                     f"{guest_ns} ({_GUEST_IP})")
        if frontend_stopped:
            frontend.process.send_signal(signal.SIGSTOP)
        console.print(f"  [dim]$ ip netns exec {host_ns} ping -c 3 -W 2 {_GUEST_IP}[/dim]")
        ping = await anyio.run_process(["ip", "netns", "exec", host_ns, "ping", "-c", "3",
                                        "-W", "2", _GUEST_IP], check=False)
        if frontend_stopped:
            frontend.process.send_signal(signal.SIGCONT)
        out = ping.stdout.decode(errors="replace")
        counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
        got = f"{counts[2]}/{counts[1]}" if counts else "no"
        if ping.returncode == 0:
            _ok(console, f"ping {_GUEST_IP}: {got} replies"
                         + (f" (avg {rtt[1]} ms)" if rtt else "")
                         + ": ICMP and ARP crossed the netif tx and rx rings both ways")
        else:
            console.print(f"[red]✗[/red] ping {_GUEST_IP}: {got} replies: nothing came back "
                          "through the vif")
        frontend.process.send_signal(signal.SIGINT)  # it closes in order
        with anyio.move_on_after(10):
            await frontend.process.wait()
        with anyio.move_on_after(10):
            await backend.process.wait()
        return ping.returncode == 0
    finally:
        for command in (frontend, backend):
            if command is not None:
                await command.kill()
        for ns in (host_ns, guest_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _leak_table(leaks: Any) -> Table:
    table = Table(title="what the simulated Xen still holds")
    table.add_column("resource")
    table.add_column("count", justify="right")
    for name in ("grants", "maps", "ports", "page_files", "eventfds", "watches", "transactions"):
        value = getattr(leaks, name)
        table.add_row(name, f"[red]{value}[/red]" if value else "0")
    return table


async def _run(console: Console, size_mib: int) -> bool:
    from ..sim import SimXen

    async with SimXen.start() as xen:
        _ok(console, f"simulated Xen running in {xen.directory}")
        guest = await xen.create_domain("guest")
        _ok(console, f"created domain 'guest' (domid {guest})")
        await _block(console, xen.directory, guest, size_mib)
        await _console(console, xen.directory, guest)
        pinged = await net_step(console, xen.directory, guest)
        console.print("\n[bold]Teardown[/bold]")
        await xen.destroy_domain(guest)
        _ok(console, "destroyed the guest domain (@releaseDomain fired)")
        leaks = await xen.settled_leaks()
        console.print(_leak_table(leaks))
        if leaks:
            console.print("[red bold]resources leaked[/red bold]")
            return False
        _ok(console, "nothing leaked")
        return pinged or bool(_net_unavailable())


@click.command()
@click.option("--size", "size_mib", default=32, show_default=True,
              type=click.IntRange(min=1, max=4096), metavar="MIB",
              help="How many MiB the block frontend writes and reads back.")
def demo(size_mib: int) -> None:
    """Show ringkit working end to end, on a simulated Xen (no Xen or root needed).

    \b
    1. starts a simulated Xen in a temporary directory and creates a guest domain;
    2. block: `ringkit block serve` (the backend, in dom0) and `ringkit block attach`
       (the frontend, in the guest) run as two processes that share ring pages and an
       event channel; the frontend writes a pattern, reads it back, checks it and reports
       the throughput;
    3. console: `ringkit console serve` and `ringkit console attach` pass a banner through
       the guest's console ring into a log file;
    4. network (as root): `ringkit net serve --tap` and `ringkit net attach --tap`, each TAP
       in a network namespace of its own (both removed at the end), and a ping across the
       guest's vif;
    5. destroys the guest and shows that the simulated Xen holds nothing any more.

    Every command it runs is printed, so you can run them yourself afterwards.
    """
    console = Console()
    console.rule("[bold]ringkit demo")
    try:
        ok = anyio.run(_run, console, size_mib)
    except RingkitError as exc:
        raise click.ClickException(str(exc)) from exc
    if not ok:
        raise SystemExit(1)
    console.rule("[bold green]done")


__all__ = ("Command", "DemoError", "demo", "net_step")
