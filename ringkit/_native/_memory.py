"""`Memory`: a zero-copy, bounds-checked window on a shared buffer, and the `NativeImpl`,
`BlkifHelper` and `SlotHelper` Protocols.

The two implementations (compiled and ABI mode) subclass `Memory` and only differ in how they
call the primitive: the compiled helper takes ``(base, offset)``, libatomic takes a pointer.
All checks happen here, in Python, before any pointer is formed, so a bad offset raises instead
of touching memory outside the buffer.
"""

from __future__ import annotations

import mmap
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol

from .._errors import ConfigError

Buffer = bytes | bytearray | memoryview | mmap.mmap
"""What `attach` accepts: anything with the buffer protocol that cffi's from_buffer takes."""


BLKIF_RW_KIND, BLKIF_DISCARD_KIND, BLKIF_INDIRECT_KIND = 0, 1, 2
"""What `BlkifHelper.parse_request` parsed (its ``kind``): C's ``RK_BLKIF_RW`` ..."""
(BLKIF_E_OPERATION, BLKIF_E_NO_INDIRECT, BLKIF_E_COUNT, BLKIF_E_RANGE, BLKIF_E_INNER,
 BLKIF_E_INDIRECT_COUNT) = range(-1, -7, -1)
"""Why `BlkifHelper` refused a request (a negative ``kind`` or ``code``): C's
``RK_BLKIF_E_OPERATION`` ... (tests/proto/test_blkif_native.py holds the two to each other)."""


class BlkifHelper(Protocol):
    """The blkif parser's per-field work in C (the compiled implementation only).

    Raw results, no records: `ringkit.proto.blkif` turns them into the same records and
    errors as its Python parser.  Inputs are private copies (``bytes``); the C copies a slot
    once more onto its stack, reads each indirect entry once and checks every length.
    (Encoding stays in Python: through cffi, converting a request's arguments cost as much as
    ``struct.pack_into`` does the whole job.)
    """

    def parse_request(self, slot: bytes, max_indirect: int, /
                      ) -> tuple[int, list[int], list[int], bytes, bytes]:
        """Parse one 112-byte request slot (`max_indirect` in 0..2**32-1): ``(kind, head,
        grefs, first, last)`` as ``rk_blkif_parse_request`` in _build.py documents them."""

    def parse_segments(self, raw: bytes, count: int, /
                       ) -> tuple[int, int, int, list[int], bytes, bytes]:
        """Parse `count` indirect segment entries from `raw`: ``(code, nr_sectors, bad_index,
        grefs, first, last)`` (``rk_blkif_parse_segments``)."""


class SlotHelper(Protocol):
    """The request-queue layer's per-burst work in C (the compiled implementation only):
    integer fields and grant refs read from many slots in one call
    (`ringkit.requests.codec.gather` / `gather_refs` are the Python reference)."""

    def gather(self, buf: Buffer, count: int, stride: int, offset: int, size: int,
               signed: bool, /) -> list[int]:
        """The little-endian field (`offset`, `size`) of `count` slots `stride` apart."""

    def gather_refs(self, buf: Buffer, count: int, stride: int, spec: Sequence[int], /
                    ) -> tuple[list[int], list[int]]:
        """``(counts, refs)`` of `count` request slots (``rk_gather_refs`` in _build.py)."""


class NativeImpl(Protocol):
    """One implementation of the native layer (compiled or ABI mode)."""

    @property
    def name(self) -> str:
        """``"compiled"`` or ``"abi"``."""

    @property
    def blkif(self) -> BlkifHelper | None:
        """The blkif parser helper, or None where there is none (ABI mode: no compiler, so the
        Python parser serves)."""

    @property
    def slots(self) -> SlotHelper | None:
        """The request-queue slot helper, or None (ABI mode: `ringkit.requests.codec` reads
        the fields in Python)."""

    @property
    def full_fence(self) -> Callable[[], None]:
        """Order all earlier loads and stores before all later ones (ring.h's xen_mb)."""

    @property
    def read_fence(self) -> Callable[[], None]:
        """Order earlier loads before later loads (xen_rmb)."""

    @property
    def write_fence(self) -> Callable[[], None]:
        """Order earlier stores before later stores (xen_wmb)."""

    def attach(self, buffer: Buffer) -> Memory:
        """A `Memory` over `buffer`, sharing its bytes (no copy)."""


def _buffer_facts(buffer: Buffer) -> tuple[int, bool]:
    """Size in bytes and read-only flag of `buffer`, without keeping an export alive."""
    try:
        view = memoryview(buffer)
    except TypeError as exc:
        raise ConfigError(f"cannot attach to {type(buffer).__name__}: no buffer protocol") from exc
    try:
        if not view.contiguous:
            raise ConfigError("cannot attach to a non-contiguous buffer")
        return view.nbytes, view.readonly
    finally:
        view.release()


