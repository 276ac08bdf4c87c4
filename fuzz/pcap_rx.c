/*
 * pcap_rx.c - libFuzzer harness of a pcap stream read straight into a guest's receive
 * buffers (vhost_pcap.c's direct receive, STDPKT_RELAY_DIRECT bit 1), and of the general
 * path putting frames into them (vhost_ring.c) or, when they are full, into the port's
 * socket.  The relay's source is a pipe holding the input; its destination a vhost-user
 * port whose guest is this harness (its memory, rings and buffers made here, as UML's
 * virtio_uml makes them).
 *
 * Input: byte 0 = flags, the rest = the pcap stream (at most what fits the pipe).
 *   flags & 3    the guest's receive buffers, each chain contiguous in its memory:
 *                0: 64 chains of 1526 bytes, 1: 64 of 4096, 3: 64 chains of two
 *                1024-byte descriptors (mergeable receive buffers: a frame fills
 *                several); 2: 8 chains of 65562 bytes, no mergeable buffers
 *   flags & 4    trace ring on (8 slots, 96-byte snap)
 *   flags & 8    offload on (the header may rewrite a checksum field: the oracle then
 *                compares frame lengths, not bytes)
 *   flags >> 4 & 7  chains the guest gives back after each step, 1 + that: a slow guest
 *                fills its ring, and frames wait in the port's socket
 *   flags & 128  the stream reaches the pipe in two parts (the second once the relay
 *                has read all of the first), so a record may be only partly there
 *
 * The harness steps the relay (rl_step) and, after each step, plays the guest: takes
 * the used buffers in order and gives some back.  A thread plays the port's thread,
 * draining the socket; each frame it takes is placed after the frames the ring had
 * then (the relay puts nothing into the ring while the socket holds a frame, and the
 * port's thread would put it into the ring after those).
 *
 * What must hold (else abort, a crash libFuzzer records):
 *   - the relay ends with RELAY_EOF or RELAY_BAD_STREAM within a bounded number of steps;
 *   - every used entry names a chain the guest had made available, with a length
 *     within it; a frame's first buffer holds the header, whose num_buffers is 1
 *     without mergeable buffers and at most the ring's chains with them; every frame
 *     14..65550 bytes; no frame left half-delivered at the end;
 *   - frames delivered (ring + socket) == stats.frames, their bytes == stats.bytes, no
 *     drops;
 *   - a well-formed stream (strict_pcap.h) arrives whole, in order, byte for byte.
 */
#define _GNU_SOURCE
#include "relay_int.h"
#include "strict_pcap.h"
#include "vhost.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAIL(...) do { fprintf(stderr, "pcap_rx invariant: " __VA_ARGS__); fputc('\n', stderr); \
                       abort(); } while (0)

#define GPA 0x100000u
#define DESC_OFF 0x0u                 /* the receive queue's rings */
#define AVAIL_OFF 0x1000u
#define USED_OFF 0x2000u
#define TXQ_OFF 0x3000u               /* a transmit queue (vh_ready wants both mapped) */
#define BUF_OFF 0x4000u
#define MAX_STEPS 200000
#define MAX_FRAMES 20000

/* ------------------------------------------------------------ what was delivered */

/* Frames, concatenated, each with its place: for the ring, the used entry it starts at;
 * for the socket, how many used entries the ring had when it was taken from the socket. */
typedef struct delivered {
    uint8_t *buf;
    size_t len, cap;
    uint32_t lens[MAX_FRAMES];
    uint32_t at[MAX_FRAMES];
    uint64_t frames;
} delivered;

