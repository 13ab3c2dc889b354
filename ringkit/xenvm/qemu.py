"""The QEMU command line that boots Xen with a Linux PV dom0 (pure: builds a list of strings).

Choices that matter, all learnt the hard way (see docs/real-xen.md):

* TCG, not KVM: it runs on any x86-64 Linux host, nested virtualisation or not.
* ``-cpu qemu64`` (`CPU_MODEL`): with ``max`` (even without SMAP/SMEP, PCID and INVPCID,
  which were taken out earlier for crashes of their own) a PV domU corrupted its own memory
  under nothing but process and pipe load, in every domU tried, and so did every cross-domain
  soak; with ``qemu64`` the same pipe control stayed right (docs/real-xen.md, "Memory
  corruption across domains").  A named model such as EPYC makes Xen panic in its MWAIT idle
  driver, which TCG lacks.  ``qemu64`` offers no SVM, so domUs are PV.
* ``bootscrub=0``: otherwise Xen scrubs all guest RAM at boot and QEMU's memory use triples.
* The multiboot ``-initrd`` option is a comma-separated module list, each module being a path
  followed by its command line, so commas inside a module's command line are doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import ConfigError

__all__ = ("CPU_MODEL", "MachineConfig", "Share", "escape_option", "qemu_argv")


@dataclass(frozen=True)
class Share:
    """A host directory exported over virtio-9p with a mount tag."""

    tag: str
    path: Path
    readonly: bool = False


CPU_MODEL = "qemu64"
"""The default ``-cpu`` (`MachineConfig.cpu_model`); ``RINGKIT_XEN_VM_CPU`` overrides it for a
run (``max,-smap,-smep,-pcid,-invpcid`` was the model before 2026-12-07)."""


@dataclass(frozen=True)
class MachineConfig:
    """Everything that varies between boots."""

    hypervisor: Path
    kernel: Path
    initrd: Path
    shares: Sequence[Share]
    memory_mb: int = 2048
    dom0_memory_mb: int = 1024
    cpus: int = 2
    tcg_threads: str = "multi"
    """QEMU's TCG threading: "multi" (a host thread per vCPU) or "single" (one for all)."""
    cpu_model: str = CPU_MODEL
    """QEMU's ``-cpu``: see the module docstring (`CPU_MODEL`)."""
    xen_args: Sequence[str] = ("bootscrub=0", "edd=off", "edid=no")
    linux_args: Sequence[str] = ()
    extra_qemu_args: Sequence[str] = field(default_factory=tuple)
    program: str = "qemu-system-x86_64"


def escape_option(value: str) -> str:
    """QEMU's option syntax: a literal comma in a value is written as two commas."""
    return value.replace(",", ",,")


def _module(path: Path, cmdline: str) -> str:
    text = str(path)
    if any(c.isspace() for c in text):
        raise ConfigError(f"a multiboot module path cannot contain whitespace: {text!r}")
    return escape_option(f"{text} {cmdline}".rstrip())


def qemu_argv(cfg: MachineConfig) -> list[str]:
    """The argv of qemu-system-x86_64 for `cfg`; raises ConfigError on impossible values."""
    if cfg.dom0_memory_mb < 256:
        raise ConfigError(f"dom0 memory {cfg.dom0_memory_mb} MB is too small (at least 256)")
    if cfg.memory_mb < cfg.dom0_memory_mb + 128:
        raise ConfigError(f"machine memory {cfg.memory_mb} MB leaves no room for Xen beside "
                          f"a {cfg.dom0_memory_mb} MB dom0")
    if cfg.cpus < 1:
        raise ConfigError(f"cpus must be at least 1, not {cfg.cpus}")
    if cfg.tcg_threads not in ("multi", "single"):
        raise ConfigError(f"TCG threading is 'multi' or 'single', not {cfg.tcg_threads!r}")
    xen_cmdline = " ".join([
        "console=com1", "com1=115200,8n1",
        f"dom0_mem={cfg.dom0_memory_mb}M,max:{cfg.dom0_memory_mb}M",
        "loglvl=warning", "guest_loglvl=warning", *cfg.xen_args,
    ])
    linux_cmdline = " ".join(["console=hvc0", "earlyprintk=xen", "quiet", "panic=-1",
                              *cfg.linux_args])
    argv = [
        cfg.program, "-accel", f"tcg,thread={cfg.tcg_threads}",
        "-cpu", cfg.cpu_model,
        "-m", str(cfg.memory_mb), "-smp", str(cfg.cpus),
        "-nographic", "-no-reboot", "-net", "none", "-monitor", "none",
        "-kernel", escape_option(str(cfg.hypervisor)),
        "-append", xen_cmdline,
        "-initrd", _module(cfg.kernel, linux_cmdline) + "," + _module(cfg.initrd, ""),
    ]
    tags = set()
    for share in cfg.shares:
        if share.tag in tags or not share.tag.isidentifier():
            raise ConfigError(f"bad or duplicate 9p mount tag {share.tag!r}")
        tags.add(share.tag)
        opts = [f"local,path={escape_option(str(share.path))}", f"mount_tag={share.tag}",
                "security_model=none", "multidevs=remap"]
        if share.readonly:
            opts.append("readonly=on")
        argv += ["-virtfs", ",".join(opts)]
    argv += list(cfg.extra_qemu_args)
    return argv
