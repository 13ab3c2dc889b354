"""The driver folders install as ringkit.backends / ringkit.frontends, never as top-level
`backends` / `frontends`, in an editable install (this venv) and in a regular one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import importlib.util, sys
import ringkit, ringkit.backends, ringkit.frontends
assert importlib.util.find_spec("backends") is None, "a top-level 'backends' is importable"
assert importlib.util.find_spec("frontends") is None, "a top-level 'frontends' is importable"
from ringkit import _native
print(ringkit.__file__, ringkit.backends.__file__, sorted(_native.implementations()))
"""


def test_editable_install_maps_driver_packages(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert str(ROOT / "backends") in out


@pytest.mark.slow
def test_regular_install_maps_driver_packages(tmp_path: Path) -> None:
    # Build from a copy, so that build/ and *.egg-info never land in (or race in) the checkout.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.so"
        ),
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    assert (target / "ringkit" / "backends" / "__init__.py").is_file()
    assert not (target / "backends").exists()
    assert not (target / "frontends").exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-s", "-c", CHECK], cwd=tmp_path, env=env, check=True,
        capture_output=True, text=True,
    ).stdout
    assert out.startswith(str(target))
    assert "'compiled'" in out, "the regular install did not build the compiled native helper"
