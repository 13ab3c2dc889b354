"""`ringkit bench vchan-xen` runs under real Xen and prints its four columns (a smoke run with
1 MiB per column: the benchmark checks every byte it carries, and asserts nothing about speed;
neither does this).  Runs in dom0 under ``ringkit xen-vm run`` (``make test-xen``)."""

from __future__ import annotations

import os
import re

import pytest
from click.testing import CliRunner

from ringkit.bench.vchan_xen import command

pytestmark = pytest.mark.xen


@pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen")
def test_vchan_benchmark_against_libxenvchan_runs() -> None:
    result = CliRunner().invoke(command, ["--mib", "1", "--repeat", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^  (.+?) +([\d.]+) MB/s +([\d.]+)x the C proxy", result.output, re.M)
    assert [name for name, _, _ in rows] == ["vchan-socket-proxy", "ringkit vchan",
                                             "ringkit, polling", "ringkit, 64K rings"], \
        result.output
    assert all(float(rate) > 0 for _, rate, _ in rows), result.output
    assert "load average" in result.output
