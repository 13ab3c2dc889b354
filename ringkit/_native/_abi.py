"""The ABI-mode fallback: libatomic's out-of-line atomics through cffi, no compiler needed.

``libatomic.so.1`` (GCC's runtime, Debian package libatomic1) exports what GCC emits for
``__atomic`` builtins it cannot inline: ``__atomic_load_4``, ``__atomic_store_4``,
``__atomic_fetch_or_1``, ``__atomic_fetch_and_1`` and, since LIBATOMIC_1.2, the C11 function
``atomic_thread_fence``.  On x86-64 these are the same lock-free instructions the compiled helper
uses (aligned mov, lock or/and, mfence), so the guarantees are identical; each call only costs
more (libffi, and one pointer object per call).  Bulk copies use cffi's memmove, zeroing uses
libc's memset.  Importing this module raises ImportError when libatomic cannot be loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from cffi import FFI

from ._memory import Buffer, Memory, _buffer_facts

_CDEF = """
uint32_t __atomic_load_4(const volatile void *ptr, int memorder);
void __atomic_store_4(volatile void *ptr, uint32_t value, int memorder);
uint8_t __atomic_fetch_or_1(volatile void *ptr, uint8_t value, int memorder);
uint8_t __atomic_fetch_and_1(volatile void *ptr, uint8_t value, int memorder);
void atomic_thread_fence(int memorder);
"""
_LIBC_CDEF = "void *memset(void *s, int c, size_t n);"

# C11 memory_order / GCC __ATOMIC_* values.
RELAXED, ACQUIRE, RELEASE, SEQ_CST = 0, 2, 3, 5


_ffi: Any = FFI()
_ffi.cdef(_CDEF)
_ffi.cdef(_LIBC_CDEF)
try:
    _atomic: Any = _ffi.dlopen("libatomic.so.1")
    _libc: Any = _ffi.dlopen(None)
    # Resolve every symbol now, so that a missing one fails the import, not the first use.
    _load32: Callable[[Any, int], int] = getattr(_atomic, "__atomic_load_4")
    _store32: Callable[[Any, int, int], None] = getattr(_atomic, "__atomic_store_4")
    _fetch_or8: Callable[[Any, int, int], int] = getattr(_atomic, "__atomic_fetch_or_1")
    _fetch_and8: Callable[[Any, int, int], int] = getattr(_atomic, "__atomic_fetch_and_1")
    _fence: Callable[[int], None] = _atomic.atomic_thread_fence
    _memset: Callable[[Any, int, int], Any] = _libc.memset
except (OSError, AttributeError) as exc:
    raise ImportError(f"libatomic.so.1 is not usable: {exc}") from exc


class AbiMemory(Memory):
    """`Memory` backed by libatomic."""

    __slots__ = ()

    _memmove = staticmethod(_ffi.memmove)
    _unpack = staticmethod(_ffi.unpack)
    _release_buf = staticmethod(_ffi.release)

    def load32(self, offset: int) -> int:
        if offset & 3 or not 0 <= offset <= self._last32:
            self._reject(offset, 4, False)
        return _load32(self._buf + offset, RELAXED)

    def store32(self, offset: int, value: int) -> None:
        if offset & 3 or not 0 <= offset <= self._last32w:
            self._reject(offset, 4, True)
        _store32(self._buf + offset, value, RELAXED)

    def fetch_or8(self, offset: int, mask: int) -> int:
        if not 0 <= offset < self._endw:
            self._reject(offset, 1, True)
        return _fetch_or8(self._buf + offset, mask, SEQ_CST)

    def fetch_and8(self, offset: int, mask: int) -> int:
        if not 0 <= offset < self._endw:
            self._reject(offset, 1, True)
        return _fetch_and8(self._buf + offset, mask, SEQ_CST)

    def zero(self, offset: int, length: int) -> None:
        self._check_range(offset, length, True)
        _memset(self._buf + offset, 0, length)


class AbiImpl:
    """The native layer through libatomic in cffi ABI mode (see `NativeImpl`)."""

    name = "abi"
    blkif = None
    """No blkif helper without a compiler: `ringkit.proto.blkif` uses its Python parser."""
    slots = None
    """No slot helper either: `ringkit.requests.codec` reads the fields in Python."""
    full_fence: Callable[[], None] = staticmethod(partial(_fence, SEQ_CST))
    read_fence: Callable[[], None] = staticmethod(partial(_fence, ACQUIRE))
    write_fence: Callable[[], None] = staticmethod(partial(_fence, RELEASE))

    def attach(self, buffer: Buffer) -> Memory:
        size, readonly = _buffer_facts(buffer)
        buf = _ffi.from_buffer("char[]", buffer)
        return AbiMemory(buf, size, readonly, int(_ffi.cast("uintptr_t", buf)))
