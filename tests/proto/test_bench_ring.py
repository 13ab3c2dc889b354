"""`ringkit bench ring` runs end to end (tiny counts: this checks the command, not speed)."""

from __future__ import annotations

from click.testing import CliRunner

from ringkit import _native
from ringkit.cli import main


def test_bench_group_discovers_the_ring_module() -> None:
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "ring" in result.output.split("Commands:")[1]


def test_bench_ring_prints_every_scenario_for_every_implementation() -> None:
    result = CliRunner().invoke(
        main, ["bench", "ring", "--requests", "200", "--repeat", "1"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    for scenario in ("one at a time", "per-slot calls", "batched copies", "index load+store"):
        assert scenario in result.output
    for name in _native.implementations():
        assert f"{name} ns/op" in result.output


def test_unknown_bench_is_an_error() -> None:
    result = CliRunner().invoke(main, ["bench", "no-such-bench"])
    assert result.exit_code != 0
