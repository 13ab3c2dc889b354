"""Every public module's ``__all__`` is a tuple naming exactly its public names, and
``ringkit.__version__`` is the installed distribution's version."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
from surface_check import all_problems, exec_module, is_public, module_problems, ringkit_modules

import ringkit

PUBLIC_MODULES = [name for name in ringkit_modules() if is_public(name)]


def test_the_walk_sees_the_framework_and_the_drivers() -> None:
    for name in ("ringkit", "ringkit.channel", "ringkit.device.backend", "ringkit.proto.blkif",
                 "ringkit.backends.block.device", "ringkit.frontends.console.device"):
        assert name in PUBLIC_MODULES, name
    assert "ringkit._errors" not in PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    assert module_problems(importlib.import_module(name)) == []


BROKEN = '''
import logging
from typing import TypeVar
from os import path as path
from os import sep
from collections import OrderedDict as Ordered
T = TypeVar("T")
log = logging.getLogger(__name__)
Alias = Ordered
LIMIT = 4
class Visible: pass
def helper() -> None: pass
def _private() -> None: pass
__all__ = ("Visible", "Vanished", "Visible")
'''


def test_negative_control_a_broken_all_is_flagged() -> None:
    problems = all_problems(BROKEN, exec_module("demo", BROKEN))
    assert problems == [
        "__all__ names 'Vanished', which the module does not have",
        "'Visible' is listed 2 times in __all__",
        "public name 'LIMIT' is missing from __all__",
        "public name 'helper' is missing from __all__",
        "public name 'path' is missing from __all__",
    ]


def test_negative_control_all_must_be_a_tuple() -> None:
    source = 'X = 1\n__all__ = ["X"]\n'
    assert all_problems(source, exec_module("demo", source)) == ["__all__ must be a tuple, is list"]
    source = "X = 1\n"
    assert all_problems(source, exec_module("demo", source)) == [
        "__all__ must be a tuple, is NoneType"]


def test_version_is_the_installed_distribution_version() -> None:
    assert ringkit.__version__ == importlib.metadata.version("ringkit")
    assert "__version__" in ringkit.__all__
