"""The vchan benchmark still runs end to end (tiny sizes; figures are not checked, but a
transfer that lost bytes fails the run)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ringkit.bench.vchan import command


@pytest.mark.slow
def test_vchan_benchmark_runs() -> None:
    result = CliRunner().invoke(command, ["--mib", "2", "--repeat", "1", "--ring", "4096",
                                          "--poll-us", "100"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "stream bandwidth (MB/s)" in result.output
    assert "polling 100 us" in result.output
