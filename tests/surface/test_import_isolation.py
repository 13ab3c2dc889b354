"""Every ringkit module imports on its own in a fresh interpreter, and no two ringkit modules
import each other (directly or round a longer loop), even through function-local imports."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from surface_check import import_cycles, imported_modules, ringkit_modules


def isolated_import_failures(names: list[str], pythonpath: str | None = None) -> dict[str, str]:
    """{module: last line of the error} for each module that fails `import <module>` alone in a
    fresh interpreter."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath

    def attempt(name: str) -> tuple[str, str | None]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return name, None
        return name, (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(attempt, names))
    return {name: error for name, error in results if error is not None}


def _sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for name in ringkit_modules():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        if spec.origin.endswith(".py"):
            out[name] = (Path(spec.origin).read_text(), spec.submodule_search_locations is not None)
    return out


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    # ringkit.sim.__main__ runs the simulator's command line when imported: that is its job
    names = [n for n in ringkit_modules() if not n.endswith(".__main__")]
    assert isolated_import_failures(names) == {}


def test_no_import_circles_among_ringkit_modules() -> None:
    sources = _sources()
    known = set(sources)
    graph = {name: imported_modules(src, name, is_pkg, known)
             for name, (src, is_pkg) in sources.items()}
    assert graph["ringkit.xenvm.boot"], "the graph misses the harness's imports"
    assert import_cycles(graph) == []


def _package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_negative_control_a_circle_is_caught(tmp_path: Path) -> None:
    # a circle that breaks at import time, whichever module comes first
    _package(tmp_path, {
        "circ/__init__.py": "",
        "circ/a.py": "from .b import B\nA = 1\n",
        "circ/b.py": "from .a import A\nB = 2\n",
        "circ/fine.py": "X = 1\n",
    })
    failures = isolated_import_failures(["circ.a", "circ.b", "circ.fine"], str(tmp_path))
    assert set(failures) == {"circ.a", "circ.b"}
    assert all("partially initialized module" in error for error in failures.values())


def test_negative_control_a_hidden_circle_is_caught() -> None:
    # the shape boot.py and domu_image.py had: one side imports the other inside a function
    known = {"pkg", "pkg.boot", "pkg.image", "pkg.layout"}
    sources = {
        "pkg": ("", True),
        "pkg.boot": ("from .layout import L\ndef run():\n    from .image import build\n", False),
        "pkg.image": ("from . import layout\nfrom .boot import env\n", False),
        "pkg.layout": ("L = 1\n", False),
    }
    graph = {name: imported_modules(src, name, is_pkg, known)
             for name, (src, is_pkg) in sources.items()}
    assert graph["pkg.image"] == {"pkg.layout", "pkg.boot"}
    assert import_cycles(graph) == [["pkg.boot", "pkg.image"]]
