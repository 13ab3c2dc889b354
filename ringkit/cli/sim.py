"""``ringkit sim``: run a simulated Xen and manage its domains."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import click

from .._config import BACKENDS, SimConfig, load
from .._errors import ConfigError, RingkitError

__all__ = ("create", "destroy", "domain", "list_", "serve", "sim")


_DIR_HELP = "The simulator's directory (sockets live there)."
_OPTION_NAMES = {"directory": "--dir", "grant_limit": "--grant-limit", "backend": "--backend"}


@click.group()
def sim() -> None:
    """A simulated Xen: domains, grants, event channels and a xenstore on this machine."""


@sim.command()
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help=_DIR_HELP)
@click.option("--grant-limit", default=1024, show_default=True, type=int,
              help="Pages one process may grant at a time (gntalloc's limit; at least 1).")
@click.option("--backend", default="asyncio", type=click.Choice(BACKENDS),
              show_default=True, help="anyio backend to run the server on.")
def serve(directory: str, grant_limit: int, backend: str) -> None:
    """Serve a simulated Xen in DIR until interrupted or shut down.

    Prints "ready <DIR>" once domain 0's sockets accept connections.
    """
    from ..sim._server import run_forever

    try:  # the settings' rules live in SimConfig; report them under the options' names
        load(SimConfig, _OPTION_NAMES, directory=directory, grant_limit=grant_limit,
             backend=backend)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    def ready() -> None:
        print(f"ready {Path(directory).resolve()}", flush=True)

    try:
        run_forever(directory, grant_limit=grant_limit, backend=backend, ready=ready)
    except KeyboardInterrupt:
        pass
    except RingkitError as exc:
        raise click.ClickException(str(exc)) from exc


@sim.group()
def domain() -> None:
    """Create, list and destroy domains of a running simulator."""


def _run_control(directory: str, action: str, name: str | None = None) -> None:
    from ..sim import SimXen

    async def main() -> None:
        async with SimXen.attach(directory) as xen:
            if action == "create":
                assert name is not None
                click.echo(await xen.create_domain(name))
            elif action == "destroy":
                assert name is not None
                await xen.destroy_domain(int(name) if name.isdigit() else name)
            else:
                click.echo(f"{'ID':>5}  {'NAME':<24} PROCESSES")
                for info in await xen.list_domains():
                    click.echo(f"{info.domid:>5}  {info.name:<24} {info.processes}")

    try:
        anyio.run(main)
    except RingkitError as exc:
        raise click.ClickException(str(exc)) from exc


_dir_option = click.option("--dir", "directory", required=True,
                           type=click.Path(file_okay=False, exists=True), help=_DIR_HELP)


@domain.command()
@_dir_option
@click.argument("name")
def create(directory: str, name: str) -> None:
    """Create domain NAME and print its domid."""
    _run_control(directory, "create", name)


@domain.command("list")
@_dir_option
def list_(directory: str) -> None:
    """List the domains."""
    _run_control(directory, "list")


@domain.command()
@_dir_option
@click.argument("name")
def destroy(directory: str, name: str) -> None:
    """Destroy domain NAME (or domid): release all it held, fire @releaseDomain."""
    _run_control(directory, "destroy", name)


if __name__ == "__main__":  # pragma: no cover
    sim(prog_name=sys.argv[0])
