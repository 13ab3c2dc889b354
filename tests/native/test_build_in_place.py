"""``python ringkit/_native/_build.py`` builds the compiled helper next to the package.

The in-place build is what a contributor runs after editing the C without reinstalling.  It
used to fail from the project's directory: cffi drives setuptools, which read the project's
pyproject.toml from the working directory and refused its layout ("Multiple top-level packages
discovered in a flat-layout").  Here the script runs from a copy of itself, in a directory laid
out like the project's (its pyproject.toml, top-level ``backends`` and ``frontends``: the
trap; the previous script fails here), and the module it leaves next to itself must load and
carry the C of SOURCE.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import ringkit._native._build as build

ROOT = Path(build.__file__).resolve().parents[2]


def test_the_in_place_build_leaves_a_loadable_module(tmp_path: Path) -> None:
    package = tmp_path / "ringkit" / "_native"
    package.mkdir(parents=True)
    script = package / "_build.py"
    shutil.copy2(build.__file__, script)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in ("backends", "frontends"):    # the project's other top-level packages
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").touch()
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    built = [p for p in package.iterdir() if p.name.startswith("_compiled.") and
             p.suffix == ".so"]
    assert len(built) == 1, sorted(p.name for p in package.iterdir())
    spec = importlib.util.spec_from_file_location("ringkit._native._compiled", built[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("rk_load32", "rk_shadow_submit", "rk_nettx_submit", "rk_nettx_complete"):
        assert hasattr(module.lib, name), name
