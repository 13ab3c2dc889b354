"""`ringkit bench block-xen` runs under real Xen and prints its table (a smoke run: 2 MiB disks,
1 MiB of 4 KiB reads, one round; the benchmark checks the SHA-256 of every byte the domU reads
and writes, and the image files dom0 holds afterwards, and asserts nothing about speed; neither
does this).  Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from _harness import DOMU_TEST
from click.testing import CliRunner

from ringkit.bench.block_xen import FIGURES, command

pytestmark = DOMU_TEST


def test_block_benchmark_linux_blkback_against_ringkit_runs(tmp_path: Path) -> None:
    record = tmp_path / "block-xen.json"
    result = CliRunner().invoke(command, ["--mib", "2", "--small-mib", "1", "--repeat", "1",
                                          "--jobs", "2", "--json", str(record)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    print(result.output)
    out = result.output
    assert re.search(r"load average [\d.]+ before, [\d.]+ [\d.]+ [\d.]+ at the end", out), out
    rows = re.findall(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, re.M)
    assert [label.strip() for label, *_ in rows] == \
        [label.replace("N dd", "2 dd") for _, label in FIGURES], out
    assert all(float(a) > 0 and float(b) > 0 for _, a, b, _ in rows), out
    data = json.loads(record.read_text())
    assert [row["key"] for row in data["rows"]] == [key for key, _ in FIGURES]
    # blkfront connected to both backends (its negotiation nodes were read while connected)
    assert set(data["negotiated"]) == {"linux", "ringkit"}, data
