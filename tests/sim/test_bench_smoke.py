"""The transport benchmark still runs end to end and prints its counters (tiny counts;
figures are not checked)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ringkit.bench.transport import command


@pytest.mark.slow
def test_transport_benchmark_runs() -> None:
    result = CliRunner().invoke(
        command, ["--rounds", "20", "--requests", "500", "--repeat", "1", "--poll-us", "30"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ping-pong round trip" in out and "112-byte echo" in out
    for row in ("RingChannel sleeping", "RingChannel polling 30us"):
        assert f"ping-pong round trip, {row}" in out and f"112-byte echo, {row}" in out
    # six rows, each with the ring's counters and both socket baselines', for both sides
    ring = r"front [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU \| back "
    sockets = r"front [\d.]+ sends [\d.]+ receives [\d.]+ us CPU \| back "
    assert len(re.findall(ring, out)) == 6, out
    assert len(re.findall(sockets, out)) == 12, out
