"""Where the harness keeps its downloads and build products, and the names of its variables.

Everything lives in one cache directory (default ``~/.cache/ringkit/xen-vm``, or
``$RINGKIT_XEN_VM_CACHE``), so the host's own /boot and package state are never touched and
deleting that directory undoes `ringkit xen-vm setup` completely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = (
    "ENV_CACHE",
    "ENV_CONSOLE_DIR",
    "ENV_DOMU",
    "ENV_DOMU_IMAGE",
    "ENV_IN_VM",
    "ENV_RUN_DIR",
    "ENV_VM_DIR",
    "Layout",
    "default_cache_dir",
)


ENV_CACHE = "RINGKIT_XEN_VM_CACHE"
"""Host: overrides the cache directory."""

ENV_IN_VM = "RINGKIT_XEN_VM"
"""Set to "1" for a command the harness runs inside dom0 (and inside a domU it starts)."""

ENV_VM_DIR = "RINGKIT_XEN_VM_DIR"
"""In dom0: the cache directory (kernel image, domU base image) as seen from dom0."""

ENV_DOMU_IMAGE = "RINGKIT_XEN_VM_DOMU_IMAGE"
"""In dom0: the domU base initramfs, set when the run was started with ``--domu``."""

ENV_RUN_DIR = "RINGKIT_XEN_VM_RUN_DIR"
"""In dom0: the per-run directory shared with the host (logs collected there survive)."""

ENV_CONSOLE_DIR = "RINGKIT_XEN_VM_CONSOLE_DIR"
"""In dom0: where xenconsoled writes guest console logs."""

ENV_DOMU = "RINGKIT_XEN_DOMU"
"""Inside a harness domU: the domU's name."""


def default_cache_dir() -> Path:
    """$RINGKIT_XEN_VM_CACHE, else $XDG_CACHE_HOME/ringkit/xen-vm, else ~/.cache/..."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).absolute() / "ringkit" / "xen-vm"


@dataclass(frozen=True)
class Layout:
    """The files inside one cache directory."""

    root: Path

    @property
    def debs(self) -> Path:
        """Downloaded .deb files."""
        return self.root / "debs"

    @property
    def xenroot(self) -> Path:
        """The Xen and kernel packages unpacked (`dpkg -x`), never installed."""
        return self.root / "xenroot"

    @property
    def hypervisor(self) -> Path:
        """The uncompressed Xen image (a multiboot ELF QEMU's -kernel loads)."""
        return self.root / "xen.elf"

    @property
    def kernel(self) -> Path:
        """The Linux kernel used for dom0 and domUs."""
        return self.root / "vmlinuz"

    @property
    def stage1(self) -> Path:
        """dom0's stage-1 initramfs (busybox + virtio/9p/overlay modules)."""
        return self.root / "stage1.cpio.gz"

    @property
    def stamp(self) -> Path:
        """JSON record of a completed setup."""
        return self.root / "setup.json"

    @property
    def runs(self) -> Path:
        """Per-run directories shared with dom0 (kept after a failure, for the logs)."""
        return self.root / "runs"

    @property
    def domu_images(self) -> Path:
        """Cached domU base initramfs images, keyed by their contents."""
        return self.root / "domu"
