"""The driver folders install as ringkit.backends / ringkit.frontends, never as top-level
`backends` / `frontends`, in an editable install (this venv) and in a regular one."""

from __future__ import annotations

import os
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
print(ringkit.__file__, ringkit.backends.__file__)
"""


def test_editable_install_maps_driver_packages(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert str(ROOT / "backends") in out


@pytest.mark.slow
def test_regular_install_maps_driver_packages(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
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
