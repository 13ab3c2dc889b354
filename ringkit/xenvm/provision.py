"""`ringkit xen-vm setup`: get QEMU, Xen and a kernel ready, without touching the host's boot.

Host tools (QEMU, a static busybox) come from Debian through apt-get when missing.  Xen and the
kernel are fetched with `apt-get download` and unpacked with `dpkg -x` into the cache directory:
nothing is installed, no bootloader or /boot file changes.  A JSON stamp records a finished
setup, so running it again is quick and idempotent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from .._errors import ConfigError
from .cpio import gzip_cpio
from .hostfiles import is_static_elf
from .kmod import ModuleIndex
from .layout import Layout

__all__ = (
    "KERNEL_META",
    "STAGE1_MODULES",
    "STAMP_FORMAT",
    "XEN_PACKAGES",
    "XEN_VERSION",
    "Log",
    "SetupInfo",
    "build_stage1",
    "data_file",
    "ensure_host_packages",
    "is_ready",
    "kernel_package",
    "missing_host_packages",
    "module_index",
    "parse_kernel_package",
    "read_module",
    "read_stamp",
    "setup",
    "stage1_digest",
)


XEN_VERSION = "4.17"
XEN_PACKAGES = (
    f"xen-hypervisor-{XEN_VERSION}-amd64", f"xen-utils-{XEN_VERSION}", "xen-utils-common",
    "xenstore-utils", "libxenstore4", f"libxenmisc{XEN_VERSION}", "libxencall1",
    "libxenevtchn1", "libxenforeignmemory1", "libxengnttab1", "libxentoollog1",
    "libxendevicemodel1", "libxenhypfs1", "libxentoolcore1", "libyajl2",
)
"""Debian packages unpacked into the cache: the hypervisor, xl/xenstored and their libraries."""

KERNEL_META = "linux-image-amd64"
"""The meta package whose dependency names the current Debian kernel package."""

STAGE1_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
"""What dom0's stage 1 loads (their dependencies are found in modules.dep)."""

STAMP_FORMAT = 1

Log = Callable[[str], None]


def _log_stderr(msg: str) -> None:
    print(f"[xen-vm] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SetupInfo:
    """What a completed setup produced (the stamp's contents)."""

    format: int
    kernel_version: str
    kernel_package: str
    stage1_digest: str


def data_file(name: str) -> bytes:
    """A script shipped inside the ringkit.xenvm package."""
    return (resources.files("ringkit.xenvm") / name).read_bytes()


def _apt(args: list[str], cwd: Path | None = None) -> None:
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args]
    if os.geteuid() != 0 and args[0] != "download":
        cmd = ["sudo", *cmd]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=sys.stderr, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")


def missing_host_packages() -> list[str]:
    """Debian packages that must be installed on the host for the harness to boot."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86")
    if not (os.path.exists("/bin/busybox") and is_static_elf("/bin/busybox")):
        missing.append("busybox-static")
    return missing


def ensure_host_packages(log: Log = _log_stderr) -> None:
    """apt-get install QEMU and a static busybox when they are missing (sudo if not root)."""
    missing = missing_host_packages()
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    try:
        _apt(["install", "-y", "-q", "--no-install-recommends", *missing])
    except ConfigError:
        _apt(["update", "-q"])
        _apt(["install", "-y", "-q", "--no-install-recommends", *missing])
    still = missing_host_packages()
    if still:
        raise ConfigError(f"could not install {still}")


def parse_kernel_package(apt_cache_depends: str) -> str:
    """The linux-image-<version> package named in `apt-cache depends linux-image-amd64`."""
    for line in apt_cache_depends.splitlines():
        key, _, value = line.strip().partition(":")
        name = value.strip()
        if key == "Depends" and name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise ConfigError(f"no linux-image-<version> dependency in:\n{apt_cache_depends}")


def kernel_package() -> str:
    """The Debian kernel package the meta package currently points at."""
    for attempt in (1, 2):
        proc = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True,
                              text=True, check=False)
        if proc.returncode == 0:
            return parse_kernel_package(proc.stdout)
        if attempt == 1:
            _apt(["update", "-q"])
    raise ConfigError(f"apt-cache knows no {KERNEL_META}: {proc.stderr.strip()}")


def read_stamp(layout: Layout) -> SetupInfo | None:
    """The recorded setup, or None when there is none (or an older format)."""
    try:
        data = json.loads(layout.stamp.read_text())
        info = SetupInfo(**data)
    except (OSError, ValueError, TypeError):
        return None
    return info if info.format == STAMP_FORMAT else None


def stage1_digest() -> str:
    """Changes whenever stage 1's script or module list changes (then it is rebuilt)."""
    h = hashlib.sha256(data_file("stage1-init.sh"))
    h.update(" ".join(STAGE1_MODULES).encode())
    return h.hexdigest()[:16]


