"""`ringkit xen-vm run`: boot Xen + a Linux PV dom0 in QEMU, run one command there, return its code.

How a run works: a fresh run directory (in the cache) is exported to the guest over 9p as
``/xshare``; it carries the stage-2 script, the command and its environment.  dom0's root is the
host's own ``/`` (read-only over 9p, with a tmpfs overlay on top, so the project's virtualenv runs
as is); the project directory is also mounted read-write at its own path, so results written
there reach the host.  The command's output goes to ``/xshare/out.log``, which the host follows
and prints while the guest runs; its exit code comes back in ``/xshare/rc``.

Exit codes: the command's own; `EXIT_TIMEOUT` (124) when the time limit hit; `EXIT_BOOT_FAILURE`
(125) when dom0 never reported an exit code (Xen or Linux crashed, dom0 did not come up in time,
or QEMU failed).  Logs of a failed run are kept and their paths printed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from .._errors import ConfigError
from . import layout as names
from .layout import Layout
from .provision import XEN_VERSION, data_file
from .qemu import CPU_MODEL, MachineConfig, Share, qemu_argv
from .shellenv import env_script

__all__ = (
    "DOMU_IMAGE",
    "EXIT_BOOT_FAILURE",
    "EXIT_TIMEOUT",
    "FINISHED_MARK",
    "KEPT_RUNS",
    "PASSED_VARIABLES",
    "RunRequest",
    "command_environment",
    "decide_exit",
    "prepare_run_dir",
    "prune_runs",
    "run",
)


EXIT_TIMEOUT = 124
"""The run hit its time limit (the guest was killed)."""

EXIT_BOOT_FAILURE = 125
"""dom0 never reported an exit code: crash, boot timeout, or QEMU failure."""

PASSED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "VIRTUAL_ENV", "PYTHONPATH",
                    "PYTHONHASHSEED", "TZ")
"""Host environment variables the command in dom0 inherits (more can be given explicitly)."""

DOMU_IMAGE = "domu.cpio.gz"
"""The run's domU image in the run directory: the base image plus the project at boot."""

KEPT_RUNS = 5
"""How many kept (failed) run directories to keep around for their logs."""

@dataclass(frozen=True)
class RunRequest:
    """One boot: the command (empty: an interactive shell) and how to run it."""

    command: Sequence[str]
    cwd: Path
    timeout: float = 3600.0
    boot_timeout: float = 600.0
    memory_mb: int = 2048
    dom0_memory_mb: int = 1024
    cpus: int = 2
    tcg_threads: str = "multi"
    """QEMU's TCG threading (see `MachineConfig.tcg_threads`)."""
    rw_dirs: Sequence[Path] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    domu_image: Path | None = None
    verbose: bool = False
    keep: bool = False
    qemu: str = "qemu-system-x86_64"
    boot_attempts: int = 2
    """Boots to try when dom0 never comes up (an early crash under emulation is retried)."""


def command_environment(host_env: Mapping[str, str], request: RunRequest,
                        layout: Layout) -> dict[str, str]:
    """The environment of the command in dom0: selected host variables, the harness's own
    variables, then the user's explicit ones (which win)."""
    env = {k: host_env[k] for k in PASSED_VARIABLES if k in host_env}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    env.update({
        names.ENV_IN_VM: "1",
        names.ENV_VM_DIR: str(layout.root),
        names.ENV_RUN_DIR: "/xshare",
        names.ENV_CONSOLE_DIR: "/xshare/logs/console",
        "RK_CWD": str(request.cwd),
    })
    if request.domu_image is not None:
        env[names.ENV_DOMU_IMAGE] = "/xshare/" + DOMU_IMAGE
    env.update(request.env)
    return env


