"""Every repository path the README, the changelog and the docs cite outside their code examples
exists: a page that points at a test or a file proves nothing once the file is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)
PATH = re.compile(r"(?<![\w/.~-])((?:tests|examples|docs|ringkit|backends|frontends)/[\w./-]*\w)")


def cited(text: str) -> set[str]:
    """Repository paths named in `text`, outside fenced code blocks."""
    return set(PATH.findall(FENCE.sub("", text)))


def test_cited_paths_exist() -> None:
    missing = [f"{page.relative_to(ROOT)}: {path}" for page in PAGES
               for path in sorted(cited(page.read_text())) if not (ROOT / path).exists()]
    assert missing == []


def test_the_proofs_page_cites_tests() -> None:
    assert len(cited((ROOT / "docs" / "proofs.md").read_text())) > 50


def test_negative_control_a_missing_path_is_seen() -> None:
    text = "see `tests/nowhere/test_gone.py` and ~/.cache/ringkit/xen-vm\n```\ntests/x.py\n```\n"
    assert cited(text) == {"tests/nowhere/test_gone.py"}
