"""Building the initramfs a harness domU boots from.

A domU image is two gzip'd cpio archives concatenated, both built on the host before boot:

* the **base** (cached by content): a static busybox and the init script, the Xen device
  modules, Debian's xenstore tools, and a mirror of the Python that runs the project --
  interpreter, shared libraries, standard library (without its tests and GUI parts) and the
  virtualenv's site-packages (without development-only tools such as mypy, pip and ruff);
* the **project** directory as it is at boot (without VCS data, the venv and caches).

Every host file keeps its absolute path (see `ringkit.xenvm.hostfiles`), so the virtualenv and
the editable install work inside the domU as on the host.  What a domU runs (command,
environment, modules) does not go into the image: dom0 writes it to xenstore while the new
domain is still paused (`job_entries`), so starting a domU builds nothing inside slow,
emulated dom0.  Only extra host files asked for at start time cost a third archive.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import ConfigError
from .cpio import CpioWriter, gzip_cpio
from .hostfiles import Mirror, is_elf, shared_libraries
from .layout import ENV_DOMU, ENV_IN_VM, Layout
from .provision import data_file, module_index, read_module
from .shellenv import env_script

__all__ = (
    "DOMU_MODULES",
    "IMAGE_FORMAT",
    "JOB_KEY",
    "PROJECT_SKIP",
    "SITE_SKIP_PREFIXES",
    "STDLIB_SKIP",
    "XENSTORE_TOOLS",
    "XENSTORE_VALUE_MAX",
    "DomUJob",
    "PythonFiles",
    "base_key",
    "build_base_image",
    "build_run_image",
    "concatenate",
    "ensure_base_image",
    "job_entries",
    "job_environment",
    "project_skip",
    "shell_command",
    "site_skip",
    "stdlib_skip",
    "write_files",
)


DOMU_MODULES = ("xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd", "xenfs",
                "xen_blkfront", "xen_blkback", "loop", "ext4", "crc32c_generic",
                "xen_netfront", "tun")
"""Modules present in every domU image (the first five are loaded at boot).  ``xen_netfront``
and ``tun`` serve the net interop test (Linux's netfront, and a TAP for ringkit's).  ext4 finds its
crc32c through the crypto API rather than modules.dep, so ``crc32c_generic`` is listed by name:
load it before ext4 (``modules=["crc32c_generic", "ext4"]``) or 6.1's ext4 refuses to mount."""

STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "site-packages", "dist-packages", "pydoc_data", "distutils")
"""Standard-library directories a domU never needs."""

SITE_SKIP_PREFIXES = ("mypy", "mypyc", "pip", "setuptools", "pkg_resources", "_distutils_hack",
                      "ruff", "librt", "ast_serialize", "wheel",
                      "mkdocs", "material", "griffe", "pymdownx", "babel")
"""site-packages entries (by name prefix) left out of the image: development tools only (the
documentation tools' material and babel alone are about 100 MB)."""

PROJECT_SKIP = (".git", ".venv", "venv", "build", "dist", ".mypy_cache", ".ruff_cache",
                ".pytest_cache", ".hypothesis", ".xen-vm", "node_modules", ".tox")
"""Project subdirectories not copied into a domU."""

XENSTORE_TOOLS = ("read", "write", "ls", "list", "rm", "exists", "chmod", "watch")

IMAGE_FORMAT = "1"


def _skip_pyc(path: str) -> bool:
    return ".opt-" in os.path.basename(path) and path.endswith(".pyc")


@dataclass(frozen=True)
class PythonFiles:
    """Which host trees make up the Python of the project."""

    executable: str
    stdlib: str
    site_packages: tuple[str, ...]
    prefix: str

    @classmethod
    def current(cls) -> PythonFiles:
        """The running interpreter (run the harness from the project's virtualenv)."""
        site = tuple(p for p in sys.path if p.startswith(sys.prefix) and
                     p.rstrip("/").endswith("-packages") and os.path.isdir(p))
        exe = os.path.join(sys.prefix, "bin", "python")
        if not os.path.exists(exe):
            exe = sys.executable
        return cls(exe, sysconfig.get_paths()["stdlib"], site, sys.prefix)


def stdlib_skip(stdlib: str) -> Callable[[str], bool]:
    """The filter for the standard library tree rooted at `stdlib`."""
    skipped = {os.path.join(stdlib, d) for d in STDLIB_SKIP}

    def skip(path: str) -> bool:
        return path in skipped or _skip_pyc(path) or \
            path.startswith(os.path.join(stdlib, "config-")) or \
            os.path.basename(path).startswith("_tkinter")
    return skip