def decide_exit(timed_out: bool, boot_timed_out: bool, rc_text: str | None) -> tuple[int, str]:
    """Map what a finished boot left behind to (exit code, one-line explanation)."""
    if rc_text is not None:
        try:
            code = int(rc_text.strip())
        except ValueError:
            code = -1
        if 0 <= code <= 255:
            return code, f"command exit code {code}"
        return EXIT_BOOT_FAILURE, f"dom0 wrote a malformed exit code {rc_text!r}"
    if boot_timed_out:
        return EXIT_BOOT_FAILURE, "dom0 did not come up within the boot timeout"
    if timed_out:
        return EXIT_TIMEOUT, "time limit reached before the command finished"
    return EXIT_BOOT_FAILURE, "the machine stopped without an exit code from dom0"


FINISHED_MARK = "finished"
"""Written into a kept run directory once its run is over (only those are ever pruned)."""


def prune_runs(layout: Layout, keep: int) -> None:
    """Delete kept run directories of finished runs beyond the newest `keep` (never one that
    another harness process is still using)."""
    if not layout.runs.is_dir():
        return
    runs = sorted(p for p in layout.runs.iterdir() if (p / FINISHED_MARK).exists())
    for old in runs[:-keep] if keep else runs:
        shutil.rmtree(old, ignore_errors=True)


