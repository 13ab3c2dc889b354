"""cffi build script of the compiled native helper, `ringkit._native._compiled` (API mode).

setup.py names it in ``cffi_modules``; `python ringkit/_native/_build.py` builds it in place for
a development checkout.  Most of the C is a handful of one-line functions: shared-memory loads,
stores, fences and atomic byte operations that Python cannot express without tearing or
reordering.  The rest is per-request work on slots already copied out of the ring: the blkif
parser's (``rk_blkif_*``), which the backend does for every request and every indirect segment,
and the request-queue layer's (``rk_gather*``), which reads the ids and grant refs of a whole
burst of slots in one call.  Last, ``rk_uring_*``: an io_uring ring object on the kernel's raw
system calls (no liburing; stubs returning -ENOSYS where <linux/io_uring.h> is absent), which
`ringkit._native._uring` wraps.

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
int rk_gather(const char *buf, size_t length, size_t count, size_t stride, size_t offset,
              unsigned size, int is_signed, uint64_t *out);
long rk_gather_refs(const char *buf, size_t length, size_t count, size_t stride,
                    const int64_t *spec, size_t nspec, int64_t *counts, uint32_t *refs,
                    size_t refs_cap);

struct iovec { void *iov_base; size_t iov_len; };
typedef struct rk_uring rk_uring;
rk_uring *rk_uring_open(unsigned entries, int *err);
int rk_uring_close(rk_uring *ring);
int rk_uring_eventfd(const rk_uring *ring);
unsigned rk_uring_entries(const rk_uring *ring);
unsigned rk_uring_in_flight(const rk_uring *ring);
int rk_uring_readv(rk_uring *ring, int fd, const struct iovec *iov, unsigned nr,
                   uint64_t offset, uint64_t cookie);
int rk_uring_writev(rk_uring *ring, int fd, const struct iovec *iov, unsigned nr,
                    uint64_t offset, uint64_t cookie);
int rk_uring_fsync(rk_uring *ring, int fd, int datasync, uint64_t cookie);
int rk_uring_fallocate(rk_uring *ring, int fd, int mode, uint64_t offset, uint64_t length,
                       uint64_t cookie);
int rk_uring_cancel(rk_uring *ring, uint64_t target, uint64_t cookie);
unsigned rk_uring_reap(rk_uring *ring, uint64_t *cookies, int32_t *results, unsigned cap);

typedef struct { uint64_t page; uint32_t ref; uint32_t writable; } rk_pgrant;
typedef struct { rk_pgrant *entries; uint32_t capacity; uint32_t count; } rk_pgrant_table;
enum { RK_FAST_READ_PLAIN = 1, RK_FAST_READ_NOWAIT = 2, RK_FAST_WRITE = 4,
       RK_FAST_MAX_INDIRECT = 4096 };
int rk_pgrant_put(rk_pgrant_table *table, uint32_t ref, uint64_t page, int writable);
int rk_pgrant_drop(rk_pgrant_table *table, uint32_t ref);
int rk_pgrant_clear(rk_pgrant_table *table);
long rk_blkif_serve(rk_pgrant_table *table, int fd, uint64_t sectors, unsigned flags,
                    uint32_t max_indirect, const char *slots, size_t length, size_t count,
                    char *out, size_t out_length, uint64_t *stats);
typedef struct rk_blkif_aio rk_blkif_aio;
enum { RK_AIO_STOP_NONE = 0, RK_AIO_STOP_ORDER = 1, RK_AIO_STOP_FULL = 2 };
rk_blkif_aio *rk_blkif_aio_open(unsigned capacity, int *err);
int rk_blkif_aio_close(rk_blkif_aio *aio);
int rk_blkif_aio_eventfd(const rk_blkif_aio *aio);
unsigned rk_blkif_aio_in_flight(const rk_blkif_aio *aio);
long rk_blkif_aio_submit(rk_blkif_aio *aio, const rk_pgrant_table *table, int fd,
                         uint64_t sectors, unsigned flags, uint64_t align, uint64_t seq,
                         const char *slots, size_t length, size_t count, char *rest,
                         size_t rest_length, uint64_t *rest_seqs, uint64_t *info);
long rk_blkif_aio_reap(rk_blkif_aio *aio, size_t cap, char *out, size_t out_length,
                       uint64_t *seqs, char *back, size_t back_length, uint64_t *back_seqs,
                       uint64_t *info);
enum { RK_ID_FREE = 0, RK_ID_HELD = 1, RK_ID_SENT = 2, RK_ID_ANSWERED = 3, RK_ID_STATE = 3,
       RK_ID_ORPHAN = 4, RK_ID_SHADOW = 8 };
enum { RK_SHADOW_E_OPERATION = 1, RK_SHADOW_E_STATUS = 2 };
typedef struct { char *data; uint64_t length; uint64_t offset; uint32_t operation;
                 uint32_t pad; } rk_shadow_op;
typedef struct {
    char *data; uint64_t length; uint64_t sector; int64_t *batch; uint32_t *pages;
    uint32_t capacity; uint32_t npages; uint32_t token; uint32_t op_index; uint8_t operation;
} rk_shadow;
long rk_shadow_check(const rk_shadow_op *ops, size_t nops, uint64_t align, uint64_t disk_bytes,
                     int readonly, uint64_t max_bytes);
long rk_shadow_submit(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                      char *memory, size_t memory_length, const uint32_t *refs,
                      rk_shadow *table, const rk_shadow_op *ops, size_t nops, uint64_t *cursor,
                      int64_t *batch, size_t nbatch, uint32_t token, unsigned handle,
                      unsigned max_segments, size_t limit, char *slots, size_t slots_length,
                      uint64_t *taken);
long rk_shadow_complete(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                        char *memory, size_t memory_length, rk_shadow *table, const char *buf,
                        size_t length, size_t count, uint32_t *touched, size_t touched_cap,
                        uint64_t *info);
long rk_shadow_drop(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                    rk_shadow *table, uint32_t token, int mode, uint64_t *info);
#define RK_NETTX_FIRST 0x80000000
#define RK_NETTX_EXTRA 0x40000000
enum { RK_NETTX_E_STATUS = 1 };
typedef struct { const char *data; uint32_t length; uint16_t flags; uint16_t gso_size;
                 uint8_t gso_type; uint8_t pad[3]; } rk_nettx_frame;
long rk_nettx_submit(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                     char *memory, size_t memory_length, const uint32_t *refs, uint32_t *table,
                     uint32_t *fifo, uint64_t *fifo_state, const rk_nettx_frame *frames,
                     size_t nframes, unsigned max_pages, size_t room, char *slots,
                     size_t slots_length, uint64_t *out);
long rk_nettx_complete(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                       uint32_t *table, uint32_t *fifo, uint64_t *fifo_state, const char *buf,
                       size_t length, size_t count, uint64_t *info);
enum { RK_NETTX_F_REQUESTS = 1, RK_NETTX_F_EXTRAS = 2, RK_NETTX_F_EXTRA_TYPE = 3,
       RK_NETTX_F_GSO_OFFERED = 4, RK_NETTX_F_GSO_TWICE = 5, RK_NETTX_F_GSO_TYPE = 6,
       RK_NETTX_F_GSO_SIZE = 7, RK_NETTX_F_SIZES = 8, RK_NETTX_F_FRAGMENT = 9,
       RK_NETTX_PACKET_FIELDS = 9 };
long rk_nettx_parse(const char *buf, size_t length, size_t count, int gso, uint32_t *packets,
                    size_t packets_cap, uint32_t *segments, size_t segments_cap,
                    char *responses, size_t responses_length, uint64_t *info);
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

/* ---- the request-queue layer's slot fields (ringkit.requests.codec) ----

   Both functions read a burst of slots the ring engine already copied out of the shared page
   (a private copy), so nothing here races with the peer; still every offset and count is
   checked against the caller's lengths before a byte is read.  Fields are little-endian. */

static uint64_t rk_field(const uint8_t *p, unsigned size, int is_signed)
{
    uint64_t v = 0;
    unsigned i;
    for (i = 0; i < size; i++)
        v |= (uint64_t)p[i] << (8 * i);
    if (is_signed && size < 8 && (v >> (8 * size - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * size);    /* sign-extend into the 64-bit pattern */
    return v;
}

/* The field (offset, size) of `count` slots `stride` bytes apart.  Returns 0, or -1 when the
   arguments do not fit `length` (nothing is read then). */
static int rk_gather(const char *buf, size_t length, size_t count, size_t stride, size_t offset,
                     unsigned size, int is_signed, uint64_t *out)
{
    const uint8_t *p = (const uint8_t *)buf;
    size_t i;
    /* every sum below is of values already bounded, so none wraps */
    if (size == 0 || size > 8 || offset > stride || size > stride - offset)
        return -1;
    if (count && (offset + size > length || count - 1 > (length - offset - size) / stride))
        return -1;
    for (i = 0; i < count; i++)
        out[i] = rk_field(p + i * stride + offset, size, is_signed);
    return 0;
}

/* The grant refs of `count` request slots.  spec (see ringkit.requests.codec._native_spec):
     [0] list offset [1] entry stride [2] ref offset in an entry [3] maximum entries
     [4] count field offset, or -1 for a fixed count [5] its size, or the fixed count
     [6] operation field offset, or -1 [7] its size [8] signed [9] filter by operation
     [10] number of operations n [11 .. 11+n) the operations that name refs
   counts[i]: refs slot i names (-1: its count is above the maximum).  Returns the number of
   refs written to `refs`, or -1 when the spec does not fit the slots or `refs_cap`. */
static long rk_gather_refs(const char *buf, size_t length, size_t count, size_t stride,
                           const int64_t *spec, size_t nspec, int64_t *counts, uint32_t *refs,
                           size_t refs_cap)
{
    const uint8_t *p = (const uint8_t *)buf;
    int64_t off, estride, roff, max, coff, csize, ooff, osize, nops;
    size_t i, j, written = 0;
    int filter, osigned;

    if (nspec < 11)
        return -1;
    off = spec[0]; estride = spec[1]; roff = spec[2]; max = spec[3];
    coff = spec[4]; csize = spec[5]; ooff = spec[6]; osize = spec[7];
    osigned = (int)spec[8]; filter = (int)spec[9]; nops = spec[10];
    /* bound each value by the slot before combining any two, so no sum or product wraps:
       stride is a slot size, far below 2**32 in practice, and checked against it here */
    if (stride == 0 || stride > 0xFFFFFFFFu)
        return -1;
    if (nops < 0 || (size_t)nops != nspec - 11 || off < 0 || (uint64_t)off > stride
        || estride < 4 || (uint64_t)estride > stride || roff < 0 || roff > estride - 4
        || max < 1 || (uint64_t)max > stride
        || (uint64_t)max * (uint64_t)estride > stride - (uint64_t)off)
        return -1;
    if (coff >= 0 && (csize < 1 || csize > 8 || (uint64_t)coff > stride
                      || (uint64_t)csize > stride - (uint64_t)coff))
        return -1;
    if (coff < 0 && (csize < 0 || csize > max))
        return -1;
    if (ooff >= 0 && (osize < 1 || osize > 8 || (uint64_t)ooff > stride
                      || (uint64_t)osize > stride - (uint64_t)ooff))
        return -1;
    if (filter && ooff < 0)
        return -1;
    if (count && count > length / stride)
        return -1;
    for (i = 0; i < count; i++) {
        const uint8_t *s = p + i * stride;
        uint64_t n;
        if (filter) {
            int64_t op = (int64_t)rk_field(s + ooff, (unsigned)osize, osigned);
            int named = 0;
            for (j = 0; j < (size_t)nops; j++)
                if (spec[11 + j] == op)
                    named = 1;
            if (!named) {
                counts[i] = 0;
                continue;
            }
        }
        n = coff >= 0 ? rk_field(s + coff, (unsigned)csize, 0) : (uint64_t)csize;
        if (n > (uint64_t)max) {
            counts[i] = -1;
            continue;
        }
        if (written + n > refs_cap)
            return -1;
        for (j = 0; j < n; j++)
            refs[written++] = (uint32_t)rk_field(s + off + j * estride + roff, 4, 0);
        counts[i] = (int64_t)n;
    }
    return (long)written;
}

/* ---------------------------------------------------------------- io_uring (raw system calls)

   A small submission/completion ring for the block backend's disk I/O, on the kernel's own
   interface (<linux/io_uring.h>, io_uring_setup/enter/register + mmap of the rings), so no
   liburing is needed.  One object = one kernel ring + one eventfd registered for completions
   (the caller's event loop waits for it to become readable, then reaps).

   Each submission is one SQE pushed and handed to the kernel at once (io_uring_enter); if the
   kernel takes none (EAGAIN, EBUSY, ...) the SQE is taken back -- without SQPOLL the kernel
   reads the SQ only inside io_uring_enter -- so a failed submit leaves nothing behind that
   could later touch the caller's buffers.  Completions carry the caller's 64-bit cookie and
   the result (bytes, or -errno): a per-request error never fails the ring.

   The ring never has more requests in flight than its CQ holds (2 x entries), so no
   completion overflows.  rk_uring_close cancels what is still in flight and waits for every
   completion before it unmaps anything: the kernel never writes into memory the caller
   believes free.  Everything returns -ENOSYS where the headers or the system call are absent
   (the Python side then uses threads). */

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <limits.h>
#include <unistd.h>

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/io_uring.h>) && __has_include(<sys/syscall.h>)
#include <linux/io_uring.h>
#include <sys/syscall.h>
#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter) \
    && defined(__NR_io_uring_register) && defined(IORING_FEAT_RW_CUR_POS)
#define RK_HAVE_URING 1
#endif
#endif
#endif

#define RK_IOV_MAX 1024          /* Linux's UIO_MAXIOV */
typedef struct rk_uring rk_uring;

#ifdef RK_HAVE_URING
#include <sys/eventfd.h>
#include <sys/mman.h>

struct rk_uring {
    int fd, efd;
    unsigned entries, cq_capacity, in_flight;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *rings;
    size_t rings_size, sqes_size;
};

static int rk_uring_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static rk_uring *rk_uring_open(unsigned entries, int *err)
{
    struct io_uring_params p;
    rk_uring *r;
    size_t sq_size, cq_size;
    const unsigned need = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP
        | IORING_FEAT_SUBMIT_STABLE | IORING_FEAT_RW_CUR_POS;
    char *base;

    *err = 0;
    if (entries < 1 || entries > 4096) {
        *err = EINVAL;
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        *err = ENOMEM;
        return NULL;
    }
    r->fd = r->efd = -1;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) {
        *err = errno;
        free(r);
        return NULL;
    }
    if ((p.features & need) != need) {      /* before 5.6: no fallocate, unstable iovecs */
        *err = ENOSYS;
        goto fail;
    }
    sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->rings_size = sq_size > cq_size ? sq_size : cq_size;
    r->rings = mmap(NULL, r->rings_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    r->fd, IORING_OFF_SQ_RING);
    if (r->rings == MAP_FAILED) {
        r->rings = NULL;
        *err = errno;
        goto fail;
    }
    r->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        r->sqes = NULL;
        *err = errno;
        goto fail;
    }
    base = r->rings;
    r->sq_head = (unsigned *)(base + p.sq_off.head);
    r->sq_tail = (unsigned *)(base + p.sq_off.tail);
    r->sq_mask = (unsigned *)(base + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(base + p.sq_off.array);
    r->sq_flags = (unsigned *)(base + p.sq_off.flags);
    r->cq_head = (unsigned *)(base + p.cq_off.head);
    r->cq_tail = (unsigned *)(base + p.cq_off.tail);
    r->cq_mask = (unsigned *)(base + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    r->entries = p.sq_entries;
    r->cq_capacity = p.cq_entries;
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        *err = errno;
        goto fail;
    }
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_EVENTFD, &r->efd, 1) < 0) {
        *err = errno;
        goto fail;
    }
    return r;
fail:
    if (r->sqes)
        munmap(r->sqes, r->sqes_size);
    if (r->rings)
        munmap(r->rings, r->rings_size);
    if (r->efd >= 0)
        close(r->efd);
    close(r->fd);
    free(r);
    return NULL;
}

/* The next free SQE, zeroed, or NULL when the ring has as many requests in flight as its CQ
   holds (or, never in practice, the SQ is full). */
static struct io_uring_sqe *rk_uring_sqe(rk_uring *r)
{
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    unsigned tail = *r->sq_tail, index;
    struct io_uring_sqe *sqe;

    if (r->in_flight >= r->cq_capacity || tail - head >= r->entries)
        return NULL;
    index = tail & *r->sq_mask;
    sqe = &r->sqes[index];
    memset(sqe, 0, sizeof *sqe);
    r->sq_array[index] = index;
    return sqe;
}

/* Publish the SQE rk_uring_sqe gave and hand it to the kernel; take it back if the kernel
   did not take it.  0, or -errno. */
static int rk_uring_push(rk_uring *r)
{
    unsigned tail = *r->sq_tail;
    int n, err;

    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    for (;;) {
        n = rk_uring_enter(r->fd, 1, 0, 0);
        if (n == 1) {
            r->in_flight++;
            return 0;
        }
        if (n < 0 && errno == EINTR)
            continue;
        err = n < 0 ? errno : EAGAIN;
        __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
        return -err;
    }
}

static int rk_uring_rw(rk_uring *r, int opcode, int fd, const struct iovec *iov, unsigned nr,
                       uint64_t offset, uint64_t cookie)
{
    struct io_uring_sqe *sqe;
    if (nr == 0 || nr > RK_IOV_MAX || offset > (uint64_t)INT64_MAX)
        return -EINVAL;
    sqe = rk_uring_sqe(r);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = (uint8_t)opcode;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = nr;
    sqe->off = offset;
    sqe->user_data = cookie;
    return rk_uring_push(r);
}

static int rk_uring_readv(rk_uring *r, int fd, const struct iovec *iov, unsigned nr,
                          uint64_t offset, uint64_t cookie)
{
    return rk_uring_rw(r, IORING_OP_READV, fd, iov, nr, offset, cookie);
}

static int rk_uring_writev(rk_uring *r, int fd, const struct iovec *iov, unsigned nr,
                           uint64_t offset, uint64_t cookie)
{
    return rk_uring_rw(r, IORING_OP_WRITEV, fd, iov, nr, offset, cookie);
}

static int rk_uring_fsync(rk_uring *r, int fd, int datasync, uint64_t cookie)
{
    struct io_uring_sqe *sqe = rk_uring_sqe(r);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_FSYNC;
    sqe->fd = fd;
    sqe->fsync_flags = datasync ? IORING_FSYNC_DATASYNC : 0;
    sqe->user_data = cookie;
    return rk_uring_push(r);
}

static int rk_uring_fallocate(rk_uring *r, int fd, int mode, uint64_t offset, uint64_t length,
                              uint64_t cookie)
{
    struct io_uring_sqe *sqe;
    if (offset > (uint64_t)INT64_MAX || length > (uint64_t)INT64_MAX - offset)
        return -EINVAL;
    sqe = rk_uring_sqe(r);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_FALLOCATE;     /* mode in len, length in addr (io_uring ABI) */
    sqe->fd = fd;
    sqe->len = (uint32_t)mode;
    sqe->off = offset;
    sqe->addr = length;
    sqe->user_data = cookie;
    return rk_uring_push(r);
}

/* Ask the kernel to cancel the request submitted with cookie `target`.  Both complete: the
   target with its own result or -ECANCELED, this one (cookie `cookie`) with 0, -ENOENT (it had
   already completed) or -EALREADY (it is running and will complete on its own). */
static int rk_uring_cancel(rk_uring *r, uint64_t target, uint64_t cookie)
{
    struct io_uring_sqe *sqe = rk_uring_sqe(r);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = cookie;
    return rk_uring_push(r);
}

/* Up to `cap` completions into the caller's arrays; returns how many. */
static unsigned rk_uring_reap(rk_uring *r, uint64_t *cookies, int32_t *results, unsigned cap)
{
    unsigned head = *r->cq_head, tail, n = 0;

    if (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW)
        rk_uring_enter(r->fd, 0, 0, IORING_ENTER_GETEVENTS);   /* flush the kernel's backlog */
    tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    while (head != tail && n < cap) {
        const struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
        cookies[n] = cqe->user_data;
        results[n] = cqe->res;
        n++;
        head++;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    r->in_flight -= n < r->in_flight ? n : r->in_flight;
    return n;
}

static int rk_uring_eventfd(const rk_uring *r) { return r->efd; }
static unsigned rk_uring_entries(const rk_uring *r) { return r->entries; }
static unsigned rk_uring_in_flight(const rk_uring *r) { return r->in_flight; }

/* Cancel whatever is in flight, wait for every completion, then unmap and close: 0.  -1 if
   the wait failed: the ring is left allocated (leaked) rather than freed under the kernel. */
static int rk_uring_close(rk_uring *r)
{
    uint64_t cookies[64];
    int32_t results[64];
    int cancelled = 0;

    if (!r)
        return 0;
    while (r->in_flight) {
        if (!cancelled) {
#ifdef IORING_ASYNC_CANCEL_ANY
            /* past the CQ bound on purpose (the kernel's NODROP backlog takes the extra
               completion); the cancel's own completion is counted in flight like any */
            unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
            if (*r->sq_tail - head < r->entries) {
                unsigned index = *r->sq_tail & *r->sq_mask;
                struct io_uring_sqe *sqe = &r->sqes[index];
                memset(sqe, 0, sizeof *sqe);
                r->sq_array[index] = index;
                sqe->opcode = IORING_OP_ASYNC_CANCEL;
                sqe->fd = -1;
                sqe->cancel_flags = IORING_ASYNC_CANCEL_ANY;
                sqe->user_data = UINT64_MAX;
                (void)rk_uring_push(r);
            }
#endif
            cancelled = 1;
        }
        if (rk_uring_enter(r->fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            break;                              /* cannot wait: leak the ring rather than
                                                   free what the kernel may still write */
        rk_uring_reap(r, cookies, results, 64);
    }
    if (r->in_flight)
        return -1;
    munmap(r->sqes, r->sqes_size);
    munmap(r->rings, r->rings_size);
    close(r->efd);
    close(r->fd);
    free(r);
    return 0;
}

#else  /* no io_uring at build time: every call says so */

struct rk_uring { int unused; };

static rk_uring *rk_uring_open(unsigned entries, int *err)
{
    (void)entries;
    *err = ENOSYS;
    return NULL;
}
static int rk_uring_close(rk_uring *r) { (void)r; return 0; }
static int rk_uring_eventfd(const rk_uring *r) { (void)r; return -1; }
static unsigned rk_uring_entries(const rk_uring *r) { (void)r; return 0; }
static unsigned rk_uring_in_flight(const rk_uring *r) { (void)r; return 0; }
static int rk_uring_readv(rk_uring *r, int fd, const struct iovec *iov, unsigned nr,
                          uint64_t offset, uint64_t cookie)
{
    (void)r; (void)fd; (void)iov; (void)nr; (void)offset; (void)cookie;
    return -ENOSYS;
}
static int rk_uring_writev(rk_uring *r, int fd, const struct iovec *iov, unsigned nr,
                           uint64_t offset, uint64_t cookie)
{
    (void)r; (void)fd; (void)iov; (void)nr; (void)offset; (void)cookie;
    return -ENOSYS;
}
static int rk_uring_fsync(rk_uring *r, int fd, int datasync, uint64_t cookie)
{
    (void)r; (void)fd; (void)datasync; (void)cookie;
    return -ENOSYS;
}
static int rk_uring_fallocate(rk_uring *r, int fd, int mode, uint64_t offset, uint64_t length,
                              uint64_t cookie)
{
    (void)r; (void)fd; (void)mode; (void)offset; (void)length; (void)cookie;
    return -ENOSYS;
}
static int rk_uring_cancel(rk_uring *r, uint64_t target, uint64_t cookie)
{
    (void)r; (void)target; (void)cookie;
    return -ENOSYS;
}
static unsigned rk_uring_reap(rk_uring *r, uint64_t *cookies, int32_t *results, unsigned cap)
{
    (void)r; (void)cookies; (void)results; (void)cap;
    return 0;
}
#endif

/* ---------------------------------------------------------------- blkif fast path

   The block backend's usual request served without the interpreter: a burst of blkif slots
   (the request server's private copy, never the shared ring) is walked in ring order, and each
   slot that is a plain READ or WRITE -- of direct segments, or INDIRECT with a READ or WRITE
   inside, of 1..max_indirect segments -- whose every grant ref (an INDIRECT's indirect pages
   and the data pages its list names) is in the persistent-grant table, and whose sectors lie
   inside the disk, is served here -- iovecs pointing into the persistently mapped pages
   (adjacent ones merged), one preadv/pwritev per IOV_MAX of them -- and answered OKAY in `out`
   at the slot's position (the whole slot written, padding zeroed).  An INDIRECT's segment list
   is copied out of its indirect pages once, then validated and used from the copy: the
   frontend may rewrite the pages meanwhile.  The walk stops at the first slot it cannot serve
   so: that slot and every one after it go back to Python untouched (their response positions
   are not written), so error reporting, first maps, flushes, barriers, discards and page-cache
   misses stay with the Python path, and no request answered here overtakes one that Python has
   yet to serve.

   A READ needs writable entries (the disk's data is written into the page); a WRITE only reads
   the pages.  Reads: RK_FAST_READ_PLAIN (an image in memory, tmpfs: nothing to wait for) or
   RK_FAST_READ_NOWAIT (preadv2 RWF_NOWAIT: only what the page cache holds; anything short or
   refused goes back to Python, which reads it again in full).  Writes: only with
   RK_FAST_WRITE (the backend writes buffered images inline).

   The table: open addressing, linear probing, backward-shift deletion; its memory belongs to
   the caller (ringkit.persistent_grants), which keeps every named page mapped while its entry
   is there.  The load stays at most one half, so a probe always meets an empty entry; every
   probe loop is bounded by the capacity anyway.  Returns -1 where the table or a length is
   not what the contract says (nothing read or written then). */

typedef struct { uint64_t page; uint32_t ref; uint32_t writable; } rk_pgrant;
typedef struct { rk_pgrant *entries; uint32_t capacity; uint32_t count; } rk_pgrant_table;
enum { RK_FAST_READ_PLAIN = 1, RK_FAST_READ_NOWAIT = 2, RK_FAST_WRITE = 4,
       RK_FAST_MAX_INDIRECT = 4096 };

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

static int rk_pgrant_ok(const rk_pgrant_table *t)
{
    return t && t->entries && t->capacity >= 2 && !(t->capacity & (t->capacity - 1))
        && t->count <= t->capacity / 2;
}

static uint32_t rk_pgrant_home(const rk_pgrant_table *t, uint32_t ref)
{
    return (uint32_t)(ref * 2654435761u) & (t->capacity - 1);
}

/* The index of ref's entry, or -1. */
static long rk_pgrant_index(const rk_pgrant_table *t, uint32_t ref)
{
    uint32_t mask = t->capacity - 1, i = rk_pgrant_home(t, ref), n;
    for (n = 0; n < t->capacity; n++, i = (i + 1) & mask) {
        const rk_pgrant *e = &t->entries[i];
        if (e->page == 0)
            return -1;
        if (e->ref == ref)
            return (long)i;
    }
    return -1;
}

/* Name `page` (its address, not 0) for `ref`: 0 added, 1 replaced, -2 full, -1 bad call. */
static int rk_pgrant_put(rk_pgrant_table *t, uint32_t ref, uint64_t page, int writable)
{
    uint32_t mask, i, n;
    if (!rk_pgrant_ok(t) || page == 0)
        return -1;
    mask = t->capacity - 1;
    i = rk_pgrant_home(t, ref);
    for (n = 0; n < t->capacity; n++, i = (i + 1) & mask) {
        rk_pgrant *e = &t->entries[i];
        if (e->page == 0) {
            if (t->count + 1 > t->capacity / 2)
                return -2;
            e->ref = ref;
            e->page = page;
            e->writable = writable ? 1 : 0;
            t->count++;
            return 0;
        }
        if (e->ref == ref) {
            e->page = page;
            e->writable = writable ? 1 : 0;
            return 1;
        }
    }
    return -2;
}

/* Forget `ref`: 1 removed, 0 absent, -1 bad call.  Later entries of its probe run move back,
   so that no lookup stops early at the hole. */
static int rk_pgrant_drop(rk_pgrant_table *t, uint32_t ref)
{
    uint32_t mask, i, j, k, n;
    long found;
    if (!rk_pgrant_ok(t))
        return -1;
    found = rk_pgrant_index(t, ref);
    if (found < 0)
        return 0;
    mask = t->capacity - 1;
    i = j = (uint32_t)found;
    for (n = 0; n < t->capacity; n++) {
        j = (j + 1) & mask;
        if (t->entries[j].page == 0)
            break;
        k = rk_pgrant_home(t, t->entries[j].ref);
        /* the entry at j may move to the hole at i unless its home lies cyclically in (i, j] */
        if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
            t->entries[i] = t->entries[j];
            i = j;
        }
    }
    memset(&t->entries[i], 0, sizeof t->entries[i]);
    t->count--;
    return 1;
}

/* Empty the table: 0, or -1 bad call. */
static int rk_pgrant_clear(rk_pgrant_table *t)
{
    if (!t || !t->entries || t->capacity < 2 || (t->capacity & (t->capacity - 1)))
        return -1;
    memset(t->entries, 0, (size_t)t->capacity * sizeof *t->entries);
    t->count = 0;
    return 0;
}

/* The iovecs of one request done as one I/O: preadv / preadv2(RWF_NOWAIT) / pwritev in calls
   of at most IOV_MAX iovecs, each of which must move all its bytes.  1 when all were moved, 0
   otherwise (an error or a short transfer: the caller hands the request back whole). */
static int rk_blkif_io(int fd, unsigned op, unsigned flags, struct iovec *iov, size_t n,
                       uint64_t offset)
{
    size_t at = 0;
    while (at < n) {
        size_t k, chunk = n - at < IOV_MAX ? n - at : IOV_MAX;
        uint64_t want = 0;
        ssize_t done;
        for (k = 0; k < chunk; k++)
            want += iov[at + k].iov_len;
        if (op == 0)
            done = (flags & RK_FAST_READ_PLAIN)
                ? preadv(fd, iov + at, (int)chunk, (off_t)offset)
                : preadv2(fd, iov + at, (int)chunk, (off_t)offset, RWF_NOWAIT);
        else
            done = pwritev(fd, iov + at, (int)chunk, (off_t)offset);
        if (done < 0 || (uint64_t)done != want)
            return 0;
        offset += want;
        at += chunk;
    }
    return 1;
}

/* One segment (`ref`, sectors lo..hi) into iov[*n], merged with iov[*n - 1] when it continues
   it in memory.  The sector sum, *total, grows by its sectors.  0 when the segment must be
   handed back: a bad range, a ref not in the table, a READ into a read-only entry. */
static int rk_blkif_segment(const rk_pgrant_table *t, unsigned op, uint32_t ref, uint8_t lo,
                            uint8_t hi, struct iovec *iov, size_t *n, uint64_t *total)
{
    long at;
    const rk_pgrant *e;
    char *base;
    size_t len;
    if (hi >= RK_BLKIF_SECTORS_PER_PAGE || hi < lo)
        return 0;
    at = rk_pgrant_index(t, ref);
    if (at < 0)
        return 0;
    e = &t->entries[at];
#ifndef RK_BLKFAST_SKIP_WRITABLE_CHECK   /* the negative control's build only */
    if (op == 0 && !e->writable)
        return 0;
#endif
    base = (char *)(uintptr_t)e->page + (size_t)lo * 512;
    len = ((size_t)hi - lo + 1) * 512;
    *total += (uint64_t)(hi - lo) + 1;
    if (*n && (char *)iov[*n - 1].iov_base + iov[*n - 1].iov_len == base) {
        iov[*n - 1].iov_len += len;
        return 1;
    }
    iov[*n].iov_base = base;
    iov[*n].iov_len = len;
    (*n)++;
    return 1;
}

#define RK_BLKIF_MAX_INDIRECT_SEGMENTS RK_FAST_MAX_INDIRECT   /* 8 indirect pages of 512 */

/* The segments of INDIRECT slot `s` (operation READ/WRITE `op`, `nseg` segments, already
   checked against the advertised limit) into iov / *n / *total: its indirect pages looked up
   in the table, the segment list copied out of them once into `list` (the frontend may change
   the pages meanwhile: everything after is decided on the copy), then each entry as a direct
   segment.  0 when the request must be handed back. */
static int rk_blkif_indirect(const rk_pgrant_table *t, unsigned op, const uint8_t *s,
                             unsigned nseg, uint8_t *list, struct iovec *iov, size_t *n,
                             uint64_t *total)
{
    unsigned pages = (nseg + RK_BLKIF_SEGMENTS_PER_PAGE - 1) / RK_BLKIF_SEGMENTS_PER_PAGE, p, j;
    if (pages > RK_BLKIF_MAX_INDIRECT_PAGES)
        return 0;
    for (p = 0; p < pages; p++) {
        long at = rk_pgrant_index(t, rk_le32(s + 28 + 4 * p));
        unsigned entries = nseg - p * RK_BLKIF_SEGMENTS_PER_PAGE;
        if (at < 0)
            return 0;                   /* not kept mapped: the first map is Python's */
        if (entries > RK_BLKIF_SEGMENTS_PER_PAGE)
            entries = RK_BLKIF_SEGMENTS_PER_PAGE;
        memcpy(list + (size_t)p * 4096, (const char *)(uintptr_t)t->entries[at].page,
               (size_t)entries * RK_BLKIF_SEGMENT_SIZE);
    }
    for (j = 0; j < nseg; j++) {
        const uint8_t *e = list + (size_t)j * RK_BLKIF_SEGMENT_SIZE;
        if (!rk_blkif_segment(t, op, rk_le32(e), e[4], e[5], iov, n, total))
            return 0;
    }
    return 1;
}

/* Serve the leading slots of a burst (see above).  `count` slots of 112 bytes at `slots`
   (`length` bytes there), responses into `out` (`out_length` bytes; slot i's at i * 112).
   `max_indirect`: the indirect segments advertised (0: INDIRECT is handed back, as Python
   answers it EOPNOTSUPP).  stats[0] / stats[1]: sectors read / written by the slots served.
   Returns how many leading slots were served and answered, or -1 on a bad call. */
static long rk_blkif_serve(rk_pgrant_table *t, int fd, uint64_t sectors, unsigned flags,
                           uint32_t max_indirect, const char *slots, size_t length,
                           size_t count, char *out, size_t out_length, uint64_t *stats)
{
    /* an indirect request's copied segment list and iovecs: too big for the stack */
    uint8_t *list = NULL;
    struct iovec *iov = NULL;
    size_t i;
    if (!rk_pgrant_ok(t) || count > length / RK_BLKIF_REQUEST_SIZE
        || count > out_length / RK_BLKIF_REQUEST_SIZE)
        return -1;
    if (max_indirect > RK_BLKIF_MAX_INDIRECT_SEGMENTS)
        max_indirect = RK_BLKIF_MAX_INDIRECT_SEGMENTS;
    stats[0] = stats[1] = 0;
    for (i = 0; i < count; i++) {
        uint8_t s[RK_BLKIF_REQUEST_SIZE];
        struct iovec direct[RK_BLKIF_MAX_SEGMENTS];
        struct iovec *v = direct;
        uint8_t *r;
        uint64_t sector, total = 0;
        unsigned op, nseg, j;
        size_t n = 0;

        memcpy(s, slots + i * RK_BLKIF_REQUEST_SIZE, sizeof s);   /* each byte read once */
        op = s[0];
        nseg = s[1];
        if (op == 6) {                      /* INDIRECT: the operation is its indirect_op */
            if (max_indirect == 0 || s[1] > 1)
                break;
            op = s[1];
            nseg = rk_le16(s + 2);
#ifndef RK_BLKFAST_SKIP_INDIRECT_LIMIT   /* the negative control's build only */
            if (nseg < 1 || nseg > max_indirect)
                break;
#else
            if (nseg < 1)
                break;
#endif
        } else if (nseg < 1 || nseg > RK_BLKIF_MAX_SEGMENTS) {
            break;
        }
        if (op == 0) {
            if (!(flags & (RK_FAST_READ_PLAIN | RK_FAST_READ_NOWAIT)))
                break;
        } else if (op != 1 || !(flags & RK_FAST_WRITE)) {
            break;
        }
        if (s[0] == 6) {
            if (!list) {
                list = malloc((size_t)RK_BLKIF_MAX_INDIRECT_PAGES * 4096);
                iov = malloc(RK_BLKIF_MAX_INDIRECT_SEGMENTS * sizeof *iov);
                if (!list || !iov)
                    break;
            }
            v = iov;
            if (!rk_blkif_indirect(t, op, s, nseg, list, v, &n, &total))
                break;
        } else {
            for (j = 0; j < nseg; j++) {
                const uint8_t *seg = s + 24 + j * RK_BLKIF_SEGMENT_SIZE;
                if (!rk_blkif_segment(t, op, rk_le32(seg), seg[4], seg[5], v, &n, &total))
                    break;
            }
            if (j < nseg)
                break;
        }
        sector = rk_le64(s + 16);
        if (sector > sectors || total > sectors - sector || sector > (uint64_t)INT64_MAX / 1024)
            break;
        if (!rk_blkif_io(fd, op, flags, v, n, sector * 512))
            break;                          /* Python does it again, whole, and reports */
        stats[op] += total;
        r = (uint8_t *)out + i * RK_BLKIF_REQUEST_SIZE;
        memset(r, 0, RK_BLKIF_REQUEST_SIZE);
        memcpy(r, s + 8, 8);                /* id */
        r[8] = (uint8_t)op;                 /* the operation (an INDIRECT's indirect_op);
                                               status 0: BLKIF_RSP_OKAY */
    }
    free(list);
    free(iov);
    return (long)i;
}

/* ---------------------------------------------------------------- blkif burst server at depth

   The same usual requests as rk_blkif_serve -- READs and WRITEs of direct segments whose every
   ref is in the persistent-grant table and whose sectors lie inside the disk -- for a backend
   serving a ring at depth (io_depth > 1), where completions may be answered in any order:
   rk_blkif_aio_submit walks a burst in ring order and submits each such request to the
   io_uring of a rk_blkif_aio (one io_uring_enter per batch of up to RK_AIO_BATCH) instead of
   doing the I/O in place; rk_blkif_aio_reap answers the completions the kernel has posted, in
   the order the device finished them: OKAY for a request that moved all its bytes, and for any
   other (an error, a short transfer) the request's slot handed back whole, for the Python path
   to serve again and report.  A READ the page cache holds completes inside the submission
   (io_uring tries it without blocking first), so nothing is attempted before submitting.

   Each request in flight owns an entry: a private copy of its slot (everything the answer and
   a hand-back need; the shared ring is never read again), its iovecs (into persistently mapped
   pages, which the caller keeps mapped until rk_blkif_aio_close has waited for every request),
   the byte count it must move, and the sequence number the caller gave its slot (so that the
   caller can tell answers that overtake earlier requests).

   The walk stops, leaving that slot and the rest of the burst to the caller, at a WRITE_BARRIER
   (RK_AIO_STOP_ORDER: it waits for every request before it, so nothing at or after it is taken
   here) and when every entry is in flight (RK_AIO_STOP_FULL: the caller reaps, then goes on;
   never reported when a refused submission left entries free, as the caller would wait for a
   completion that cannot come).
   Any other slot it does not take -- a ref not in the table, an INDIRECT, FLUSH, DISCARD, a bad
   count or range, a READ into a read-only entry, an operation the flags exclude, an O_DIRECT
   request not aligned to `align` -- is copied to `rest`, with its sequence number, for the
   Python path to serve and report; submitted and rest slots together are a prefix of the
   burst.  Reads: any of the READ flags; writes: RK_FAST_WRITE. */

#define RK_AIO_BATCH 64
enum { RK_AIO_STOP_NONE = 0, RK_AIO_STOP_ORDER = 1, RK_AIO_STOP_FULL = 2 };

typedef struct {
    uint8_t slot[RK_BLKIF_REQUEST_SIZE];
    struct iovec iov[RK_BLKIF_MAX_SEGMENTS];
    uint64_t expect, sectors, seq;
    uint32_t busy;
    uint8_t op;
} rk_aio_entry;

struct rk_blkif_aio {
    rk_uring *ring;
    rk_aio_entry *entries;
    uint32_t *free;                 /* a stack of free entry indices */
    uint32_t capacity, nfree;
};
typedef struct rk_blkif_aio rk_blkif_aio;

/* A server of up to `capacity` (1..4096) requests in flight, or NULL with *err the errno
   (ENOSYS where io_uring was absent at build time). */
static rk_blkif_aio *rk_blkif_aio_open(unsigned capacity, int *err)
{
    rk_blkif_aio *a;
    uint32_t k;
    *err = 0;
    if (capacity < 1 || capacity > 4096) {
        *err = EINVAL;
        return NULL;
    }
    a = calloc(1, sizeof *a);
    if (!a) {
        *err = ENOMEM;
        return NULL;
    }
    a->entries = calloc(capacity, sizeof *a->entries);
    a->free = calloc(capacity, sizeof *a->free);
    if (!a->entries || !a->free) {
        *err = ENOMEM;
        goto fail;
    }
    a->ring = rk_uring_open(capacity, err);
    if (!a->ring)
        goto fail;
    if (rk_uring_entries(a->ring) < capacity) {       /* never: the kernel rounds up */
        rk_uring_close(a->ring);
        *err = EINVAL;
        goto fail;
    }
    a->capacity = capacity;
    for (k = 0; k < capacity; k++)
        a->free[k] = capacity - 1 - k;                /* entry 0 is taken first */
    a->nfree = capacity;
    return a;
fail:
    free(a->entries);
    free(a->free);
    free(a);
    return NULL;
}

/* Cancel and wait for whatever is in flight (the caller may unmap the pages afterwards), then
   free: 0.  -1 if the wait failed: everything is left allocated rather than freed under the
   kernel, and the pages must stay mapped. */
static int rk_blkif_aio_close(rk_blkif_aio *a)
{
    if (!a)
        return 0;
    if (rk_uring_close(a->ring) < 0)
        return -1;
    free(a->entries);
    free(a->free);
    free(a);
    return 0;
}

static int rk_blkif_aio_eventfd(const rk_blkif_aio *a) { return rk_uring_eventfd(a->ring); }
static unsigned rk_blkif_aio_in_flight(const rk_blkif_aio *a)
{
    return a->capacity - a->nfree;
}

static void rk_aio_rest(char *rest, uint64_t *rest_seqs, uint64_t *info, const uint8_t *slot,
                        uint64_t seq)
{
    memcpy(rest + info[0] * RK_BLKIF_REQUEST_SIZE, slot, RK_BLKIF_REQUEST_SIZE);
    rest_seqs[info[0]++] = seq;
}

#ifdef RK_HAVE_URING
/* Hand the `pending` SQEs published (entries used[0..pending)) to the kernel.  Those it does
   not take are unpublished -- the kernel reads the tail only inside io_uring_enter -- and
   their slots go to rest, their entries freed.  0, or the errno of the refusal (info[2]). */
static int rk_aio_flush(rk_blkif_aio *a, const uint32_t *used, unsigned pending, char *rest,
                        uint64_t *rest_seqs, uint64_t *info)
{
    rk_uring *r = a->ring;
    unsigned taken = 0, k;
    int err = 0;
    while (taken < pending) {
        int n = rk_uring_enter(r->fd, pending - taken, 0, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = n < 0 ? errno : EAGAIN;
            break;
        }
        taken += (unsigned)n;
    }
    r->in_flight += taken;
    info[3] += taken;
    if (!err)
        return 0;
    __atomic_store_n(r->sq_tail, __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE),
                     __ATOMIC_RELEASE);
    for (k = taken; k < pending; k++) {
        rk_aio_entry *e = &a->entries[used[k]];
        rk_aio_rest(rest, rest_seqs, info, e->slot, e->seq);
        info[4 + e->op] -= e->sectors;
        e->busy = 0;
        a->free[a->nfree++] = used[k];
    }
    info[2] = (uint64_t)err;
    return err;
}
#endif

/* See above.  `count` slots at `slots` (`length` bytes); `seq`: the sequence number of the
   first (slot i's is seq + i).  `rest` / `rest_seqs` take up to `count` slots and numbers.
   info[0]: slots copied to rest; info[1]: why the walk stopped (RK_AIO_STOP_*); info[2]: the
   errno of a refused submission (its slots, and every later one, are in rest); info[3]:
   requests submitted; info[4] / info[5]: sectors they read / write.  Returns how many leading
   slots were consumed (submitted or copied to rest), or -1 on a bad call (nothing done). */
static long rk_blkif_aio_submit(rk_blkif_aio *a, const rk_pgrant_table *t, int fd,
                                uint64_t sectors, unsigned flags, uint64_t align, uint64_t seq,
                                const char *slots, size_t length, size_t count, char *rest,
                                size_t rest_length, uint64_t *rest_seqs, uint64_t *info)
{
    size_t i = 0;
    memset(info, 0, 6 * sizeof *info);
    if (!a || !rk_pgrant_ok(t) || count > length / RK_BLKIF_REQUEST_SIZE
#ifndef RK_AIO_SKIP_REST_BOUND            /* the negative control's build only */
        || count > rest_length / RK_BLKIF_REQUEST_SIZE
#endif
        || align == 0 || (align & (align - 1)) || align > 4096)
        return -1;
#ifdef RK_HAVE_URING
    {
        uint32_t used[RK_AIO_BATCH];
        unsigned pending = 0;
        for (i = 0; i < count; i++) {
            uint8_t s[RK_BLKIF_REQUEST_SIZE];
            struct iovec v[RK_BLKIF_MAX_SEGMENTS];
            struct io_uring_sqe *sqe;
            rk_aio_entry *e;
            uint64_t sector, total = 0, bytes = 0;
            unsigned op, nseg, j;
            size_t n = 0;
            int ok;

            memcpy(s, slots + i * RK_BLKIF_REQUEST_SIZE, sizeof s);   /* each byte read once */
            op = s[0];
            nseg = s[1];
            if (op == 2) {                                  /* WRITE_BARRIER */
                info[1] = RK_AIO_STOP_ORDER;
                break;
            }
            ok = !info[2] && nseg >= 1 && nseg <= RK_BLKIF_MAX_SEGMENTS
                && ((op == 0 && (flags & (RK_FAST_READ_PLAIN | RK_FAST_READ_NOWAIT)))
                    || (op == 1 && (flags & RK_FAST_WRITE)));
            for (j = 0; ok && j < nseg; j++) {
                const uint8_t *g = s + 24 + j * RK_BLKIF_SEGMENT_SIZE;
                ok = rk_blkif_segment(t, op, rk_le32(g), g[4], g[5], v, &n, &total);
            }
            sector = rk_le64(s + 16);
            ok = ok && sector <= sectors && total <= sectors - sector
                && sector <= (uint64_t)INT64_MAX / 1024 && !((sector * 512) & (align - 1));
            for (j = 0; ok && j < n; j++) {
                ok = !((uintptr_t)v[j].iov_base & (align - 1))
                    && !(v[j].iov_len & (align - 1));
                bytes += v[j].iov_len;
            }
            if (!ok) {
                rk_aio_rest(rest, rest_seqs, info, s, seq + i);
                continue;
            }
            /* a whole batch, or every entry taken: hand the pending ones to the kernel first
               -- "full" is said only once they are in flight; if the kernel refuses them,
               their entries are free again and this slot, like every later one, goes to rest
               (the SQ never fills before the entries do: it has at least `capacity` slots) */
            if (pending == RK_AIO_BATCH || (pending && !a->nfree)) {
                rk_aio_flush(a, used, pending, rest, rest_seqs, info);
                pending = 0;
                if (info[2]) {
                    rk_aio_rest(rest, rest_seqs, info, s, seq + i);
                    continue;
                }
            }
            if (!a->nfree || !(sqe = rk_uring_sqe(a->ring))) {
                info[1] = RK_AIO_STOP_FULL;              /* this slot is not consumed */
                break;
            }
            used[pending] = a->free[--a->nfree];
            e = &a->entries[used[pending]];
            memcpy(e->slot, s, sizeof s);
            memcpy(e->iov, v, n * sizeof *v);
            e->expect = bytes;
            e->sectors = total;
            e->seq = seq + i;
            e->op = (uint8_t)op;
            e->busy = 1;
            sqe->opcode = op == 0 ? IORING_OP_READV : IORING_OP_WRITEV;
            sqe->fd = fd;
            sqe->addr = (uint64_t)(uintptr_t)e->iov;
            sqe->len = (uint32_t)n;
            sqe->off = sector * 512;
            sqe->user_data = used[pending];
            __atomic_store_n(a->ring->sq_tail, *a->ring->sq_tail + 1, __ATOMIC_RELEASE);
            info[4 + op] += total;
            pending++;
        }
        if (pending)
            rk_aio_flush(a, used, pending, rest, rest_seqs, info);
    }
#else
    (void)fd; (void)sectors; (void)flags; (void)seq; (void)slots; (void)rest; (void)rest_seqs;
    info[1] = RK_AIO_STOP_ORDER;            /* unreachable: no server opens without io_uring */
#endif
    return (long)i;
}

/* Answer up to `cap` completions (out, out_length, back and back_length hold `cap` slots,
   seqs and back_seqs `cap` numbers): a request that moved all its bytes gets its OKAY response
   (the whole slot written, padding zeroed) at out[n] and its sequence number at seqs[n];
   any other has its slot copied to back[info[0]] and its number to back_seqs[info[0]].
   info[1] / info[2]: sectors read / written by the requests answered.  A completion whose
   cookie names no request in flight (a cancel's own) is skipped.  Returns the responses
   written, or -1 on a bad call. */
static long rk_blkif_aio_reap(rk_blkif_aio *a, size_t cap, char *out, size_t out_length,
                              uint64_t *seqs, char *back, size_t back_length,
                              uint64_t *back_seqs, uint64_t *info)
{
    uint64_t cookies[RK_AIO_BATCH];
    int32_t results[RK_AIO_BATCH];
    size_t n = 0, done = 0;
    memset(info, 0, 3 * sizeof *info);
    if (!a || cap > out_length / RK_BLKIF_REQUEST_SIZE
        || cap > back_length / RK_BLKIF_REQUEST_SIZE)
        return -1;
    while (done < cap) {
        unsigned want = cap - done < RK_AIO_BATCH ? (unsigned)(cap - done) : RK_AIO_BATCH;
        unsigned got = rk_uring_reap(a->ring, cookies, results, want), k;
        if (!got)
            break;
        for (k = 0; k < got; k++) {
            rk_aio_entry *e;
            if (cookies[k] >= a->capacity || !a->entries[cookies[k]].busy)
                continue;
            e = &a->entries[cookies[k]];
#ifndef RK_AIO_SKIP_LENGTH_CHECK          /* the negative control's build only */
            if (results[k] < 0 || (uint64_t)results[k] != e->expect) {
#else
            if (results[k] < 0) {
#endif
                memcpy(back + info[0] * RK_BLKIF_REQUEST_SIZE, e->slot, RK_BLKIF_REQUEST_SIZE);
                back_seqs[info[0]++] = e->seq;
            } else {
                uint8_t *r = (uint8_t *)out + n * RK_BLKIF_REQUEST_SIZE;
                memset(r, 0, RK_BLKIF_REQUEST_SIZE);
                memcpy(r, e->slot + 8, 8);               /* id */
                r[8] = e->op;                            /* status 0: BLKIF_RSP_OKAY */
                seqs[n++] = e->seq;
                info[1 + e->op] += e->sectors;
            }
            e->busy = 0;
            a->free[a->nfree++] = (uint32_t)cookies[k];
            done++;
        }
    }
    return (long)n;
}

/* ---------------------------------------------------------------- blkfront shadow table

   The block frontend's usual batch -- plain READs and WRITEs, one pool page per segment, direct
   or INDIRECT past 11 segments -- written and answered without the interpreter, on the request
   queue's own state (ringkit.requests.front, ringkit.requests.pool), which the Python path
   reads and writes as well:

   * `states`: one byte per request id of the queue (RK_ID_*: FREE, HELD, SENT, ANSWERED in the
     low bits; ORPHAN: its caller is gone; SHADOW: the request is this table's, not a Python
     Request's).  Free ids are taken lowest first, as the Python path takes them.
   * `freemap`: the GrantPool's byte map (1: page free) over `npages` pages of `memory`; pages
     are found exactly as GrantPool.take_nowait finds them (the first run long enough, else the
     first free pages in order).
   * `table`: per id, what a SHADOW request needs once answered (its pages, where a READ's data
     goes, which op of which batch it serves).
   * `batch`: the submitting call's counters and per-op results, int64: [0] answered,
     [1] in flight, then for op i at [2 + 2i] the status and sector of its first failed
     request (status 0: none failed).

   rk_shadow_submit encodes into `slots` (a private staging area the caller puts on the ring
   with one copy and one push); rk_shadow_complete walks a burst of responses the ring engine
   already copied out of the shared page and consumes its leading responses that answer SHADOW
   requests in flight: the operation and status checked, a READ's data copied from the pool
   pages to the caller's buffer (unless the request is an orphan), the id and pages freed.  It
   stops at the first response it does not consume -- an id that is not a SHADOW request in
   flight goes back to the Python path, which matches it or reports it -- or at a response
   whose operation or status is wrong (info[0] says which; the caller fails the queue).  Every
   length and index the caller gives is checked before use; -1 means a bad call (nothing read
   or written then). */

enum { RK_ID_FREE = 0, RK_ID_HELD = 1, RK_ID_SENT = 2, RK_ID_ANSWERED = 3, RK_ID_STATE = 3,
       RK_ID_ORPHAN = 4, RK_ID_SHADOW = 8 };
enum { RK_SHADOW_E_OPERATION = 1, RK_SHADOW_E_STATUS = 2 };
#define RK_PAGE 4096u
#define RK_SECTOR 512u
#define RK_BLKIF_RESPONSE_SIZE 16

typedef struct { char *data; uint64_t length; uint64_t offset; uint32_t operation;
                 uint32_t pad; } rk_shadow_op;
/* `pages`: the caller's array of `capacity` entries, room for the pages of the largest
   request submitted (its data pages, then its indirect pages). */
typedef struct {
    char *data; uint64_t length; uint64_t sector; int64_t *batch; uint32_t *pages;
    uint32_t capacity; uint32_t npages; uint32_t token; uint32_t op_index; uint8_t operation;
} rk_shadow;

/* The index of the first op the fast path must not take (misaligned, outside the disk, a
   write to a read-only disk, neither READ nor WRITE, no buffer), or `nops` when it may take
   them all; -1 on a bad call (an alignment not of whole sectors, or `max_bytes`, the largest
   request the client sends, past what 8 indirect pages describe). */
static long rk_shadow_check(const rk_shadow_op *ops, size_t nops, uint64_t align,
                            uint64_t disk_bytes, int readonly, uint64_t max_bytes)
{
    size_t i;
    if (align == 0 || align % RK_SECTOR || max_bytes > (uint64_t)RK_FAST_MAX_INDIRECT * RK_PAGE)
        return -1;
    for (i = 0; i < nops; i++) {
        const rk_shadow_op *op = &ops[i];
        if (op->operation > 1 || (op->operation == 1 && readonly)
            || (op->length && !op->data))
            return (long)i;
        if (op->offset % align || op->length % align || op->offset > disk_bytes
            || op->length > disk_bytes - op->offset)
            return (long)i;
    }
    return (long)nops;
}

/* `count` free pages as GrantPool.take_nowait picks them (*free_pages: how many are free);
   0, taking nothing, if there are not enough. */
static int rk_shadow_take_pages(uint8_t *freemap, size_t npages, size_t *free_pages,
                                unsigned count, uint32_t *pages)
{
    size_t start = 0, run = 0, i;
    unsigned got = 0;
    if (*free_pages < count)
        return 0;
    for (i = 0; i < npages && run < count; i++) {
        if (freemap[i] == 1) {
            if (run++ == 0)
                start = i;
        } else {
            run = 0;
        }
    }
    if (run == count) {
        for (i = 0; i < count; i++)
            pages[i] = (uint32_t)(start + i);
    } else {
        for (i = 0; i < npages && got < count; i++)
            if (freemap[i] == 1)
                pages[got++] = (uint32_t)i;
        if (got < count)
            return 0;                   /* the free count was wrong: take nothing */
    }
    for (i = 0; i < count; i++)
        freemap[pages[i]] = 0;
    *free_pages -= count;
    return 1;
}

static void rk_put_le(uint8_t *p, uint64_t v, unsigned size)
{
    unsigned i;
    for (i = 0; i < size; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Pages a request of `nseg` data pages takes: they, and its indirect pages past 11. */
static size_t rk_shadow_pages_for(size_t nseg)
{
    return nseg + (nseg > RK_BLKIF_MAX_SEGMENTS
                   ? (nseg + RK_BLKIF_SEGMENTS_PER_PAGE - 1) / RK_BLKIF_SEGMENTS_PER_PAGE : 0);
}

/* Encode up to `limit` requests of the ops from cursor[0] (op index) / cursor[1] (byte offset
   in it) on -- each at most `max_segments` (1..4096) pages, an op cut as the Python path cuts
   it -- into `slots` (112 bytes each), taking the lowest free id and pages for each and
   copying a WRITE's data into its pages; stops early when no id or too few pages are free.
   A request of more than 11 pages goes INDIRECT, as on the Python path: its data pages first,
   then its indirect pages, which get the segment list (every page whole but the last one's
   sectors), written over the list's bytes only.  The ops must have passed rk_shadow_check;
   every entry of `table` must have room for rk_shadow_pages_for(max_segments) pages.
   `memory`: the pool's `npages` pages; `refs`: the grant ref of each.  taken[0]: pages taken.
   Returns the requests encoded (their ids marked SENT | SHADOW, counted in batch[1]), or -1
   on a bad call. */
static long rk_shadow_submit(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                             char *memory, size_t memory_length, const uint32_t *refs,
                             rk_shadow *table, const rk_shadow_op *ops, size_t nops,
                             uint64_t *cursor, int64_t *batch, size_t nbatch, uint32_t token,
                             unsigned handle, unsigned max_segments, size_t limit,
                             char *slots, size_t slots_length, uint64_t *taken)
{
    size_t n = 0, free_pages = 0, i, id;
    if (max_segments < 1 || max_segments > RK_FAST_MAX_INDIRECT || nops > (SIZE_MAX - 2) / 2
        || nbatch < 2 + 2 * nops || cursor[0] > nops || npages > memory_length / RK_PAGE)
        return -1;
    for (id = 0; id < window; id++)
        if (!table[id].pages || table[id].capacity < rk_shadow_pages_for(max_segments))
            return -1;
    taken[0] = 0;
    for (i = 0; i < npages; i++)
        free_pages += freemap[i] == 1;
    while (n < limit && n < slots_length / RK_BLKIF_REQUEST_SIZE) {
        const rk_shadow_op *op;
        uint64_t at, bytes, sector;
        unsigned nseg, ntake, j;
        rk_shadow *sh;
        uint8_t *s;

        while (cursor[0] < nops && cursor[1] >= ops[cursor[0]].length) {
            cursor[0]++;
            cursor[1] = 0;
        }
        if (cursor[0] >= nops)
            break;
        op = &ops[cursor[0]];
        at = cursor[1];
        bytes = op->length - at;
        if (bytes > (uint64_t)max_segments * RK_PAGE)
            bytes = (uint64_t)max_segments * RK_PAGE;
        if (bytes % RK_SECTOR || op->operation > 1)
            return -1;                  /* rk_shadow_check refuses such an op */
        nseg = (unsigned)((bytes + RK_PAGE - 1) / RK_PAGE);
        ntake = (unsigned)rk_shadow_pages_for(nseg);
        for (id = 0; id < window; id++)
            if (states[id] == RK_ID_FREE)
                break;
        if (id == window)
            break;
        sh = &table[id];
        if (!rk_shadow_take_pages(freemap, npages, &free_pages, ntake, sh->pages))
            break;
        taken[0] += ntake;
        sector = (op->offset + at) / RK_SECTOR;
        sh->data = op->data + at;
        sh->length = bytes;
        sh->sector = sector;
        sh->batch = batch;
        sh->token = token;
        sh->op_index = (uint32_t)cursor[0];
        sh->operation = (uint8_t)op->operation;
        sh->npages = ntake;
        s = (uint8_t *)slots + n * RK_BLKIF_REQUEST_SIZE;
        memset(s, 0, RK_BLKIF_REQUEST_SIZE);    /* padding zeroed (XSA-216) */
        rk_put_le(s + 8, id, 8);
        rk_put_le(s + 16, sector, 8);
        if (ntake > nseg) {                     /* INDIRECT */
            s[0] = 6;
            s[1] = (uint8_t)op->operation;
            rk_put_le(s + 2, nseg, 2);
            rk_put_le(s + 24, handle, 2);
            for (j = nseg; j < ntake; j++)
                rk_put_le(s + 28 + 4 * (j - nseg), refs[sh->pages[j]], 4);
        } else {
            s[0] = (uint8_t)op->operation;
            s[1] = (uint8_t)nseg;
            rk_put_le(s + 2, handle, 2);
        }
        for (j = 0; j < nseg; j++) {
            uint8_t *seg = ntake > nseg
                ? (uint8_t *)memory
                    + (size_t)sh->pages[nseg + j / RK_BLKIF_SEGMENTS_PER_PAGE] * RK_PAGE
                    + (size_t)(j % RK_BLKIF_SEGMENTS_PER_PAGE) * RK_BLKIF_SEGMENT_SIZE
                : s + 24 + j * RK_BLKIF_SEGMENT_SIZE;
            uint64_t chunk = bytes - (uint64_t)j * RK_PAGE;
            if (chunk > RK_PAGE)
                chunk = RK_PAGE;
            rk_put_le(seg, refs[sh->pages[j]], 4);
            seg[4] = 0;                                     /* first_sect */
            seg[5] = (uint8_t)(chunk / RK_SECTOR - 1);     /* last_sect */
#ifdef RK_SHADOW_WHOLE_LIST_PAGES       /* the negative control's build only */
            if (ntake > nseg)
                seg[5] = RK_BLKIF_SECTORS_PER_PAGE - 1;
#endif
            seg[6] = seg[7] = 0;
            if (op->operation == 1)
                memcpy(memory + (size_t)sh->pages[j] * RK_PAGE,
                       sh->data + (size_t)j * RK_PAGE, (size_t)chunk);
        }
        states[id] = RK_ID_SENT | RK_ID_SHADOW;
        batch[1]++;
        cursor[1] += bytes;
        n++;
    }
    return (long)n;
}

/* Free a SHADOW request's id and pages; returns the pages freed. */
static unsigned rk_shadow_free(uint8_t *states, uint8_t *freemap, size_t npages,
                               rk_shadow *sh, size_t id)
{
    unsigned j, n = 0;
    for (j = 0; j < sh->npages && j < sh->capacity; j++)
        if (sh->pages[j] < npages) {
            freemap[sh->pages[j]] = 1;
            n++;
        }
    sh->npages = 0;
    sh->data = NULL;
    sh->batch = NULL;
    states[id] = RK_ID_FREE;
    return n;
}

/* Consume the leading responses of a burst (`count` slots of 112 bytes in `buf`, `length`
   bytes there) that answer SHADOW requests in flight (see above).  info: [0] why it stopped
   early (0: the next response is the Python path's; RK_SHADOW_E_OPERATION / _STATUS: it is
   hostile), [1] pages freed, [2] orphans answered, [3] the stopping response's request
   operation, [4] batch tokens written to `touched` (each once, up to `touched_cap`; more are
   not listed but [5] is set).  Returns the responses consumed, or -1 on a bad call. */
static long rk_shadow_complete(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                               char *memory, size_t memory_length, rk_shadow *table,
                               const char *buf, size_t length, size_t count,
                               uint32_t *touched, size_t touched_cap, uint64_t *info)
{
    size_t i, k;
    memset(info, 0, 6 * sizeof *info);
    if (count > length / RK_BLKIF_REQUEST_SIZE || npages > memory_length / RK_PAGE)
        return -1;
    for (i = 0; i < count; i++) {
        uint8_t r[RK_BLKIF_RESPONSE_SIZE];
        uint64_t id;
        int16_t status;
        rk_shadow *sh;
        uint8_t state;

        memcpy(r, buf + i * RK_BLKIF_REQUEST_SIZE, sizeof r);  /* each byte read once */
        id = rk_le64(r);
        if (id >= window)
            break;
        state = states[id];
        if ((state & ~RK_ID_ORPHAN) != (RK_ID_SENT | RK_ID_SHADOW))
            break;
        sh = &table[id];
        status = (int16_t)rk_le16(r + 10);
#ifndef RK_SHADOW_SKIP_OPERATION_CHECK   /* the negative control's build only */
        if (r[8] != sh->operation) {
            info[0] = RK_SHADOW_E_OPERATION;
            info[3] = sh->operation;
            break;
        }
#endif
        if (status != 0 && status != -1 && status != -2) {
            info[0] = RK_SHADOW_E_STATUS;
            info[3] = sh->operation;
            break;
        }
        if (state & RK_ID_ORPHAN) {
            info[2]++;
        } else {
            int64_t *batch = sh->batch;
            int64_t *result = batch + 2 + 2 * (size_t)sh->op_index;
            if (status == 0 && sh->operation == 0) {
                /* the data pages only (the indirect pages follow them) */
                uint64_t ndata = (sh->length + RK_PAGE - 1) / RK_PAGE;
                unsigned j;
#ifdef RK_SHADOW_SKIP_DATA_BOUND        /* the negative control's build only */
                ndata = sh->npages;
#endif
                for (j = 0; j < ndata && j < sh->npages && j < sh->capacity
                     && sh->pages[j] < npages; j++) {
                    uint64_t chunk = sh->length - (uint64_t)j * RK_PAGE;
                    if (chunk > RK_PAGE)
                        chunk = RK_PAGE;
                    memcpy(sh->data + (size_t)j * RK_PAGE,
                           memory + (size_t)sh->pages[j] * RK_PAGE, (size_t)chunk);
                }
            }
            if (status != 0 && result[0] == 0) {
                result[0] = status;
                result[1] = (int64_t)sh->sector;
            }
            batch[0]++;
            batch[1]--;
            for (k = 0; k < info[4]; k++)
                if (touched[k] == sh->token)
                    break;
            if (k == info[4]) {
                if (k < touched_cap)
                    touched[info[4]++] = sh->token;
                else
                    info[5] = 1;
            }
        }
        info[1] += rk_shadow_free(states, freemap, npages, sh, id);
    }
    return (long)i;
}

/* The SHADOW requests in flight of batch `token` (any batch: token UINT32_MAX): mode 0 marks
   them orphans (their answers free them); mode 1 frees them now (the connection is gone, no
   answer will come); mode 2 frees those that are orphans already.  info[0]: pages freed.
   Returns the requests marked or freed, or -1 on a bad call. */
static long rk_shadow_drop(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                           rk_shadow *table, uint32_t token, int mode, uint64_t *info)
{
    size_t id;
    long n = 0;
    info[0] = 0;
    if (mode < 0 || mode > 2)
        return -1;
    for (id = 0; id < window; id++) {
        uint8_t state = states[id];
        if ((state & ~RK_ID_ORPHAN) != (RK_ID_SENT | RK_ID_SHADOW))
            continue;
        if (token != UINT32_MAX && table[id].token != token)
            continue;
        if (mode == 0) {
            states[id] = state | RK_ID_ORPHAN;
        } else if (mode == 1 || (state & RK_ID_ORPHAN)) {
            info[0] += rk_shadow_free(states, freemap, npages, &table[id], id);
        } else {
            continue;
        }
        n++;
    }
    return n;
}

/* ---------------------------------------------------------------- the netif tx table
   A netfront's tx requests in C (ringkit.requests.nettx), sharing the request queue's id table
   and the GrantPool's free map with the Python path as the blkfront shadow table does (RK_ID_*
   above; lowest free id first, first free page first, one page per request):

   * `table`: per id of a request in flight here, RK_NETTX_FIRST for a packet's first request,
     RK_NETTX_EXTRA for an extra-info slot, and the pool page (low 24 bits) of a data request.
   * `fifo` / `fifo_state` ([0] head, [1] count): the ids of the extra-info slots in flight, in
     ring order.  netif answers an extra-info slot with NETIF_RSP_NULL and no id (Linux's
     netback leaves it unset), so such an answer goes to the oldest one, by position.

   rk_nettx_submit writes whole packets into `slots` (12 bytes each, a private staging area the
   caller puts on the ring with one copy and one push): the first request {gref, offset 0,
   flags, id, size = the frame's length}, then a GSO extra-info slot when the frame has a GSO
   type, then one request per further page, NETTXF_more_data on all but the last; each page
   gets its share of the frame.  It stops before a packet for which ids, pages, ring slots
   (`room`) or staging are short.  rk_nettx_complete walks a burst of responses the ring engine
   already copied out of the shared page and consumes its leading responses that answer
   requests in flight here: a status outside OKAY / ERROR / DROPPED stops it (info[0]; the
   caller fails the queue); an id not in flight here, or a NETIF_RSP_NULL with no extra slot of
   ours in flight, goes back to the Python path, which matches or reports it. */

#define RK_NETTX_FIRST 0x80000000u
#define RK_NETTX_EXTRA 0x40000000u
enum { RK_NETTX_E_STATUS = 1 };
typedef struct { const char *data; uint32_t length; uint16_t flags; uint16_t gso_size;
                 uint8_t gso_type; uint8_t pad[3]; } rk_nettx_frame;
#define RK_NETIF_TX_SLOT 12
#define RK_NETIF_MAX_FRAME 65535u
#define RK_NETIF_NR_SLOTS_MIN 18u
#define RK_NETTXF_CHECKSUM 3u         /* csum_blank | data_validated: the caller's to set */
#define RK_NETTXF_MORE_DATA 4u
#define RK_NETTXF_EXTRA_INFO 8u
#define RK_NETIF_RSP_NULL 1
#define RK_NETTX_PAGE_MASK 0x00FFFFFFu

static unsigned rk_nettx_pages(const rk_nettx_frame *f)
{
    return (unsigned)((f->length + RK_PAGE - 1) / RK_PAGE);
}

/* Encode whole packets of `frames` (in order) into `slots`, as above.  Every frame is checked
   first -- 1..65535 bytes with its data, at most `max_pages` (1..18) pages, a GSO type of 0
   (none), 1 (TCPv4) or 2 (TCPv6) -- and -1 returned, nothing taken, for a bad one or a bad
   call.  out: [0] frames taken, [1] pages taken, [2] ids taken.  Returns the slots written
   (their ids marked SENT | SHADOW). */
static long rk_nettx_submit(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                            char *memory, size_t memory_length, const uint32_t *refs,
                            uint32_t *table, uint32_t *fifo, uint64_t *fifo_state,
                            const rk_nettx_frame *frames, size_t nframes, unsigned max_pages,
                            size_t room, char *slots, size_t slots_length, uint64_t *out)
{
    size_t n = 0, f, i, free_ids = 0, free_pages = 0, id = 0, page = 0;
    out[0] = out[1] = out[2] = 0;
    if (window == 0 || window > 65536 || npages > memory_length / RK_PAGE
        || npages > RK_NETTX_PAGE_MASK || max_pages < 1 || max_pages > RK_NETIF_NR_SLOTS_MIN
        || fifo_state[0] >= window || fifo_state[1] > window)
        return -1;
    for (f = 0; f < nframes; f++) {
        const rk_nettx_frame *fr = &frames[f];
        if (fr->length == 0 || fr->length > RK_NETIF_MAX_FRAME || !fr->data
            || rk_nettx_pages(fr) > max_pages || fr->gso_type > 2)
            return -1;
    }
    for (i = 0; i < window; i++)
        free_ids += states[i] == RK_ID_FREE;
    for (i = 0; i < npages; i++)
        free_pages += freemap[i] == 1;
    for (f = 0; f < nframes; f++) {
        const rk_nettx_frame *fr = &frames[f];
        unsigned np = rk_nettx_pages(fr), extra = fr->gso_type != 0, j;
        size_t ids[RK_NETIF_NR_SLOTS_MIN + 1];
        uint8_t *s;

        if (np + extra > free_ids || np > free_pages || n + np + extra > room
            || n + np + extra > slots_length / RK_NETIF_TX_SLOT
            || fifo_state[1] + extra > window)
            break;
        /* ids in the Python path's order: the data requests', then the extra slot's */
        for (j = 0; j < np + extra; j++) {
            while (id < window && states[id] != RK_ID_FREE)
                id++;
            if (id == window)
                return -1;              /* the free count was wrong: cannot happen */
            ids[j] = id++;
        }
        for (j = 0; j < np; j++) {
            size_t at = (size_t)j * RK_PAGE;
            size_t chunk = fr->length - at < RK_PAGE ? fr->length - at : RK_PAGE;
            unsigned flags = (j + 1 < np ? RK_NETTXF_MORE_DATA : 0)
                | (j == 0 ? (fr->flags & RK_NETTXF_CHECKSUM)
                            | (extra ? RK_NETTXF_EXTRA_INFO : 0) : 0);
            while (page < npages && freemap[page] != 1)
                page++;
            if (page == npages)
                return -1;              /* as above */
            s = (uint8_t *)slots + (n + (j == 0 ? 0 : j + extra)) * RK_NETIF_TX_SLOT;
            memset(s, 0, RK_NETIF_TX_SLOT);
            rk_put_le(s, refs[page], 4);
            rk_put_le(s + 6, flags, 2);
            rk_put_le(s + 8, ids[j], 2);
            rk_put_le(s + 10, j == 0 ? fr->length : chunk, 2);
            memcpy(memory + page * RK_PAGE, fr->data + at, chunk);
            freemap[page] = 0;
            table[ids[j]] = (uint32_t)page | (j == 0 ? RK_NETTX_FIRST : 0);
            states[ids[j]] = RK_ID_SENT | RK_ID_SHADOW;
            page++;
        }
        if (extra) {                    /* struct netif_extra_info, type GSO */
            size_t eid = ids[np];
            s = (uint8_t *)slots + (n + 1) * RK_NETIF_TX_SLOT;
            memset(s, 0, RK_NETIF_TX_SLOT);
            s[0] = 1;                                   /* XEN_NETIF_EXTRA_TYPE_GSO */
            rk_put_le(s + 2, fr->gso_size, 2);
            s[4] = fr->gso_type;
            rk_put_le(s + 8, eid, 2);   /* as the Python path's queue writes every slot's id */
            table[eid] = RK_NETTX_EXTRA | RK_NETTX_PAGE_MASK;
            states[eid] = RK_ID_SENT | RK_ID_SHADOW;
            fifo[(fifo_state[0] + fifo_state[1]) % window] = (uint32_t)eid;
            fifo_state[1]++;
        }
        free_ids -= np + extra;
        free_pages -= np;
        out[0]++;
        out[1] += np;
        out[2] += np + extra;
        n += np + extra;
    }
    return (long)n;
}

/* Free one id of ours (and its page); returns the pages freed. */
static unsigned rk_nettx_free(uint8_t *states, uint8_t *freemap, size_t npages,
                              uint32_t *table, size_t id)
{
    uint32_t page = table[id] & RK_NETTX_PAGE_MASK;
    unsigned freed = 0;
    if (!(table[id] & RK_NETTX_EXTRA) && page < npages) {
        freemap[page] = 1;
        freed = 1;
    }
    table[id] = 0;
    states[id] = RK_ID_FREE;
    return freed;
}

/* Consume the leading responses of a burst (`count` slots of 12 bytes in `buf`, `length`
   bytes there) that answer requests in flight here (see above).  info: [0] why it stopped
   early (0: the next response is the Python path's; RK_NETTX_E_STATUS: its status is not one
   netif defines), [1] pages freed, [2] ids freed, [3] packets answered (their first request),
   [4] of those, answered with an error status.  Returns the responses consumed, or -1 on a
   bad call. */
static long rk_nettx_complete(uint8_t *states, size_t window, uint8_t *freemap, size_t npages,
                              uint32_t *table, uint32_t *fifo, uint64_t *fifo_state,
                              const char *buf, size_t length, size_t count, uint64_t *info)
{
    size_t i;
    memset(info, 0, 5 * sizeof *info);
    if (window == 0 || window > 65536 || count > length / RK_NETIF_TX_SLOT
        || fifo_state[0] >= window || fifo_state[1] > window)
        return -1;
    for (i = 0; i < count; i++) {
        uint8_t r[4];
        size_t id;
        int16_t status;

        memcpy(r, buf + i * RK_NETIF_TX_SLOT, sizeof r);        /* each byte read once */
        id = rk_le16(r);
        status = (int16_t)rk_le16(r + 2);
        if (status == RK_NETIF_RSP_NULL) {
#ifndef RK_NETTX_NULL_BY_ID      /* the negative control's build only */
            if (fifo_state[1] == 0)
                break;
            id = fifo[fifo_state[0]];
#endif
            if (id >= window || states[id] != (RK_ID_SENT | RK_ID_SHADOW)
                || !(table[id] & RK_NETTX_EXTRA))
                break;
            fifo_state[0] = (fifo_state[0] + 1) % window;
            fifo_state[1]--;
            rk_nettx_free(states, freemap, npages, table, id);
            info[2]++;
            continue;
        }
        if (id >= window || states[id] != (RK_ID_SENT | RK_ID_SHADOW)
            || (table[id] & RK_NETTX_EXTRA))
            break;
#ifndef RK_NETTX_SKIP_STATUS_CHECK     /* the negative control's build only */
        if (status != 0 && status != -1 && status != -2) {
            info[0] = RK_NETTX_E_STATUS;
            break;
        }
#endif
        if (table[id] & RK_NETTX_FIRST) {
            info[3]++;
            info[4] += status != 0;
        }
        info[1] += rk_nettx_free(states, freemap, npages, table, id);
        info[2]++;
    }
    return (long)i;
}

/* ---------------------------------------------------------------- a netback's tx bursts
   rk_nettx_parse walks a burst of tx request slots the ring engine copied out of the shared
   page (ringkit.requests.nettx.TxBursts), cuts it into packets as netif chains them -- the
   first request, its extra-info slots while NETTXF_extra_info / XEN_NETIF_EXTRA_FLAG_MORE
   say so, then the requests while NETTXF_more_data does -- checks each packet as the
   backend's Python path does (backends/net plan_packet; the first failed check is its fault)
   and encodes every slot's answer: {id, OKAY} for a request of a good packet, {id, ERROR}
   for one of a refused packet, {0, NETIF_RSP_NULL} for an extra slot; 12 bytes each, in slot
   order, ready to be pushed.  Per packet, RK_NETTX_PACKET_FIELDS uint32s: [0] first slot,
   [1] slots, [2] requests, [3] fault (0: none, else RK_NETTX_F_*), [4] first segment, [5]
   segments, [6] bytes, [7] the first request's flags, [8] GSO size | GSO type << 16 (0: no
   GSO extra).  A segment is three uint32s: the ref, the offset in its page, the length (a
   fragment of 0 bytes has none; a refused packet none).  It stops before a packet that does
   not end inside the `count` slots (info[2] = 1: the caller decides whether more can come),
   or for which `packets`, `segments` or `responses` are full.  info: [0] slots consumed, [1]
   segments written, [2] as said.  Returns the packets, or -1 on a bad call. */

enum { RK_NETTX_F_REQUESTS = 1, RK_NETTX_F_EXTRAS = 2, RK_NETTX_F_EXTRA_TYPE = 3,
       RK_NETTX_F_GSO_OFFERED = 4, RK_NETTX_F_GSO_TWICE = 5, RK_NETTX_F_GSO_TYPE = 6,
       RK_NETTX_F_GSO_SIZE = 7, RK_NETTX_F_SIZES = 8, RK_NETTX_F_FRAGMENT = 9,
       RK_NETTX_PACKET_FIELDS = 9 };
#define RK_NETIF_ETH_HLEN 14u
#define RK_NETIF_EXTRA_TYPE_MAX 5u
#define RK_NETIF_EXTRA_FLAG_MORE 1u

static long rk_nettx_parse(const char *buf, size_t length, size_t count, int gso,
                           uint32_t *packets, size_t packets_cap, uint32_t *segments,
                           size_t segments_cap, char *responses, size_t responses_length,
                           uint64_t *info)
{
    size_t at = 0, np = 0, ns = 0;
    info[0] = info[1] = info[2] = 0;
    if (count > length / RK_NETIF_TX_SLOT)
        return -1;
    while (at < count && np < packets_cap) {
        const uint8_t *head = (const uint8_t *)buf + at * RK_NETIF_TX_SLOT;
        unsigned flags = rk_le16(head + 6), fault = 0, extras = 0, nreq, j, k;
        unsigned gso_info = 0, total, rest = 0, first_seg = (unsigned)ns;
        size_t pos = 1, slots;
        uint32_t *pk;

        if (flags & RK_NETTXF_EXTRA_INFO) {
            int more = 1;
            while (more) {
                if (at + pos >= count) {
                    info[2] = 1;
                    goto out;
                }
                more = buf[(at + pos) * RK_NETIF_TX_SLOT + 1] & RK_NETIF_EXTRA_FLAG_MORE;
                pos++;
                extras++;
            }
        }
        if (flags & RK_NETTXF_MORE_DATA) {
            int more = 1;
            while (more) {
                if (at + pos >= count) {
                    info[2] = 1;
                    goto out;
                }
                more = rk_le16((const uint8_t *)buf + (at + pos) * RK_NETIF_TX_SLOT + 6)
                       & RK_NETTXF_MORE_DATA;
                pos++;
            }
        }
        slots = pos;
        nreq = (unsigned)(slots - extras);
        if ((at + slots) * RK_NETIF_TX_SLOT > responses_length
            || (!(nreq > RK_NETIF_NR_SLOTS_MIN) && ns + nreq > segments_cap / 3))
            break;                      /* full: the rest waits for the next call */
        if (nreq > RK_NETIF_NR_SLOTS_MIN)
            fault = RK_NETTX_F_REQUESTS;
        else if (extras > RK_NETIF_NR_SLOTS_MIN)
            fault = RK_NETTX_F_EXTRAS;
        for (j = 1; !fault && j <= extras; j++) {
            const uint8_t *e = (const uint8_t *)buf + (at + j) * RK_NETIF_TX_SLOT;
            if (e[0] == 0 || e[0] >= RK_NETIF_EXTRA_TYPE_MAX)
                fault = RK_NETTX_F_EXTRA_TYPE;
            else if (e[0] == 1 && !gso)
                fault = RK_NETTX_F_GSO_OFFERED;
            else if (e[0] == 1 && gso_info)
                fault = RK_NETTX_F_GSO_TWICE;
#ifndef RK_NETTX_ANY_GSO_TYPE         /* the negative control's build only */
            else if (e[0] == 1 && e[4] != 1 && e[4] != 2)
                fault = RK_NETTX_F_GSO_TYPE;
#endif
            else if (e[0] == 1 && rk_le16(e + 2) == 0)
                fault = RK_NETTX_F_GSO_SIZE;
            else if (e[0] == 1)
                gso_info = rk_le16(e + 2) | ((unsigned)e[4] << 16);
        }
        total = rk_le16(head + 10);
        for (j = 1 + extras; !fault && j < slots; j++)
            rest += rk_le16((const uint8_t *)buf + (at + j) * RK_NETIF_TX_SLOT + 10);
        if (!fault && (total < RK_NETIF_ETH_HLEN || rest > total))
            fault = RK_NETTX_F_SIZES;
        for (k = 0; !fault && k < nreq; k++) {
            size_t slot = k == 0 ? at : at + extras + k;
            const uint8_t *r = (const uint8_t *)buf + slot * RK_NETIF_TX_SLOT;
            unsigned offset = rk_le16(r + 4);
            unsigned size = k == 0 ? total - rest : rk_le16(r + 10);
            if (offset + size > RK_PAGE) {
                fault = RK_NETTX_F_FRAGMENT;
                ns = first_seg;         /* the segments of a refused packet are dropped */
                break;
            }
            if (size) {
                segments[3 * ns] = rk_le32(r);
                segments[3 * ns + 1] = offset;
                segments[3 * ns + 2] = size;
                ns++;
            }
        }
        for (j = 0; j < slots; j++) {
            const uint8_t *r = (const uint8_t *)buf + (at + j) * RK_NETIF_TX_SLOT;
            uint8_t *o = (uint8_t *)responses + (at + j) * RK_NETIF_TX_SLOT;
            memset(o, 0, RK_NETIF_TX_SLOT);
            if (j >= 1 && j <= extras) {
                rk_put_le(o + 2, RK_NETIF_RSP_NULL, 2);
            } else {
                rk_put_le(o, rk_le16(r + 8), 2);
                rk_put_le(o + 2, fault ? 0xFFFFu : 0u, 2);      /* ERROR (-1) or OKAY */
            }
        }
        pk = packets + np * RK_NETTX_PACKET_FIELDS;
        pk[0] = (uint32_t)at;
        pk[1] = (uint32_t)slots;
        pk[2] = nreq;
        pk[3] = fault;
        pk[4] = fault ? (uint32_t)ns : first_seg;
        pk[5] = fault ? 0 : (uint32_t)(ns - first_seg);
        pk[6] = fault ? 0 : total;
        pk[7] = flags;
        pk[8] = fault ? 0 : gso_info;
        np++;
        at += slots;
    }
out:
    info[0] = at;
    info[1] = ns;
    return (long)np;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("ringkit._native._compiled", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    import os
    import pathlib
    import shutil
    import tempfile

    # Build in place next to the package: `python ringkit/_native/_build.py`.  The build runs
    # in a scratch directory: setuptools, which cffi drives, reads the project's pyproject.toml
    # from the working directory and refuses its layout (the package remap lives in setup.py).
    here = pathlib.Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        built = pathlib.Path(ffibuilder.compile(tmpdir=scratch, verbose=True))
        shutil.copy2(built, here / built.name)
        print(f"built {here / built.name}")
