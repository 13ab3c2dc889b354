/* One end of a vchan run by libxenvchan's own I/O code (libxenvchan_read / _write, from Debian's
 * libxenvchan.so), over pages shared with a Python test through a memfd instead of grants, so
 * ringkit's ends can be checked against the C library on any Linux machine.
 *
 *   libxenvchan_echo ROLE MEMFD SIZE TOTAL EVENT_IN EVENT_OUT
 *
 * ROLE "client": the Python side wrote the control page as a server; we attach as
 * libxenvchan's client does (orders from the page, left ring written, right ring read), say we
 * are connected and ring.  ROLE "server": we lay out the control page as libxenvchan's server
 * does for read_min = write_min = 0 (left 1 KiB at 1024, right 2 KiB at 2048) and ring once it is
 * written.  Rings of order >= 12 live in the memfd after the page, left's first.
 *
 * Then we echo TOTAL bytes back as they come, using the library's blocking read and write, and
 * leave as libxenvchan_close would: clear our live byte, ring.
 *
 * Event channels: the library's calls to xenevtchn_notify / _pending / _unmask land in the
 * definitions below (the executable's symbols win over libxenevtchn's): a notify writes one byte
 * to EVENT_OUT, waiting reads one from EVENT_IN.  Each notify is also counted on stderr, so the
 * test can tell whether the library asked for wake-ups the way ringkit expects.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <libxenvchan.h>

static int event_in, event_out;
static unsigned long notifies;

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    char one = 1;
    (void)xce;
    (void)port;
    notifies++;
    return write(event_out, &one, 1) == 1 ? 0 : -1;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    char byte;
    (void)xce;
    if (read(event_in, &byte, 1) != 1)
        return -1;          /* the Python side is gone */
    return 7;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

static void *ring_buffer(struct vchan_interface *page, char *after, int order, int *used)
{
    if (order == 10)
        return (char *)page + 1024;
    if (order == 11)
        return (char *)page + 2048;
    void *buffer = after + *used;
    *used += 1 << order;
    return buffer;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s client|server MEMFD SIZE TOTAL EVENT_IN EVENT_OUT\n", argv[0]);
        return 2;
    }
    int server = strcmp(argv[1], "server") == 0;
    size_t size = strtoul(argv[3], NULL, 0);
    long total = strtol(argv[4], NULL, 0);
    event_in = atoi(argv[5]);
    event_out = atoi(argv[6]);
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, atoi(argv[2]), 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    struct vchan_interface *page = (struct vchan_interface *)base;
    struct libxenvchan ctrl;
    memset(&ctrl, 0, sizeof ctrl);
    ctrl.ring = page;
    ctrl.event = (xenevtchn_handle *)&ctrl;   /* never dereferenced: the calls land above */
    ctrl.event_port = 7;
    ctrl.is_server = server;
    ctrl.blocking = 1;
    int used = 0;
    if (server) {
        page->left_order = 10;
        page->right_order = 11;
        page->cli_live = 2;
        page->srv_live = 1;
        page->cli_notify = VCHAN_NOTIFY_WRITE;
        ctrl.read.order = 10;
        ctrl.write.order = 11;
        ctrl.read.shr = &page->left;
        ctrl.write.shr = &page->right;
    } else {
        ctrl.write.order = page->left_order;
        ctrl.read.order = page->right_order;
        ctrl.write.shr = &page->left;
        ctrl.read.shr = &page->right;
    }
    /* left's pages come first, whichever end writes it */
    struct libxenvchan_ring *left = server ? &ctrl.read : &ctrl.write;
    struct libxenvchan_ring *right = server ? &ctrl.write : &ctrl.read;
    left->buffer = ring_buffer(page, base + 4096, left->order, &used);
    right->buffer = ring_buffer(page, base + 4096, right->order, &used);
    if (4096 + (size_t)used > size) {
        fprintf(stderr, "the rings do not fit the %zu-byte memfd\n", size);
        return 1;
    }
    if (server) {
        xenevtchn_notify(ctrl.event, ctrl.event_port);   /* "the page is ready" */
        while (page->cli_live == 2)
            if (libxenvchan_wait(&ctrl))
                return 1;
    } else {
        page->cli_live = 1;
        page->srv_notify = VCHAN_NOTIFY_WRITE;
        xenevtchn_notify(ctrl.event, ctrl.event_port);
    }

    char buf[5000];   /* not a power of two: reads and writes straddle the ring's end */
    long echoed = 0;
    while (echoed < total) {
        long want = total - echoed < (long)sizeof buf ? total - echoed : (long)sizeof buf;
        int got = libxenvchan_read(&ctrl, buf, want);
        if (got <= 0) {
            fprintf(stderr, "libxenvchan_read: %d after %ld bytes\n", got, echoed);
            return 1;
        }
        if (libxenvchan_write(&ctrl, buf, got) != got) {
            fprintf(stderr, "libxenvchan_write failed after %ld bytes\n", echoed);
            return 1;
        }
        echoed += got;
    }
    /* what libxenvchan_close does to the page: our live byte, then the doorbell */
    if (server)
        page->srv_live = 0;
    else
        page->cli_live = 0;
    xenevtchn_notify(ctrl.event, ctrl.event_port);
    fprintf(stderr, "echoed %ld bytes, %lu notifies\n", echoed, notifies);
    return 0;
}
