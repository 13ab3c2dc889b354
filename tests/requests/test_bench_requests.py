"""`ringkit bench requests --smoke` runs end to end on both anyio backends and prints every
figure with its counters (tiny runs; figures are not checked, but an echo that came back
wrong fails the run)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ringkit.bench.requests import PAGE, EchoPayload, stamp
from ringkit.cli import main


@pytest.mark.slow
def test_requests_benchmark_smoke_prints_every_cell() -> None:
    result = CliRunner().invoke(main, ["bench", "requests", "--smoke"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"\d+ CPUs, load average [\d.]+ [\d.]+ [\d.]+ at the start, "
                     r"[\d.]+ [\d.]+ [\d.]+ at the end", out), out
    assert "command: ringkit bench requests --backend both --smoke" in out
    assert "GrantMapper(persistent=True)" in out
    # one row per backend and mode: ringkit req/s and MiB/s, the socketpair's, the ratio
    number = r"[\d,]+\s+[\d.]+"
    for backend in ("asyncio", "trio"):
        for mode in ("32 callers", "batches of 32"):
            row = rf"^{backend}\s+{mode}\s+{number}\s+{number}\s+[\d.]+x$"
            assert re.search(row, out, re.MULTILINE), (row, out)
    ring = (r"ringkit    front [\d.]+ doorbells [\d.]+ sleeps [\d.]+ polls [\d.]+ us CPU \| "
            r"back [\d.]+ doorbells")
    sockets = r"socketpair front [\d.]+ sends [\d.]+ receives [\d.]+ us CPU \| back [\d.]+ sends"
    assert len(re.findall(ring, out)) == 4, out
    assert len(re.findall(sockets, out)) == 4, out


def test_the_echo_check_refuses_data_the_server_did_not_hand_back() -> None:
    """Negative control for the check every request of the benchmark passes through: the
    client's own data, unstamped, is refused, and so is a stamped reply with a wrong byte."""
    payload = EchoPayload()
    sent = bytes(payload.make(7))
    with pytest.raises(Exception, match="came back wrong"):
        payload.check(7, sent)
    stamped = bytearray(sent)
    stamp(stamped)  # what both servers do
    payload.check(7, stamped)
    stamped[PAGE - 1] ^= 1
    with pytest.raises(Exception, match="came back wrong"):
        payload.check(7, stamped)
