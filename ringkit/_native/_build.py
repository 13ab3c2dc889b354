"""cffi build script of the compiled native helper, `ringkit._native._compiled` (API mode).

setup.py names it in ``cffi_modules``; `python ringkit/_native/_build.py` builds it in place for
a development checkout.  The C is a handful of one-line functions: shared-memory loads, stores,
fences and atomic byte operations that Python cannot express without tearing or reordering.
Everything takes a base pointer and a byte offset, so that the Python side binds each function
once and passes the cffi buffer of an mmap or bytearray directly (no per-call casts).  Bulk
copies need no C here: cffi's own ``ffi.memmove`` is a plain memmove and accepts Python buffers.

Fences are the ones Xen's io/ring.h asks for, as Linux's virt_mb/virt_rmb/virt_wmb implement
them on x86-64: ``mfence`` for the full fence, compiler barriers for the read and write fences
(x86 is TSO: loads are not reordered with loads, nor stores with stores).  Other architectures
use the GCC ``__atomic_thread_fence`` builtins (seq_cst, acquire, release).
"""

from __future__ import annotations

from cffi import FFI

CDEF = """
uint32_t rk_load32(const uint8_t *base, size_t offset);
void rk_store32(uint8_t *base, size_t offset, uint32_t value);
uint8_t rk_fetch_or8(uint8_t *base, size_t offset, uint8_t mask);
uint8_t rk_fetch_and8(uint8_t *base, size_t offset, uint8_t mask);
void rk_full_fence(void);
void rk_read_fence(void);
void rk_write_fence(void);
void rk_zero(uint8_t *base, size_t offset, size_t length);
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* Aligned 32-bit accesses are single-copy atomic on every architecture Xen runs on;
   __atomic relaxed makes the compiler emit exactly one load/store of that width. */
static uint32_t rk_load32(const uint8_t *base, size_t offset)
{
    return __atomic_load_n((const uint32_t *)(base + offset), __ATOMIC_RELAXED);
}

static void rk_store32(uint8_t *base, size_t offset, uint32_t value)
{
    __atomic_store_n((uint32_t *)(base + offset), value, __ATOMIC_RELAXED);
}

static uint8_t rk_fetch_or8(uint8_t *base, size_t offset, uint8_t mask)
{
    return __atomic_fetch_or(base + offset, mask, __ATOMIC_SEQ_CST);
}

static uint8_t rk_fetch_and8(uint8_t *base, size_t offset, uint8_t mask)
{
    return __atomic_fetch_and(base + offset, mask, __ATOMIC_SEQ_CST);
}

#if defined(__x86_64__) || defined(__i386__)
static void rk_full_fence(void) { __asm__ __volatile__("mfence" ::: "memory"); }
static void rk_read_fence(void) { __asm__ __volatile__("" ::: "memory"); }
static void rk_write_fence(void) { __asm__ __volatile__("" ::: "memory"); }
#else
static void rk_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static void rk_read_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static void rk_write_fence(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
#endif

static void rk_zero(uint8_t *base, size_t offset, size_t length)
{
    memset(base + offset, 0, length);
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("ringkit._native._compiled", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    import pathlib

    # Build in place next to the package: `python ringkit/_native/_build.py`.
    ffibuilder.compile(tmpdir=str(pathlib.Path(__file__).resolve().parents[2]), verbose=True)
