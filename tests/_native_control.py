"""The shipped C (`ringkit._native._build.SOURCE`) built with one negative-control macro defined
-- a check left out -- as a cffi module of its own, for the tests that must catch that build."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def control_module(tmp: Path, macro: str, prefix: str) -> ModuleType:
    """The shipped C built with `macro` defined (in `tmp`), loaded as ``{prefix}{macro}``."""
    from cffi import FFI

    from ringkit._native._build import CDEF, SOURCE

    name = f"{prefix}{macro.lower()}"
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, SOURCE, define_macros=[(macro, "1")], extra_compile_args=["-O1"])
    library = ffi.compile(tmpdir=str(tmp))
    spec = importlib.util.spec_from_file_location(name, library)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(name, None)
    return module