def site_skip(site: str) -> Callable[[str], bool]:
    """The filter for a site-packages tree: development tools and their caches."""
    def skip(path: str) -> bool:
        if _skip_pyc(path):
            return True
        if os.path.dirname(path) != site:
            return False
        name = os.path.basename(path)
        return name.startswith(SITE_SKIP_PREFIXES) or "__mypyc" in name or \
            name == "distutils-precedence.pth"
    return skip


def project_skip(project: str, prefix: str) -> Callable[[str], bool]:
    """The filter for the project tree: VCS, caches, build output and the venv itself."""
    skipped = {os.path.join(project, d) for d in PROJECT_SKIP}

    def skip(path: str) -> bool:
        return path in skipped or path == prefix or path.endswith(".egg-info") or \
            _skip_pyc(path)
    return skip


def _tree_fingerprint(h: hashlib._Hash, top: str, skip: Callable[[str], bool]) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not skip(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if skip(p):
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def base_key(py: PythonFiles, kernel_version: str) -> str:
    """A digest that changes whenever the base image's contents would."""
    h = hashlib.sha256(f"{IMAGE_FORMAT}\0{kernel_version}\0{py}\0{DOMU_MODULES}\0".encode())
    h.update(data_file("domu-init.sh"))
    _tree_fingerprint(h, py.stdlib, stdlib_skip(py.stdlib))
    for site in py.site_packages:
        _tree_fingerprint(h, site, site_skip(site))
    return h.hexdigest()[:20]


def _add_modules(w: CpioWriter, mirror: Mirror, layout: Layout, kver: str) -> None:
    index = module_index(layout, kver)
    chosen = index.load_order(DOMU_MODULES)
    src = layout.xenroot / "lib" / "modules" / kver
    dest = mirror.real_dir("/lib/modules") + "/" + kver
    for name in chosen:
        w.add_file(f"{dest}/{index.paths[name]}", read_module(src / index.paths[name]))
    w.add_file(f"{dest}/modules.dep", index.dep_lines(chosen).encode())
    builtin = src / "modules.builtin"
    if builtin.exists():
        w.add_host_file(f"{dest}/modules.builtin", builtin)


def _add_xenstore_tools(w: CpioWriter, mirror: Mirror, layout: Layout) -> None:
    libdir = mirror.real_dir("/usr/lib/x86_64-linux-gnu")
    bindir = mirror.real_dir("/usr/bin")
    lib = layout.xenroot / "usr" / "lib" / "x86_64-linux-gnu"
    for so in ("libxenstore.so.4", "libxentoolcore.so.1"):
        w.add_file(f"{libdir}/{so}", (lib / so).read_bytes(), 0o644)
    w.add_host_file(f"{bindir}/xenstore", layout.xenroot / "usr" / "bin" / "xenstore")
    for tool in XENSTORE_TOOLS:
        w.add_symlink(f"{bindir}/xenstore-{tool}", "xenstore")


def build_base_image(layout: Layout, kernel_version: str, out: Path,
                     py: PythonFiles | None = None,
                     log: Callable[[str], None] = lambda _m: None) -> None:
    """Write the base archive for domUs to `out` (see the module docstring)."""
    py = py or PythonFiles.current()
    with gzip_cpio(out) as w:
        mirror = Mirror(w)
        w.add_host_file("ringkit/bin/busybox", "/bin/busybox")
        w.add_file("init", data_file("domu-init.sh"), 0o755)
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "ringkit/job"):
            w.add_dir(d, 0o1777 if d == "tmp" else 0o755)
        _add_modules(w, mirror, layout, kernel_version)
        _add_xenstore_tools(w, mirror, layout)
        mirror.add(py.executable)
        mirror.add_tree(py.stdlib, stdlib_skip(py.stdlib))
        cfg = os.path.join(py.prefix, "pyvenv.cfg")
        if os.path.exists(cfg):
            mirror.add(cfg)
            # the venv's scripts and python links, not its native tools (ruff alone is 24 MB)
            mirror.add_tree(os.path.join(py.prefix, "bin"),
                            lambda p: os.path.isfile(p) and not os.path.islink(p) and is_elf(p))
        for site in py.site_packages:
            mirror.add_tree(site, site_skip(site))
        elves = [p for p in mirror.copied if is_elf(p)]
        libs = shared_libraries(elves, on_missing=lambda p, why: log(f"skipped {p}: {why}"))
        for lib in libs:
            mirror.add(lib)


