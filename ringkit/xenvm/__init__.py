"""Real Xen on any Linux machine: boot Xen + a Linux PV dom0 under QEMU and run commands there.

Host side: `ringkit xen-vm setup` / `run` / `shell` (see `ringkit.xenvm.boot`).  Inside dom0,
`ringkit.xenvm.domu` starts PV domUs whose root is an initramfs carrying Python, the project's
virtualenv and the project, and collects their output and exit code.
"""

from __future__ import annotations

from .boot import EXIT_BOOT_FAILURE as EXIT_BOOT_FAILURE
from .boot import EXIT_TIMEOUT as EXIT_TIMEOUT
from .layout import ENV_IN_VM as ENV_IN_VM

__all__ = ("ENV_IN_VM", "EXIT_BOOT_FAILURE", "EXIT_TIMEOUT")
