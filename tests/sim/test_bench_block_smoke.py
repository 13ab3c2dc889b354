"""The block benchmark still runs end to end and prints its counters (tiny sizes; figures
are not checked: the benchmark asserts nothing about speed, and neither does this)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ringkit.bench.block import command


@pytest.mark.slow
def test_block_benchmark_runs_and_prints_the_counters() -> None:
    result = CliRunner().invoke(
        command, ["--size", "4M", "--passes", "1", "--random-reads", "256", "--repeat", "1",
                  "--poll-us", "20"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "sleeping" in out and "polling 20us" in out and "direct" in out
    assert "4 KiB random reads QD32" in out and "a task per read" in out
    # one line per side and mode for each of the six figures, with every counter
    sides = re.findall(r"front [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU \| "
                       r"back [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU", out)
    assert len(sides) == 12, out
    assert len(re.findall(r"direct [\d.]+ us CPU", out)) == 6, out
