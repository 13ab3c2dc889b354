"""``ringkit console``: serve a guest's PV console to a pty / log file, or be the guest's end."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import anyio
import click

from ._common import DIR_HELP, open_cli_domain, run_command

if TYPE_CHECKING:
    from ..frontends.console import ConsoleFrontend

_DEVID_HELP = ("Secondary console device id: device/console/<devid>.  0 is the primary "
               "console, which Xen sets up outside xenbus; Linux guests probe 1..9.")


@click.group()
def console() -> None:
    """Xen PV consoles (io/console.h): a backend that puts a guest's console on a pty and/or a
    log file, and the guest's end as a plain byte pipe.

    \b
    On a simulated Xen:
      ringkit console serve --dir /tmp/xen --frontend 1 --log guest.log &
      # prints the pty: attach with `screen /dev/pts/N`, `tmux`, or `cat /dev/pts/N`
      echo "hello from the guest" | ringkit console attach --dir /tmp/xen --domain 1
    """


@console.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--frontend", "frontend_id", required=True, type=click.IntRange(0, 0x7FEF),
              help="Domid of the guest whose console this is.")
@click.option("--domain", "domid", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid this backend runs in.")
@click.option("--devid", default=1, show_default=True, type=click.IntRange(1, 2**31 - 1),
              help=_DEVID_HELP)
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help="Append everything the guest writes to this file.")
@click.option("--pty/--no-pty", default=True, show_default=True,
              help="Offer the console on a pty a terminal can attach to.")
@click.option("--drop-unread", is_flag=True,
              help="Discard pty output nobody reads instead of making the guest wait.")
@click.option("--once", is_flag=True, help="Exit after the first guest disconnects.")
@click.option("--no-create", is_flag=True,
              help="Do not create the device's xenstore entries (a toolstack already did).")
def serve(directory: str | None, frontend_id: int, domid: int, devid: int,
          log_path: str | None, pty: bool, drop_unread: bool, once: bool,
          no_create: bool) -> None:
    """Serve the console of guest --frontend on a pty and/or a --log file.

    Writes both ends' xenstore entries first (as a toolstack would; skip with --no-create),
    prints "ready: ..." with the pty's path once it waits for the guest, then bridges bytes
    both ways until the device is removed (or, with --once, the guest leaves).
    """
    from ..backends.console import ConsoleBackend
    from ..device import DeviceAddress, create_device

    if not pty and log_path is None:
        raise click.UsageError("give --log or keep --pty: the console needs somewhere to go")

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            if not no_create:
                await create_device(dom.store, DeviceAddress("console", frontend_id,
                                                             dom.domid, devid))
            async with ConsoleBackend(
                dom, frontend_id, devid, log_path=log_path, pty=pty,
                pty_policy="drop" if drop_unread else "block",
            ) as backend:
                where = [f"pty {backend.pty_path}"] if backend.pty_path else []
                where += [f"log {log_path}"] if log_path else []
                click.echo(f"ready: console {devid} of domain {frontend_id} on "
                           f"{' and '.join(where)}")
                await backend.run(once=once)
            click.echo(f"done: {backend.generation} connection(s)")

    run_command(main)


@console.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True),
              help=DIR_HELP)
@click.option("--domain", "domid", type=click.IntRange(0, 0x7FEF),
              help="Domid this frontend runs in (the guest).")
@click.option("--backend", "backend_id", default=0, show_default=True,
              type=click.IntRange(0, 0x7FEF), help="Domid of the console backend.")
@click.option("--devid", default=1, show_default=True, type=click.IntRange(1, 2**31 - 1),
              help=_DEVID_HELP)
@click.option("--banner", help="Write this line to the console and exit, instead of copying "
                               "stdin and stdout.")
@click.option("--connect-timeout", default=30.0, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds to wait for the backend.")
def attach(directory: str | None, domid: int | None, backend_id: int, devid: int,
           banner: str | None, connect_timeout: float) -> None:
    """Be the guest's end of a console: copy stdin to it and what arrives to stdout.

    Ends at end of stdin (after the backend took every byte) with an orderly close.
    """
    from ..frontends.console import ConsoleFrontend

    async def main() -> None:
        async with open_cli_domain(directory, domid) as dom:
            guest = ConsoleFrontend(dom, backend_id, devid)
            guest.connect_timeout = connect_timeout
            try:
                async with guest:
                    if banner is not None:
                        await guest.stream.send(banner.encode() + b"\r\n")
                    else:
                        await _pipe_stdio(guest)
                    await guest.stream.drain()
            except TimeoutError:
                raise click.ClickException(
                    f"no console backend in domain {backend_id} connected within "
                    f"{connect_timeout:g} s (is `ringkit console serve` running?)"
                ) from None

    run_command(main)


async def _pipe_stdio(guest: ConsoleFrontend) -> None:
    """stdin -> console until EOF; console -> stdout meanwhile."""

    async def to_stdout() -> None:
        while True:
            data = await guest.stream.receive()
            await anyio.to_thread.run_sync(os.write, sys.stdout.fileno(), data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(to_stdout)
        while True:
            data = await anyio.to_thread.run_sync(
                os.read, sys.stdin.fileno(), 4096, abandon_on_cancel=True
            )
            if not data:
                break
            await guest.stream.send(data)
        await guest.stream.drain()
        tg.cancel_scope.cancel()


__all__ = ("attach", "console", "serve")
