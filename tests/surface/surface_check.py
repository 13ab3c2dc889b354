"""Static checks of ringkit's public surface, usable on any module source (so that the tests can
feed them a deliberately broken one, as a negative control).

* `all_problems`: a public module's ``__all__`` (a tuple) must list every public name the module
  defines (``def``, ``class``, a top-level assignment) or re-exports (``from x import Y as Y``),
  and only names the module has.  Not counted as definitions: aliases of an existing object
  (``S = XenbusState``), type variables and loggers.
* `private_imports`: the ringkit modules a source imports whose dotted name has a component with
  a leading underscore (``ringkit._errors``, ``ringkit.sim._client``), relative imports
  resolved against the importing module's name.
* `private_reads`: the attributes with a leading underscore that a source reads or writes on an
  object it does not own (see the function for what it owns).
* `imported_names`: the (module, name) pairs a source imports from ringkit.
* `import_problems`: a source's imports of private names, and of names out of private modules
  that ringkit also exports publicly.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import types
from pathlib import Path
from typing import Any, TypeVar

PUBLIC_ROOTS = ("ringkit", "ringkit.backends", "ringkit.frontends")


def is_public(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def ringkit_modules() -> list[str]:
    """Every module and package under ringkit (with the driver packages mounted in it)."""
    names: set[str] = set()
    for root in PUBLIC_ROOTS:
        package = importlib.import_module(root)
        names.add(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, root + "."))
    return sorted(names)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements at module level, including those inside top-level if/try blocks."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
    return out


def _not_a_definition(value: Any) -> bool:
    return isinstance(value, TypeVar | logging.Logger)


def public_names(source: str, namespace: dict[str, Any]) -> set[str]:
    """The public names `source` (whose executed namespace is `namespace`) defines or
    re-exports."""
    names: set[str] = set()
    for node in _top_level(ast.parse(source).body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            if isinstance(node.value, ast.Name | ast.Attribute):
                continue  # an alias of an existing object
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.asname for a in node.names if a.asname and a.asname == a.name)
    return {n for n in names if not n.startswith("_") and n in namespace
            and not _not_a_definition(namespace[n])}


def all_problems(source: str, namespace: dict[str, Any]) -> list[str]:
    """What is wrong with the ``__all__`` of a module with this source and namespace."""
    declared = namespace.get("__all__")
    if not isinstance(declared, tuple):
        return [f"__all__ must be a tuple, is {type(declared).__name__}"]
    problems = [f"__all__ names {n!r}, which the module does not have"
                for n in declared if n not in namespace]
    problems += [f"{n!r} is listed {declared.count(n)} times in __all__"
                 for n in sorted(set(declared)) if declared.count(n) > 1]
    problems += [f"public name {n!r} is missing from __all__"
                 for n in sorted(public_names(source, namespace) - set(declared))]
    return problems


def module_problems(module: types.ModuleType) -> list[str]:
    # Read the file itself: modules imported early by the test kit's pytest plugin are loaded
    # by pytest's assertion-rewriting hook, which has no get_source.
    assert module.__file__ is not None, module
    source = Path(module.__file__).read_text(encoding="utf-8")
    return all_problems(source, vars(module))


def exec_module(name: str, source: str, is_package: bool = False) -> dict[str, Any]:
    """Execute a synthetic module's `source`; returns its namespace."""
    namespace: dict[str, Any] = {"__name__": name,
                                 "__package__": name if is_package else name.rpartition(".")[0]}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if not is_public(base):
        return [base]
    # `from pkg import name` may name a submodule (`from ringkit import _native`)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The private ringkit modules `source` (module `module`) imports, anywhere in it."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(module, is_package, node)
        else:
            continue
        found += [t for t in targets
                  if (t == "ringkit" or t.startswith("ringkit.")) and not is_public(t)]
    return sorted(set(found))


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that `source` imports, at any depth (function-local imports too:
    they hide an import circle at import time, not its tangle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)[0]
            # `from pkg import sub` imports the submodule; `from pkg import name`, the package
            subs = [f"{base}.{alias.name}" for alias in node.names]
            found.update(sub for sub in subs if sub in known)
            if any(sub not in known for sub in subs):
                found.add(base)
    return (found & known) - {module}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _own_privates(tree: ast.Module) -> set[str]:
    """The private attribute names the source itself defines: in a class body (a method, a
    class attribute) or by assigning ``self._x``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(item.name)
                elif isinstance(item, ast.Assign | ast.AnnAssign):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and sub.value.id == "self"):
                        names.add(sub.attr)
    return {n for n in names if _is_private(n)}


def _private_module_names(tree: ast.Module) -> set[str]:
    """The dotted names under which the source binds a private ringkit module
    (``from ringkit import _pagemap`` -> ``_pagemap``; ``import ringkit._native`` ->
    ``ringkit._native``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ringkit.") and not is_public(alias.name):
                    if alias.asname:
                        names.add(alias.asname)
                    else:  # `import a.b._c` binds `a`; the chain down to `_c` is the module
                        parts = alias.name.split(".")
                        names.update(".".join(parts[:i]) for i in range(2, len(parts) + 1)
                                     if not is_public(".".join(parts[:i])))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "ringkit" or node.module.startswith("ringkit.")):
            for alias in node.names:
                if not is_public(f"{node.module}.{alias.name}"):
                    names.add(alias.asname or alias.name)
    return names