class Memory(ABC):
    """Shared memory seen through cffi: single-copy 32-bit loads/stores, atomic byte ops, copies.

    Offsets are byte offsets from the start of the attached buffer.  32-bit accesses must be
    4-byte aligned (relative to the real address; `attach` refuses nothing, but a buffer whose
    start is not 4-byte aligned refuses 32-bit access).  Errors: `IndexError` for a range outside
    the buffer, `ConfigError` for a misaligned offset, a write to a read-only buffer, or any use
    after `release()`.  Values out of range for the C type raise `OverflowError` (cffi).
    """

    __slots__ = ("_buf", "_end", "_endw", "_last32", "_last32w", "_size", "_state", "writable")

    # Filled in by each implementation's subclass.
    _memmove: Callable[[Any, Any, int], None]
    _unpack: Callable[[Any, int], bytes]
    _release_buf: Callable[[Any], None]

    def __init__(self, buf: Any, size: int, readonly: bool, address: int) -> None:
        self._buf = buf
        self._size = size
        self.writable = not readonly
        """Whether the buffer accepts stores."""
        # Bounds for the fast checks: exclusive end for byte ranges, inclusive last offset for
        # 32-bit words.  -1 makes every access fail the fast check; the slow path says why.
        self._end = size
        self._endw = size if self.writable else -1
        self._last32 = size - 4 if address % 4 == 0 else -1
        self._last32w = self._last32 if self.writable else -1
        self._state = "attached"

    # ----------------------------------------------------------------- introspection

    @property
    def size(self) -> int:
        """Length of the attached buffer in bytes."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"<{type(self).__name__} {self._size} bytes {mode} {self._state}>"

    # ----------------------------------------------------------------- lifetime

    def release(self) -> None:
        """Drop the cffi view so the underlying mmap can be closed.  Idempotent; every later
        access raises `ConfigError`."""
        if self._state == "released":
            return
        self._state = "released"
        self._end = self._endw = self._last32 = self._last32w = -1
        buf, self._buf = self._buf, None
        type(self)._release_buf(buf)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # ----------------------------------------------------------------- checks

    def _reject(self, offset: int, length: int, write: bool) -> NoReturn:
        """Raise the precise error for an access that failed a fast bounds check."""
        if self._state == "released":
            raise ConfigError("shared memory used after release()")
        if write and not self.writable:
            raise ConfigError("shared memory is read-only: store refused")
        if length < 0:
            raise ConfigError(f"negative length {length}")
        if not 0 <= offset <= self._size - length:
            raise IndexError(
                f"offset {offset} + {length} bytes is outside the {self._size}-byte buffer")
        raise ConfigError(f"32-bit access at offset {offset} is not 4-byte aligned "
                          f"(or the buffer itself is not)")

    def _check_range(self, offset: int, length: int, write: bool) -> None:
        end = self._endw if write else self._end
        if offset < 0 or length < 0 or offset + length > end:
            self._reject(offset, length, write)

    # ----------------------------------------------------------------- primitives

    @abstractmethod
    def load32(self, offset: int) -> int:
        """One 32-bit native-endian load that never tears."""

    @abstractmethod
    def store32(self, offset: int, value: int) -> None:
        """One 32-bit native-endian store that never tears (unlike struct.pack_into)."""

    @abstractmethod
    def fetch_or8(self, offset: int, mask: int) -> int:
        """Atomically OR `mask` into the byte at `offset`; return the old byte."""

    @abstractmethod
    def fetch_and8(self, offset: int, mask: int) -> int:
        """Atomically AND `mask` into the byte at `offset`; return the old byte."""

    @abstractmethod
    def zero(self, offset: int, length: int) -> None:
        """Set `length` bytes from `offset` to zero."""

    # ----------------------------------------------------------------- copies (shared by both)

    def copy_out(self, offset: int, dst: bytearray | memoryview, dst_offset: int = 0,
                 length: int | None = None) -> None:
        """Copy `length` bytes (default: up to the end of `dst`) from `offset` into the writable
        `dst` at `dst_offset`.  This is the one read of peer-controlled bytes: parse the copy."""
        dst_size = dst.nbytes if type(dst) is memoryview else len(dst)
        if length is None:
            length = dst_size - dst_offset
        if dst_offset < 0 or length < 0 or dst_offset + length > dst_size:
            raise IndexError(f"{length} bytes at offset {dst_offset} do not fit the "
                             f"{dst_size}-byte destination")
        self._check_range(offset, length, False)
        if dst_offset == 0:
            self._memmove(dst, self._buf + offset, length)
        else:
            with memoryview(dst) as view, view.cast("B") as flat:
                self._memmove(flat[dst_offset:], self._buf + offset, length)

    def copy_in(self, offset: int, src: bytes | bytearray | memoryview) -> None:
        """Copy all of `src` into the shared memory at `offset`."""
        length = src.nbytes if type(src) is memoryview else len(src)
        self._check_range(offset, length, True)
        self._memmove(self._buf + offset, src, length)

    def read(self, offset: int, length: int) -> bytes:
        """A private copy of `length` bytes from `offset` (one read of the shared bytes)."""
        self._check_range(offset, length, False)
        return self._unpack(self._buf + offset, length)
