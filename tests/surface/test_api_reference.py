"""The API reference (docs/reference, built strictly by `make docs` inside `make check`) covers
the modules a driver author uses, and its docstring rule catches what it is meant to catch."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import griffe

ROOT = Path(__file__).resolve().parents[2]

DRIVER_AUTHOR_MODULES = {
    "ringkit", "ringkit.device", "ringkit.channel", "ringkit.requests", "ringkit.abc",
    "ringkit.proto.layout", "ringkit.proto.ring", "ringkit.proto.blkif", "ringkit.proto.xenbus",
    "ringkit.testing", "ringkit.testing.pytest_plugin", "ringkit.testing.conformance",
    "ringkit.testing.memory", "ringkit.testing.pipes", "ringkit.sim", "ringkit.xen",
    "ringkit.vchan", "ringkit.uring", "ringkit.persistent_grants",
}


def _hook() -> ModuleType:
    path = ROOT / "docs" / "_hooks" / "docstrings.py"
    spec = importlib.util.spec_from_file_location("ringkit_docs_hook", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_renders_every_driver_author_module() -> None:
    pages = (ROOT / "docs" / "reference").glob("*.md")
    rendered = {name for page in pages
                for name in re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), re.MULTILINE)}
    assert rendered >= DRIVER_AUTHOR_MODULES, DRIVER_AUTHOR_MODULES - rendered


def test_every_reference_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        assert f"reference/{page.name}" in nav, page.name


SOURCE = '''
"""A module."""

__all__ = ("Documented", "Bare", "bare_function", "LIMIT", "documented_function")

LIMIT = 4

def bare_function(): pass

def documented_function():
    """Documented."""

def not_exported(): pass

class Documented:
    """Documented."""

    size: int = 0

    def method(self):
        """Documented."""

    def bare_method(self): pass

    def _private(self): pass

    @property
    def bare_property(self): return 1

class Bare:
    pass
'''


def test_negative_control_undocumented_public_names_are_reported() -> None:
    with griffe.temporary_visited_module(SOURCE, module_name="sample") as module:
        assert _hook().missing_docstrings(module) == [
            "sample.Bare", "sample.Documented.bare_method", "sample.Documented.bare_property",
            "sample.LIMIT", "sample.bare_function",
        ]


def test_make_docs_builds_strictly_and_not_quietly() -> None:
    # mkdocs' --quiet drops warnings before --strict counts them: the build would pass anything.
    recipe = [line for line in (ROOT / "Makefile").read_text().splitlines()
              if "mkdocs build" in line and not line.lstrip().startswith("#")]
    assert len(recipe) == 1, recipe
    words = recipe[0].split()
    assert "--strict" in words and "--quiet" not in words and "-q" not in words, recipe
    assert re.search(r"^check:.*\bdocs\b", (ROOT / "Makefile").read_text(), re.MULTILINE)
