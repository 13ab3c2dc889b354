"""ringkit's shipped drivers and examples import only public ringkit modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from surface_check import private_imports

ROOT = Path(__file__).resolve().parents[2]


def _driver_sources() -> list[tuple[Path, str, bool]]:
    """(file, its module name once installed, is a package) for every shipped driver file."""
    out = []
    for folder, package in (("backends", "ringkit.backends"), ("frontends", "ringkit.frontends"),
                            ("examples", "examples")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            out.append((path, ".".join([package, *parts]), is_package))
    return out


SOURCES = _driver_sources()


def test_the_drivers_are_found() -> None:
    names = {name for _, name, _ in SOURCES}
    assert {"ringkit.backends.block.device", "ringkit.frontends.console.device",
            "ringkit.backends.block", "examples.echo"} <= names


@pytest.mark.parametrize(("path", "module", "is_package"), SOURCES,
                         ids=[name for _, name, _ in SOURCES])
def test_driver_imports_only_public_modules(path: Path, module: str, is_package: bool) -> None:
    assert private_imports(path.read_text(), module, is_package) == []


def test_negative_control_private_imports_are_flagged() -> None:
    source = (
        "from ringkit._errors import ConfigError\n"
        "import ringkit.sim._client\n"
        "from ringkit import _native, device\n"
        "from ..._async.stream import PipeStream\n"
        "from ...channel import RingChannel\n"
        "from . import _helper\n"
        "def later():\n"
        "    from ringkit.xen import _uapi\n"
    )
    assert private_imports(source, "ringkit.backends.console.device") == [
        "ringkit._async.stream", "ringkit._errors", "ringkit._native",
        "ringkit.backends.console._helper", "ringkit.sim._client", "ringkit.xen._uapi",
    ]
    # relative imports resolve from a package's own name when the source is its __init__
    assert private_imports("from ._x import y\n", "ringkit.frontends.block", True) == [
        "ringkit.frontends.block._x"]
    assert private_imports("from ringkit.device import Backend\n", "examples.echo") == []
