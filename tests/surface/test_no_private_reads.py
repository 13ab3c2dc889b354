"""The tests and the test kit (``ringkit.testing``) see ringkit through its public surface.

What a test needs to see has a public name: a device's `ended_by` and `settled`, a pool's
``free``, a store's raw ``request``, a watch's ``pending``, a shell's ``event``...  So no
test or kit module reads or writes a private attribute (one leading underscore) of an object
it does not own, and no test imports a private name, or takes out of a private module a name
that ringkit exports publicly.

Allowed, and why (the whole list; `surface_check.private_reads` and `import_problems` say it
in code):

* ``self``, ``cls``, ``super()``: a class's own state.  (A test subclass overriding a hook of
  the device's supervisor is white-box testing, but its object is its own.)
* private names the module itself defines (in a class body, or as ``self._x``): a fake or a
  helper the module made is the module's to look inside, as Python's convention has it.
* a private ringkit module, imported as a module (``from ringkit import _pagemap``,
  ``import ringkit._native``), its attributes and the names only it has: that is a test of
  the private module itself (the native layer, the page mapper, the sim's kernel, the ABI).
* ``os._exit``: the standard library's documented exit for a forked child.

The kit is part of ringkit: its imports of ringkit's own private modules (``.._errors``) are
governed like ringkit's, by tests/surface/test_private_imports.py for what ships to drivers;
what it may not do is read the private state of the objects it tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from surface_check import import_problems, private_reads, public_exports

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "ringkit" / "testing"
TESTS = ROOT / "tests"

SOURCES = sorted([*TESTS.rglob("*.py"), *KIT.rglob("*.py")])
TEST_SOURCES = sorted(TESTS.rglob("*.py"))

def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_scan_sees_the_tests_and_the_kit() -> None:
    names = {_id(p) for p in SOURCES}
    assert {"ringkit/testing/_xenbus_matrix.py", "ringkit/testing/memory.py",
            "tests/device/test_leftover_closed.py", "tests/store/xs_helpers.py",
            "tests/surface/test_no_private_reads.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=_id)
def test_no_private_attribute_of_another_object(path: Path) -> None:
    assert private_reads(path.read_text(encoding="utf-8")) == []


@pytest.fixture(scope="module")
def exports() -> dict[int, str]:
    return public_exports()


@pytest.mark.parametrize("path", TEST_SOURCES, ids=_id)
def test_tests_import_public_names(path: Path, exports: dict[int, str]) -> None:
    assert import_problems(path.read_text(encoding="utf-8"), "tests.module", exports) == []


# --------------------------------------------------------------------------- negative controls


PRIVATE_READS = '''
import os
from ringkit import _pagemap
import ringkit._native
from ringkit._native import _capi

class Fake:
    _limit = 3
    def __init__(self, peer):
        self._pending = []
        self.peer = peer
    def deliver(self):
        self.peer._pending.append(1)          # its own kind of object: allowed
        return super()._react(), self._limit, type(self)._limit

class Held(Backend):
    async def _carry_out(self, reaction):
        await super()._carry_out(reaction)

def test(backend, pool, monkeypatch, device):
    os._exit(0)
    _pagemap._munmap(0, 0)
    ringkit._native._memory.Memory
    _capi._lib
    assert not backend.finished, backend._finished
    pool._free_count -= 1
    x = device._wake_rx.statistics().current_buffer_used
    getattr(backend, "_finished")
    monkeypatch.setattr(service, "_Drain", object)
    backend._carry_out
    sys._getframe()
'''


def test_negative_control_private_reads_are_flagged() -> None:
    assert private_reads(PRIVATE_READS) == [
        "25: backend._finished",
        "26: pool._free_count",
        "27: device._wake_rx",
        "28: getattr(backend, '_finished')",
        "29: monkeypatch.setattr(service, '_Drain', object)",
        "31: sys._getframe",
    ]


def test_negative_control_the_allowances_are_narrow() -> None:
    # Without the class above that defines it, a private hook read on another object is
    # flagged (with it, `backend._carry_out` on line 30 passed: the module's own name).
    assert private_reads("def f(d):\n    return d._carry_out\n") == ["2: d._carry_out"]
    # A private module bound under a public-looking alias is still that private module.
    assert private_reads("import ringkit._native as native\nnative._lib\n") == []
    # ... but a public module's privates are not a private module's.
    assert private_reads("from ringkit.proto import blkif\nblkif._E_RANGE\n") == [
        "2: blkif._E_RANGE"]


IMPORTS = '''
from ringkit._errors import ConfigError
from ringkit._async.channel import FrontRingChannel
from ringkit.bench.requests import _stamp, PAGE
from ringkit import _native, PeerGoneError
from ringkit._native import NativeImpl, _capi
from ringkit.testing._ends import serving
from ringkit.device._base import Wakeup
'''


def test_negative_control_misplaced_imports_are_flagged(exports: dict[int, str]) -> None:
    assert import_problems(IMPORTS, "tests.module", exports) == [
        "ringkit._async.channel.FrontRingChannel is public as ringkit.channel.FrontRingChannel",
        "ringkit._errors.ConfigError is public as ringkit.ConfigError",
        "ringkit.bench.requests._stamp is private",
        "ringkit.testing._ends.serving is public as ringkit.testing.conformance.serving",
    ]