static void deliver(delivered *d, const uint8_t *f, size_t n, uint32_t at)
{
    if (n < RELAY_FRAME_MIN || n > RELAY_FRAME_MAX)
        FAIL("a frame of %zu bytes delivered", n);
    if (d->frames >= MAX_FRAMES)
        FAIL("more than %d frames", MAX_FRAMES);
    if (d->len + n > d->cap) {
        d->cap = (d->len + n) * 2;
        d->buf = realloc(d->buf, d->cap);
        if (d->buf == NULL)
            abort();
    }
    memcpy(d->buf + d->len, f, n);
    d->len += n;
    d->lens[d->frames] = (uint32_t)n;
    d->at[d->frames] = at;
    d->frames++;
}

/* The order the guest sees: a frame the port's socket held goes after every frame the
 * ring had then, before every later one (the port's thread puts it into the ring after
 * those; the relay puts nothing into the ring while the socket holds a frame). */
static void merge(const delivered *ring, const delivered *sock, delivered *out)
{
    size_t ri = 0, si = 0, roff = 0, soff = 0;
    while (ri < ring->frames || si < sock->frames) {
        int take_ring = si == sock->frames || (ri < ring->frames && ring->at[ri] < sock->at[si]);
        if (take_ring) {
            deliver(out, ring->buf + roff, ring->lens[ri], 0);
            roff += ring->lens[ri++];
        } else {
            deliver(out, sock->buf + soff, sock->lens[si], 1);
            soff += sock->lens[si++];
        }
    }
}

/* ------------------------------------------------------------ the port's thread */

typedef struct drainer {
    int fd;
    int stop;                         /* atomic */
    const uint16_t *used_idx;         /* the guest's used ring index */
    delivered d;
} drainer;

static void *drain_main(void *arg)
{
    drainer *dr = arg;
    static __thread uint8_t msg[RELAY_FRAME_MAX + 16];
    for (;;) {
        struct pollfd p = { dr->fd, POLLIN, 0 };
        int rc = poll(&p, 1, 5);
        if (rc == 0 && __atomic_load_n(&dr->stop, __ATOMIC_ACQUIRE))
            break;
        if (rc <= 0)
            continue;
        /* the socket holds a frame: until it is taken the relay puts nothing into the
         * ring, so the index read now is the ring's when the frame was sent */
        uint16_t at = __atomic_load_n(dr->used_idx, __ATOMIC_ACQUIRE);
        ssize_t k = recv(dr->fd, msg, sizeof msg, MSG_DONTWAIT);
        if (k > 0)
            deliver(&dr->d, msg, (size_t)k, at);
        else if (k == 0 || (errno != EAGAIN && errno != EINTR))
            break;
    }
    return NULL;
}

/* ------------------------------------------------------------ the guest */

typedef struct guest {
    uint8_t *mem;
    size_t size;
    uint16_t num;                     /* the receive queue's size (descriptors) */
    uint16_t chains, per_chain;       /* chains, descriptors per chain */
    uint32_t buf;                     /* bytes per chain */
    int mrg;
    uint16_t used_seen, avail_idx;
    uint8_t out[256];                 /* chain handed to the device (1) or ours (0) */
    uint16_t give[256];               /* used chains to give back, in order */
    uint32_t ngive, per_step;
    uint8_t *frame;                   /* the frame being put together */
    size_t flen;
    uint32_t left;                    /* its buffers still to come */
    uint16_t start;                   /* the used entry it starts at */
} guest;

static uint16_t *avail_ring(guest *g) { return (uint16_t *)(g->mem + AVAIL_OFF); }
static uint16_t *used_hdr(guest *g) { return (uint16_t *)(g->mem + USED_OFF); }
static struct vring_used_elem *used_ring(guest *g)
{
    return (struct vring_used_elem *)(g->mem + USED_OFF + 4);
}

static void make_available(guest *g, uint16_t chain)
{
    uint16_t *a = avail_ring(g);
    a[2 + g->avail_idx % g->num] = (uint16_t)(chain * g->per_chain);
    g->out[chain] = 1;
    g->avail_idx++;
    __atomic_store_n(&a[1], g->avail_idx, __ATOMIC_RELEASE);
}

