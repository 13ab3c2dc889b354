"""A driver project outside ringkit's tree runs its own xen-marked tests under real Xen: the
out-of-tree "ping" project (tests/kit/out_of_tree.py) is written to a temporary directory and
its tests run there with ``-m xen`` -- the real-Xen case of its transport switch connects its
device in dom0 through ringkit's pytest plugin, which it gets from the entry point alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kit.out_of_tree import write_project

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen"),
]


def test_an_out_of_tree_project_runs_its_xen_tests(tmp_path: Path) -> None:
    project = write_project(tmp_path / "ping-project")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "xen", "-p", "no:cacheprovider", "-v", "tests"],
        cwd=project, env=dict(os.environ, RINGKIT_REQUIRE_XEN="1"), capture_output=True,
        text=True, timeout=600, check=False)
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0, "the project's xen tests failed (output above)"
    assert "test_on_each_transport[asyncio-xen] PASSED" in result.stdout
    assert "test_on_each_transport[trio-xen] PASSED" in result.stdout
