"""``ringkit demo``: ringkit end to end on a simulated Xen, with nothing to set up."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import anyio.abc
import click
from rich.console import Console
from rich.table import Table

from .._errors import RingkitError

_PEER = "ringkit.cli._demo_peer"


class DemoError(RingkitError):
    """A demo step did not do what it should."""


class Peer:
    """A device end running in its own process, reporting JSON events on stdout."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        self.name = name
        self.process = process
        self._buffer = b""

    @classmethod
    async def start(cls, name: str, *args: str) -> Peer:
        process = await anyio.open_process(
            [sys.executable, "-m", _PEER, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        return cls(name, process)

    async def expect(self, event: str) -> dict[str, Any]:
        """The next event, which must be `event`."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self.process.stdout.receive()
            except anyio.EndOfStream:
                code = await self.process.wait()
                raise DemoError(
                    f"the {self.name} exited (status {code}) before reporting {event!r}"
                ) from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise DemoError(f"the {self.name} reported {message} instead of {event!r}")
        return message

    async def finish(self) -> None:
        code = await self.process.wait()
        if code != 0:
            raise DemoError(f"the {self.name} exited with status {code}")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()
        await self.process.aclose()


def _ok(console: Console, text: str) -> None:
    console.print(f"[green]✓[/green] {text}")


async def _echo_workload(console: Console, xen: Any, guest: int, messages: int) -> None:
    from ..device import DeviceAddress, create_device, destroy_device

    directory = str(xen.directory)
    address = DeviceAddress("echo", frontend_id=guest, backend_id=0, devid=0)
    async with xen.connect(0) as dom0:
        await create_device(dom0.store, address)
        _ok(console, f"toolstack wrote {address.frontend_path} and {address.backend_path}")
        backend = await Peer.start("echo backend", "echo-backend", directory, str(guest))
        frontend: Peer | None = None
        try:
            ready = await backend.expect("ready")
            _ok(console, f"backend process {backend.process.pid} in dom0: {ready['state']}")
            frontend = await Peer.start(
                "echo frontend", "echo-frontend", directory, str(guest), str(messages)
            )
            connected = await frontend.expect("connected")
            _ok(
                console,
                f"frontend process {frontend.process.pid} in dom{guest}: Connected "
                f"({connected['entries']}-slot ring)",
            )
            result = await frontend.expect("result")
            await frontend.expect("closed")
            await frontend.expect("released")
            await frontend.finish()
            closed = await backend.expect("closed")
            await backend.expect("released")
            await backend.finish()
        finally:
            for peer in (frontend, backend):
                if peer is not None:
                    await peer.kill()
        if result["good"] != result["count"]:
            raise DemoError(f"{result['count'] - result['good']} echo answers were wrong")
        rate = result["count"] / max(result["seconds"], 1e-9)
        table = Table(title="echo device (examples/echo.py) across two processes")
        table.add_column("requests", justify="right")
        table.add_column("verified", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("requests/s", justify="right")
        table.add_row(
            str(result["count"]), str(result["good"]), f"{result['seconds']:.3f}", f"{rate:,.0f}"
        )
        console.print(table)
        _ok(console, f"orderly close: both ends {closed['state']}")
        await destroy_device(dom0.store, address)


def _leak_table(leaks: Any) -> Table:
    table = Table(title="what the simulated Xen still holds")
    table.add_column("resource")
    table.add_column("count", justify="right")
    for name in ("grants", "maps", "ports", "page_files", "eventfds", "watches", "transactions"):
        value = getattr(leaks, name)
        table.add_row(name, f"[red]{value}[/red]" if value else "0")
    return table


async def _run(console: Console, messages: int) -> bool:
    from ..sim import SimXen

    async with SimXen.start() as xen:
        _ok(console, f"simulated Xen running in {xen.directory}")
        guest = await xen.create_domain("guest")
        _ok(console, f"created domain 'guest' (domid {guest})")
        await _echo_workload(console, xen, guest, messages)
        await xen.destroy_domain(guest)
        _ok(console, "destroyed the guest domain (@releaseDomain fired)")
        leaks = await xen.settled_leaks()
        console.print(_leak_table(leaks))
        if leaks:
            console.print("[red bold]resources leaked[/red bold]")
            return False
        _ok(console, "nothing leaked")
        return True


@click.command()
@click.option(
    "--messages",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many echo requests the frontend sends.",
)
def demo(messages: int) -> None:
    """Show ringkit working end to end, on a simulated Xen (no Xen or root needed).

    It starts a simulated Xen in a temporary directory, creates a guest domain, plugs a
    device into it the way `xl` does, runs the device's backend (in dom0) and frontend (in the
    guest) as two separate processes that talk through granted ring pages and an event channel,
    checks every answer and prints the throughput, then tears everything down and shows that
    the simulated Xen holds nothing any more.
    """
    console = Console()
    console.rule("[bold]ringkit demo")
    try:
        ok = anyio.run(_run, console, messages)
    except RingkitError as exc:
        raise click.ClickException(str(exc)) from exc
    if not ok:
        raise SystemExit(1)
    console.rule("[bold green]done")


if __name__ == "__main__":  # pragma: no cover
    demo()
