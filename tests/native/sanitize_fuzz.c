/* The native helper's C under AddressSanitizer and UBSan (tests/native/test_sanitizers.py).
 *
 * "rk_native_source.c" is ringkit._native._build.SOURCE written out by the test, so the text
 * fuzzed here is exactly the text cffi compiles; its functions are static, which is why it is
 * #included rather than linked.
 *
 * Every buffer a function reads or writes is malloc'd with exactly the length the call claims
 * (or, for an output array, exactly the entries the contract says it has), so a single byte
 * read or written past it is a heap-buffer-overflow report.  Besides the sanitizers, CHECKs
 * catch what they cannot see: a call accepted that should have been refused (or the reverse),
 * a result out of range.  The values themselves are checked only for the memory primitives and
 * rk_gather; ringkit's Python code is the reference for the rest, and tests/proto and
 * tests/requests compare the compiled helper with it.
 *
 * Usage:
 *   sanitize_fuzz fuzz SEED ROUNDS   ROUNDS random calls of each function
 *   sanitize_fuzz control            a deliberate one-byte over-read: must be reported
 *   sanitize_fuzz overflow CASE      arguments whose arithmetic wraps (see run_overflow)
 *   sanitize_fuzz uring SEED RINGS   RINGS io_uring objects, each fed random submissions
 *   sanitize_fuzz blkfast SEED ROUNDS  the blkif fast path: random table edits checked against
 *                                    a model, random bursts served against a temporary file
 *   sanitize_fuzz shadow SEED ROUNDS   the blkfront shadow table: random batches submitted,
 *                                    random and hostile bursts completed, its books checked
 *   sanitize_fuzz nettx SEED ROUNDS    the netfront tx table: random frames submitted, random
 *                                    and hostile bursts completed, its books checked
 *   sanitize_fuzz aio SEED SESSIONS    the blkif burst server at depth: random and hostile
 *                                    bursts submitted to io_uring against a temporary image,
 *                                    reaped, every request's fate checked by its number
 */
#define _GNU_SOURCE 1   /* preadv2, as Python.h gives the cffi build */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rk_native_source.c"

/* Output arrays are allocated for up to this many entries; a call that names more must be
   refused, and then it gets an array of none (so a write into it is reported). */
#define CAP 8192
#define MAX_BUFFER 4096

static uint64_t seed, state;
static unsigned long round_no;
static const char *where = "";

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "sanitize_fuzz.c:%d: %s, round %lu of seed %llu: check failed: " \
                    "%s\n", __LINE__, where, round_no, (unsigned long long)seed, #cond);  \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

/* ---------------------------------------------------------------- random values (splitmix64) */

