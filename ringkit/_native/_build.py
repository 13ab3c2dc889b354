"""cffi build script of the compiled native helper, `ringkit._native._compiled` (API mode).

setup.py names it in ``cffi_modules``; `python ringkit/_native/_build.py` builds it in place for
a development checkout.  Most of the C is a handful of one-line functions: shared-memory loads,
stores, fences and atomic byte operations that Python cannot express without tearing or
reordering.  The rest is the blkif parser's per-field work (``rk_blkif_*``, see below), which
the backend does for every request and every indirect segment.

The memory primitives take a base pointer and a byte offset, so that the Python side binds each
function once and passes the cffi buffer of an mmap or bytearray directly (no per-call casts).
Bulk copies need no C here: cffi's own ``ffi.memmove`` is a plain memmove and accepts Python
buffers.

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

#define RK_BLKIF_MAX_SEGMENTS 11
typedef struct {
    uint64_t head[9];
    uint32_t grefs[11];
    char first[11];
    char last[11];
} rk_blkif_request;
enum {
    RK_BLKIF_RW = 0, RK_BLKIF_DISCARD = 1, RK_BLKIF_INDIRECT = 2,
    RK_BLKIF_E_OPERATION = -1, RK_BLKIF_E_NO_INDIRECT = -2, RK_BLKIF_E_COUNT = -3,
    RK_BLKIF_E_RANGE = -4, RK_BLKIF_E_INNER = -5, RK_BLKIF_E_INDIRECT_COUNT = -6,
    RK_BLKIF_E_LENGTH = -7
};
int rk_blkif_parse_request(const char *slot, size_t length, uint32_t max_indirect,
                           rk_blkif_request *out);
int rk_blkif_parse_segments(const char *src, size_t length, uint32_t count, uint32_t *grefs,
                            char *first, char *last, uint64_t *info);
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

/* ---------------------------------------------------------------- blkif (io/blkif.h, x86_64)

   The same decisions as ringkit.proto.blkif's Python parser, which stays the reference (and the
   code path when this module is missing); tests compare the two on random and hostile slots.
   Peer input is handled the way the ring engine asks: the caller passes a private copy, and
   the C copies it once more onto its own stack (a slot) or reads each byte once (indirect
   segments), so nothing is read twice; every length the caller gives is checked before use,
   and every value read is range-checked before it is used.  Fields are read byte by byte as
   little-endian, so alignment and host byte order do not matter.

   rk_blkif_request.head on return (all uint64):
     [0] operation   [1] byte 1 (rw: nr_segments, discard: flag, indirect: indirect_op)
     [2] handle      [3] id    [4] sector_number
     [5] segments (rw: direct count; indirect: nr_segments)
     [6] rw: total sectors of the segments; discard: nr_sectors; indirect: pages named
     [7] detail of an error: the first bad segment's index, or the minimum segment count
     [8] entries filled in grefs/first/last: the direct segments (rw; on a range error up to
         and including the bad one), or the indirect_grefs (indirect; first/last unused)
   Return value: a kind or an error code (below). */

#define RK_BLKIF_REQUEST_SIZE 112
#define RK_BLKIF_MAX_SEGMENTS 11
#define RK_BLKIF_SEGMENT_SIZE 8
#define RK_BLKIF_SECTORS_PER_PAGE 8
#define RK_BLKIF_MAX_INDIRECT_PAGES 8
#define RK_BLKIF_SEGMENTS_PER_PAGE 512

typedef struct {
    uint64_t head[9];
    uint32_t grefs[RK_BLKIF_MAX_SEGMENTS];
    char first[RK_BLKIF_MAX_SEGMENTS];
    char last[RK_BLKIF_MAX_SEGMENTS];
} rk_blkif_request;

enum {
    RK_BLKIF_RW = 0, RK_BLKIF_DISCARD = 1, RK_BLKIF_INDIRECT = 2,
    RK_BLKIF_E_OPERATION = -1,      /* unknown operation: EOPNOTSUPP */
    RK_BLKIF_E_NO_INDIRECT = -2,    /* INDIRECT while not offered: EOPNOTSUPP */
    RK_BLKIF_E_COUNT = -3,          /* direct segment count outside min..11 */
    RK_BLKIF_E_RANGE = -4,          /* a segment's sectors not an ordered range in 0..7 */
    RK_BLKIF_E_INNER = -5,          /* indirect_op neither READ nor WRITE */
    RK_BLKIF_E_INDIRECT_COUNT = -6, /* indirect nr_segments outside 1..max */
    RK_BLKIF_E_LENGTH = -7          /* the caller's buffer is too short */
};

static uint16_t rk_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rk_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
        | ((uint32_t)p[3] << 24);
}
static uint64_t rk_le64(const uint8_t *p)
{
    return (uint64_t)rk_le32(p) | ((uint64_t)rk_le32(p + 4) << 32);
}

static int rk_blkif_parse_request(const char *slot, size_t length, uint32_t max_indirect,
                                  rk_blkif_request *out)
{
    uint8_t s[RK_BLKIF_REQUEST_SIZE];
    uint64_t *h = out->head;
    uint32_t i, count, minimum, pages;
    uint64_t total = 0;

    if (length < RK_BLKIF_REQUEST_SIZE)
        return RK_BLKIF_E_LENGTH;
    memcpy(s, slot, sizeof s);              /* the one read of the caller's bytes */
    memset(h, 0, 9 * sizeof *h);
    h[0] = s[0];
    h[1] = s[1];
    h[3] = rk_le64(s + 8);
    h[4] = rk_le64(s + 16);
    switch (s[0]) {
    case 0: case 1: case 2: case 3:         /* READ WRITE WRITE_BARRIER FLUSH_DISKCACHE */
        h[2] = rk_le16(s + 2);
        count = s[1];
        h[5] = count;
        minimum = (s[0] == 2 || s[0] == 3) ? 0 : 1;   /* a flush or barrier may be empty */
        if (count < minimum || count > RK_BLKIF_MAX_SEGMENTS) {
            h[7] = minimum;
            return RK_BLKIF_E_COUNT;
        }
        for (i = 0; i < count; i++) {
            const uint8_t *seg = s + 24 + i * RK_BLKIF_SEGMENT_SIZE;
            uint8_t lo = seg[4], hi = seg[5];
            out->grefs[i] = rk_le32(seg);
            out->first[i] = (char)lo;
            out->last[i] = (char)hi;
            if (hi >= RK_BLKIF_SECTORS_PER_PAGE || hi < lo) {
                h[7] = i;
                h[8] = (uint64_t)i + 1;
                return RK_BLKIF_E_RANGE;
            }
            total += (uint64_t)(hi - lo) + 1;
        }
        h[6] = total;
        h[8] = count;
        return RK_BLKIF_RW;
    case 5:                                 /* DISCARD */
        h[2] = rk_le16(s + 2);
        h[6] = rk_le64(s + 24);
        return RK_BLKIF_DISCARD;
    case 6:                                 /* INDIRECT */
        if (max_indirect == 0)
            return RK_BLKIF_E_NO_INDIRECT;
        count = rk_le16(s + 2);
        h[2] = rk_le16(s + 24);
        h[5] = count;
        if (s[1] != 0 && s[1] != 1)
            return RK_BLKIF_E_INNER;
        if (count < 1 || count > max_indirect)
            return RK_BLKIF_E_INDIRECT_COUNT;
        pages = (count + RK_BLKIF_SEGMENTS_PER_PAGE - 1) / RK_BLKIF_SEGMENTS_PER_PAGE;
        if (pages > RK_BLKIF_MAX_INDIRECT_PAGES)
            pages = RK_BLKIF_MAX_INDIRECT_PAGES;   /* the slot names no more */
        for (i = 0; i < pages; i++)
            out->grefs[i] = rk_le32(s + 28 + 4 * i);
        h[6] = h[8] = pages;
        return RK_BLKIF_INDIRECT;
    default:
        return RK_BLKIF_E_OPERATION;
    }
}

/* `count` blkif_request_segment entries from `length` bytes at `src` (a private copy of the
   indirect pages) into the caller's arrays of `count` entries.  info[0]: total sectors;
   info[1]: index of the first bad segment (on RK_BLKIF_E_RANGE, whose entry is filled). */
static int rk_blkif_parse_segments(const char *src, size_t length, uint32_t count,
                                   uint32_t *grefs, char *first, char *last, uint64_t *info)
{
    const uint8_t *p = (const uint8_t *)src;
    uint64_t total = 0;
    uint32_t i;

    info[0] = info[1] = 0;
    if (length / RK_BLKIF_SEGMENT_SIZE < count)
        return RK_BLKIF_E_LENGTH;
    for (i = 0; i < count; i++, p += RK_BLKIF_SEGMENT_SIZE) {
        uint8_t e[6];
        memcpy(e, p, sizeof e);             /* each byte of the entry read once */
        grefs[i] = rk_le32(e);
        first[i] = (char)e[4];
        last[i] = (char)e[5];
        if (e[5] >= RK_BLKIF_SECTORS_PER_PAGE || e[5] < e[4]) {
            info[1] = i;
            return RK_BLKIF_E_RANGE;
        }
        total += (uint64_t)(e[5] - e[4]) + 1;
    }
    info[0] = total;
    return 0;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("ringkit._native._compiled", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    import pathlib

    # Build in place next to the package: `python ringkit/_native/_build.py`.
    ffibuilder.compile(tmpdir=str(pathlib.Path(__file__).resolve().parents[2]), verbose=True)