def is_ready(layout: Layout) -> bool:
    """True if a complete, current setup is in the cache (no network needed to boot)."""
    info = read_stamp(layout)
    return (info is not None and info.stage1_digest == stage1_digest()
            and layout.hypervisor.is_file() and layout.kernel.is_file()
            and layout.stage1.is_file() and not missing_host_packages())


def _download(layout: Layout, packages: list[str], log: Log) -> None:
    layout.debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0] for p in layout.debs.glob("*.deb")}
    need = [p for p in packages if p not in have]
    if not need:
        return
    log(f"downloading {len(need)} Debian packages into {layout.debs}")
    try:
        _apt(["download", *need], cwd=layout.debs)
    except ConfigError:
        _apt(["update", "-q"])
        _apt(["download", *need], cwd=layout.debs)


def _unpack(layout: Layout, packages: list[str]) -> None:
    root = layout.xenroot
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    debs = {p.name.split("_", 1)[0]: p for p in layout.debs.glob("*.deb")}
    for pkg in packages:
        subprocess.run(["dpkg-deb", "-x", str(debs[pkg]), str(root)], check=True)


def _kernel_version(layout: Layout, kpkg: str) -> str:
    version = kpkg.removeprefix("linux-image-")
    if not (layout.xenroot / "lib" / "modules" / version).is_dir():
        raise ConfigError(f"{kpkg} unpacked no lib/modules/{version}")
    return version


def module_index(layout: Layout, kver: str) -> ModuleIndex:
    """The unpacked kernel's modules.dep / modules.builtin."""
    base = layout.xenroot / "lib" / "modules" / kver
    builtin = base / "modules.builtin"
    return ModuleIndex.parse((base / "modules.dep").read_text(),
                             builtin.read_text() if builtin.exists() else "")


def read_module(path: Path) -> bytes:
    """A module file's bytes, decompressed when it is shipped as .ko.xz."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise ConfigError(f"{path}: zstd-compressed modules are not supported")
    return data


def build_stage1(layout: Layout, kver: str) -> None:
    """dom0's stage-1 initramfs: static busybox, the 9p/overlay modules, the init script."""
    index = module_index(layout, kver)
    order = index.load_order(STAGE1_MODULES)
    moddir = layout.xenroot / "lib" / "modules" / kver
    with gzip_cpio(layout.stage1) as w:
        w.add_host_file("bin/busybox", "/bin/busybox")
        for name in order:
            w.add_file(f"mods/{name}.ko", read_module(moddir / index.paths[name]))
        w.add_file("modules.list", "".join(f"{n}\n" for n in order).encode())
        w.add_file("init", data_file("stage1-init.sh"), 0o755)
        for d in ("proc", "sys", "dev"):
            w.add_dir(d)


def setup(layout: Layout, refresh: bool = False, log: Log = _log_stderr) -> SetupInfo:
    """Make the cache ready to boot; quick when it already is.  `refresh` re-downloads."""
    ensure_host_packages(log)
    info = read_stamp(layout)
    if info is not None and not refresh and layout.hypervisor.is_file() \
            and layout.kernel.is_file():
        if info.stage1_digest != stage1_digest() or not layout.stage1.is_file():
            build_stage1(layout, info.kernel_version)
            info = SetupInfo(STAMP_FORMAT, info.kernel_version, info.kernel_package,
                             stage1_digest())
            layout.stamp.write_text(json.dumps(asdict(info)))
        return info
    if refresh and layout.debs.exists():
        shutil.rmtree(layout.debs)
    layout.root.mkdir(parents=True, exist_ok=True)
    kpkg = kernel_package()
    packages = [kpkg, *XEN_PACKAGES]
    _download(layout, packages, log)
    log("unpacking (dpkg -x) Xen and the kernel")
    _unpack(layout, packages)
    kver = _kernel_version(layout, kpkg)
    moddir = layout.xenroot / "lib" / "modules" / kver
    if not (moddir / "modules.dep").exists():
        subprocess.run(["/bin/busybox", "depmod", "-b", str(layout.xenroot), kver], check=True)
    with gzip.open(layout.xenroot / "boot" / f"xen-{XEN_VERSION}-amd64.gz") as src, \
            open(layout.hypervisor, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copyfile(layout.xenroot / "boot" / f"vmlinuz-{kver}", layout.kernel)
    build_stage1(layout, kver)
    info = SetupInfo(STAMP_FORMAT, kver, kpkg, stage1_digest())
    layout.stamp.write_text(json.dumps(asdict(info)))
    log(f"setup done: {layout.root} (Xen {XEN_VERSION}, kernel {kver})")
    return info
