/* Reference side of the ring differential test (tests/proto/test_ring_differential.py).
 *
 * Drives Xen's own io/ring.h macros (from /usr/include/xen/io/ring.h) with a script read from
 * stdin, one operation per line, and prints one line per observable result.  The Python test
 * runs the same script on ringkit.proto.ring and compares the outputs and the final page bytes.
 *
 * The ring type is blkif-shaped: 112-byte requests, 16-byte responses (8-byte aligned), so a
 * 4096-byte page holds 32 slots.  Messages are filled with pattern(seed) bytes and written as
 * whole zero-padded slots, as ringkit writes them.
 *
 * Script operations:
 *   init AREA INDEX   fresh zeroed area of AREA bytes; the frontend initialises the shared
 *                     ring (SHARED_RING_INIT), both halves attach at INDEX with the shared
 *                     producers at INDEX and events at INDEX+1 (INDEX 0 = XEN_FRONT_RING_INIT)
 *   fput SEED | ffree | fpush | fpending | ftake | ffinal | fcheck
 *   bput SEED | bpending | btake | bpush | bfinal | bcheck
 *   poke OFF VALUE    32-bit store into the shared area (an event index, or a hostile value)
 *   dump              hex of the whole area
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ring.h maps xen_mb()/xen_wmb() to the includer's mb()/wmb() (Linux: virt_mb() & co). */
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/io/ring.h>

#define REQ_SIZE 112
#define RSP_SIZE 16
#define MAX_AREA (4096 << 4)

struct diff_request { uint8_t bytes[REQ_SIZE]; } __attribute__((aligned(8)));
struct diff_response { uint8_t bytes[RSP_SIZE]; } __attribute__((aligned(8)));

DEFINE_RING_TYPES(diff, struct diff_request, struct diff_response);

_Static_assert(sizeof(union diff_sring_entry) == 112, "slot size");
_Static_assert(offsetof(struct diff_sring, ring) == 64, "header size");

static uint8_t area[MAX_AREA] __attribute__((aligned(4096)));
static size_t area_size;
static diff_front_ring_t front;
static diff_back_ring_t back;

static void pattern(uint8_t *dst, size_t n, unsigned long seed)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint8_t)(seed * 31u + i * 7u + 1u);
}

static void print_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

int main(void)
{
    char op[32];
    unsigned long a, b;
    diff_sring_t *s = (diff_sring_t *)area;

    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    while (scanf("%31s", op) == 1) {
        if (!strcmp(op, "init")) {
            if (scanf("%lu %lu", &a, &b) != 2 || a > MAX_AREA)
                return 2;
            area_size = a;
            memset(area, 0, sizeof(area));
            if (b == 0) {
                XEN_FRONT_RING_INIT(&front, s, area_size);
            } else {
                SHARED_RING_INIT(s);
                s->req_prod = s->rsp_prod = (RING_IDX)b;
                s->req_event = s->rsp_event = (RING_IDX)(b + 1);
                FRONT_RING_ATTACH(&front, s, (RING_IDX)b, area_size);
            }
            BACK_RING_ATTACH(&back, s, (RING_IDX)b, area_size);
            printf("size %u\n", RING_SIZE(&front));
        } else if (!strcmp(op, "fput")) {
            union diff_sring_entry e;
            if (scanf("%lu", &a) != 1)
                return 2;
            memset(&e, 0, sizeof(e));
            pattern(e.req.bytes, REQ_SIZE, a);
            memcpy(RING_GET_REQUEST(&front, front.req_prod_pvt), &e, sizeof(e));
            front.req_prod_pvt++;
        } else if (!strcmp(op, "ffree")) {
            printf("free %u\n", RING_FREE_REQUESTS(&front));
        } else if (!strcmp(op, "fpush")) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
            printf("notify %d\n", notify);
        } else if (!strcmp(op, "fpending")) {
            printf("pending %u\n", RING_HAS_UNCONSUMED_RESPONSES(&front));
        } else if (!strcmp(op, "ftake")) {
            struct diff_response r;
            RING_COPY_RESPONSE(&front, front.rsp_cons, &r);
            front.rsp_cons++;
            print_hex(r.bytes, RSP_SIZE);
        } else if (!strcmp(op, "ffinal")) {
            int work;
            RING_FINAL_CHECK_FOR_RESPONSES(&front, work);
            printf("work %d\n", work ? 1 : 0);
        } else if (!strcmp(op, "fcheck")) {
            printf("overflow %d\n", RING_RESPONSE_PROD_OVERFLOW(&front, s->rsp_prod) ? 1 : 0);
        } else if (!strcmp(op, "bput")) {
            union diff_sring_entry e;
            if (scanf("%lu", &a) != 1)
                return 2;
            memset(&e, 0, sizeof(e));
            pattern(e.rsp.bytes, RSP_SIZE, a);
            memcpy(RING_GET_RESPONSE(&back, back.rsp_prod_pvt), &e, sizeof(e));
            back.rsp_prod_pvt++;
        } else if (!strcmp(op, "bpending")) {
            printf("pending %u\n", RING_HAS_UNCONSUMED_REQUESTS(&back));
        } else if (!strcmp(op, "btake")) {
            struct diff_request r;
            RING_COPY_REQUEST(&back, back.req_cons, &r);
            back.req_cons++;
            print_hex(r.bytes, REQ_SIZE);
        } else if (!strcmp(op, "bpush")) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
            printf("notify %d\n", notify);
        } else if (!strcmp(op, "bfinal")) {
            int work;
            RING_FINAL_CHECK_FOR_REQUESTS(&back, work);
            printf("work %d\n", work ? 1 : 0);
        } else if (!strcmp(op, "bcheck")) {
            printf("overflow %d\n", RING_REQUEST_PROD_OVERFLOW(&back, s->req_prod) ? 1 : 0);
        } else if (!strcmp(op, "poke")) {
            uint32_t v;
            if (scanf("%lu %lu", &a, &b) != 2 || a + 4 > area_size || a % 4)
                return 2;
            v = (uint32_t)b;
            memcpy(area + a, &v, 4);
        } else if (!strcmp(op, "dump")) {
            print_hex(area, area_size);
        } else {
            fprintf(stderr, "unknown op %s\n", op);
            return 2;
        }
    }
    fflush(stdout);
    return 0;
}
