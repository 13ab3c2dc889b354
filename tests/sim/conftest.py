"""Figures the simulator tests measure but never assert (the machine is shared) are recorded
with ``record_property`` under a name ending in ``_ms`` and listed at the end of the run, so
they show without ``-s``."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = [
        (report.nodeid, name, value)
        for report in terminalreporter.stats.get("passed", [])
        if report.when == "call"
        for name, value in report.user_properties
        if name.endswith("_ms")
    ]
    if rows:
        terminalreporter.section("simulator figures (measured, not asserted)")
        for nodeid, name, value in rows:
            terminalreporter.write_line(f"{nodeid}: {name} = {value}")