static int guest_init(guest *g, uint8_t mode)
{
    static const struct { uint16_t chains, per_chain; uint32_t buf; int mrg; } modes[4] = {
        { 64, 1, 1526, 1 }, { 64, 1, 4096, 1 }, { 8, 1, 65562, 0 }, { 64, 2, 2048, 1 } };
    g->chains = modes[mode].chains;
    g->per_chain = modes[mode].per_chain;
    g->buf = modes[mode].buf;
    g->mrg = modes[mode].mrg;
    g->num = (uint16_t)(g->chains * g->per_chain);
    g->size = BUF_OFF + (size_t)g->chains * g->buf;
    g->mem = calloc(1, g->size);
    g->frame = malloc(RELAY_FRAME_MAX + 64);
    if (!g->mem || !g->frame)
        return -1;
    struct vring_desc *desc = (struct vring_desc *)(g->mem + DESC_OFF);
    uint32_t part = g->buf / g->per_chain;
    for (uint16_t c = 0; c < g->chains; c++)
        for (uint16_t j = 0; j < g->per_chain; j++) {
            uint16_t i = (uint16_t)(c * g->per_chain + j);
            int last = j + 1 == g->per_chain;
            desc[i].addr = GPA + BUF_OFF + (uint64_t)c * g->buf + (uint64_t)j * part;
            desc[i].len = last ? g->buf - part * j : part;
            desc[i].flags = VRING_DESC_F_WRITE | (last ? 0 : VRING_DESC_F_NEXT);
            desc[i].next = last ? 0 : (uint16_t)(i + 1);
        }
    for (uint16_t c = 0; c < g->chains; c++)
        make_available(g, c);
    return 0;
}

/* The used entries since the last look: frames put together, chains to give back. */
static void guest_take(guest *g, delivered *d)
{
    uint16_t idx = __atomic_load_n(&used_hdr(g)[1], __ATOMIC_ACQUIRE);
    while (g->used_seen != idx) {
        struct vring_used_elem e = used_ring(g)[g->used_seen % g->num];
        g->used_seen++;
        if (e.id % g->per_chain || e.id >= g->num)
            FAIL("used entry names descriptor %u, not the head of a chain", e.id);
        uint16_t c = (uint16_t)(e.id / g->per_chain);
        if (!g->out[c])
            FAIL("chain %u used while the guest had it", c);
        g->out[c] = 0;
        if (e.len > g->buf)
            FAIL("chain %u of %u bytes used for %u", c, g->buf, e.len);
        const uint8_t *b = g->mem + BUF_OFF + (size_t)c * g->buf;
        size_t from = 0;
        if (g->left == 0) {                        /* a frame's first buffer: its header */
            if (e.len < VU_NET_HDR)
                FAIL("a first buffer of %u bytes (no room for the header)", e.len);
            uint32_t nb = (uint32_t)b[10] | (uint32_t)b[11] << 8;
            if (nb == 0 || nb > g->chains || (!g->mrg && nb != 1))
                FAIL("num_buffers %u (%u chains, mergeable %d)", nb, g->chains, g->mrg);
            g->left = nb;
            g->flen = 0;
            g->start = (uint16_t)(g->used_seen - 1);
            from = VU_NET_HDR;
        }
        if (g->flen + (e.len - from) > RELAY_FRAME_MAX)
            FAIL("a frame longer than %d bytes in the guest's buffers", RELAY_FRAME_MAX);
        memcpy(g->frame + g->flen, b + from, e.len - from);
        g->flen += e.len - from;
        if (--g->left == 0)
            deliver(d, g->frame, g->flen, g->start);
        g->give[g->ngive++] = c;
    }
}

static void guest_give(guest *g, uint32_t k)
{
    uint32_t n = k < g->ngive ? k : g->ngive;
    for (uint32_t i = 0; i < n; i++)
        make_available(g, g->give[i]);
    memmove(g->give, g->give + n, (g->ngive - n) * sizeof g->give[0]);
    g->ngive -= n;
}

