"""mkdocs hook: every public name the API reference shows has a docstring.

mkdocstrings renders an undocumented name as a bare signature and says nothing, so this hook
holds the reference to the rule instead.  It takes the modules from the reference pages' own
``::: module`` lines (what is rendered is what is checked), loads them with griffe as
mkdocstrings does (docstrings inherited from a documented base method count), and logs one
warning per public name without a docstring; ``mkdocs build --strict`` then fails.

Checked: the module itself; every public member of it (its ``__all__`` where it has one);
and in each public class, every public method, property and nested class it defines.  Data
attributes (dataclass fields, enum members, instance attributes) are described in their class's
docstring and are not held to the rule.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.docstrings")

_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)
_documented: set[str] = set()


def on_pre_build(config: Any) -> None:
    _documented.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    _documented.update(_DIRECTIVE.findall(markdown))
    return markdown


def _needs_docstring(obj: griffe.Object | griffe.Alias) -> bool:
    if obj.is_class or obj.is_function or obj.is_module:
        return True
    return "property" in obj.labels


def _missing_in_class(cls: griffe.Class) -> list[str]:
    missing = []
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias or not _needs_docstring(member):
            continue
        if not member.docstring:
            missing.append(member.path)
        if member.is_class:
            missing += _missing_in_class(member)
    return missing


def missing_docstrings(module: griffe.Module) -> list[str]:
    """Paths of the public names of `module` (and of its public classes) with no docstring."""
    missing = [] if module.docstring else [module.path]
    for name, member in module.members.items():
        if not member.is_public or name == "__all__":
            continue
        target = member.final_target if member.is_alias else member
        if not target.docstring:
            missing.append(f"{module.path}.{name}")
        if target.is_class and target.package.name == module.package.name:  # not re-exports
            missing += _missing_in_class(target)
    return sorted(set(missing))


def on_post_build(config: Any) -> None:
    extensions = griffe.load_extensions("griffe_inherited_docstrings")
    loader = griffe.GriffeLoader(search_paths=["."], extensions=extensions,
                                 docstring_parser=griffe.Parser.google)
    for name in sorted(_documented):
        loader.load(name.split(".")[0])
    loader.resolve_aliases(implicit=False, external=None)
    for name in sorted(_documented):
        module = loader.modules_collection[name]
        for path in missing_docstrings(module):
            log.warning("API reference: %s has no docstring", path)
