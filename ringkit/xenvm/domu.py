"""Start PV domUs from inside the harness's dom0 and collect their output and exit code.

Used by tests that run in dom0 (``ringkit xen-vm run --domu -- pytest -m xen ...``) to put the
other end of a channel in a real second domain::

    from ringkit.xenvm.domu import DomU

    with DomU("peer", ["python", "tests/xen/peer.py", "--rounds", "3"]) as domu:
        domid = domu.start()
        ...                      # talk to it through grants, event channels, xenstore
        result = domu.wait(timeout=300)
    assert result.exit_code == 0, result.output

The domU boots the harness kernel with an initramfs holding Python, the project's virtualenv and
the project directory (as it was when the machine booted), so the command may import ringkit.  Its
output is its console, read back from xenconsoled's log; its exit code travels through xenstore
(``/local/domain/<domid>/data/ringkit-exit``).  `xl create` is retried once, because its
domain-monitoring child is known to crash now and then under emulation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .._errors import ConfigError, TransportError
from .cpio import gzip_cpio
from .domu_image import DomUJob, concatenate, job_entries, shell_command, write_files
from .layout import ENV_CONSOLE_DIR, ENV_DOMU_IMAGE, ENV_VM_DIR

__all__ = (
    "BASE_KERNEL_ARGS",
    "CREATE_SECONDS",
    "EXIT_MARK",
    "GUEST_TYPES",
    "POLL_SECONDS",
    "START_MARK",
    "DomU",
    "DomUResult",
    "check_kernel_args",
    "domain_id",
    "parse_console",
    "run_domu",
    "xenstore_read",
    "xl_config",
)


START_MARK = "ringkit-domu: start"
EXIT_MARK = re.compile(r"^ringkit-domu: exit=(\d+)\s*$", re.MULTILINE)
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
POLL_SECONDS = 0.25
CREATE_SECONDS = 900.0
"""How long one `xl create` may take: about 11 s on a quiet machine, but 160-230 s were measured
with five emulated machines sharing two cores, so the limit only catches a hung toolstack."""


def parse_console(text: str) -> tuple[str, int | None]:
    """Split a domU console log into (the command's output, its exit code or None).

    The output is what the domU printed between the start marker and the exit marker (kernel
    messages before the start are dropped); with no exit marker, everything after the start.
    """
    text = text.replace("\r\n", "\n")
    start = text.find(START_MARK + "\n")
    body = text[start + len(START_MARK) + 1:] if start >= 0 else text
    m = EXIT_MARK.search(body)
    if m is None:
        return body, None
    return body[:m.start()], int(m.group(1))


@dataclass(frozen=True)
class DomUResult:
    """How a domU's command ended."""

    name: str
    domid: int
    exit_code: int | None
    """The command's exit status; None if the domU died without reporting one."""
    timed_out: bool
    output: str
    """The command's console output (stdout and stderr, interleaved)."""
    console_log: Path

    @property
    def ok(self) -> bool:
        """The command ran to completion with exit status 0."""
        return self.exit_code == 0 and not self.timed_out


def _log(msg: str) -> None:
    print(f"[xen-vm] {msg}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise TransportError(f"`{' '.join(argv[:3])}` got no answer within {timeout:.0f}s: "
                             f"xenstored (which xl and xenstore-* wait for) is stuck or "
                             f"overloaded") from None


def xenstore_read(path: str) -> str | None:
    """A xenstore value through Debian's xenstore-read, or None if the node is missing."""
    proc = _run(["xenstore-read", path])
    return proc.stdout.strip() if proc.returncode == 0 else None


def domain_id(name: str) -> int | None:
    """The domid of the running domain called `name`, if any."""
    proc = _run(["xl", "domid", name])
    if proc.returncode != 0:
        return None
    try:
        return int(proc.stdout.strip())
    except ValueError:
        return None


BASE_KERNEL_ARGS = ("console=hvc0", "quiet", "loglevel=1", "panic=-1")
"""The domU kernel's command line before any `kernel_args`."""


def check_kernel_args(words: Sequence[str]) -> None:
    """Refuse domU kernel arguments that would not stay one word of the command line."""
    for word in words:
        if not word or any(c.isspace() or c in '"\\' for c in word):
            raise ConfigError(f"domU kernel argument {word!r}: one word, without quotes, "
                              f"backslashes or white space")


GUEST_TYPES = ("pv", "pvh")
"""What a harness domU can be.  ``pv`` is the default.  ``pvh`` runs the same kernel in an HVM
container (Xen's SVM with nested paging, which QEMU's TCG offers): a PV domU of the harness
corrupts its own memory under process and pipe load, with no Xen device in use, where a PVH one
stayed right (docs/real-xen.md, "Memory corruption across domains")."""

_PVH_LINES = ('tsc_mode = "native"',)
"""TCG's SVM has no decode assist, so Xen cannot emulate a trapped RDTSCP (the domain crashed
with "SVM Insn len emulation failed" while booting); native TSC mode does not trap it."""


def xl_config(name: str, kernel: str, ramdisk: str, memory_mb: int, vcpus: int,
              extra: Sequence[str] = (), kernel_args: Sequence[str] = (),
              guest_type: str = "pv") -> str:
    """The xl domain configuration of a harness domU (`extra`: more lines, e.g. ``disk=``;
    `kernel_args`: more words for the domU kernel's command line; `guest_type`: one of
    `GUEST_TYPES`)."""
    for label, value in (("kernel", kernel), ("ramdisk", ramdisk)):
        if '"' in value or "\n" in value:
            raise ConfigError(f"domU {label} path cannot contain quotes or newlines: {value!r}")
    if guest_type not in GUEST_TYPES:
        raise ConfigError(f"domU guest type {guest_type!r}: expected one of "
                          f"{', '.join(GUEST_TYPES)}")
    check_kernel_args(kernel_args)
    cmdline = " ".join((*BASE_KERNEL_ARGS, *kernel_args))
    lines = [
        f'name = "{name}"', f'type = "{guest_type}"', f'kernel = "{kernel}"',
        f'ramdisk = "{ramdisk}"', f'extra = "{cmdline}"', f"memory = {memory_mb}",
        f"vcpus = {vcpus}", 'on_poweroff = "destroy"', 'on_reboot = "destroy"',
        'on_crash = "destroy"', *(_PVH_LINES if guest_type == "pvh" else ()), *extra,
    ]
    return "".join(line + "\n" for line in lines)


class DomU:
    """One harness domU running one command; use as a context manager (destroys on exit).

    `command` is an argv (or a shell command line as a single string) run with `cwd` (default:
    the current directory) in the domU.  `extra_files` are more host paths to copy in (their
    shared libraries follow), `modules` kernel modules to load at boot, `xl_extra` more lines of
    xl configuration (for example a ``disk = [...]`` line for block-device tests), `kernel_args`
    more words for the domU kernel's command line (``xen_privcmd.unrestricted=1``, say),
    `guest_type` ``"pv"`` or ``"pvh"`` (`GUEST_TYPES`).
    """

    def __init__(self, name: str, command: Sequence[str] | str, *, memory_mb: int = 512,
                 vcpus: int = 1, env: Mapping[str, str] | None = None, cwd: str | None = None,
                 extra_files: Sequence[str] = (),
                 modules: Sequence[str] = (), xl_extra: Sequence[str] = (),
                 kernel_args: Sequence[str] = (), guest_type: str = "pv",
                 image: str | None = None, kernel: str | None = None) -> None:
        if not _VALID_NAME.match(name):
            raise ConfigError(f"domU name {name!r}: use letters, digits, '_', '.', '-'")
        if memory_mb < 128:
            raise ConfigError(f"domU memory {memory_mb} MB is too small (at least 128)")
        image = image or os.environ.get(ENV_DOMU_IMAGE)
        vm_dir = os.environ.get(ENV_VM_DIR)
        kernel = kernel or (os.path.join(vm_dir, "vmlinuz") if vm_dir else None)
        if not image or not kernel:
            raise ConfigError(
                f"no domU image: run inside `ringkit xen-vm run --domu -- ...` "
                f"(which sets {ENV_DOMU_IMAGE}), or pass image= and kernel=")
        self.name = name
        cwd = cwd or os.getcwd()
        self._venv = sys.prefix if sys.prefix != sys.base_prefix else None
        self._job = DomUJob(
            command=command if isinstance(command, str) else shell_command(command),
            cwd=cwd, name=name, env=dict(env or {}), venv_prefix=self._venv,
            modules=tuple(modules))
        self._entries = job_entries(self._job)      # checks the sizes before anything starts
        self._extra_files = tuple(extra_files)
        self._memory = memory_mb
        self._vcpus = vcpus
        self._xl_extra = tuple(xl_extra)
        self._kernel_args = tuple(kernel_args)
        if guest_type not in GUEST_TYPES:
            raise ConfigError(f"domU guest type {guest_type!r}: expected one of "
                              f"{', '.join(GUEST_TYPES)}")
        self._guest_type = guest_type
        check_kernel_args(self._kernel_args)
        self._image = image
        self._kernel = kernel
        self._console_dir = Path(os.environ.get(ENV_CONSOLE_DIR, "/var/log/xen/console"))
        self._domid: int | None = None
        self._result: DomUResult | None = None

    @property
    def console_log(self) -> Path:
        """xenconsoled's log of this domU's console."""
        return self._console_dir / f"guest-{self.name}.log"

    @property
    def domid(self) -> int:
        """The domain id (after `start()`)."""
        if self._domid is None:
            raise ConfigError(f"domU {self.name} is not started")
        return self._domid

    def start(self) -> int:
        """`xl create` the domain paused (retried once), hand it its job, unpause it; return
        its domid."""
        if self._domid is not None:
            raise ConfigError(f"domU {self.name} was already started")
        if domain_id(self.name) is not None:
            raise ConfigError(f"a domain called {self.name} is already running")
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"ringkit-domu-{self.name}-"))
        try:
            ramdisk = Path(self._image)
            if self._extra_files:           # the slow path: an archive built in dom0
                with gzip_cpio(work / "extra.cpio.gz") as w:
                    write_files(w, None, self._venv, self._extra_files)
                ramdisk = work / "ramdisk.cpio.gz"
                concatenate([Path(self._image), work / "extra.cpio.gz"], ramdisk)
            cfg = work / "domu.cfg"
            cfg.write_text(xl_config(self.name, self._kernel, str(ramdisk), self._memory,
                                     self._vcpus, self._xl_extra, self._kernel_args,
                                     self._guest_type))
            if self.console_log.exists():
                self.console_log.unlink()
            t1 = time.monotonic()
            self._create(cfg)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        domid = domain_id(self.name)
        if domid is None:
            raise TransportError(f"xl create {self.name} succeeded but the domain is gone; "
                                 f"console: {self.console_log}")
        self._domid = domid
        # hand the job over while the domain is paused, then let it run
        pairs = [x for key, value in self._entries.items()
                 for x in (f"/local/domain/{domid}/{key}", value)]
        wrote = _run(["xenstore-write", "-R", *pairs])
        if wrote.returncode != 0:
            self.destroy()
            raise TransportError(f"could not write the job of domU {self.name} to xenstore: "
                                 f"{wrote.stderr.strip()}")
        unpaused = _run(["xl", "unpause", self.name])
        if unpaused.returncode != 0:
            self.destroy()
            raise TransportError(f"xl unpause {self.name} failed: {unpaused.stderr.strip()}")
        _log(f"domU {self.name} is domain {domid} (image {t1 - t0:.1f}s, "
             f"xl create {time.monotonic() - t1:.1f}s)")
        return domid

    def _create(self, cfg: Path) -> None:
        first = _run(["xl", "create", "-p", str(cfg)], timeout=CREATE_SECONDS)
        if first.returncode == 0:
            return
        # xl's monitoring child has been seen to segfault under TCG: clean up, try once more
        _log(f"xl create {self.name} failed ({first.returncode}): "
             f"{first.stderr.strip()[-500:]}; retrying once")
        _run(["xl", "destroy", self.name])
        second = _run(["xl", "create", "-p", str(cfg)], timeout=CREATE_SECONDS)
        if second.returncode != 0:
            raise TransportError(f"xl create {self.name} failed twice: "
                                 f"{second.stderr.strip()[-1000:]}")

    def ended(self) -> bool:
        """Whether the command has reported its exit status or the domain is gone (a quick
        look, for a test that must stop waiting on a peer that crashed)."""
        domid = self.domid
        return (xenstore_read(f"/local/domain/{domid}/data/ringkit-exit") is not None
                or domain_id(self.name) != domid)

    def wait(self, timeout: float = 600.0) -> DomUResult:
        """Wait for the command to end (or `timeout` seconds: then destroy the domain)."""
        if self._result is not None:
            return self._result
        domid = self.domid
        deadline = time.monotonic() + timeout
        code_text: str | None = None
        timed_out = False
        while True:
            code_text = xenstore_read(f"/local/domain/{domid}/data/ringkit-exit")
            if code_text is not None or domain_id(self.name) != domid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
        # the domU powers itself off after reporting; give it a moment, then make sure
        end = time.monotonic() + 30
        while not timed_out and domain_id(self.name) == domid and time.monotonic() < end:
            time.sleep(POLL_SECONDS)
        self.destroy()
        text = self._read_console(wait_for_exit=code_text is not None)
        output, console_code = parse_console(text)
        code = int(code_text) if code_text is not None and code_text.isdigit() else console_code
        self._result = DomUResult(self.name, domid, None if timed_out else code, timed_out,
                                  output, self.console_log)
        if not self._result.ok:
            _log(f"domU {self.name}: exit code {self._result.exit_code}, timed out: "
                 f"{timed_out}; console log {self.console_log}")
        return self._result

    async def wait_async(self, timeout: float = 600.0) -> DomUResult:
        """`wait()` in a worker thread, for async tests."""
        import anyio.to_thread
        return await anyio.to_thread.run_sync(self.wait, timeout)

    def _read_console(self, wait_for_exit: bool) -> str:
        end = time.monotonic() + (10 if wait_for_exit else 2)
        text = ""
        while True:
            try:
                text = self.console_log.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if not wait_for_exit or EXIT_MARK.search(text) or time.monotonic() > end:
                return text
            time.sleep(POLL_SECONDS)

    def destroy(self) -> None:
        """Destroy the domain if it still runs (idempotent)."""
        if self._domid is not None and domain_id(self.name) == self._domid:
            _run(["xl", "destroy", self.name])

    def __enter__(self) -> DomU:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()


def run_domu(name: str, command: Sequence[str] | str, timeout: float = 600.0,
             **options: Any) -> DomUResult:
    """Start a domU running `command`, wait for it, return the result (see `DomU`)."""
    with DomU(name, command, **options) as domu:
        domu.start()
        return domu.wait(timeout)