static uint64_t rnd(void)
{
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static int one_in(unsigned n) { return below(n) == 0; }

/* A byte count up to `limit`: often 0 or a few bytes, sometimes exactly `limit`. */
static size_t any_length(size_t limit)
{
    switch (below(5)) {
    case 0: return (size_t)below(9 < limit + 1 ? 9 : limit + 1);
    case 1: return limit;
    default: return (size_t)below(limit + 1);
    }
}

/* A size_t argument: small, near `near`, or far out (up to 2**40: sums of two such values
   and a small size do not wrap; run_overflow covers values that make them wrap). */
static size_t any_size(size_t near)
{
    switch (below(8)) {
    case 0: return 0;
    case 1: return (size_t)below(16);
    case 2: return near;
    case 3: return near + 1;
    case 4: return near ? near - 1 : 0;
    case 5: return (size_t)1 << (20 + below(21));
    default: return (size_t)below((uint64_t)near + 2);
    }
}

/* `n` random bytes in a buffer of exactly `n` bytes. */
static uint8_t *random_bytes(size_t n)
{
    uint8_t *p = malloc(n);
    size_t i;
    CHECK(p != NULL || n == 0);
    for (i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
    return p;
}

/* An output array of `entries` entries of `size` bytes, filled with junk. */
static void *output(size_t entries, size_t size)
{
    return random_bytes(entries * size);
}

/* first_sect and last_sect of the blkif segment at `e`: an ordered pair in 0..7, so that
   segment lists get past the range check, but one time in `odds` (never if 0) any two bytes. */
static void sectors(uint8_t *e, unsigned odds)
{
    if (odds && one_in(odds)) {
        e[4] = one_in(2) ? (uint8_t)below(9) : (uint8_t)rnd();
        e[5] = one_in(2) ? (uint8_t)below(9) : (uint8_t)rnd();
    } else {
        e[4] = (uint8_t)below(8);
        e[5] = e[4] + (uint8_t)below(8u - e[4]);
    }
}

/* ---------------------------------------------------------------- the memory primitives
 *
 * Valid offsets only: by contract these functions do no bounds checks -- the Python side
 * (CompiledMemory in ringkit/_native/_capi.py) checks every offset and length against the
 * attached buffer before it calls them -- so an offset past the end is not a finding.  What
 * is checked is that an in-bounds call touches exactly the bytes it names. */

static void fuzz_memory(void)
{
    size_t n = 4 + (size_t)below(MAX_BUFFER - 3);
    uint8_t *m = random_bytes(n);
    uint8_t *copy = random_bytes(n);
    size_t last = 4 * (n / 4 - 1);
    size_t off = one_in(4) ? last : 4 * (size_t)below(n / 4);
    size_t b = one_in(4) ? n - 1 : (size_t)below(n);
    size_t zo = one_in(4) ? n : (size_t)below(n + 1);
    size_t zl = one_in(4) ? n - zo : (size_t)below(n - zo + 1);
    uint32_t value = (uint32_t)rnd(), word;
    uint8_t mask = (uint8_t)rnd(), before;
    size_t i;

    where = "rk_load32/rk_store32";
    rk_store32(m, off, value);       /* malloc's pointer is 8-aligned: so is base + off */
    CHECK(rk_load32(m, off) == value);
    memcpy(&word, m + off, 4);
    CHECK(word == value);            /* native byte order, as the shared ring has it */

    where = "rk_fetch_or8/rk_fetch_and8";
    before = m[b];
    CHECK(rk_fetch_or8(m, b, mask) == before);
    CHECK(m[b] == (uint8_t)(before | mask));
    before = m[b];
    mask = (uint8_t)rnd();
    CHECK(rk_fetch_and8(m, b, mask) == before);
    CHECK(m[b] == (uint8_t)(before & mask));

    where = "rk_zero";
    memcpy(copy, m, n);
    rk_zero(m, zo, zl);
    for (i = 0; i < n; i++)
        CHECK(m[i] == (i >= zo && i < zo + zl ? 0 : copy[i]));

    where = "fences";
    rk_full_fence();
    rk_read_fence();
    rk_write_fence();
    free(copy);
    free(m);
}

/* ---------------------------------------------------------------- blkif */

static const uint8_t operations[] = {0, 1, 2, 3, 5, 6, 4, 7, 255};

static void fuzz_blkif_request(void)
{
    static const size_t lengths[] = {0, 1, 8, 24, 111, 113, 128};
    size_t n = one_in(2) ? 112 : one_in(2) ? (size_t)below(256)
        : lengths[below(sizeof lengths / sizeof *lengths)];
    uint8_t *slot = random_bytes(n);
    uint32_t max_indirect;
    rk_blkif_request *out;
    unsigned odds;
    size_t i;
    int kind;

    where = "rk_blkif_parse_request";
    switch (below(6)) {
    case 0: max_indirect = 0; break;
    case 1: max_indirect = (uint32_t)below(1030); break;
    case 2: max_indirect = 512 * (uint32_t)(1 + below(9)); break;
    case 3: max_indirect = UINT32_MAX; break;
    default: max_indirect = (uint32_t)rnd(); break;
    }
    if (n > 0 && !one_in(8))
        slot[0] = operations[below(sizeof operations)];
    if (n > 1 && !one_in(8))                    /* nr_segments 0..13, or indirect_op 0..2 */
        slot[1] = (uint8_t)(slot[0] == 6 ? below(3) : below(14));
    if (n > 3 && !one_in(4)) {                  /* indirect nr_segments around the limits */
        uint32_t count = one_in(2) ? (uint32_t)below(4200) : (uint32_t)below(max_indirect + 2u);
        slot[2] = (uint8_t)count;
        slot[3] = (uint8_t)(count >> 8);
    }
    odds = one_in(2) ? 0 : 1 + (unsigned)below(12);
    for (i = 24; i + 5 < n; i += 8)             /* direct segments */
        sectors(slot + i, odds);
    out = output(1, sizeof *out);
    kind = rk_blkif_parse_request((const char *)slot, n, max_indirect, out);
    if (n < RK_BLKIF_REQUEST_SIZE) {
        CHECK(kind == RK_BLKIF_E_LENGTH);
    } else {
        CHECK(kind >= RK_BLKIF_E_INDIRECT_COUNT && kind <= RK_BLKIF_INDIRECT);
        if (kind == RK_BLKIF_RW || kind == RK_BLKIF_E_RANGE)
            CHECK(out->head[8] <= RK_BLKIF_MAX_SEGMENTS);
        if (kind == RK_BLKIF_INDIRECT)
            CHECK(out->head[8] >= 1 && out->head[8] <= RK_BLKIF_MAX_INDIRECT_PAGES);
    }
    free(out);
    free(slot);
}

static void fuzz_blkif_segments(void)
{
    uint32_t count;
    size_t n, entries, i;
    uint8_t *src;
    uint32_t *grefs;
    char *first, *last;
    uint64_t *info;
    unsigned odds;
    int code;

    where = "rk_blkif_parse_segments";
    switch (below(12)) {
    case 0: count = 4096; break;
    case 1: count = UINT32_MAX; break;
    case 2: count = (uint32_t)rnd(); break;
    case 3: case 4: case 5: count = (uint32_t)below(8); break;
    default: count = (uint32_t)below(600); break;
    }
    if (count > CAP || one_in(6))
        n = any_length(8 * 600);
    else if (count && one_in(3))
        n = 8 * (size_t)count - 1 - (size_t)below(8);      /* the last entry cut short */
    else
        n = 8 * (size_t)count + (one_in(2) ? 0 : (size_t)below(16));
    src = random_bytes(n);
    odds = one_in(2) ? 0 : 1 + (unsigned)below(count < 64 ? 64 : count);
    for (i = 0; i + 5 < n; i += 8)
        sectors(src + i, odds);
    entries = count <= CAP ? count : 0;
    if (!entries)
        CHECK(n / 8 < count || count == 0);     /* the harness's own premise: refused */
    grefs = output(entries, sizeof *grefs);
    first = output(entries, 1);
    last = output(entries, 1);
    info = output(2, sizeof *info);
    code = rk_blkif_parse_segments((const char *)src, n, count, grefs, first, last, info);
    if (n / 8 < count) {
        CHECK(code == RK_BLKIF_E_LENGTH);
    } else {
        CHECK(code == 0 || code == RK_BLKIF_E_RANGE);
        if (code == RK_BLKIF_E_RANGE)
            CHECK(info[1] < count);
        else
            CHECK(info[0] >= count && info[0] <= 8 * (uint64_t)count);
    }
    free(info);
    free(last);
    free(first);
    free(grefs);
    free(src);
}

/* ---------------------------------------------------------------- the request-queue readers */

static uint64_t reference_field(const uint8_t *p, unsigned size, int is_signed)
{
    uint64_t v = 0;
    unsigned i;
    for (i = 0; i < size; i++)
        v |= (uint64_t)p[i] << (8 * i);
    if (is_signed && size < 8 && (v >> (8 * size - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * size);
    return v;
}

static void fuzz_gather(void)
{
    static const unsigned sizes[] = {0, 1, 2, 4, 8, 3, 9, 16, UINT_MAX};
    size_t length = any_length(MAX_BUFFER);
    size_t stride = one_in(8) ? (size_t)rnd() : any_size(one_in(2) ? 8 : 64);
    unsigned size = one_in(8) ? (unsigned)rnd() : sizes[below(sizeof sizes / sizeof *sizes)];
    size_t offset = any_size(stride > size ? stride - size : 0);
    size_t count = one_in(8) ? (size_t)rnd() : any_size(stride ? length / stride : length);
    int is_signed = one_in(4) ? (int)rnd() : (int)below(2);
    unsigned __int128 end = (unsigned __int128)offset + size;
    int fits = size >= 1 && size <= 8 && end <= stride
        && (count == 0 || (unsigned __int128)(count - 1) * stride + end <= length);
    size_t entries = fits || count <= CAP ? count : 0, i;
    uint8_t *buf = random_bytes(length);
    uint64_t *out = output(entries, sizeof *out);
    int r;

    where = "rk_gather";
    r = rk_gather((const char *)buf, length, count, stride, offset, size, is_signed, out);
    CHECK(r == (fits ? 0 : -1));
    for (i = 0; fits && i < count; i++)
        CHECK(out[i] == reference_field(buf + i * stride + offset, size, is_signed));
    free(out);
    free(buf);
}

/* A hostile value for a spec entry: negative (to INT64_MIN), zero, around `near`, or far out
   (up to 2**40; larger ones make the C's own sums wrap: run_overflow). */
static int64_t any_spec_value(int64_t near)
{
    switch (below(9)) {
    case 0: return -1;
    case 1: return INT64_MIN;
    case 2: return -(int64_t)below(1ull << 40);
    case 3: return 0;
    case 4: return near - 1;
    case 5: return near;
    case 6: return near + 1;
    case 7: return (int64_t)1 << (20 + below(21));
    default: return (int64_t)below(2 * (uint64_t)(near > 0 ? near : 1) + 8);
    }
}

/* Spec entry k just past what the well-formed spec `g` allows in slots of `stride` bytes: the
   value an off-by-one in a range check would let through. */
static int64_t just_past(const int64_t *g, unsigned k, int64_t stride)
{
    switch (k) {
    case 0: return stride - g[3] * g[1] + 1;            /* entries end a byte past the slot */
    case 1: return (stride - g[0]) / g[3] + 1;          /* entry stride */
    case 2: return g[1] - 3;                            /* the ref a byte past its entry */
    case 3: return (stride - g[0]) / g[1] + 1;          /* one entry more than fits */
    case 4: return stride - (g[4] >= 0 ? g[5] : 1) + 1; /* count field a byte past the slot */
    case 5: return g[4] < 0 ? g[3] + 1 : stride - g[4] + 1 <= 8 ? stride - g[4] + 1 : 9;
    case 6: return stride - (g[6] >= 0 ? g[7] : 1) + 1; /* operation field */
    case 7: return g[6] < 0 ? 1 : stride - g[6] + 1 <= 8 ? stride - g[6] + 1 : 9;
    case 10: return g[10] + 1;                          /* more operations than nspec holds */
    default: return 2;                                  /* a flag: any nonzero value is set */
    }
}

static void fuzz_gather_refs(void)
{
    /* A well-formed spec first (ringkit.requests.codec._native_spec), then spoil some of it. */
    int64_t off = (int64_t)below(40), estride = 4 + (int64_t)below(13);
    int64_t roff = (int64_t)below((uint64_t)estride - 3), max = 1 + (int64_t)below(12);
    int64_t csize, coff, ooff, osize, osigned, filter, nops = (int64_t)below(5);
    int64_t good[11], head[11], end = off + max * estride;
    size_t stride, length, count, nspec, refs_cap, entries, i;
    int sound = 1;
    int64_t *spec, *counts;
    uint32_t *refs;
    uint8_t *buf;
    long r;

    static const int64_t widths[] = {1, 2, 4, 8};
    if (one_in(3)) {
        coff = -1;
        csize = (int64_t)below((uint64_t)max + 1);
    } else {
        coff = (int64_t)below(64);
        csize = widths[below(4)];
        end = coff + csize > end ? coff + csize : end;
    }
    if (one_in(3)) {
        ooff = -1;
        osize = 0;
    } else {
        ooff = (int64_t)below(64);
        osize = widths[below(4)];
        end = ooff + osize > end ? ooff + osize : end;
    }
    osigned = (int64_t)below(2);
    filter = ooff >= 0 && one_in(2);
    stride = (size_t)end + (one_in(2) ? 0 : (size_t)below(8));
    if ((uint64_t)max > stride)
        stride = (size_t)max;
    good[0] = off; good[1] = estride; good[2] = roff; good[3] = max;
    good[4] = coff; good[5] = csize; good[6] = ooff; good[7] = osize;
    good[8] = osigned; good[9] = filter; good[10] = nops;
    memcpy(head, good, sizeof head);

    if (one_in(3)) {                            /* spoil one or two entries */
        unsigned k = (unsigned)below(11);
        sound = 0;
        head[k] = one_in(2) ? just_past(good, k, (int64_t)stride)
            : any_spec_value((int64_t)stride);
        if (one_in(2))
            head[below(11)] = any_spec_value((int64_t)stride);
    }
    if (one_in(8)) {
        sound = 0;
        stride = any_size(stride);
    }
    nspec = 11 + (size_t)nops;
    if (one_in(8)) {
        sound = 0;
        nspec = one_in(2) ? (size_t)below(11) : 11 + (size_t)below(8);
    }
    spec = output(nspec, sizeof *spec);
    for (i = 0; i < nspec; i++)
        spec[i] = i < 11 ? head[i] : one_in(2) ? (int64_t)below(4) : (int64_t)rnd();

    count = one_in(8) ? (size_t)rnd() : (size_t)below(17);
    if (stride && count <= MAX_BUFFER / stride) {
        length = count * stride;
    } else {
        sound = 0;
        length = any_length(MAX_BUFFER);
    }
    if (one_in(6)) {
        sound = 0;
        if (length && one_in(2))                /* the last slot cut short */
            length -= one_in(2) ? 1 : 1 + (size_t)below(stride < length ? stride : length);
        else
            length = any_length(length);
    }
    refs_cap = count <= CAP ? count * (size_t)max : 0;
    if (one_in(4)) {
        sound = 0;
        refs_cap = one_in(2) ? (size_t)below(refs_cap + 1) : (size_t)below(64);
    }
    if (count > CAP)
        CHECK(length < count);                  /* the harness's premise: refused */
    entries = count <= CAP ? count : 0;
    buf = random_bytes(length);
    for (i = 0; stride && i < length / stride; i++) {
        /* Counts mostly within 0..max+1 and operations mostly ones that name refs, so that
           refs get read; the fields as the well-formed spec has them. */
        uint8_t *slot = buf + i * stride;
        if (coff >= 0 && (size_t)(coff + csize) <= stride && !one_in(8)) {
            memset(slot + coff, 0, (size_t)csize);
            slot[coff] = (uint8_t)below((uint64_t)max + 2);
        }
        if (ooff >= 0 && (size_t)(ooff + osize) <= stride && nspec > 11 && !one_in(4)) {
            int64_t op = spec[11 + below(nspec - 11)];
            size_t k;
            for (k = 0; k < (size_t)osize; k++)
                slot[ooff + k] = (uint8_t)((uint64_t)op >> (8 * k));
        }
    }
    counts = output(entries, sizeof *counts);
    refs = output(refs_cap, sizeof *refs);

    where = "rk_gather_refs";
    r = rk_gather_refs((const char *)buf, length, count, stride, spec, nspec, counts, refs,
                       refs_cap);
    if (sound)
        CHECK(r >= 0);
    CHECK(r >= -1 && (r < 0 || (size_t)r <= refs_cap));
    if (r >= 0) {
        long named = 0;
        for (i = 0; i < count; i++) {
            CHECK(counts[i] >= -1 && counts[i] <= spec[3]);
            named += counts[i] > 0 ? (long)counts[i] : 0;
        }
        CHECK(named == r);
    }
    free(refs);
    free(counts);
    free(buf);
    free(spec);
}

/* rk_nettx_parse: a burst of random tx slots -- mostly chains of plausible requests and extra
   slots, some garbage -- from a buffer of exactly the bytes it claims (sometimes fewer than the
   slots named: refused), into packet, segment and answer arrays of exactly the entries the
   call names.  Every packet returned lies inside the slots consumed, one after the other; its
   segments inside the segments written, each inside its page; the answers cover exactly the
   slots consumed. */
static void fuzz_nettx_parse(void)
{
    size_t count = (size_t)below(260), claimed = count * 12, i, k;
    size_t packets_cap = (size_t)below(70), segments_cap = (size_t)below(800);
    size_t responses_length = one_in(8) ? (size_t)below(count * 12 + 1) : count * 12;
    uint8_t *buf, *responses;
    uint32_t *packets = output(packets_cap * RK_NETTX_PACKET_FIELDS, sizeof *packets);
    uint32_t *segments = output(segments_cap * 3, sizeof *segments);
    uint64_t info[3];
    size_t at = 0, seg = 0;
    long r;

    where = "rk_nettx_parse";
    if (one_in(20))
        claimed = (size_t)below(claimed + 1);
    buf = random_bytes(claimed);
    for (i = 0; i + 1 < count && (i + 1) * 12 <= claimed; i++) {
        uint8_t *s = buf + 12 * i;
        if (one_in(10))
            continue;                               /* garbage */
        rk_put_le(s + 4, one_in(4) ? below(5000) : 0, 2);
        rk_put_le(s + 6, below(16), 2);
        rk_put_le(s + 10, below(one_in(3) ? 70000 : 4200), 2);
        if (one_in(6) && (i + 2) * 12 <= claimed) { /* an extra slot after it */
            s[6] |= 8;
            s[12] = (uint8_t)below(6);
            s[13] = (uint8_t)below(2);
            s[16] = (uint8_t)below(4);
            i++;
        }
    }
    responses = random_bytes(responses_length);
    r = rk_nettx_parse((const char *)buf, claimed, count, (int)below(2), packets, packets_cap,
                       segments, segments_cap * 3, (char *)responses, responses_length, info);
    CHECK((r < 0) == (count > claimed / 12));
    if (r >= 0) {
        CHECK((size_t)r <= packets_cap && info[0] <= count && info[1] <= segments_cap);
        CHECK(info[0] * 12 <= responses_length);
        for (k = 0; k < (size_t)r; k++) {
            const uint32_t *p = packets + k * RK_NETTX_PACKET_FIELDS;
            CHECK(p[0] == at && p[1] >= 1 && p[2] >= 1 && p[2] <= p[1]);
            CHECK(p[3] <= RK_NETTX_F_FRAGMENT && p[4] == seg);
            CHECK(p[3] == 0 || p[5] == 0);
            for (i = 0; i < p[5]; i++) {
                const uint32_t *g = segments + 3 * (seg + i);
                CHECK(g[2] > 0 && g[1] + g[2] <= RK_PAGE);
            }
            at += p[1];
            seg += p[5];
        }
        CHECK(at == info[0] && seg == info[1]);
    }
    free(buf);
    free(responses);
    free(packets);
    free(segments);
}


/* ---------------------------------------------------------------- io_uring (rk_uring_*)

   One ring per round with random submissions: vectored reads and writes on a temp file, a
   pipe (reads there wait until close cancels them), a closed or invalid fd; fsync, fallocate
   with hostile ranges, cancels of random cookies; iovec arrays and buffers malloc'd exactly;
   completions reaped at random moments into arrays of exactly the capacity claimed.  A
   request's memory is freed only once its completion is reaped (or the ring closed, which
   must cancel and wait for all).  The kernel's own writes are invisible to ASan; what is
   checked is the C's use of the rings, the SQEs and the caller's arrays, and its accounting:
   every accepted submission completes exactly once, with its cookie. */

#define URING_OPS 96

typedef struct {
    struct iovec *iov;
    unsigned nr;
    int live;
} uring_pending;

static int uring_file = -1;

static void uring_free(uring_pending *p)
{
    unsigned i;
    for (i = 0; i < p->nr; i++)
        free(p->iov[i].iov_base);
    free(p->iov);
    p->iov = NULL;
    p->nr = 0;
    p->live = 0;
}

static unsigned uring_reap(rk_uring *r, uring_pending *pend, unsigned *reaped)
{
    unsigned cap = (unsigned)below(2 * URING_OPS + 2), i, n;
    uint64_t *cookies = output(cap, sizeof *cookies);
    int32_t *results = output(cap, sizeof *results);

    where = "rk_uring_reap";
    n = rk_uring_reap(r, cookies, results, cap);
    CHECK(n <= cap);
    for (i = 0; i < n; i++) {
        if (cookies[i] == UINT64_MAX || cookies[i] >= (1ull << 32))
            continue;                       /* a cancel's own completion */
        CHECK(cookies[i] >= 1 && cookies[i] <= URING_OPS);
        CHECK(pend[cookies[i] - 1].live);   /* each completes once */
        CHECK(results[i] <= 1 << 20);
        uring_free(&pend[cookies[i] - 1]);
    }
    *reaped += n;
    free(results);
    free(cookies);
    return n;
}

static int fuzz_uring(void)
{
    uring_pending pend[URING_OPS];
    unsigned entries = one_in(8) ? (unsigned)below(10000) : 1 + (unsigned)below(32);
    unsigned i, submitted = 0, reaped = 0, cancels = 0;
    int err = 0, fds[2];
    rk_uring *r;

    where = "rk_uring_open";
    r = rk_uring_open(entries, &err);
    if (!r) {
        CHECK(err != 0);
        if (entries >= 1 && entries <= 4096)
            return err;                     /* the kernel refused: say so */
        CHECK(err == EINVAL);
        return 0;
    }
    CHECK(entries >= 1 && entries <= 4096);
    CHECK(rk_uring_entries(r) >= entries && rk_uring_eventfd(r) >= 0);
    CHECK(pipe(fds) == 0);
    memset(pend, 0, sizeof pend);
    for (i = 0; i < URING_OPS; i++) {
        uint64_t cookie = i + 1, offset = one_in(20) ? UINT64_MAX - below(1000) : below(1 << 17);
        int kind = (int)below(7), fd, rc;
        int fdchoice = (int)below(8);
        fd = fdchoice < 4 ? uring_file : fdchoice < 6 ? (kind == 1 ? fds[1] : fds[0])
            : fdchoice == 6 ? -1 : 987;
        where = "rk_uring submit";
        if (kind <= 1 || kind == 5) {       /* readv / writev */
            unsigned nr = one_in(30) ? 1025 : (unsigned)below(6), j;
            uring_pending *p = &pend[i];
            p->nr = nr <= 8 ? nr : 0;
            p->iov = output(nr <= 8 ? nr : 0, sizeof *p->iov);
            for (j = 0; j < p->nr; j++) {
                p->iov[j].iov_len = any_length(MAX_BUFFER);
                p->iov[j].iov_base = malloc(p->iov[j].iov_len ? p->iov[j].iov_len : 1);
                memset(p->iov[j].iov_base, 0x5a, p->iov[j].iov_len);
            }
            if (kind == 1)
                rc = rk_uring_writev(r, fd, p->iov, nr, offset, cookie);
            else
                rc = rk_uring_readv(r, fd, p->iov, nr, offset, cookie);
            if (nr == 0 || nr > 1024 || offset > (uint64_t)INT64_MAX)
                CHECK(rc == -EINVAL);
        } else if (kind == 2) {
            pend[i].iov = NULL;
            rc = rk_uring_fsync(r, fd, (int)below(2), cookie);
        } else if (kind == 3) {
            uint64_t length = one_in(10) ? UINT64_MAX - below(10) : below(1 << 16);
            pend[i].iov = NULL;
            rc = rk_uring_fallocate(r, fd, (int)below(4), offset, length, cookie);
            if (offset > (uint64_t)INT64_MAX || length > (uint64_t)INT64_MAX - offset)
                CHECK(rc == -EINVAL);
        } else if (kind == 4) {
            pend[i].iov = NULL;
            rc = rk_uring_cancel(r, 1 + below(URING_OPS), (1ull << 32) + cookie);
            if (rc == 0)
                cancels++;
            rc = rc == 0 ? -EAGAIN : rc;    /* not a pending entry of ours */
        } else {
            rc = -EAGAIN;
            uring_reap(r, pend, &reaped);
        }
        if (rc == 0) {
            pend[i].live = 1;
            submitted++;
        } else {
            CHECK(rc == -EINVAL || rc == -EBUSY || rc == -EAGAIN);
            uring_free(&pend[i]);
        }
        CHECK(rk_uring_in_flight(r) == submitted + cancels - reaped);
        if (one_in(4))
            uring_reap(r, pend, &reaped);
    }
    /* let the file requests finish, so that reaping sees real completions */
    for (i = 0; i < 20 && rk_uring_in_flight(r); i++) {
        struct pollfd pfd = {rk_uring_eventfd(r), POLLIN, 0};
        uint64_t count;
        poll(&pfd, 1, 5);
        if (read(rk_uring_eventfd(r), &count, sizeof count) < 0)
            CHECK(errno == EAGAIN);
        uring_reap(r, pend, &reaped);
    }
    where = "rk_uring_close";
    CHECK(rk_uring_close(r) == 0);         /* cancels the pipe reads and waits for them */
    for (i = 0; i < URING_OPS; i++)
        uring_free(&pend[i]);
    close(fds[0]);
    close(fds[1]);
    return 0;
}

static int run_uring(unsigned long rings)
{
    char path[] = "/tmp/rk-uring-fuzz-XXXXXX";
    int refused = 0;
    uring_file = mkstemp(path);
    CHECK(uring_file >= 0);
    unlink(path);
    CHECK(ftruncate(uring_file, 1 << 16) == 0);
    for (round_no = 0; round_no < rings; round_no++) {
        int err = fuzz_uring();
        if (err) {
            refused = err;
            break;
        }
    }
    close(uring_file);
    if (refused) {
        printf("io_uring unavailable: %s\n", strerror(refused));
        return 0;
    }
    printf("seed %llu: %lu io_uring rings, no finding\n", (unsigned long long)seed, rings);
    return 0;
}

/* ---------------------------------------------------------------- the blkif fast path
 *
 * A persistent-grant table of exactly `capacity` entries (calloc'd: an entry past it is a
 * report), edited at random with refs from a small set (so probe runs collide and deletions
 * shift entries back), checked after each edit against a plain array model: the count, and
 * every model ref found at an entry naming its page and writability, every other ref absent.
 * Then a burst of random slots, in a buffer and an output of exactly the lengths the call
 * claims, served against a temporary file through pages of exactly 4096 bytes: a burst that
 * does not fit must be refused, and every READ served must name writable entries only. */

#define FAST_PAGES 12
#define FAST_REFS 24

static uint32_t fast_ref(void)
{
    return one_in(16) ? (uint32_t)rnd() : (uint32_t)below(FAST_REFS) * (one_in(2) ? 1u : 4096u);
}

static int run_blkfast(unsigned long rounds)
{
    uint8_t *pages[FAST_PAGES];
    uint32_t capacity = 16;
    rk_pgrant *entries = calloc(capacity, sizeof *entries);
    rk_pgrant_table table = {entries, capacity, 0};
    rk_pgrant_table bad = {entries, 12, 0};
    struct { uint32_t ref; int page, writable; } model[64];
    unsigned nmodel = 0, i, j;
    FILE *file = tmpfile();
    int fd;
    unsigned long served_total = 0, indirect_total = 0;

    CHECK(entries != NULL && file != NULL);
    fd = fileno(file);
    for (i = 0; i < FAST_PAGES; i++)
        pages[i] = random_bytes(4096);
    {
        uint8_t *disk = random_bytes(2048 * 512);
        CHECK(pwrite(fd, disk, 2048 * 512, 0) == 2048 * 512);
        free(disk);
    }
    where = "rk_pgrant";
    CHECK(rk_pgrant_put(&bad, 1, 1, 1) == -1 && rk_pgrant_drop(&bad, 1) == -1);
    CHECK(rk_pgrant_put(&table, 1, 0, 1) == -1);
    for (round_no = 0; round_no < rounds; round_no++) {
        uint32_t ref = fast_ref();
        unsigned action = (unsigned)below(100), found = nmodel;
        size_t count, length, out_length;
        uint8_t *slots, *out;
        uint64_t stats[2];
        unsigned flags;
        uint32_t max_indirect;
        long r;

        where = "rk_pgrant";
        for (i = 0; i < nmodel; i++)
            if (model[i].ref == ref)
                found = i;
        if (action < 55) {
            int page = (int)below(FAST_PAGES), writable = (int)below(2);
            int code = rk_pgrant_put(&table, ref, (uint64_t)(uintptr_t)pages[page], writable);
            if (found < nmodel) {
                CHECK(code == 1);
            } else if (nmodel == capacity / 2) {
                CHECK(code == -2);
            } else {
                CHECK(code == 0);
                found = nmodel++;
                model[found].ref = ref;
            }
            if (code >= 0) {
                model[found].page = page;
                model[found].writable = writable;
            }
        } else if (action < 95) {
            CHECK(rk_pgrant_drop(&table, ref) == (found < nmodel));
            if (found < nmodel)
                model[found] = model[--nmodel];
        } else if (action < 97) {
            CHECK(rk_pgrant_clear(&table) == 0);
            nmodel = 0;
        }
        CHECK(table.count == nmodel);
        for (i = 0; i < nmodel; i++) {
            long at = rk_pgrant_index(&table, model[i].ref);
            CHECK(at >= 0 && at < (long)capacity);
            CHECK(entries[at].page == (uint64_t)(uintptr_t)pages[model[i].page]);
            CHECK(entries[at].writable == (uint32_t)model[i].writable);
        }
        for (j = 0; j < 4; j++) {
            uint32_t other = fast_ref();
            int known = 0;
            for (i = 0; i < nmodel; i++)
                known |= model[i].ref == other;
            CHECK((rk_pgrant_index(&table, other) >= 0) == known);
        }

        where = "rk_blkif_serve";
        count = (size_t)below(9);
        length = one_in(8) ? any_length(count * RK_BLKIF_REQUEST_SIZE) : count * RK_BLKIF_REQUEST_SIZE;
        out_length = one_in(8) ? any_length(count * RK_BLKIF_REQUEST_SIZE)
                               : count * RK_BLKIF_REQUEST_SIZE;
        slots = random_bytes(length);
        out = output(out_length, 1);
        for (i = 0; (size_t)(i + 1) * RK_BLKIF_REQUEST_SIZE <= length; i++) {
            uint8_t *s = slots + (size_t)i * RK_BLKIF_REQUEST_SIZE;
            uint64_t sector = one_in(10) ? rnd() : below(72);
            if (one_in(3) && nmodel) {
                /* INDIRECT: its list pages named from the table (now and then not), each page
                   filled with entries naming table refs (now and then not, or bad ranges) */
                unsigned nseg = one_in(10) ? (unsigned)below(65536)
                                           : 1 + (unsigned)below(one_in(4) ? 1200 : 40);
                unsigned npg = (nseg + 511) / 512, p;
                s[0] = 6;
                s[1] = one_in(10) ? (uint8_t)rnd() : (uint8_t)below(2);
                s[2] = (uint8_t)nseg;
                s[3] = (uint8_t)(nseg >> 8);
                sector = one_in(10) ? rnd() : below(one_in(2) ? 8 : 2048);
                memcpy(s + 16, &sector, 8);
                for (p = 0; p < 8; p++) {
                    unsigned m = (unsigned)below(nmodel);
                    uint32_t pick = !one_in(16) ? model[m].ref : fast_ref();
                    memcpy(s + 28 + 4 * p, &pick, 4);
                    if (p < npg && !one_in(8)) {
                        uint8_t *list = pages[model[m].page];
                        int clean = one_in(2);
                        for (j = 0; j < 512; j++) {
                            uint8_t *e = list + j * RK_BLKIF_SEGMENT_SIZE;
                            uint32_t ref = clean || !one_in(64) ? model[below(nmodel)].ref
                                                                : fast_ref();
                            memcpy(e, &ref, 4);
                            if (clean || one_in(2)) {
                                e[4] = e[5] = (uint8_t)below(8);
                            } else {
                                sectors(e, 200);
                            }
                        }
                    }
                }
                continue;
            }
            if (!one_in(10))
                s[0] = (uint8_t)below(2);
            if (!one_in(10))
                s[1] = (uint8_t)(1 + below(11));
            memcpy(s + 16, &sector, 8);
            for (j = 0; j < 11; j++) {
                uint8_t *e = s + 24 + j * RK_BLKIF_SEGMENT_SIZE;
                uint32_t pick = !one_in(8) && nmodel ? model[below(nmodel)].ref : fast_ref();
                memcpy(e, &pick, 4);
                sectors(e, 10);
            }
        }
        flags = (unsigned)below(8);
        {
            static const uint32_t limits[] = {0, 8, 32, 400, 1200, 4096};
            max_indirect = one_in(8) ? (uint32_t)rnd() : limits[below(6)];
        }
        r = rk_blkif_serve(&table, one_in(20) ? -1 : fd, one_in(10) ? rnd() : 2048, flags,
                           max_indirect, (const char *)slots, length, count, (char *)out,
                           out_length, stats);
        if (count > length / RK_BLKIF_REQUEST_SIZE || count > out_length / RK_BLKIF_REQUEST_SIZE) {
            CHECK(r == -1);
        } else {
            CHECK(r >= 0 && (size_t)r <= count);
            for (i = 0; i < (unsigned)r; i++) {
                const uint8_t *s = slots + (size_t)i * RK_BLKIF_REQUEST_SIZE;
                const uint8_t *a = out + (size_t)i * RK_BLKIF_REQUEST_SIZE;
                if (s[0] == 6) {
                    unsigned nseg = rk_le16(s + 2), p;
                    CHECK(s[1] <= 1 && nseg >= 1);
                    CHECK(nseg <= (max_indirect < 4096 ? max_indirect : 4096));
                    CHECK(memcmp(a, s + 8, 8) == 0 && a[8] == s[1] && a[10] == 0 && a[11] == 0);
                    for (p = 0; p < (nseg + 511) / 512; p++)
                        CHECK(rk_pgrant_index(&table, rk_le32(s + 28 + 4 * p)) >= 0);
                    indirect_total++;
                    continue;
                }
                CHECK(s[0] <= 1 && s[1] >= 1 && s[1] <= 11);
                CHECK(memcmp(a, s + 8, 8) == 0 && a[8] == s[0] && a[10] == 0 && a[11] == 0);
                for (j = 0; j < s[1]; j++) {
                    long at = rk_pgrant_index(&table, rk_le32(s + 24 + j * 8));
                    CHECK(at >= 0);
                    CHECK(s[0] == 1 || entries[at].writable);
                }
            }
            served_total += (unsigned long)r;
        }
        free(out);
        free(slots);
    }
    printf("seed %llu: %lu rounds of the blkif fast path, %lu requests served "
           "(%lu indirect), no finding\n", (unsigned long long)seed, rounds, served_total,
           indirect_total);
    for (i = 0; i < FAST_PAGES; i++)
        free(pages[i]);
    free(entries);
    fclose(file);
    return 0;
}

/* ---------------------------------------------------------------- the blkfront shadow table

   rk_shadow_*: a queue of `window` ids over a pool of `npages` pages, every array malloc'd
   with exactly the entries the call is told about.  Random batches (ops with data buffers of
   exactly their length, some misaligned or of a bad operation: rk_shadow_check must refuse
   those) are submitted into staging areas of random lengths; random bursts of responses --
   mostly right, some with ids outside the window or of free ids, the wrong operation, a
   status outside BLKIF_RSP_* -- are completed; random drops mark or free.  After every call
   the bookkeeping must add up: each page free, or held by exactly one request in flight; each
   response consumed answered a request in flight with its own operation.  A batch's buffers are
   freed as soon as no request in flight that is not an orphan points into them, so a C that
   touched an orphan's buffer would be a use-after-free report. */

#define SH_BATCHES 6
#define SH_MAX_OPS 8
#define SH_CAPACITY 41

struct sh_batch {
    int live;
    size_t nops;
    rk_shadow_op *ops;
    uint8_t *data[SH_MAX_OPS];
    int64_t *counters;
    uint64_t cursor[2];
};

static void sh_check_books(const uint8_t *states, size_t window, const uint8_t *freemap,
                           size_t npages, const rk_shadow *table)
{
    size_t id, p;
    unsigned j;
    uint8_t *owned = calloc(npages ? npages : 1, 1);
    CHECK(owned != NULL);
    for (id = 0; id < window; id++) {
        uint8_t s = states[id];
        CHECK(s == RK_ID_FREE || (s & ~RK_ID_ORPHAN) == (RK_ID_SENT | RK_ID_SHADOW));
        if (s == RK_ID_FREE)
            continue;
        CHECK(table[id].npages >= 1 && table[id].npages <= table[id].capacity);
        for (j = 0; j < table[id].npages; j++) {
            CHECK(table[id].pages[j] < npages);
            CHECK(!owned[table[id].pages[j]]);
            owned[table[id].pages[j]] = 1;
        }
    }
    for (p = 0; p < npages; p++)
        CHECK(freemap[p] == (owned[p] ? 0 : 1));
    free(owned);
}

static int run_shadow(unsigned long rounds)
{
    unsigned long consumed_total = 0, sent_total = 0, indirect_sent = 0;
    size_t window = 1 + (size_t)below(48), npages = 1 + (size_t)below(80), i, id;
    size_t memory_length = npages * RK_PAGE;
    uint8_t *states = calloc(window, 1), *freemap = malloc(npages);
    char *memory = (char *)random_bytes(memory_length);
    uint32_t *refs = output(npages, sizeof *refs);
    rk_shadow *table = output(window, sizeof *table);
    struct sh_batch batches[SH_BATCHES], *b;
    uint64_t info[6], taken[1];

    CHECK(states && freemap);
    for (id = 0; id < window; id++) {   /* room for 40 data pages and their indirect page */
        table[id].capacity = SH_CAPACITY;
        table[id].pages = output(SH_CAPACITY, sizeof *table[id].pages);
    }
    memset(freemap, 1, npages);
    memset(batches, 0, sizeof batches);
    where = "rk_shadow";
    for (round_no = 0; round_no < rounds; round_no++) {
        unsigned action = (unsigned)below(10);
        b = &batches[below(SH_BATCHES)];
        if (action < 4) {                                   /* a batch: check, submit */
            size_t slots_length, limit;
            unsigned max_segments;
            long r;
            uint8_t *slots;
            if (!b->live) {
                b->nops = (size_t)below(SH_MAX_OPS + 1);
                b->ops = output(b->nops ? b->nops : 1, sizeof *b->ops);
                for (i = 0; i < b->nops; i++) {
                    uint64_t length = one_in(10) ? below(3 * RK_PAGE)
                                                 : RK_SECTOR * below(40 * 8 + 1);
                    b->data[i] = random_bytes((size_t)length);
                    b->ops[i].data = (char *)b->data[i];
                    b->ops[i].length = length;
                    b->ops[i].offset = one_in(10) ? rnd() : RK_SECTOR * below(1024);
                    b->ops[i].operation = one_in(10) ? (uint32_t)rnd() : (uint32_t)below(2);
                }
                r = rk_shadow_check(b->ops, b->nops, one_in(20) ? 100 : RK_SECTOR,
                                    (1024 + 200) * RK_SECTOR, one_in(10),
                                    one_in(3) ? 32 * RK_PAGE : 11 * RK_PAGE);
                CHECK(r == -1 || (r >= 0 && (size_t)r <= b->nops));
                if (r != (long)b->nops) {
                    for (i = 0; i < b->nops; i++)
                        free(b->data[i]);
                    free(b->ops);
                    continue;
                }
                b->counters = calloc(2 + 2 * b->nops, sizeof *b->counters);
                CHECK(b->counters != NULL);
                b->cursor[0] = b->cursor[1] = 0;
                b->live = 1;
            }
            slots_length = any_length(12 * RK_BLKIF_REQUEST_SIZE);
            slots = random_bytes(slots_length);
            limit = (size_t)below(16);
            max_segments = one_in(20) ? (unsigned)below(5000)
                         : 1 + (unsigned)below(one_in(2) ? 40 : 11);
            r = rk_shadow_submit(states, window, freemap, npages, memory, memory_length, refs,
                                 table, b->ops, b->nops, b->cursor, b->counters,
                                 one_in(20) ? 1 + 2 * b->nops : 2 + 2 * b->nops,
                                 (uint32_t)(b - batches), 7, max_segments, limit,
                                 (char *)slots, slots_length, taken);
            if (r >= 0) {
                CHECK((size_t)r <= limit && (size_t)r <= slots_length / RK_BLKIF_REQUEST_SIZE);
                for (i = 0; i < (size_t)r; i++) {
                    const uint8_t *s = slots + i * RK_BLKIF_REQUEST_SIZE;
                    id = (size_t)rk_le64(s + 8);
                    CHECK(id < window && states[id] == (RK_ID_SENT | RK_ID_SHADOW));
                    CHECK(max_segments <= 40);      /* the table's room: larger is refused */
                    if (s[0] == 6) {                /* INDIRECT: data pages, then the list's */
                        unsigned nseg = rk_le16(s + 2), j;
                        const rk_shadow *sh = &table[id];
                        uint64_t left = sh->length;
                        CHECK(s[1] == sh->operation && rk_le16(s + 24) == 7);
                        CHECK(nseg > 11 && nseg <= max_segments && sh->npages == nseg + 1);
                        CHECK(rk_le32(s + 28) == refs[sh->pages[nseg]] && rk_le32(s + 32) == 0);
                        for (j = 0; j < nseg; j++, left -= RK_PAGE) {
                            const uint8_t *e = (const uint8_t *)memory
                                + (size_t)sh->pages[nseg] * RK_PAGE + j * 8;
                            unsigned sectors = (unsigned)((left < RK_PAGE ? left : RK_PAGE)
                                                          / RK_SECTOR);
                            CHECK(rk_le32(e) == refs[sh->pages[j]]);
                            CHECK(e[4] == 0 && e[5] == sectors - 1 && e[6] == 0 && e[7] == 0);
                        }
                        indirect_sent++;
                        continue;
                    }
                    CHECK(s[0] == table[id].operation && s[1] == table[id].npages);
                    CHECK(s[1] <= max_segments && s[1] <= 11 && rk_le16(s + 2) == 7);
                }
                sent_total += (unsigned long)r;
            }
            free(slots);
        } else if (action < 8) {                            /* a burst of responses */
            size_t count = (size_t)below(12), length, k;
            uint8_t *buf, expect[16];
            uint64_t ids[16];
            uint32_t *touched;
            size_t cap = (size_t)below(4);
            long r;
            length = one_in(10) ? any_length(count * RK_BLKIF_REQUEST_SIZE)
                                : count * RK_BLKIF_REQUEST_SIZE;
            buf = random_bytes(length);
            touched = output(cap ? cap : 1, sizeof *touched);
            for (k = 0; k < count && (k + 1) * RK_BLKIF_REQUEST_SIZE <= length; k++) {
                uint8_t *rsp = buf + k * RK_BLKIF_REQUEST_SIZE;
                uint64_t pick = below(window + 2);
                int16_t status = (int16_t)-(int)below(3);
                if (one_in(30))
                    pick = rnd();
                ids[k] = pick;
                expect[k] = pick < window ? table[pick].operation : 0;
                memcpy(rsp, &pick, 8);
                rsp[8] = one_in(15) ? (uint8_t)rnd() : expect[k];
                if (one_in(15))
                    status = (int16_t)rnd();
                memcpy(rsp + 10, &status, 2);
            }
            for (k = 0; k < count && k < 16; k++)    /* what each response may answer */
                if (k * RK_BLKIF_REQUEST_SIZE < length && ids[k] < window)
                    expect[k] = (states[ids[k]] & ~RK_ID_ORPHAN) == (RK_ID_SENT | RK_ID_SHADOW)
                        ? table[ids[k]].operation : 0xFF;
            r = rk_shadow_complete(states, window, freemap, npages, memory,
                                   one_in(20) ? memory_length - 1 : memory_length, table,
                                   (const char *)buf, length, count, touched, cap, info);
            if (count > length / RK_BLKIF_REQUEST_SIZE) {
                CHECK(r == -1);
            } else if (r >= 0) {
                CHECK((size_t)r <= count && info[0] <= RK_SHADOW_E_STATUS);
                CHECK(info[4] <= cap);
                for (k = 0; k < (size_t)r; k++) {
                    const uint8_t *rsp = buf + k * RK_BLKIF_REQUEST_SIZE;
                    /* a consumed response answered a shadow request in flight, with its own
                       operation (unless an earlier one of the burst freed that id: then it
                       was not consumed) */
                    CHECK(ids[k] < window && expect[k] != 0xFF);
                    CHECK(rsp[8] == expect[k]);
                }
                consumed_total += (unsigned long)r;
            }
            free(touched);
            free(buf);
        } else {                                            /* orphans, or the end */
            int mode = one_in(10) ? 5 : (int)below(3);
            long r = rk_shadow_drop(states, window, freemap, npages, table,
                                    one_in(4) ? UINT32_MAX : (uint32_t)(b - batches), mode,
                                    info);
            CHECK(mode > 2 ? r == -1 : r >= 0);
        }
        sh_check_books(states, window, freemap, npages, table);
        for (b = batches; b < batches + SH_BATCHES; b++) {  /* free what nothing points into */
            int used = 0;
            if (!b->live)
                continue;
            for (id = 0; id < window; id++)
                used |= states[id] == (RK_ID_SENT | RK_ID_SHADOW)
                    && table[id].token == (uint32_t)(b - batches);
            if (used || (b->cursor[0] < b->nops && !one_in(4)))
                continue;
            for (i = 0; i < b->nops; i++)
                free(b->data[i]);
            free(b->ops);
            free(b->counters);
            b->live = 0;
        }
    }
    printf("seed %llu: %lu rounds of the shadow table, %lu requests sent (%lu indirect), %lu "
           "answers consumed, no finding\n", (unsigned long long)seed, rounds, sent_total,
           indirect_sent, consumed_total);
    for (b = batches; b < batches + SH_BATCHES; b++)
        if (b->live) {
            for (i = 0; i < b->nops; i++)
                free(b->data[i]);
            free(b->ops);
            free(b->counters);
        }
    for (id = 0; id < window; id++)
        free(table[id].pages);
    free(table);
    free(refs);
    free(memory);
    free(freemap);
    free(states);
    return 0;
}

/* ---------------------------------------------------------------- the blkif burst server at depth

   rk_blkif_aio_*: sessions of one server each -- capacity 1..64 mostly, so that it fills up
   (STOP_FULL), now and then past RK_AIO_BATCH so that one call submits several batches -- fed
   bursts of random and hostile slots: bad operations, 0/12/255 segments, refs in and not in a
   persistent-grant table of real pages (some entries read-only), reversed and out-of-page
   sector ranges, sectors past the disk and near 2**64, WRITE_BARRIERs in the middle.  The
   image is a temporary file of AIO_DISK sectors whose size is also the process's
   RLIMIT_FSIZE, so that it never grows: a READ past its end moves fewer bytes than asked (or
   none), a WRITE past it too (or fails with EFBIG), and every request's outcome is known
   beforehand.  Sessions use that file read-write, a read-only descriptor of it, fd -1, or a
   pipe's read end (its READs wait until a byte is written or the server is closed).  Between
   bursts the table changes (requests in flight keep their pages); now and then the kernel
   refuses a call's submission (the ring's descriptor briefly names the image instead:
   io_uring_enter fails with EOPNOTSUPP).

   Every buffer is malloc'd with exactly the length the call claims (the burst, `rest`, `out`
   and `back` exactly `count` / `cap` slots, sequence arrays exactly that many numbers; some
   calls claim more than they have and must be refused), and the burst is freed as soon as
   rk_blkif_aio_submit returns: the server must keep its own copies.  The contract is checked
   slot by slot, against the harness's own reading of it (aio_takes, aio_moves_all): each
   consumed slot was either submitted (and then it is a request the server may take) or copied
   byte for byte to `rest` (and then it is one it may not take, unless the kernel refused the
   submission); consumed == submitted + rest; the walk stops exactly at a WRITE_BARRIER or when
   every entry is in flight; every submitted request comes back exactly once across the reaps,
   by its sequence number -- answered OKAY (its id, its operation, status 0, the rest zero) if
   and only if its I/O moves all its bytes, otherwise handed back byte for byte -- with the
   sector counts adding up; the server's in_flight is the harness's count after every call and
   goes back to 0.  Sessions end drained, or closed with requests still in the kernel (close
   must cancel and wait for them before the pages are freed). */

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>

#define AIO_PAGES 12
#define AIO_REFS 20             /* the refs a slot names: 1..AIO_REFS (the table holds some) */
#define AIO_DISK 256            /* the image's sectors */
#define AIO_MAX_BURST 160

enum { AIO_FILE, AIO_FILE_RDONLY, AIO_BADFD, AIO_PIPE };
enum { AIO_UNSEEN, AIO_FLIGHT, AIO_DONE };

typedef struct {
    uint8_t slot[RK_BLKIF_REQUEST_SIZE];    /* the slot as given */
    uint64_t sectors;
    uint8_t state;
    uint8_t moves_all;          /* its I/O moves every byte: answered OKAY, else handed back */
} aio_rec;

typedef struct {
    rk_blkif_aio *aio;
    rk_pgrant_table *table;
    int kind, fd, pipe_w, decoy;       /* decoy: a descriptor that is no io_uring */
    unsigned capacity, flags, in_flight, pipe_reads;
    uint64_t sectors, align, base;      /* base: the sequence number of the session's slot 0 */
    aio_rec *recs;
    size_t nrec;
} aio_session;

static uint8_t *aio_page[AIO_PAGES];
static struct { int page, writable; } aio_model[AIO_REFS + 1];   /* page -1: not in the table */
static struct {
    unsigned long submitted, answered, back, short_back, full, order, batches, refused,
        unaligned, closed_busy, kernel_refused;
} aio_count;

/* The model's entry for `ref`, or NULL when the table does not hold it. */
static const uint8_t *aio_lookup(uint32_t ref, int *writable)
{
    if (ref < 1 || ref > AIO_REFS || aio_model[ref].page < 0)
        return NULL;
    *writable = aio_model[ref].writable;
    return aio_page[aio_model[ref].page];
}

/* Whether the server may take slot `s` (the contract of rk_blkif_aio_submit written out
   again): a READ (a READ flag) or WRITE (RK_FAST_WRITE) of 1..11 direct segments, each a range
   lo <= hi < 8 of a ref the table holds (a READ: writable), the sectors inside the disk, and
   -- adjacent segments merged into one buffer, as the server does -- every buffer, every
   length and the offset aligned to `align`.  *total: its sectors. */
static int aio_takes(const aio_session *x, const uint8_t *s, uint64_t *total, int *unaligned)
{
    struct iovec v[RK_BLKIF_MAX_SEGMENTS];
    unsigned op = s[0], nseg = s[1], j, n = 0;
    uint64_t sector = rk_le64(s + 16);
    *total = 0;
    *unaligned = 0;
    if (nseg < 1 || nseg > RK_BLKIF_MAX_SEGMENTS)
        return 0;
    if (!((op == 0 && (x->flags & (RK_FAST_READ_PLAIN | RK_FAST_READ_NOWAIT)))
          || (op == 1 && (x->flags & RK_FAST_WRITE))))
        return 0;
    for (j = 0; j < nseg; j++) {
        const uint8_t *g = s + 24 + 8 * j, *page;
        int writable;
        uint8_t lo = g[4], hi = g[5];
        if (hi > 7 || lo > hi || !(page = aio_lookup(rk_le32(g), &writable)))
            return 0;
        if (op == 0 && !writable)
            return 0;
        *total += (uint64_t)(hi - lo) + 1;
        if (n && (const uint8_t *)v[n - 1].iov_base + v[n - 1].iov_len == page + lo * 512) {
            v[n - 1].iov_len += (size_t)(hi - lo + 1) * 512;
        } else {
            v[n].iov_base = (void *)(page + lo * 512);
            v[n].iov_len = (size_t)(hi - lo + 1) * 512;
            n++;
        }
    }
    if (sector > x->sectors || *total > x->sectors - sector || sector > (uint64_t)INT64_MAX / 1024)
        return 0;
    *unaligned = (sector * 512) % x->align != 0;
    for (j = 0; j < n; j++)
        *unaligned |= (uintptr_t)v[j].iov_base % x->align != 0 || v[j].iov_len % x->align != 0;
    return !*unaligned;
}

/* Whether a request the server took moves all its bytes: the image stays AIO_DISK sectors
   long (RLIMIT_FSIZE), fd -1 and a WRITE to a read-only fd fail, a pipe's READ gets a byte at
   a time (or is cancelled) and a WRITE to its read end fails. */
static int aio_moves_all(const aio_session *x, const uint8_t *s, uint64_t total)
{
    int inside = rk_le64(s + 16) + total <= AIO_DISK;
    switch (x->kind) {
    case AIO_FILE: return inside;
    case AIO_FILE_RDONLY: return inside && s[0] == 0;
    default: return 0;
    }
}

static aio_rec *aio_rec_of(const aio_session *x, uint64_t seq)
{
    uint64_t at = seq - x->base;
    CHECK(at < x->nrec);
    return &x->recs[at];
}

/* One rk_blkif_aio_reap of up to `cap`, checked; returns the completions it consumed. */
static unsigned aio_reap(aio_session *x, size_t cap)
{
    size_t out_length = cap * RK_BLKIF_REQUEST_SIZE, back_length = out_length, k;
    uint8_t *out, *back;
    uint64_t *seqs, *back_seqs, *info, sums[2] = {0, 0};
    int bad = 0;
    long r;

    where = "rk_blkif_aio_reap";
    if (cap && one_in(16)) {            /* claims room it does not have */
        bad = 1;
        if (one_in(2))
            out_length = (size_t)below(out_length);
        else
            back_length = (size_t)below(back_length);
    }
    out = output(out_length, 1);
    back = output(back_length, 1);
    seqs = output(cap, sizeof *seqs);
    back_seqs = output(cap, sizeof *back_seqs);
    info = output(3, sizeof *info);
    r = rk_blkif_aio_reap(x->aio, cap, (char *)out, out_length, seqs, (char *)back, back_length,
                          back_seqs, info);
    if (bad) {
        CHECK(r == -1 && rk_blkif_aio_in_flight(x->aio) == x->in_flight);
        r = 0;
        info[0] = 0;
    } else {
        CHECK(r >= 0 && info[0] <= cap - (size_t)r);
        for (k = 0; k < (size_t)r; k++) {
            aio_rec *rec = aio_rec_of(x, seqs[k]);
            const uint8_t *a = out + k * RK_BLKIF_REQUEST_SIZE;
            size_t b;
            CHECK(rec->state == AIO_FLIGHT);
            CHECK(rec->moves_all);      /* OKAY only for a request that moved all its bytes */
            CHECK(memcmp(a, rec->slot + 8, 8) == 0 && a[8] == rec->slot[0]);
            for (b = 9; b < RK_BLKIF_REQUEST_SIZE; b++)
                CHECK(a[b] == 0);       /* status 0 (OKAY), padding zeroed */
            sums[rec->slot[0]] += rec->sectors;
            rec->state = AIO_DONE;
            x->pipe_reads -= x->kind == AIO_PIPE && rec->slot[0] == 0;
        }
        for (k = 0; k < info[0]; k++) {
            aio_rec *rec = aio_rec_of(x, back_seqs[k]);
            CHECK(rec->state == AIO_FLIGHT);
            CHECK(!rec->moves_all);     /* handed back only when it could not */
            CHECK(memcmp(back + k * RK_BLKIF_REQUEST_SIZE, rec->slot,
                         RK_BLKIF_REQUEST_SIZE) == 0);
            rec->state = AIO_DONE;
            x->pipe_reads -= x->kind == AIO_PIPE && rec->slot[0] == 0;
            aio_count.short_back += x->kind == AIO_FILE;
        }
        CHECK(info[1] == sums[0] && info[2] == sums[1]);
        aio_count.answered += (unsigned long)r;
        aio_count.back += info[0];
        x->in_flight -= (unsigned)r + (unsigned)info[0];
        CHECK(rk_blkif_aio_in_flight(x->aio) == x->in_flight);
    }
    r += (long)info[0];
    free(info);
    free(back_seqs);
    free(seqs);
    free(back);
    free(out);
    return (unsigned)r;
}

/* Wait (briefly) for completions: a pipe's READs get a byte to finish with. */
static void aio_wait(const aio_session *x)
{
    struct pollfd pfd = {rk_blkif_aio_eventfd(x->aio), POLLIN, 0};
    uint64_t events;
    if (x->kind == AIO_PIPE && x->pipe_reads)
        CHECK(write(x->pipe_w, "x", 1) == 1);
    poll(&pfd, 1, 20);
    if (read(pfd.fd, &events, sizeof events) < 0)
        CHECK(errno == EAGAIN);
}

/* A reap's capacity: small (0 included) or large; `least`: at least that. */
static size_t aio_any_cap(const aio_session *x, size_t least)
{
    size_t cap = one_in(2) ? (size_t)below(4) : (size_t)below(2 * x->capacity + 8);
    return cap < least ? least : cap;
}

/* A ref the table holds writable (now and then any ref), for slots the server takes. */
static uint32_t aio_good_ref(void)
{
    uint32_t ref = 1 + (uint32_t)below(AIO_REFS), k;
    for (k = 0; k < AIO_REFS && !one_in(64); k++, ref = ref % AIO_REFS + 1)
        if (aio_model[ref].page >= 0 && aio_model[ref].writable)
            break;
    return ref;
}

/* A random slot: a READ or WRITE the server may take, or something hostile; `clean`: mostly
   the former (long runs of them fill a server past RK_AIO_BATCH in one call). */
static void aio_slot(const aio_session *x, uint8_t *s, int clean)
{
    static const uint8_t bad_ops[] = {3, 4, 5, 6, 7, 8, 255};
    static const uint8_t bad_counts[] = {0, 12, 255};
    int whole = x->align > 512 || one_in(2);       /* whole pages, sectors multiples of 8 */
    unsigned odds = clean ? 400 : 1, j;
    uint64_t sector;

    s[0] = one_in(30 * odds) ? 2 : one_in(15 * odds) ? bad_ops[below(sizeof bad_ops)]
                                                     : (uint8_t)below(2);
    s[1] = one_in(16 * odds) ? bad_counts[below(3)] : (uint8_t)(1 + below(one_in(3) ? 11 : 3));
    switch (clean ? 6 + below(18) : below(24)) {
    case 0: sector = rnd(); break;
    case 1: sector = UINT64_MAX - below(64); break;
    case 2: sector = (uint64_t)INT64_MAX / 1024 - 1 + below(3); break;
    case 3: sector = x->sectors - below(12); break;
    case 4: case 5: sector = AIO_DISK - below(24); break;     /* across the image's end */
    default:
        sector = below(AIO_DISK + 64);
        if (whole && !one_in(8))
            sector &= ~(uint64_t)7;
    }
    memcpy(s + 16, &sector, 8);
    for (j = 0; j < RK_BLKIF_MAX_SEGMENTS; j++) {
        uint8_t *e = s + 24 + 8 * j;
        uint32_t ref = clean ? aio_good_ref() : one_in(12) ? (uint32_t)rnd()
                                                            : (uint32_t)(1 + below(AIO_REFS));
        if (j && one_in(3) && e[-3] < 7 && e[-4] <= e[-3]) {
            /* the previous segment's page, right after it: merged into one buffer */
            memcpy(e, e - 8, 4);
            e[4] = (uint8_t)(e[-3] + 1);
            e[5] = (uint8_t)(e[4] + below(8u - e[4]));
        } else {
            memcpy(e, &ref, 4);
            if (whole && !one_in(8)) {
                e[4] = 0;
                e[5] = 7;
            } else {
                sectors(e, 10);         /* now and then reversed or past the page */
            }
        }
    }
}

/* How many of the `n` slots at `s` go to rest before any could be submitted (none is a
   request the server takes, nor a WRITE_BARRIER). */
static size_t aio_leading_rest(const aio_session *x, const uint8_t *s, size_t n)
{
    size_t k;
    for (k = 0; k < n; k++, s += RK_BLKIF_REQUEST_SIZE) {
        uint64_t total;
        int unaligned;
        if (s[0] == 2 || aio_takes(x, s, &total, &unaligned))
            break;
    }
    return k;
}

/* Submit `count` slots of `burst` (session slots g0...), as a caller does: from where the
   last call stopped, the barrier given to the Python path, reaping when the server is full. */
static void aio_submit_burst(aio_session *x, const uint8_t *burst, size_t count, size_t g0)
{
    static const uint64_t bad_align[] = {0, 3, 8192, 6, 513, 1ull << 63, UINT64_MAX};
    size_t pos = 0, stuck = 0;
    while (pos < count) {
        size_t n = count - pos, length = n * RK_BLKIF_REQUEST_SIZE, rest_length = length, k;
        uint64_t align = x->align, seq = x->base + g0 + pos, *rest_seqs, *info, sums[2] = {0, 0};
        uint8_t *slots, *rest, *mark;
        rk_pgrant_table bad_table = {x->table->entries, 12, 0};
        const rk_pgrant_table *table = x->table;
        int bad = 0, sabotage = 0, saved = -1;
        unsigned submitted = 0;
        uint64_t stop;
        long r;

        where = "rk_blkif_aio_submit";
        switch (below(24)) {            /* a call that must be refused, doing nothing */
        case 0: bad = 1; length = (size_t)below(length); break;
        case 1:
            /* `rest` shorter than the slots that would go there first: without the bound
               check the server writes past it */
            k = aio_leading_rest(x, burst + pos * RK_BLKIF_REQUEST_SIZE, n);
            if (k) {
                bad = 1;
                rest_length = (size_t)below(k * RK_BLKIF_REQUEST_SIZE);
            }
            break;
        case 2: bad = 1; align = bad_align[below(sizeof bad_align / sizeof *bad_align)]; break;
        case 3: if (one_in(4)) { bad = 1; table = &bad_table; } break;
        default: break;
        }
        if (length == n * RK_BLKIF_REQUEST_SIZE && one_in(8))
            length += (size_t)below(RK_BLKIF_REQUEST_SIZE);    /* more bytes than slots: fine */
        slots = output(length, 1);
        memcpy(slots, burst + pos * RK_BLKIF_REQUEST_SIZE,
               length < n * RK_BLKIF_REQUEST_SIZE ? length : n * RK_BLKIF_REQUEST_SIZE);
        rest = output(rest_length, 1);
        rest_seqs = output(n, sizeof *rest_seqs);
        info = output(6, sizeof *info);
#ifdef RK_HAVE_URING
        if (!bad && one_in(12)) {
            /* the kernel refuses the submission: for this call the ring's descriptor names
               a file (io_uring_enter: EOPNOTSUPP); its requests' slots must go to rest */
            sabotage = 1;
            saved = dup(x->aio->ring->fd);
            CHECK(saved >= 0 && dup2(x->decoy, x->aio->ring->fd) == x->aio->ring->fd);
        }
#endif
        r = rk_blkif_aio_submit(x->aio, table, x->fd, x->sectors, x->flags, align, seq,
                                (const char *)slots, length, n, (char *)rest, rest_length,
                                rest_seqs, info);
#ifdef RK_HAVE_URING
        if (sabotage) {
            CHECK(dup2(saved, x->aio->ring->fd) == x->aio->ring->fd);
            close(saved);
        }
#endif
        free(slots);                    /* the server keeps what it needs */
        if (bad) {
            CHECK(r == -1 && rk_blkif_aio_in_flight(x->aio) == x->in_flight);
            for (k = 0; k < 6; k++)
                CHECK(info[k] == 0);
            aio_count.refused++;
            free(info);
            free(rest_seqs);
            free(rest);
            continue;
        }
        CHECK(r >= 0 && (size_t)r <= n && info[0] <= (uint64_t)r);
        mark = calloc(n + 1, 1);
        CHECK(mark != NULL);
        for (k = 0; k < info[0]; k++) {         /* rest: consumed slots, each once, verbatim */
            uint64_t at = rest_seqs[k] - seq;
            CHECK(at < (uint64_t)r && !mark[at]);
            mark[at] = 1;
            CHECK(memcmp(rest + k * RK_BLKIF_REQUEST_SIZE,
                         burst + (pos + at) * RK_BLKIF_REQUEST_SIZE, RK_BLKIF_REQUEST_SIZE) == 0);
        }
        for (k = 0; k < (size_t)r; k++) {
            const uint8_t *s = burst + (pos + k) * RK_BLKIF_REQUEST_SIZE;
            aio_rec *rec = &x->recs[g0 + pos + k];
            uint64_t total;
            int unaligned, takes = aio_takes(x, s, &total, &unaligned);
            CHECK(s[0] != 2);                   /* a WRITE_BARRIER is never consumed */
            CHECK(rec->state == AIO_UNSEEN);
            if (mark[k]) {
                CHECK(!takes || info[2] != 0);  /* only a refused submission hands one over */
                aio_count.unaligned += (unsigned long)unaligned;
                rec->state = AIO_DONE;
                continue;
            }
            CHECK(takes);
            memcpy(rec->slot, s, RK_BLKIF_REQUEST_SIZE);
            rec->sectors = total;
            rec->moves_all = (uint8_t)aio_moves_all(x, s, total);
            rec->state = AIO_FLIGHT;
            sums[s[0]] += total;
            x->pipe_reads += x->kind == AIO_PIPE && s[0] == 0;
            submitted++;
        }
        CHECK(info[3] == submitted && (uint64_t)r == submitted + info[0]);
        CHECK(!sabotage || submitted == 0);
        aio_count.kernel_refused += info[2] != 0;
        CHECK(info[4] == sums[0] && info[5] == sums[1]);
        x->in_flight += submitted;
        CHECK(rk_blkif_aio_in_flight(x->aio) == x->in_flight);
        CHECK(x->in_flight <= x->capacity);
        if ((size_t)r == n) {
            CHECK(info[1] == RK_AIO_STOP_NONE);
        } else if (info[1] == RK_AIO_STOP_ORDER) {
            CHECK(burst[(pos + (size_t)r) * RK_BLKIF_REQUEST_SIZE] == 2);
        } else {                                /* full: at a slot it would take */
            uint64_t total;
            int unaligned, takes = aio_takes(x, burst + (pos + (size_t)r) * RK_BLKIF_REQUEST_SIZE,
                                             &total, &unaligned);
            CHECK(info[1] == RK_AIO_STOP_FULL && info[2] == 0);
            CHECK(x->in_flight == x->capacity);
            CHECK(takes);
        }
        aio_count.submitted += submitted;
        aio_count.batches += submitted > RK_AIO_BATCH;
        stop = info[1];
        free(mark);
        free(info);
        free(rest_seqs);
        free(rest);
        pos += (size_t)r;
        if (stop == RK_AIO_STOP_ORDER) {
            aio_count.order++;
            x->recs[g0 + pos].state = AIO_DONE;  /* the barrier: the Python path's */
            pos++;
        } else if (stop == RK_AIO_STOP_FULL) {  /* reap, then go on */
            aio_count.full++;
            if (aio_reap(x, aio_any_cap(x, 1)) == 0) {
                aio_wait(x);
                if (++stuck > 50)
                    break;                      /* the rest of the burst: the Python path's */
            }
        }
    }
}

/* One session: a server opened, bursts submitted and reaped at random, then drained or closed
   with requests in flight.  0, or the errno of an io_uring the kernel refused. */
static int aio_session_run(rk_pgrant_table *table, int file, int file_ro)
{
    static const int kinds[] = {AIO_FILE, AIO_FILE, AIO_FILE, AIO_FILE, AIO_FILE, AIO_FILE,
                                AIO_FILE_RDONLY, AIO_BADFD, AIO_PIPE, AIO_PIPE};
    aio_session x;
    int err = 0, fds[2] = {-1, -1};
    unsigned bursts = 1 + (unsigned)below(12), b, i;
    size_t g = 0;

    memset(&x, 0, sizeof x);
    where = "rk_blkif_aio_open";
    if (one_in(20)) {
        CHECK(rk_blkif_aio_open(one_in(2) ? 0 : 4097 + (unsigned)below(100000), &err) == NULL);
        CHECK(err == EINVAL);
    }
    x.capacity = one_in(6) ? 65 + (unsigned)below(140) : 1 + (unsigned)below(64);
    x.aio = rk_blkif_aio_open(x.capacity, &err);
    if (!x.aio) {
        CHECK(err != 0);
        return err;
    }
    CHECK(err == 0 && rk_blkif_aio_in_flight(x.aio) == 0 && rk_blkif_aio_eventfd(x.aio) >= 0);
    x.table = table;
    x.decoy = file_ro;
    x.kind = kinds[below(sizeof kinds / sizeof *kinds)];
    if (x.kind == AIO_PIPE) {
        CHECK(pipe(fds) == 0);
        x.fd = fds[0];
        x.pipe_w = fds[1];
    } else {
        x.fd = x.kind == AIO_FILE ? file : x.kind == AIO_FILE_RDONLY ? file_ro : -1;
    }
    switch (below(10)) {
    case 0: x.sectors = AIO_DISK; break;
    case 1: x.sectors = below(AIO_DISK); break;
    case 2: x.sectors = UINT64_MAX - below(8); break;
    case 3: x.sectors = 1ull << 62; break;
    default: x.sectors = AIO_DISK + 64; break;   /* READs past the image's end are short */
    }
    x.flags = one_in(4) ? (unsigned)below(8) : 7;
    x.align = one_in(2) ? 1 : one_in(2) ? 512 : 4096;
    x.base = one_in(4) ? UINT64_MAX - below(200) : rnd();  /* numbers may wrap */
    x.recs = calloc(bursts * (size_t)AIO_MAX_BURST, sizeof *x.recs);
    CHECK(x.recs != NULL);
    x.nrec = bursts * (size_t)AIO_MAX_BURST;

    for (b = 0; b < bursts; b++) {
        size_t count = one_in(4) || (x.capacity > RK_AIO_BATCH && one_in(2))
            ? (size_t)below(AIO_MAX_BURST + 1) : (size_t)below(24);
        uint8_t *burst = random_bytes(count * RK_BLKIF_REQUEST_SIZE);
        int clean = one_in(3);
        for (i = 0; i < count; i++)
            aio_slot(&x, burst + (size_t)i * RK_BLKIF_REQUEST_SIZE, clean);
        aio_submit_burst(&x, burst, count, g);
        g += count;
        free(burst);
        while (one_in(2))
            aio_reap(&x, aio_any_cap(&x, 0));
        if (one_in(3)) {                /* the table changes: in-flight requests keep theirs */
            uint32_t ref = 1 + (uint32_t)below(AIO_REFS);
            where = "rk_pgrant";
            if (one_in(3)) {
                CHECK(rk_pgrant_drop(table, ref) == (aio_model[ref].page >= 0));
                aio_model[ref].page = -1;
            } else {                    /* AIO_REFS < capacity / 2: never full */
                aio_model[ref].page = (int)below(AIO_PAGES);
                aio_model[ref].writable = !one_in(3);
                CHECK(rk_pgrant_put(table, ref,
                                    (uint64_t)(uintptr_t)aio_page[aio_model[ref].page],
                                    aio_model[ref].writable) >= 0);
            }
        }
    }
    where = "rk_blkif_aio_close";
    if (x.in_flight && one_in(3)) {
        aio_count.closed_busy++;
    } else {
        for (i = 0; i < 500 && x.in_flight; i++)
            if (aio_reap(&x, aio_any_cap(&x, 1)) == 0)
                aio_wait(&x);
        CHECK(x.in_flight == 0 && rk_blkif_aio_in_flight(x.aio) == 0);
        for (i = 0; i < x.nrec; i++)
            CHECK(x.recs[i].state != AIO_FLIGHT);   /* each answered or handed back once */
    }
    CHECK(rk_blkif_aio_close(x.aio) == 0);  /* cancels and waits for what is in flight */
    if (fds[0] >= 0) {
        close(fds[0]);
        close(fds[1]);
    }
    free(x.recs);
    return 0;
}

static int run_aio(unsigned long sessions)
{
    char path[] = "/tmp/rk-aio-fuzz-XXXXXX";
    rk_pgrant_table table;
    struct rlimit limit;
    int file, file_ro, refused = 0;
    unsigned i;

    file = mkstemp(path);
    CHECK(file >= 0);
    file_ro = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(file_ro >= 0);
    unlink(path);
    {
        uint8_t *disk = random_bytes(AIO_DISK * 512);
        CHECK(pwrite(file, disk, AIO_DISK * 512, 0) == AIO_DISK * 512);
        free(disk);
    }
    /* the image never grows: a WRITE past its end is short or fails (EFBIG, no signal) */
    CHECK(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
    CHECK(getrlimit(RLIMIT_FSIZE, &limit) == 0);
    limit.rlim_cur = AIO_DISK * 512;
    CHECK(setrlimit(RLIMIT_FSIZE, &limit) == 0);

    for (i = 0; i < AIO_PAGES; i++) {           /* pages 4096-aligned, and as malloc gives */
        aio_page[i] = i % 2 ? aligned_alloc(4096, 4096) : malloc(4096);
        CHECK(aio_page[i] != NULL);
        memset(aio_page[i], 0x5a, 4096);
    }
    table.capacity = 64;
    table.count = 0;
    table.entries = calloc(table.capacity, sizeof *table.entries);
    CHECK(table.entries != NULL);
    for (i = 1; i <= AIO_REFS; i++) {
        aio_model[i].page = one_in(4) ? -1 : (int)below(AIO_PAGES);
        aio_model[i].writable = !one_in(4);
        if (aio_model[i].page >= 0)
            CHECK(rk_pgrant_put(&table, i, (uint64_t)(uintptr_t)aio_page[aio_model[i].page],
                                aio_model[i].writable) == 0);
    }
    CHECK(rk_blkif_aio_close(NULL) == 0);
    for (round_no = 0; round_no < sessions; round_no++) {
        refused = aio_session_run(&table, file, file_ro);
        if (refused)
            break;
    }
    for (i = 0; i < AIO_PAGES; i++)
        free(aio_page[i]);
    free(table.entries);
    close(file_ro);
    close(file);
    if (refused) {
        printf("io_uring unavailable: %s\n", strerror(refused));
        return 0;
    }
    printf("seed %llu: %lu sessions of the blkif burst server at depth, %lu requests submitted, "
           "%lu answered, %lu handed back (%lu short on the image), %lu stops full, %lu at a "
           "barrier, %lu calls past one batch, %lu unaligned, %lu calls refused, %lu submissions "
           "refused by the kernel, %lu closed busy, no finding\n", (unsigned long long)seed,
           sessions, aio_count.submitted, aio_count.answered, aio_count.back,
           aio_count.short_back, aio_count.full, aio_count.order, aio_count.batches,
           aio_count.unaligned, aio_count.refused, aio_count.kernel_refused,
           aio_count.closed_busy);
    return 0;
}

/* ---------------------------------------------------------------- the modes */

/* The negative control: rk_gather told the buffer is one byte longer than it is.  The last
   byte of the field it reads is the first byte past the allocation. */
static int run_control(void)
{
    uint8_t *buf = random_bytes(15);
    uint64_t *out = output(1, sizeof *out);
    int r = rk_gather((const char *)buf, 16, 1, 16, 12, 4, 0, out);
    printf("control: rk_gather returned %d and nothing was reported\n", r);
    free(out);
    free(buf);
    return 0;
}

/* Arguments whose arithmetic in the C's own range checks wraps (or overflows int64).  No
   caller in ringkit passes them -- the Python side validates codecs and checks the field
   bounds itself -- but each function's contract says it checks every offset against the
   lengths it is given and returns -1 for arguments that do not fit.  One case per run: the
   first report ends the process. */
static int run_overflow(const char *which)
{
    uint8_t *buf = random_bytes(16);
    uint64_t *out = output(1, sizeof *out);
    int64_t *counts = output(1, sizeof *counts);
    uint32_t *refs = output(2, sizeof *refs);
    long r = 0;

    if (strcmp(which, "gather-offset") == 0) {
        /* offset + size wraps to 2, which fits the stride and the length: the field is read
           at buf + SIZE_MAX - 1, i.e. buf - 2. */
        r = rk_gather((const char *)buf, 16, 1, 16, SIZE_MAX - 1, 4, 0, out);
    } else if (strcmp(which, "gather-refs-entries") == 0) {
        /* max * estride = 2 * (2**63 - 1) wraps to -2, so off + max * estride wraps to 0 and
           passes the "entries fit the slot" check; entry 1's ref is read 2**63 bytes on. */
        int64_t spec[11] = {2, INT64_MAX, 0, 2, -1, 2, -1, 0, 0, 0, 0};
        r = rk_gather_refs((const char *)buf, 16, 1, 16, spec, 11, counts, refs, 2);
    } else if (strcmp(which, "gather-refs-ref-offset") == 0) {
        /* roff + 4 overflows int64 in the "ref fits its entry" check. */
        int64_t spec[11] = {0, INT64_MAX, INT64_MAX - 1, 1, -1, 1, -1, 0, 0, 0, 0};
        r = rk_gather_refs((const char *)buf, 16, 1, 16, spec, 11, counts, refs, 2);
    } else {
        fprintf(stderr, "sanitize_fuzz: unknown overflow case %s\n", which);
        return 64;
    }
    printf("overflow %s: returned %ld\n", which, r);
    free(refs);
    free(counts);
    free(out);
    free(buf);
    return r == -1 ? 0 : 3;
}

/* ---------------------------------------------------------------- the netfront tx table
 *
 * rk_nettx_*: a queue of `window` ids over a pool of `npages` pages, some of each held by the
 * Python path (ids in state HELD or SENT without the SHADOW flag, pages taken); random frames,
 * each malloc'd with exactly its length (some empty, too long or of a bad GSO type: the call
 * must be refused whole), submitted into staging areas of random lengths with random ring
 * room; random bursts completed -- answers to requests in flight here in ring order (the
 * extra slots' NETIF_RSP_NULLs by position, with a random id), shuffled now and then, mixed
 * with garbage, buffers malloc'd with exactly the slots they claim.  After every call the
 * books must balance: each id of ours in flight holds exactly one page (an extra slot none),
 * every page taken is held by the Python path or by exactly one of them, the fifo holds
 * exactly our extra slots in flight, in the order they were written. */

#define NT_MAX_FRAMES 24

static void nettx_books(const uint8_t *states, size_t window, const uint8_t *freemap,
                        size_t npages, const uint32_t *table, const uint32_t *fifo,
                        const uint64_t *fs, const uint8_t *python_pages)
{
    size_t id, p, extras = 0, k;
    uint8_t *owner = calloc(npages ? npages : 1, 1);
    CHECK(owner != NULL);
    for (id = 0; id < window; id++) {
        if (states[id] != (RK_ID_SENT | RK_ID_SHADOW))
            continue;
        if (table[id] & RK_NETTX_EXTRA) {
            extras++;
            continue;
        }
        p = table[id] & RK_NETTX_PAGE_MASK;
        CHECK(p < npages);
        CHECK(freemap[p] == 0 && !python_pages[p]);
        CHECK(owner[p] == 0);
        owner[p] = 1;
    }
    for (p = 0; p < npages; p++)
        CHECK(freemap[p] == 1 || python_pages[p] || owner[p]);
    CHECK(fs[1] == extras && fs[0] < window);
    for (k = 0; k < fs[1]; k++) {
        id = fifo[(fs[0] + k) % window];
        CHECK(id < window && states[id] == (RK_ID_SENT | RK_ID_SHADOW)
              && (table[id] & RK_NETTX_EXTRA));
    }
    free(owner);
}

static int run_nettx(unsigned long rounds)
{
    unsigned long sent_total = 0, consumed_total = 0, refused_total = 0, extra_total = 0;
    size_t window = 1 + (size_t)below(300), npages = (size_t)below(300), i, id;
    size_t memory_length = npages * RK_PAGE, ring_len = 0;
    uint8_t *states = calloc(window, 1), *freemap = malloc(npages ? npages : 1);
    uint8_t *python_pages = calloc(npages ? npages : 1, 1);
    char *memory = (char *)random_bytes(memory_length);
    uint32_t *refs = output(npages, sizeof *refs);
    uint32_t *table = calloc(window, sizeof *table), *fifo = output(window, sizeof *fifo);
    uint32_t *ring = malloc(4 * window * sizeof *ring);    /* ids in flight here, ring order */
    uint64_t fs[2] = {0, 0}, out[3], info[5];

    CHECK(states && freemap && python_pages && table && ring);
    memset(freemap, 1, npages);
    for (id = 0; id < window; id++)       /* the Python path's own requests */
        if (one_in(8))
            states[id] = one_in(2) ? RK_ID_HELD : RK_ID_SENT;
    for (i = 0; i < npages; i++)
        if (one_in(8)) {
            freemap[i] = 0;
            python_pages[i] = 1;
        }
    where = "rk_nettx";
    for (round_no = 0; round_no < rounds; round_no++) {
        if (one_in(2)) {                                   /* submit */
            size_t nframes = (size_t)below(NT_MAX_FRAMES + 1), room = (size_t)below(300);
            size_t slots_length = one_in(4) ? (size_t)below(40) : 12 * (size_t)below(300);
            unsigned max_pages = one_in(20) ? (unsigned)below(40) : 1 + (unsigned)below(18);
            rk_nettx_frame *frames = output(nframes ? nframes : 1, sizeof *frames);
            uint8_t *data[NT_MAX_FRAMES];
            char *slots = (char *)random_bytes(slots_length);
            int bad = max_pages < 1 || max_pages > 18;
            long r;
            for (i = 0; i < nframes; i++) {
                uint32_t length = one_in(30) ? (uint32_t)below(80000)
                                  : 1 + (uint32_t)below(one_in(2) ? 1600 : max_pages * RK_PAGE);
                data[i] = random_bytes(length);
                frames[i].data = one_in(100) ? NULL : (const char *)data[i];
                frames[i].length = length;
                frames[i].flags = (uint16_t)rnd();
                frames[i].gso_type = one_in(40) ? (uint8_t)rnd() : (uint8_t)below(3);
                frames[i].gso_size = (uint16_t)rnd();
                if (length == 0 || length > 65535 || !frames[i].data || frames[i].gso_type > 2
                    || (length + RK_PAGE - 1) / RK_PAGE > max_pages)
                    bad = 1;
            }
            r = rk_nettx_submit(states, window, freemap, npages, memory, memory_length, refs,
                                table, fifo, fs, frames, nframes, max_pages, room, slots,
                                slots_length, out);
            CHECK((r < 0) == bad);
            if (r < 0) {
                refused_total++;
            } else {
                size_t k;
                CHECK((size_t)r <= room && (size_t)r * 12 <= slots_length);
                CHECK(out[0] <= nframes && out[2] == (uint64_t)r);
                for (k = 0; k < (size_t)r; k++) {   /* every slot names an id of ours */
                    const uint8_t *s = (const uint8_t *)slots + 12 * k;
                    id = rk_le16(s + 8);
                    CHECK(id < window && states[id] == (RK_ID_SENT | RK_ID_SHADOW));
                    if (table[id] & RK_NETTX_EXTRA) {
                        CHECK(s[0] == 1);
                        extra_total++;
                    } else {
                        CHECK(rk_le32(s) == refs[table[id] & RK_NETTX_PAGE_MASK]);
                    }
                    CHECK(ring_len < 4 * window);
                    ring[ring_len++] = (uint32_t)id;
                }
                sent_total += out[0];
            }
            for (i = 0; i < nframes; i++)
                free(data[i]);
            free(frames);
            free(slots);
        } else {                                            /* complete a burst */
            size_t count = (size_t)below(ring_len + 3), claimed, k, answered = 0;
            uint8_t *buf;
            long r;
            claimed = one_in(20) ? (size_t)below(count * 12 + 1) : count * 12;
            buf = random_bytes(claimed);
            for (k = 0; k < count && (k + 1) * 12 <= claimed; k++) {
                uint8_t *s = buf + 12 * k;
                if (k < ring_len && !one_in(30)) {
                    id = ring[k];
                    if (table[id] & RK_NETTX_EXTRA) {
                        size_t last = ring_len;
                        while (last > 0 && !(table[ring[last - 1]] & RK_NETTX_EXTRA))
                            last--;
                        /* its id field: junk, or the newest extra slot's id (a lie the
                           position must win over) */
                        if (one_in(2) && last > 0)
                            rk_put_le(s, ring[last - 1], 2);
                        rk_put_le(s + 2, 1, 2);                     /* NETIF_RSP_NULL */
                    } else {
                        rk_put_le(s, id, 2);
                        rk_put_le(s + 2, (uint64_t)(int64_t)-(int64_t)below(3), 2);
                    }
                }   /* else: garbage (random bytes) */
            }
            r = rk_nettx_complete(states, window, freemap, npages, table, fifo, fs,
                                  (const char *)buf, claimed, count, info);
            CHECK((r < 0) == (count > claimed / 12));
            if (r > 0) {
                /* what was consumed were answers to ours: drop them from the ring model
                   (garbage that happened to match an id of ours takes that id) */
                size_t keep = 0;
                for (k = 0; k < ring_len; k++)
                    if (states[ring[k]] == (RK_ID_SENT | RK_ID_SHADOW))
                        ring[keep++] = ring[k];
                answered = ring_len - keep;
                ring_len = keep;
                CHECK(answered == info[2]);
                consumed_total += (unsigned long)r;
            }
            free(buf);
        }
        nettx_books(states, window, freemap, npages, table, fifo, fs, python_pages);
    }
    printf("seed %llu: %lu rounds of the netfront tx table, %lu frames sent (%lu extra "
           "slots), %lu submissions refused, %lu answers consumed, no finding\n",
           (unsigned long long)seed, rounds, sent_total, extra_total, refused_total,
           consumed_total);
    free(states);
    free(freemap);
    free(python_pages);
    free(memory);
    free(refs);
    free(table);
    free(fifo);
    free(ring);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long rounds;

    if (argc == 2 && strcmp(argv[1], "control") == 0)
        return run_control();
    if (argc == 3 && strcmp(argv[1], "overflow") == 0)
        return run_overflow(argv[2]);
    if (argc == 4 && strcmp(argv[1], "uring") == 0) {
        seed = state = strtoull(argv[2], NULL, 0);
        return run_uring(strtoul(argv[3], NULL, 0));
    }
    if (argc == 4 && strcmp(argv[1], "blkfast") == 0) {
        seed = state = strtoull(argv[2], NULL, 0);
        return run_blkfast(strtoul(argv[3], NULL, 0));
    }
    if (argc == 4 && strcmp(argv[1], "shadow") == 0) {
        seed = state = strtoull(argv[2], NULL, 0);
        return run_shadow(strtoul(argv[3], NULL, 0));
    }
    if (argc == 4 && strcmp(argv[1], "nettx") == 0) {
        seed = state = strtoull(argv[2], NULL, 0);
        return run_nettx(strtoul(argv[3], NULL, 0));
    }
    if (argc == 4 && strcmp(argv[1], "aio") == 0) {
        seed = state = strtoull(argv[2], NULL, 0);
        return run_aio(strtoul(argv[3], NULL, 0));
    }
    if (argc != 4 || strcmp(argv[1], "fuzz") != 0) {
        fprintf(stderr, "usage: %s fuzz SEED ROUNDS | control | overflow CASE | uring SEED RINGS"
                " | blkfast SEED ROUNDS | shadow SEED ROUNDS | nettx SEED ROUNDS"
                " | aio SEED SESSIONS\n", argv[0]);
        return 64;
    }
    seed = state = strtoull(argv[2], NULL, 0);
    rounds = strtoul(argv[3], NULL, 0);
    for (round_no = 0; round_no < rounds; round_no++) {
        fuzz_memory();
        fuzz_blkif_request();
        fuzz_blkif_segments();
        fuzz_gather();
        fuzz_gather_refs();
        fuzz_nettx_parse();
    }
    printf("seed %llu: %lu rounds of each function, no finding\n", (unsigned long long)seed,
           rounds);
    return 0;
}