def prepare_run_dir(layout: Layout, request: RunRequest, host_env: Mapping[str, str],
                    kernel_version: str) -> tuple[Path, list[Share]]:
    """Create the per-run directory the guest sees as /xshare, and the list of 9p shares."""
    layout.runs.mkdir(parents=True, exist_ok=True)
    prune_runs(layout, KEPT_RUNS)
    run_dir = layout.runs / (time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    run_dir.mkdir()
    (run_dir / "stage2.sh").write_bytes(data_file("stage2.sh"))
    (run_dir / "boot.env").write_text(env_script({
        "RK_XENROOT": str(layout.xenroot), "RK_XENVER": XEN_VERSION,
        "RK_KERNEL": kernel_version}))
    (run_dir / "cmd.env").write_text(env_script(command_environment(host_env, request, layout)))
    if request.command:
        (run_dir / "cmd").write_text(shlex.join(request.command) + "\n")
    if request.domu_image is not None:
        from .domu_image import build_run_image
        build_run_image(request.domu_image, str(request.cwd),
                        sys.prefix if sys.prefix != sys.base_prefix else None,
                        run_dir / DOMU_IMAGE)
    shares = [Share("hostroot", Path("/"), readonly=True), Share("share", run_dir)]
    mounts = []
    for i, d in enumerate(dict.fromkeys(p.resolve() for p in request.rw_dirs)):
        if not d.is_dir():
            raise ConfigError(f"read-write directory {d} does not exist")
        shares.append(Share(f"rw{i}", d))
        mounts.append(f"rw{i} {d}\n")
    (run_dir / "mounts").write_text("".join(mounts))
    return run_dir, shares


class _Follower:
    """Copies what a growing file gains to a stream (the guest writes it over 9p)."""

    def __init__(self, path: Path, out: BinaryIO | None) -> None:
        self.path = path
        self.out = out
        self.pos = 0

    def pump(self) -> None:
        if self.out is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.pos += len(data)
            self.out.write(data)
            self.out.flush()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)\n"
    return "".join(text.splitlines(keepends=True)[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class _Attempt:
    """How one boot of a run ended."""

    code: int
    why: str
    started: bool
    """dom0 came up (wrote ``ready``), so the command may have run."""


def _boot_once(argv: Sequence[str], run_dir: Path, request: RunRequest, out: BinaryIO,
               err: TextIO, console: Path) -> _Attempt:
    """One QEMU boot in `run_dir`; follows the command's output while it runs."""
    t0 = time.monotonic()
    ready_at: float | None = None
    timed_out = boot_timed_out = False
    with open(console, "wb") as console_file:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=console_file,
                                stderr=subprocess.STDOUT)
        follow_out = _Follower(run_dir / "out.log", out)
        follow_console = _Follower(console, err.buffer if request.verbose and
                                   hasattr(err, "buffer") else None)
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                follow_console.pump()
                follow_out.pump()
                elapsed = time.monotonic() - t0
                if ready_at is None and (run_dir / "ready").exists():
                    ready_at = elapsed
                if ready_at is None and elapsed > request.boot_timeout:
                    boot_timed_out = True
                    _stop(proc)
                elif elapsed > request.timeout:
                    timed_out = True
                    _stop(proc)
        except BaseException:
            _stop(proc)
            (run_dir / FINISHED_MARK).write_text("interrupted\n")
            raise
        follow_console.pump()
        follow_out.pump()
    if ready_at is None and (run_dir / "ready").exists():
        ready_at = time.monotonic() - t0
    rc_path = run_dir / "rc"
    code, why = decide_exit(timed_out, boot_timed_out,
                            rc_path.read_text() if rc_path.exists() else None)
    boot = f"{ready_at:.1f}s" if ready_at is not None else "never"
    why = (f"{why}; dom0 ready after {boot}, total {time.monotonic() - t0:.1f}s "
           f"(qemu exit {proc.returncode})")
    return _Attempt(code, why, ready_at is not None)


def run(layout: Layout, request: RunRequest, kernel_version: str,
        out: BinaryIO | None = None, err: TextIO | None = None) -> int:
    """Boot, run `request.command` in dom0, return its exit code (or 124 / 125).

    A boot in which dom0 never came up (Xen or the kernel crashed early, or the boot timeout
    hit) is tried again, up to `request.boot_attempts` boots in all: the command had not started,
    so nothing runs twice.  Once dom0 is up, whatever happens is the run's result.
    """
    out = out if out is not None else sys.stdout.buffer
    err = err if err is not None else sys.stderr

    def log(msg: str) -> None:
        print(f"[xen-vm] {msg}", file=err, flush=True)

    if request.boot_attempts < 1:
        raise ConfigError(f"boot attempts must be at least 1, not {request.boot_attempts}")
    run_dir, shares = prepare_run_dir(layout, request, os.environ, kernel_version)
    argv = qemu_argv(MachineConfig(
        hypervisor=layout.hypervisor, kernel=layout.kernel, initrd=layout.stage1,
        shares=shares, memory_mb=request.memory_mb, dom0_memory_mb=request.dom0_memory_mb,
        cpus=request.cpus, tcg_threads=request.tcg_threads, program=request.qemu,
        cpu_model=os.environ.get("RINGKIT_XEN_VM_CPU", "") or CPU_MODEL))
    (run_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
    if not request.command:
        log("interactive dom0 shell; leave with `exit` (powers the machine off)")
        try:
            subprocess.run(argv, check=False)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return 0
    console = run_dir / "console.log"
    for attempt in range(1, request.boot_attempts + 1):
        result = _boot_once(argv, run_dir, request, out, err, console)
        log(result.why)
        if result.started or attempt == request.boot_attempts:
            break
        kept = run_dir / f"console-boot{attempt}.log"
        console.replace(kept)
        log(f"dom0 never came up (boot {attempt} of {request.boot_attempts}); its console "
            f"is kept in {kept}; booting again")
        err.write(_tail(kept, 20))
    code = result.code
    if not (run_dir / "rc").exists():
        log(f"console (Xen + dom0) tail, {console}:")
        err.write(_tail(console, 40))
    (run_dir / DOMU_IMAGE).unlink(missing_ok=True)     # large, and rebuilt for every run
    if code != 0 or request.keep:
        (run_dir / FINISHED_MARK).write_text(f"{code}\n")
        log(f"kept the run directory with its logs: {run_dir}")
        for name in ("console.log", "out.log", "logs/xen-dmesg.log", "logs/dom0-dmesg.log",
                     "logs/console"):
            if (run_dir / name).exists():
                log(f"  {run_dir / name}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code
