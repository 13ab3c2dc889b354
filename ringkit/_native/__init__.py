"""Native shared-memory primitives for rings: fences, untearable 32-bit indices, byte atomics.

Python alone cannot share ring indices with a peer on another CPU: ``struct.pack_into`` clears
its destination before writing (a peer can read a torn 0), and nothing orders loads and stores.
This package gives the few primitives Xen's io/ring.h and libxenvchan rely on, through cffi.

Two implementations, one API, chosen at import:

* ``"compiled"`` -- `ringkit._native._compiled`, built at install time in cffi API mode from
  _build.py (GCC ``__atomic`` builtins; ``mfence`` / compiler barriers on x86-64);
* ``"abi"`` -- cffi ABI mode on libatomic.so.1 (``__atomic_load_4`` ...,
  ``atomic_thread_fence``) plus libc's memset: same guarantees, slower calls; used when the
  extension was not built (no compiler).

The compiled one is preferred.  ``RINGKIT_NATIVE=compiled`` or ``RINGKIT_NATIVE=abi`` forces one
(`ConfigError` at import if it is unavailable, or for any other value).

API (module level, and the same on each `NativeImpl` from `implementations()`):

``IMPLEMENTATION: str``
    ``"compiled"`` or ``"abi"``: the one in use.
``implementations() -> dict[str, NativeImpl]``
    the available implementations by name (tests run all of them);
    ``unavailable() -> dict[str, str]`` says why the others are missing.
``full_fence()``, ``read_fence()``, ``write_fence()``
    ring.h's xen_mb / xen_rmb / xen_wmb.
``attach(buffer) -> Memory``
    a zero-copy view over a bytearray, mmap, bytes or memoryview (writable or read-only).
``blkif`` (on each `NativeImpl`)
    the blkif parser's per-field work in C (`BlkifHelper`): parse a request slot, parse
    indirect segment entries.  Compiled only; None in ABI mode, where
    `ringkit.proto.blkif` uses its Python parser (same records, same errors).
``slots`` (on each `NativeImpl`)
    the request-queue layer's per-burst field reads (`SlotHelper`): ids and grant refs of many
    slots in one call.  Compiled only; None in ABI mode (`ringkit.requests.codec` reads them in
    Python).

The compiled helper also carries a small io_uring ring object on the raw system calls
(`ringkit._native._uring.Uring`: submit vectored reads and writes, fsync, fallocate with a
cookie; reap completions; an eventfd for the event loop).  There is none in ABI mode, where the
block backend uses worker threads instead.

`Memory` (byte offsets from the start of the buffer; bounds are checked in Python first, so a
bad offset raises instead of touching foreign memory):

``load32(offset) -> int`` / ``store32(offset, value)``
    one native-endian 32-bit access, never torn; offset 4-byte aligned.
``fetch_or8(offset, mask) -> int`` / ``fetch_and8(offset, mask) -> int``
    atomic (sequentially consistent) read-modify-write of one byte; return the old byte.
``copy_out(offset, dst, dst_offset=0, length=None)``
    memcpy from shared memory into a writable bytearray / memoryview (the one read of peer data).
``copy_in(offset, src)``, ``read(offset, length) -> bytes``, ``zero(offset, length)``
``release()``
    drop the cffi view so an mmap can be closed; also a context manager.  Later use raises.
``size``, ``writable``

Errors: `IndexError` (range outside the buffer), `ConfigError` (misaligned 32-bit offset, store
into a read-only buffer, use after release), `OverflowError` (value too wide for the C type).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from ._memory import (
    BLKIF_DISCARD_KIND,
    BLKIF_E_COUNT,
    BLKIF_E_INDIRECT_COUNT,
    BLKIF_E_INNER,
    BLKIF_E_NO_INDIRECT,
    BLKIF_E_OPERATION,
    BLKIF_E_RANGE,
    BLKIF_INDIRECT_KIND,
    BLKIF_RW_KIND,
    BlkifHelper,
    Buffer,
    Memory,
    NativeImpl,
    SlotHelper,
)

_ENV = "RINGKIT_NATIVE"
_ORDER = ("compiled", "abi")


def _probe() -> tuple[dict[str, NativeImpl], dict[str, str]]:
    found: dict[str, NativeImpl] = {}
    missing: dict[str, str] = {}
    try:
        from ._capi import CompiledImpl

        found["compiled"] = CompiledImpl()
    except ImportError as exc:
        missing["compiled"] = f"compiled helper not built: {exc}"
    try:
        from ._abi import AbiImpl

        found["abi"] = AbiImpl()
    except ImportError as exc:
        missing["abi"] = str(exc)
    return found, missing


_FOUND, _MISSING = _probe()


def implementations() -> dict[str, NativeImpl]:
    """The implementations available in this process, by name, preferred first."""
    return dict(_FOUND)


def unavailable() -> dict[str, str]:
    """Why each missing implementation is missing, by name."""
    return dict(_MISSING)


def _choose() -> NativeImpl:
    forced = os.environ.get(_ENV, "")
    if forced:
        if forced not in _ORDER:
            raise ConfigError(f"{_ENV}={forced!r}: expected one of {', '.join(_ORDER)}")
        if forced not in _FOUND:
            raise ConfigError(f"{_ENV}={forced}: unavailable ({_MISSING[forced]})")
        return _FOUND[forced]
    for name in _ORDER:
        if name in _FOUND:
            return _FOUND[name]
    raise ConfigError("no native implementation available: " + "; ".join(_MISSING.values()))


_IMPL = _choose()

IMPLEMENTATION: str = _IMPL.name
"""Name of the implementation in use: ``"compiled"`` or ``"abi"``."""

full_fence: Callable[[], None] = _IMPL.full_fence
read_fence: Callable[[], None] = _IMPL.read_fence
write_fence: Callable[[], None] = _IMPL.write_fence
attach: Callable[[Buffer], Memory] = _IMPL.attach



def compiled_part(symbol: str, what: str) -> tuple[Any, Any, str]:
    """The compiled helper's ``(ffi, lib, "")`` for a part of it that ``lib.<symbol>`` marks,
    or ``(None, None, why)`` when that part cannot be used here: the ABI implementation is
    in use (chosen, or no compiler at install time), or the build predates the part.  `what`
    names the part in the reason."""
    if IMPLEMENTATION != "compiled":
        return None, None, f"the {IMPLEMENTATION} native implementation lacks {what}"
    try:
        module = importlib.import_module("ringkit._native._compiled")
        getattr(module.lib, symbol)
    except (ImportError, AttributeError) as exc:
        return None, None, f"the compiled helper lacks {what} ({exc})"
    return module.ffi, module.lib, ""


__all__ = (
    "BLKIF_DISCARD_KIND",
    "BLKIF_E_COUNT",
    "BLKIF_E_INDIRECT_COUNT",
    "BLKIF_E_INNER",
    "BLKIF_E_NO_INDIRECT",
    "BLKIF_E_OPERATION",
    "BLKIF_E_RANGE",
    "BLKIF_INDIRECT_KIND",
    "BLKIF_RW_KIND",
    "IMPLEMENTATION",
    "BlkifHelper",
    "Buffer",
    "Memory",
    "NativeImpl",
    "SlotHelper",
    "attach",
    "compiled_part",
    "full_fence",
    "implementations",
    "read_fence",
    "unavailable",
    "write_fence",
)
