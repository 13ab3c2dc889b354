"""`ringkit bench net-xen` runs under real Xen and prints its table (a smoke run: 1 MiB of TCP,
a few round trips and frames, one round; the benchmark checks the SHA-256 of the TCP bytes each
way it measures, and asserts nothing about speed; neither does this).  Runs in dom0 under
``ringkit xen-vm run --domu`` (``make test-xen``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from _harness import DOMU_TEST
from click.testing import CliRunner

from ringkit.bench.net import ROWS
from ringkit.bench.net_xen import command

pytestmark = DOMU_TEST


def test_net_benchmark_linux_netback_against_ringkit_runs(tmp_path: Path) -> None:
    record = tmp_path / "net-xen.json"
    result = CliRunner().invoke(command, ["--mib", "1", "--pings", "10", "--frames", "100",
                                          "--repeat", "1", "--json", str(record)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    print(result.output)
    out = result.output
    assert re.search(r"load average [\d.]+ before, [\d.]+ [\d.]+ [\d.]+ at the end", out), out
    for _, label, _ in ROWS:
        assert re.search(rf"^{re.escape(label)}\s+[\d,.]+\s+[\d,.]+\s+[\d.]+x$", out, re.M), \
            (label, out)
    data = json.loads(record.read_text())
    assert [row["key"] for row in data["rows"]] == [key for key, _, _ in ROWS]
    assert all(row["linux"] > 0 and row["ringkit"] > 0 for row in data["rows"]), data
