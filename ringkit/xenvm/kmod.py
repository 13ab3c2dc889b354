"""Choosing kernel modules for an initramfs from a kernel's modules.dep.

The harness boots Debian's distribution kernel, whose drivers for virtio, 9p, overlayfs and the
Xen devices are modules.  An initramfs needs exactly the modules it loads plus everything they
depend on, in load order; this module works that out from modules.dep (as written by depmod) and
modules.builtin, so that a kernel update which turns a module into a built-in (or adds a
dependency) needs no change here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ("ModuleIndex", "module_name")


def module_name(path: str) -> str:
    """The canonical name of a module file: basename, no .ko(.xz/.zst/.gz), '-' -> '_'."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """What modules.dep and modules.builtin say about one kernel.

    `paths` maps a module name to its file (relative to /lib/modules/<version>/), `deps` a
    module name to the names it needs, `builtin` the names compiled into the kernel.
    """

    paths: Mapping[str, str]
    deps: Mapping[str, tuple[str, ...]]
    builtin: frozenset[str]

    @classmethod
    def parse(cls, modules_dep: str, modules_builtin: str = "") -> ModuleIndex:
        """Read the text of modules.dep (and optionally modules.builtin)."""
        paths: dict[str, str] = {}
        deps: dict[str, tuple[str, ...]] = {}
        for lineno, line in enumerate(modules_dep.splitlines(), 1):
            if not line.strip():
                continue
            target, sep, rest = line.partition(":")
            if not sep:
                raise ConfigError(f"modules.dep line {lineno} has no ':': {line!r}")
            name = module_name(target.strip())
            paths[name] = target.strip()
            deps[name] = tuple(module_name(d) for d in rest.split())
            for d in rest.split():
                paths.setdefault(module_name(d), d)
        builtin = frozenset(module_name(x) for x in modules_builtin.split())
        return cls(paths, deps, builtin)

    def load_order(self, wanted: Iterable[str]) -> list[str]:
        """Module names to load, dependencies first, for the `wanted` modules.

        Built-in modules are left out.  Raises ConfigError naming a module the kernel has
        neither as a module nor built in.
        """
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, stack: tuple[str, ...]) -> None:
            if name in seen or name in self.builtin:
                return
            if name in stack:
                raise ConfigError(f"modules.dep has a dependency cycle: {' -> '.join(stack)}")
            if name not in self.paths:
                raise ConfigError(f"kernel module {name!r} is neither a module nor built in")
            for dep in self.deps.get(name, ()):
                visit(dep, (*stack, name))
            seen.add(name)
            order.append(name)

        for want in wanted:
            visit(module_name(want), ())
        return order

    def dep_lines(self, names: Iterable[str]) -> str:
        """A modules.dep restricted to `names` (which must be closed under dependencies)."""
        chosen = set(names)
        lines = []
        for name in sorted(chosen):
            missing = [d for d in self.deps.get(name, ()) if d not in chosen and
                       d not in self.builtin]
            if missing:
                raise ConfigError(f"module {name} needs {missing}, which were not chosen")
            dep_paths = " ".join(self.paths[d] for d in self.deps.get(name, ()) if d in chosen)
            lines.append(f"{self.paths[name]}: {dep_paths}".rstrip() + "\n")
        return "".join(lines)