# `os._exit` is the documented way out of a forked child; its underscore is not privacy.
_PUBLIC_DESPITE_THE_UNDERSCORE = frozenset({"os._exit"})
_ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


def private_reads(source: str) -> list[str]:
    """``"line: expression"`` for each private attribute `source` reads or writes on an object
    it does not own.  It owns:

    * ``self``, ``cls`` and ``super()`` -- its own object;
    * the private names it defines itself (in a class body, or as ``self._x = ...``): a module
      may use the privates of the objects it makes, as Python's convention has it;
    * the attributes of a private ringkit module it imports (``_pagemap._munmap``): that is
      a test of the private module itself, which is free to look inside it.

    Spelled through ``getattr``/``setattr``/``monkeypatch.setattr(obj, "_x", ...)`` counts too.
    """
    tree = ast.parse(source)
    own = _own_privates(tree)
    modules = _private_module_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            holder, name = node.value, node.attr
        elif (isinstance(node, ast.Call) and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value)
              and ((isinstance(node.func, ast.Name) and node.func.id in _ATTRIBUTE_BUILTINS)
                   or (isinstance(node.func, ast.Attribute)
                       and node.func.attr in ("setattr", "delattr")))):
            holder, name = node.args[0], node.args[1].value
        else:
            continue
        if isinstance(holder, ast.Name) and holder.id in ("self", "cls"):
            continue
        if (isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name)
                and holder.func.id == "super"):
            continue
        if name in own:
            continue
        dotted = _dotted(holder)
        if dotted is not None and (dotted in modules or f"{dotted}.{name}" in modules
                                   or f"{dotted}.{name}" in _PUBLIC_DESPITE_THE_UNDERSCORE):
            continue
        found.append((node.lineno, f"{node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(set(found))]


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[str, str]]:
    """The (ringkit module, name) pairs `source` (module `module`) imports with
    ``from ... import``, relative imports resolved."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)[0]
            if base == "ringkit" or base.startswith("ringkit."):
                found += [(base, alias.name) for alias in node.names if alias.name != "*"]
    return sorted(set(found))


def public_exports() -> dict[int, str]:
    """``{id(obj): "public.module.Name"}`` for the classes and functions the public modules
    list in ``__all__`` (the first public name found for each)."""
    found: dict[int, str] = {}
    for name in ringkit_modules():
        if not is_public(name):
            continue
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr, None)
            if isinstance(obj, type) or inspect.isroutine(obj):
                found.setdefault(id(obj), f"{name}.{attr}")
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_problems(source: str, module: str, exports: dict[int, str]) -> list[str]:
    """What `source` (module `module`) imports from ringkit that it should not:

    * a private name (``from ringkit.bench.requests import _stamp``), unless it is a private
      module (``from ringkit import _native``: a test of that module);
    * a name out of a private module that a public module exports (`exports`, from
      `public_exports`): ``from ringkit._errors import ConfigError`` -> ``ringkit.ConfigError``.

    A name that only a private module has (``ringkit._native.NativeImpl``) is the private
    module's own business, and a test of that module may import it."""
    problems: list[str] = []
    for base, name in imported_names(source, module):
        full = f"{base}.{name}"
        if _is_module(full):
            continue
        if _is_private(name):
            problems.append(f"{full} is private")
        elif not is_public(base):
            public = exports.get(id(getattr(importlib.import_module(base), name, None)))
            if public is not None:
                problems.append(f"{full} is public as {public}")
    return problems
