"""docs/handshake.md is generated from the transition tables and must match them."""

from __future__ import annotations

from pathlib import Path

from ringkit.device.diagram import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "handshake.md"


def test_committed_page_matches_the_tables() -> None:
    assert PAGE.read_text() == render(), (
        "docs/handshake.md is stale: run `python -m ringkit.device.diagram > docs/handshake.md`"
    )


def test_every_move_is_drawn() -> None:
    page = render()
    assert "InitWait --> Connected" in page
    assert "Closed --> Initialising" in page
    assert "**restart**" in page