/* ------------------------------------------------------------ the port */

static relay_vhost *port(guest *g, int data_fd, int offload)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/stdpkt-fuzz-pcap_rx-%d.sock", (int)getpid());
    unlink(path);
    relay_vhost *v = relay_vhost_new(path, data_fd, 65535, (const uint8_t *)"\x02\0\0\0\0\1", offload);
    if (v == NULL)
        FAIL("relay_vhost_new: %s", strerror(errno));
    unlink(path);                               /* no guest connects: nothing left on an abort */
    v->cfd = eventfd(0, EFD_CLOEXEC);           /* "a guest is connected" (closed at free) */
    v->acked = BIT(F_VERSION_1) | (g->mrg ? BIT(F_MRG_RXBUF) : 0) |
               (offload ? BIT(F_GUEST_CSUM) | BIT(F_GUEST_TSO4) | BIT(F_GUEST_TSO6) : 0);
    v->mem.n = 1;
    v->mem.r[0] = (vu_region){ .gpa = GPA, .size = g->size, .uva = GPA, .host = g->mem };
    v->q[0] = (vu_queue){ .num = g->num, .desc_addr = GPA + DESC_OFF, .avail_addr = GPA + AVAIL_OFF,
                          .used_addr = GPA + USED_OFF, .call = -1, .err = -1, .enabled = 1 };
    v->q[1] = (vu_queue){ .num = 1, .desc_addr = GPA + TXQ_OFF, .avail_addr = GPA + TXQ_OFF + 0x100,
                          .used_addr = GPA + TXQ_OFF + 0x200, .call = -1, .err = -1, .enabled = 1 };
    v->q[0].kick = eventfd(0, EFD_CLOEXEC);
    v->q[1].kick = eventfd(0, EFD_CLOEXEC);
    if (v->cfd < 0 || v->q[0].kick < 0 || v->q[1].kick < 0)
        FAIL("eventfd: %s", strerror(errno));
    if (vq_map(&v->q[0], &v->mem) != 0 || vq_map(&v->q[1], &v->mem) != 0)
        FAIL("the guest's rings did not map");
    return v;
}

/* ------------------------------------------------------------ the harness */

