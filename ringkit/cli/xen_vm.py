"""`ringkit xen-vm`: real Xen under QEMU on any Linux machine (setup, run, shell, domu)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from .._errors import ConfigError
from ..xenvm import boot, provision, shellenv
from ..xenvm.layout import ENV_CACHE, Layout, default_cache_dir

__all__ = ("domu", "domu_run", "run", "setup", "shell", "xen_vm")


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _layout(ctx: click.Context) -> Layout:
    cache = ctx.ensure_object(dict).get("cache")
    return Layout(cache if isinstance(cache, Path) else default_cache_dir())


@click.group("xen-vm")
@click.option("--cache", "cache", type=click.Path(file_okay=False, path_type=Path),
              envvar=ENV_CACHE, help=f"Cache directory (default ~/.cache/ringkit/xen-vm, "
              f"or ${ENV_CACHE}).")
@click.pass_context
def xen_vm(ctx: click.Context, cache: Path | None) -> None:
    """Boot real Xen (4.17) with a Linux PV dom0 under QEMU and run commands in dom0.

    Needs no KVM and never touches the host's boot: QEMU and busybox come from apt-get when
    missing, Xen and the kernel are downloaded and unpacked into the cache directory.
    """
    ctx.ensure_object(dict)["cache"] = cache.absolute() if cache else None


@xen_vm.command()
@click.option("--refresh", is_flag=True, help="Download the packages again.")
@click.pass_context
def setup(ctx: click.Context, refresh: bool) -> None:
    """Install QEMU/busybox if missing; fetch and unpack Xen and the kernel (idempotent)."""
    try:
        provision.setup(_layout(ctx), refresh=refresh)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _run_options(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("-t", "--timeout", type=click.FloatRange(min=1), default=3600.0,
                     show_default=True, help="Seconds for the whole run, boot included."),
        click.option("--boot-timeout", type=click.FloatRange(min=1), default=600.0,
                     show_default=True, help="Seconds for dom0 to come up."),
        click.option("--boot-attempts", type=click.IntRange(min=1), default=2,
                     show_default=True,
                     help="Boots to try when dom0 never comes up (the command never runs "
                     "twice)."),
        click.option("--domu", is_flag=True,
                     help="Prepare the domU image so the command can start domUs."),
        click.option("-p", "--project", type=click.Path(file_okay=False, exists=True,
                                                        path_type=Path),
                     default=".", help="Directory shared read-write and used as cwd."),
        click.option("-w", "--rw", "rw", multiple=True,
                     type=click.Path(file_okay=False, exists=True, path_type=Path),
                     help="Another host directory to share read-write (repeatable)."),
        click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Set a variable for the command (repeatable)."),
        click.option("-m", "--memory", type=click.IntRange(min=512), default=2048,
                     show_default=True, help="QEMU machine memory, MB."),
        click.option("--dom0-memory", type=click.IntRange(min=256), default=1024,
                     show_default=True, help="dom0 memory, MB."),
        click.option("--cpus", type=click.IntRange(min=1), default=2, show_default=True),
        click.option("--tcg", "tcg_threads", type=click.Choice(["multi", "single"]),
                     default="multi", show_default=True,
                     help="QEMU's TCG threading: a host thread per vCPU, or one for all."),
        click.option("-v", "--verbose", is_flag=True, help="Stream the Xen/dom0 console."),
        click.option("-k", "--keep", is_flag=True, help="Keep the run directory and logs."),
    ]):
        f = opt(f)
    return f


def _boot(ctx: click.Context, command: tuple[str, ...], timeout: float, boot_timeout: float,
          boot_attempts: int, domu: bool, project: Path, rw: tuple[Path, ...],
          env: tuple[str, ...], memory: int, dom0_memory: int, cpus: int, tcg_threads: str,
          verbose: bool, keep: bool) -> int:
    layout = _layout(ctx)
    try:
        info = provision.setup(layout)
        domu_image = None
        if domu:
            from ..xenvm.domu_image import ensure_base_image
            domu_image = ensure_base_image(layout, info.kernel_version)
        request = boot.RunRequest(
            command=command, cwd=project.resolve(), timeout=timeout,
            boot_timeout=boot_timeout, boot_attempts=boot_attempts, memory_mb=memory,
            dom0_memory_mb=dom0_memory, cpus=cpus, tcg_threads=tcg_threads,
            rw_dirs=(project.resolve(), *rw),
            env=shellenv.parse_env_assignments(env), domu_image=domu_image, verbose=verbose,
            keep=keep)
        return boot.run(layout, request, info.kernel_version)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@xen_vm.command(context_settings=_PASS_THROUGH)
@_run_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, /, command: tuple[str, ...], **options: Any) -> None:
    """Boot, run COMMAND in dom0, exit with its code (124: timeout, 125: boot failure).

    COMMAND runs with the host's PATH and the project directory as cwd, so the project's
    virtualenv works; put it after `--`.  Inside, RINGKIT_XEN_VM=1 is set.
    """
    sys.exit(_boot(ctx, command, **options))


@xen_vm.command()
@_run_options
@click.pass_context
def shell(ctx: click.Context, /, **options: Any) -> None:
    """Boot and open an interactive shell in dom0 on the serial console."""
    sys.exit(_boot(ctx, (), **options))


@xen_vm.group()
def domu() -> None:
    """Inside the harness's dom0: start PV domUs that carry Python and the project."""


@domu.command("run", context_settings=_PASS_THROUGH)
@click.option("-n", "--name", default="ringkit-domu", show_default=True, help="Domain name.")
@click.option("-t", "--timeout", type=click.FloatRange(min=1), default=600.0,
              show_default=True, help="Seconds before the domU is destroyed.")
@click.option("-m", "--memory", type=click.IntRange(min=128), default=512, show_default=True,
              help="domU memory, MB.")
@click.option("-f", "--file", "files", multiple=True, metavar="PATH",
              help="Another host file or directory to copy in (repeatable).")
@click.option("--module", "modules", multiple=True, help="A kernel module to load at boot.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Set a variable for the command (repeatable).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def domu_run(name: str, timeout: float, memory: int, files: tuple[str, ...],
             modules: tuple[str, ...], env: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND in a new domU (cwd: the current one; the project as it was at boot).

    Exits with the command's code, 124 if it timed out, 125 if the domU died without one.
    """
    from ..xenvm.domu import DomU

    try:
        with DomU(name, command, memory_mb=memory, extra_files=files, modules=modules,
                  env=shellenv.parse_env_assignments(env)) as vm:
            vm.start()
            result = vm.wait(timeout)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.stdout.write(result.output)
    sys.stdout.flush()
    if result.timed_out:
        click.echo(f"[xen-vm] domU {name} timed out; console: {result.console_log}", err=True)
        sys.exit(boot.EXIT_TIMEOUT)
    if result.exit_code is None:
        click.echo(f"[xen-vm] domU {name} ended without an exit code; console "
                   f"{result.console_log}:", err=True)
        with contextlib.suppress(OSError):
            click.echo(result.console_log.read_text(errors="replace")[-3000:], err=True)
        sys.exit(boot.EXIT_BOOT_FAILURE)
    sys.exit(result.exit_code)
