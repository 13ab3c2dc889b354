"""The transport benchmark still runs end to end (tiny counts; figures are not checked)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ringkit.bench.transport import command


@pytest.mark.slow
def test_transport_benchmark_runs() -> None:
    result = CliRunner().invoke(
        command, ["--rounds", "20", "--requests", "500", "--repeat", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "ping-pong round trip" in result.output and "112-byte echo" in result.output
