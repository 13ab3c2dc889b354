"""The net benchmark still runs end to end, prints every figure and removes its namespaces
and processes, also when a measurement fails (tiny sizes; figures are not checked: the
benchmark asserts nothing about speed, and neither does this)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ringkit.bench import net
from ringkit.bench.net import command, unavailable

_needs_root = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "runs")


def _namespaces() -> set[str]:
    """The namespaces this process's benchmark run makes that exist now."""
    tag = str(os.getpid() % 100000)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    ours = {f"rkbn{tag}b", f"rkbn{tag}f", f"rkbv{tag}s", f"rkbv{tag}c"}
    return {line.split()[0] for line in listed.splitlines() if line.split()} & ours


def _children() -> list[str]:
    """Command lines of this process's live children (the benchmark's, if any remain)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", text, re.M)
        state = re.search(r"^State:\s+(\S)", text, re.M)
        if ppid and int(ppid[1]) == os.getpid() and not (state and state[1] == "Z"):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.slow
@_needs_root
def test_net_benchmark_prints_every_figure_and_cleans_up(tmp_path: Path) -> None:
    before = set(_children())       # children of earlier tests (multiprocessing's tracker)
    record = tmp_path / "net.json"
    result = CliRunner().invoke(
        command, ["--mib", "1", "--pings", "20", "--frames", "500", "--repeat", "1",
                  "--json", str(record)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"load average [\d.]+ before, [\d.]+ at the end", out), out
    for label in ("TCP, one connection \\(MB/s\\)", "UDP round trip median \\(us\\)",
                  "UDP round trip p99 \\(us\\)", "18-byte UDP frames/s"):
        assert re.search(rf"^{label}\s+[\d,.]+\s+[\d,.]+\s+[\d.]+x$", out, re.M), (label, out)
    assert re.search(r"small frames arrived: netif \d+, veth \d+ of 500 sent", out), out
    data = json.loads(record.read_text())
    assert len(data["load_average_before"]) == 3
    assert [row["key"] for row in data["rows"]] == ["tcp", "rtt_median", "rtt_p99", "fps"]
    assert all(row["netif"] > 0 and row["veth"] > 0 for row in data["rows"]), data
    assert _namespaces() == set() and set(_children()) <= before


@pytest.mark.slow
@_needs_root
def test_a_failed_measurement_still_removes_namespaces_and_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the netif measurement fails once its server runs (the backend,
    frontend, simulated Xen and server all alive); the command fails with the reason and
    leaves nothing behind."""
    seen: dict[str, Any] = {}
    before = set(_children())       # children of earlier tests (multiprocessing's tracker)

    def broken(procs: Any, *args: Any) -> dict[str, Any]:
        seen["namespaces"] = _namespaces()
        seen["children"] = len(procs.children)
        server = procs.start(["ip", "netns", "exec", args[0], "sleep", "60"])
        del server
        raise net.BenchError("deliberately broken measurement")

    monkeypatch.setattr(net, "measure", broken)
    result = CliRunner().invoke(command, ["--mib", "1", "--pings", "5", "--frames", "10",
                                          "--repeat", "1"])
    assert result.exit_code != 0
    assert "deliberately broken measurement" in result.output
    assert len(seen["namespaces"]) == 4 and seen["children"] == 3, seen
    assert _namespaces() == set() and set(_children()) <= before


def test_without_root_it_says_so_and_makes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, ...]] = []
    monkeypatch.setattr(net.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(net, "ip", lambda *args: made.append(args))
    result = CliRunner().invoke(command, ["--repeat", "1"])
    assert result.exit_code == 1
    assert "ringkit bench net needs root (network namespaces and TAP devices)" in result.output
    assert made == []
