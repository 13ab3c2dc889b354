"""The compiled implementation: `ringkit._native._compiled`, built by _build.py in cffi API mode.

Each primitive is one call into a static C function taking ``(base, offset)``, so no pointer
object is created per call.  Importing this module raises ImportError when the extension was
not built (no compiler at install time).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from ._memory import BlkifHelper, Buffer, Memory, SlotHelper, _buffer_facts


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
    def rk_blkif_parse_request(self, slot: bytes, length: int, max_indirect: int, out: Any, /
                               ) -> int: ...
    def rk_blkif_parse_segments(self, src: bytes, length: int, count: int, grefs: Any,
                                first: Any, last: Any, info: Any, /) -> int: ...
    def rk_gather(self, buf: Any, length: int, count: int, stride: int, offset: int,
                  size: int, signed: int, out: Any, /) -> int: ...
    def rk_gather_refs(self, buf: Any, length: int, count: int, stride: int, spec: Any,
                       nspec: int, counts: Any, refs: Any, cap: int, /) -> int: ...
    RK_BLKIF_E_RANGE: int


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


try:
    _parse_request = _lib.rk_blkif_parse_request
    _parse_segments = _lib.rk_blkif_parse_segments
    _E_RANGE = _lib.RK_BLKIF_E_RANGE
except AttributeError as exc:  # built from an older _build.py (a checkout updated in place)
    raise ImportError(f"ringkit._native._compiled is stale, rebuild it ({exc})") from exc
_new = _ffi.new
_unpack = _ffi.unpack


class CompiledBlkif:
    """`BlkifHelper` in C.  Every output array is allocated per call (cffi releases the GIL
    around the call, so shared ones could be filled by two threads at once)."""

    __slots__ = ()

    def parse_request(self, slot: bytes, max_indirect: int, /
                      ) -> tuple[int, list[int], list[int], bytes, bytes]:
        out = _new("rk_blkif_request *")
        kind = _parse_request(slot, len(slot), max_indirect, out)
        head: list[int] = _unpack(out.head, 9)
        n = head[8]
        return kind, head, _unpack(out.grefs, n), _unpack(out.first, n), _unpack(out.last, n)

    def parse_segments(self, raw: bytes, count: int, /
                       ) -> tuple[int, int, int, list[int], bytes, bytes]:
        grefs = _new("uint32_t[]", count)
        first = _new("char[]", count)
        last = _new("char[]", count)
        info = _new("uint64_t[2]")
        code = _parse_segments(raw, len(raw), count, grefs, first, last, info)
        n = count if code == 0 else info[1] + 1 if code == _E_RANGE else 0
        return (code, info[0], info[1], _unpack(grefs, n), _unpack(first, n),
                _unpack(last, n))


try:
    _gather = _lib.rk_gather
    _gather_refs = _lib.rk_gather_refs
except AttributeError as exc:  # built from an older _build.py
    raise ImportError(f"ringkit._native._compiled is stale, rebuild it ({exc})") from exc
_from_buffer = _ffi.from_buffer
_cast = _ffi.cast


class CompiledSlots:
    """`SlotHelper` in C; output arrays per call, as `CompiledBlkif`'s."""

    __slots__ = ()

    def gather(self, buf: Buffer, count: int, stride: int, offset: int, size: int,
               signed: bool, /) -> list[int]:
        out = _new("uint64_t[]", max(count, 1))
        src = _from_buffer("char[]", buf)
        if _gather(src, len(src), count, stride, offset, size, int(signed), out) != 0:
            raise IndexError(f"{count} slots of {stride} bytes, field at {offset} (+{size}), "
                             f"do not fit a {len(src)}-byte buffer")
        if signed:
            return list(_unpack(_cast("int64_t *", out), count))
        return list(_unpack(out, count))

    def gather_refs(self, buf: Buffer, count: int, stride: int, spec: Sequence[int], /
                    ) -> tuple[list[int], list[int]]:
        src = _from_buffer("char[]", buf)
        cap = max(1, count * max(1, spec[3] if len(spec) > 3 else 1))
        counts = _new("int64_t[]", max(count, 1))
        refs = _new("uint32_t[]", cap)
        spec_c = _new("int64_t[]", list(spec))
        written = _gather_refs(src, len(src), count, stride, spec_c, len(spec), counts, refs,
                               cap)
        if written < 0:
            raise IndexError(f"ref list spec {tuple(spec)} does not fit {count} slots of "
                             f"{stride} bytes in a {len(src)}-byte buffer")
        return list(_unpack(counts, count)), list(_unpack(refs, written))


class CompiledImpl:
    """The native layer through the compiled cffi extension (see `NativeImpl`)."""

    name = "compiled"
    blkif: BlkifHelper | None = CompiledBlkif()
    slots: SlotHelper | None = CompiledSlots()
    full_fence: Callable[[], None] = staticmethod(_lib.rk_full_fence)
    read_fence: Callable[[], None] = staticmethod(_lib.rk_read_fence)
    write_fence: Callable[[], None] = staticmethod(_lib.rk_write_fence)

    def attach(self, buffer: Buffer) -> Memory:
        size, readonly = _buffer_facts(buffer)
        buf = _ffi.from_buffer("char[]", buffer)
        return CompiledMemory(buf, size, readonly, int(_ffi.cast("uintptr_t", buf)))
