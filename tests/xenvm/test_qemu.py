"""The QEMU command line: the CPU flags Xen needs, escaped module lists, checked sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringkit import ConfigError
from ringkit.xenvm.qemu import MachineConfig, Share, escape_option, qemu_argv


def _cfg(**kw: object) -> MachineConfig:
    base: dict[str, object] = dict(hypervisor=Path("/c/xen.elf"), kernel=Path("/c/vmlinuz"),
                                   initrd=Path("/c/stage1.cpio.gz"),
                                   shares=[Share("hostroot", Path("/"), readonly=True),
                                           Share("share", Path("/c/runs/1"))])
    base.update(kw)
    return MachineConfig(**base)  # type: ignore[arg-type]


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_has_the_flags_xen_needs_under_tcg() -> None:
    argv = qemu_argv(_cfg())
    assert argv[0] == "qemu-system-x86_64"
    assert _opt(argv, "-cpu") == ["qemu64"]
    assert _opt(argv, "-accel") == ["tcg,thread=multi"]
    assert "-no-reboot" in argv
    append = _opt(argv, "-append")[0]
    assert "bootscrub=0" in append and "dom0_mem=1024M,max:1024M" in append


def test_tcg_can_run_every_vcpu_on_one_host_thread() -> None:
    assert _opt(qemu_argv(_cfg(tcg_threads="single")), "-accel") == ["tcg,thread=single"]


def test_module_list_escapes_commas_in_command_lines() -> None:
    argv = qemu_argv(_cfg(linux_args=["foo=a,b"]))
    initrd = _opt(argv, "-initrd")[0]
    kernel_part, initrd_part = initrd.rsplit(",", 1)
    assert kernel_part.startswith("/c/vmlinuz console=hvc0")
    assert "foo=a,,b" in kernel_part
    assert initrd_part == "/c/stage1.cpio.gz"
    assert escape_option("/a,b") == "/a,,b"


def test_shares_become_virtfs_options() -> None:
    argv = qemu_argv(_cfg())
    virtfs = _opt(argv, "-virtfs")
    assert virtfs[0] == ("local,path=/,mount_tag=hostroot,security_model=none,"
                         "multidevs=remap,readonly=on")
    assert "readonly" not in virtfs[1] and "mount_tag=share" in virtfs[1]


@pytest.mark.parametrize("kw, message", [
    (dict(dom0_memory_mb=100), "dom0 memory"),
    (dict(memory_mb=1024, dom0_memory_mb=1024), "no room"),
    (dict(cpus=0), "cpus"),
    (dict(tcg_threads="many"), "TCG threading"),
    (dict(kernel=Path("/my dir/vmlinuz")), "whitespace"),
    (dict(shares=[Share("a", Path("/")), Share("a", Path("/tmp"))]), "duplicate"),
])
def test_impossible_configs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        qemu_argv(_cfg(**kw))
