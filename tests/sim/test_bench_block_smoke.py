"""The block benchmark still runs end to end and prints its counters (tiny sizes; figures
are not checked: the benchmark asserts nothing about speed, and neither does this)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ringkit.bench.block import command


@pytest.mark.slow
def test_block_benchmark_runs_and_prints_the_counters(tmp_path: Path) -> None:
    record = tmp_path / "block.json"
    result = CliRunner().invoke(
        command, ["--size", "4M", "--passes", "1", "--random-reads", "256", "--repeat", "1",
                  "--poll-us", "20", "--json", str(record)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "sleeping" in out and "polling 20us" in out and "direct" in out
    assert "4 KiB random reads QD32" in out and "a task per read" in out
    assert "writes, lent pages" in out and "reads, lent pages" in out
    # one line per side and mode for each of the six figures, with every counter
    sides = re.findall(r"front [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU \| "
                       r"back [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU", out)
    assert len(sides) == 16, out
    assert len(re.findall(r"direct [\d.]+ us CPU", out)) == 8, out

    # the JSON record holds what was printed, and the plot script draws it
    data = json.loads(record.read_text())
    assert len(data["load_average_before"]) == 3
    rows = {row["key"]: row for row in data["rows"]}
    assert set(rows["seq_read"]["modes"]) == {"sleeping", "polling 20us"}
    figure = rows["seq_read"]["modes"]["sleeping"]
    assert figure["value"] > 0 and "notifications" in figure["front"], figure
    assert f"{figure['value']:.0f} MiB/s" in out.replace("  ", " ")
    svg = tmp_path / "block.svg"
    plot = Path(__file__).resolve().parents[2] / "docs" / "bench" / "plot_block.py"
    subprocess.run([sys.executable, str(plot), f"now={record}", "-o", str(svg)], check=True)
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<rect") == 2 * 8 + 2, text
    ratio = figure["value"] / rows["seq_read"]["direct"]
    assert f"{ratio:.2f}x" in text


@pytest.mark.slow
def test_the_cold_disk_mode_runs_and_prints_every_row(tmp_path: Path) -> None:
    """`--disk`: QD1 and QD32 against direct preadv at the same depths, ringkit once per
    io_engine (uring, threads), the QD32 row once more with both ends polling (``--poll-us``'s
    default), each row with its ratio, and the load average (tiny sizes and times; figures not
    checked)."""
    result = CliRunner().invoke(
        command, ["--disk", str(tmp_path), "--disk-size", "64M", "--seconds", "0.2"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pages evicted before each run" in out and "load average" in out
    rows = re.findall(r"^  (QD1|QD32)\s+(.+?)\s+([\d,]+) IOPS\s+([\d.]+)x$", out, re.M)
    assert [(depth, label.split(" (")[0]) for depth, label, _, _ in rows] == [
        ("QD1", "direct preadv, 1 thread"), ("QD1", "ringkit"), ("QD1", "ringkit"),
        ("QD32", "direct preadv, 32 threads"), ("QD32", "ringkit"), ("QD32", "ringkit"),
        ("QD32", "ringkit"), ("QD32", "ringkit")], out
    assert "io_depth 32, uring)" in out and "io_depth 32, threads)" in out
    assert "io_depth 32, uring, polling 50us)" in out
    assert all(float(ratio) > 0 for *_, ratio in rows)
    assert list(tmp_path.iterdir()) == []   # the image is removed
