"""The ``ringkit`` command line.

Each command group lives in its own module under `ringkit.cli` and is imported only when it is
used, so ``ringkit --help`` stays fast and one group's optional dependencies never break another.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

__all__ = ("main",)


# name -> "module:attribute" of a click command or group
_COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("ringkit.cli.sim", "sim"),
    "xenstore": ("ringkit.cli.xenstore", "xenstore"),
    "block": ("ringkit.cli.block", "block"),
    "console": ("ringkit.cli.console", "console"),
    "net": ("ringkit.cli.net", "net"),
    "vchan": ("ringkit.cli.vchan", "vchan"),
    "demo": ("ringkit.cli.demo", "demo"),
    "bench": ("ringkit.cli.bench", "bench"),
    "xen-vm": ("ringkit.cli.xen_vm", "xen_vm"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        present = [
            name for name, (module, _) in _COMMANDS.items() if importlib.util.find_spec(module)
        ]
        return sorted(present)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None or importlib.util.find_spec(entry[0]) is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkit")
def main() -> None:
    """ringkit: Xen split drivers in userspace.

    Rings on granted pages, event channels and the xenstore handshake, on real Xen
    (/dev/xen/*) or on a simulated Xen that runs on any Linux machine.
    """
