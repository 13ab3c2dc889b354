"""``ringkit bench``: the benchmarks, one subcommand per module of `ringkit.bench`.

A module ``ringkit.bench.<name>`` exposing a click command named ``command`` is picked up as
``ringkit bench <name>`` without being listed anywhere; it is imported only when it runs (or
when ``--help`` lists the subcommands), so one benchmark's imports never slow another.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from .. import bench as _bench_package

__all__ = ("bench",)


def _module_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules(_bench_package.__path__)
        if not info.name.startswith("_")
    )


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name.replace("_", "-") for name in _module_names()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = cmd_name.replace("-", "_")
        if module_name not in _module_names():
            return None
        module = importlib.import_module(f"{_bench_package.__name__}.{module_name}")
        command = getattr(module, "command", None)
        if not isinstance(command, click.Command):
            raise click.ClickException(
                f"ringkit.bench.{module_name} has no click command named `command`"
            )
        return command


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Measure ringkit: print figures side by side (never pass/fail)."""
