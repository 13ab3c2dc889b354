"""The compiled implementation: `ringkit._native._compiled`, built by _build.py in cffi API mode.

Each primitive is one call into a static C function taking ``(base, offset)``, so no pointer
object is created per call.  Importing this module raises ImportError when the extension was
not built (no compiler at install time).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, cast

from ._memory import Buffer, Memory, _buffer_facts


class CompiledLib(Protocol):
    """The cffi ``lib`` object of `ringkit._native._compiled` (see the cdef in _build.py)."""

    def rk_load32(self, base: Any, offset: int, /) -> int: ...
    def rk_store32(self, base: Any, offset: int, value: int, /) -> None: ...
    def rk_fetch_or8(self, base: Any, offset: int, mask: int, /) -> int: ...
    def rk_fetch_and8(self, base: Any, offset: int, mask: int, /) -> int: ...
    def rk_full_fence(self) -> None: ...
    def rk_read_fence(self) -> None: ...
    def rk_write_fence(self) -> None: ...
    def rk_zero(self, base: Any, offset: int, length: int, /) -> None: ...


_module = importlib.import_module("ringkit._native._compiled")
_ffi: Any = _module.ffi
_lib = cast(CompiledLib, _module.lib)

_load32 = _lib.rk_load32
_store32 = _lib.rk_store32
_fetch_or8 = _lib.rk_fetch_or8
_fetch_and8 = _lib.rk_fetch_and8
_zero = _lib.rk_zero


class CompiledMemory(Memory):
    """`Memory` backed by the compiled helper."""

    __slots__ = ()

    _memmove = staticmethod(_ffi.memmove)
    _unpack = staticmethod(_ffi.unpack)
    _release_buf = staticmethod(_ffi.release)

    def load32(self, offset: int) -> int:
        if offset & 3 or not 0 <= offset <= self._last32:
            self._reject(offset, 4, False)
        return _load32(self._buf, offset)

    def store32(self, offset: int, value: int) -> None:
        if offset & 3 or not 0 <= offset <= self._last32w:
            self._reject(offset, 4, True)
        _store32(self._buf, offset, value)

    def fetch_or8(self, offset: int, mask: int) -> int:
        if not 0 <= offset < self._endw:
            self._reject(offset, 1, True)
        return _fetch_or8(self._buf, offset, mask)

    def fetch_and8(self, offset: int, mask: int) -> int:
        if not 0 <= offset < self._endw:
            self._reject(offset, 1, True)
        return _fetch_and8(self._buf, offset, mask)

    def zero(self, offset: int, length: int) -> None:
        self._check_range(offset, length, True)
        _zero(self._buf, offset, length)


class CompiledImpl:
    """The native layer through the compiled cffi extension (see `NativeImpl`)."""

    name = "compiled"
    full_fence: Callable[[], None] = staticmethod(_lib.rk_full_fence)
    read_fence: Callable[[], None] = staticmethod(_lib.rk_read_fence)
    write_fence: Callable[[], None] = staticmethod(_lib.rk_write_fence)

    def attach(self, buffer: Buffer) -> Memory:
        size, readonly = _buffer_facts(buffer)
        buf = _ffi.from_buffer("char[]", buffer)
        return CompiledMemory(buf, size, readonly, int(_ffi.cast("uintptr_t", buf)))