static void feed(int fd, const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            FAIL("the pipe took %zu of %zu bytes: %s", off, n, strerror(errno));
        off += (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    const uint8_t *stream = data + 1;
    size_t slen = size - 1;
    int trace = flags & 4, offload = !!(flags & 8), two_parts = flags & 128;

    int pp[2], sp[2];
    if (pipe2(pp, O_CLOEXEC | O_NONBLOCK) < 0)
        FAIL("pipe: %s", strerror(errno));
    if (fcntl(pp[1], F_SETPIPE_SZ, 1 << 20) < (int)slen) {
        close(pp[0]);                               /* more than the pipe holds: not run */
        close(pp[1]);
        return 0;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        FAIL("socketpair: %s", strerror(errno));

    guest g;
    memset(&g, 0, sizeof g);
    if (guest_init(&g, flags & 3) < 0)
        FAIL("out of memory for the guest");
    g.per_step = 1 + (flags >> 4 & 7);
    relay_vhost *v = port(&g, sp[1], offload);

    relay_stats st;
    memset(&st, 0, sizeof st);
    relay *r = relay_new(&st, trace ? 8 : 0, trace ? 96 : 0);
    if (r == NULL)
        FAIL("relay_new failed");
    int rc = relay_open(r, pp[0], RELAY_KIND_PCAP, sp[0], RELAY_KIND_SOCKET, 0);
    if (rc != 0)
        FAIL("relay_open: %d", rc);
    close(pp[0]);
    close(sp[0]);
    if (relay_set_vhost_dst(r, v) != 0)
        FAIL("relay_set_vhost_dst refused a socket destination");
    r->direct = 2;                                  /* the direct receive path */

    size_t first = two_parts ? slen / 2 : slen;
    feed(pp[1], stream, first);
    if (!two_parts) {
        close(pp[1]);
        pp[1] = -1;
    }

    /* large: static, emptied for each input */
    static delivered ring_d, d;
    static drainer dr;
    free(ring_d.buf);
    free(dr.d.buf);
    free(d.buf);
    memset(&ring_d, 0, sizeof ring_d);
    memset(&dr, 0, sizeof dr);
    memset(&d, 0, sizeof d);
    dr.fd = sp[1];
    dr.used_idx = &used_hdr(&g)[1];
    pthread_t dt;
    pthread_create(&dt, NULL, drain_main, &dr);

    sigset_t old;
    rl_block_sigpipe(&old);
    int res = rl_begin(r), steps = 0, idle = 0;
    while (res == 0) {
        if (++steps > MAX_STEPS)
            FAIL("no end after %d steps", MAX_STEPS);
        res = rl_step(r, &idle);
        guest_take(&g, &ring_d);
        guest_give(&g, g.per_step);
        if (res == 0 && idle) {
            if (pp[1] >= 0) {                       /* the first part is read: the rest */
                feed(pp[1], stream + first, slen - first);
                close(pp[1]);
                pp[1] = -1;
            } else {
                usleep(100);                        /* a frame waits for the socket's drain */
            }
        }
    }
    rl_finish(r, res);
    rl_restore_sigpipe(&old);
    if (pp[1] >= 0)
        close(pp[1]);
    __atomic_store_n(&dr.stop, 1, __ATOMIC_RELEASE);
    pthread_join(dt, NULL);
    guest_take(&g, &ring_d);
    merge(&ring_d, &dr.d, &d);

    if (res != RELAY_EOF && res != RELAY_BAD_STREAM) {
        char err[400];
        relay_last_error(r, err, sizeof err);
        FAIL("the relay ended with %d (%s)", res, err);
    }
    if (g.left)
        FAIL("a frame left with %u of its buffers to come", g.left);
    if (d.frames != st.frames || d.len != st.bytes)
        FAIL("delivered %llu frames / %zu bytes, counters say %llu / %llu",
             (unsigned long long)d.frames, d.len, (unsigned long long)st.frames,
             (unsigned long long)st.bytes);
    if (st.drops)
        FAIL("%llu drops with a socket behind the ring", (unsigned long long)st.drops);

    uint8_t *expect = malloc(slen + 1);
    static uint32_t lens[MAX_FRAMES];
    size_t elen;
    uint64_t nexp;
    if (expect && strict_parse(stream, slen, expect, &elen, &nexp, lens, MAX_FRAMES)) {
        if (res != RELAY_EOF || st.malformed || st.skipped_bytes)
            FAIL("well-formed stream (%llu frames): result %d, malformed %llu, skipped %llu",
                 (unsigned long long)nexp, res, (unsigned long long)st.malformed,
                 (unsigned long long)st.skipped_bytes);
        if (nexp != d.frames || elen != d.len)
            FAIL("well-formed stream of %llu frames / %zu bytes delivered as %llu / %zu",
                 (unsigned long long)nexp, elen, (unsigned long long)d.frames, d.len);
        for (uint64_t i = 0; i < nexp && i < MAX_FRAMES; i++)
            if (lens[i] != d.lens[i])
                FAIL("frame %llu: %u bytes delivered as %u", (unsigned long long)i, lens[i],
                     d.lens[i]);
        if (!offload && d.len && memcmp(expect, d.buf, d.len) != 0)
            FAIL("a well-formed stream's frames delivered with other bytes");
    }
    free(expect);

    relay_free(r);
    v->mem.n = 0;                                   /* the guest's memory is ours, not mapped */
    relay_vhost_free(v);
    close(sp[1]);
    free(g.mem);
    free(g.frame);
    return 0;
}