def build_run_image(base: Path, project: str, venv_prefix: str | None, out: Path) -> None:
    """`out` = the cached base image followed by a snapshot of `project`."""
    project_part = out.with_name(out.name + ".project")
    try:
        with gzip_cpio(project_part) as w:
            write_files(w, project, venv_prefix)
        concatenate([base, project_part], out)
    finally:
        project_part.unlink(missing_ok=True)


def ensure_base_image(layout: Layout, kernel_version: str,
                      log: Callable[[str], None] | None = None) -> Path:
    """The cached base image for the running Python, built if missing or out of date."""
    def say(msg: str) -> None:
        print(f"[xen-vm] {msg}", file=sys.stderr, flush=True)
    log = log or say
    py = PythonFiles.current()
    key = base_key(py, kernel_version)
    path = layout.domu_images / f"base-{key}.cpio.gz"
    if path.exists():
        return path
    layout.domu_images.mkdir(parents=True, exist_ok=True)
    for old in layout.domu_images.glob("base-*.cpio.gz"):
        old.unlink()
    log(f"building the domU base image for {py.executable} (once per venv change)")
    build_base_image(layout, kernel_version, path, py, log)
    log(f"domU base image: {path} ({path.stat().st_size >> 20} MB)")
    return path


@dataclass(frozen=True)
class DomUJob:
    """What one domU runs: a shell command line in `cwd`, with `env` and kernel `modules`."""

    command: str
    cwd: str
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    venv_prefix: str | None = None
    modules: Sequence[str] = ()


def job_environment(job: DomUJob) -> dict[str, str]:
    """The environment the domU's command gets."""
    path = ["/usr/local/bin", "/usr/bin", "/ringkit/bin"]
    if job.venv_prefix:
        path.insert(0, os.path.join(job.venv_prefix, "bin"))
    env = {"PATH": ":".join(path), "HOME": "/root", "TERM": "dumb", "LANG": "C.UTF-8",
           ENV_IN_VM: "1", ENV_DOMU: job.name, "RK_CWD": job.cwd}
    if job.venv_prefix:
        env["VIRTUAL_ENV"] = job.venv_prefix
    env.update(job.env)
    return env


def write_files(w: CpioWriter, project: str | None, venv_prefix: str | None,
                extra_files: Sequence[str] = (), root: str = "/") -> None:
    """Add the project tree and extra host files (with the libraries their ELF files need)."""
    mirror = Mirror(w, root)
    if project:
        mirror.add_tree(project, project_skip(project, venv_prefix or "\0"))
    for path in extra_files:
        if os.path.isdir(os.path.join(root, path.lstrip("/"))):
            mirror.add_tree(path)
        else:
            mirror.add(path)
    elves = [p for p in mirror.copied if is_elf(os.path.join(root, p.lstrip("/")))]
    if elves and root == "/":
        for lib in shared_libraries(elves):
            mirror.add(lib)


JOB_KEY = "ringkit-job"
"""The domU's job lives in xenstore at /local/domain/<domid>/ringkit-job/{cmd,env,modules}:
dom0 writes it while the new domain is paused, the domU's init reads it (its home is readable)."""

XENSTORE_VALUE_MAX = 4000
"""A little under xenstore's 4096-byte payload limit."""


def job_entries(job: DomUJob) -> dict[str, str]:
    """The xenstore values (relative to the domain's home) that carry `job` to the domU.

    Raises ConfigError when one is too long for xenstore.
    """
    entries = {
        f"{JOB_KEY}/cmd": job.command + "\n",
        f"{JOB_KEY}/env": env_script(job_environment(job)),
        f"{JOB_KEY}/modules": "".join(f"{m}\n" for m in job.modules),
    }
    for key, value in entries.items():
        if len(value.encode()) > XENSTORE_VALUE_MAX:
            raise ConfigError(f"the domU job's {key.rsplit('/', 1)[1]} is "
                              f"{len(value.encode())} bytes; xenstore takes at most "
                              f"{XENSTORE_VALUE_MAX}: put long commands in a script file")
    return entries


def shell_command(argv: Sequence[str]) -> str:
    """Quote an argv into the command line a job runs."""
    if not argv:
        raise ConfigError("a domU job needs a command")
    return shlex.join(argv)


def concatenate(parts: Iterable[Path], out: Path) -> None:
    """Write the concatenation of initramfs archives (the kernel unpacks them in order)."""
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
