"""Drivers for the device-framework tests: the examples' echo device and variants of it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py (examples/ is not a package)."""
    module_name = f"ringkit_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


echo = load_example("echo")
EchoBackend = echo.EchoBackend
EchoFrontend = echo.EchoFrontend
MESSAGE = echo.MESSAGE


class WideEchoBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """The echo device with 4-page rings and two queues offered."""

    max_ring_page_order = 2
    max_queues = 2


class WideEchoFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    max_ring_page_order = 2
    max_queues = 2
