/*
 * vhost_proto.c - libFuzzer harness of the vhost-user protocol a port reads from its
 * guest's kernel (stdpkt_lab/relay/vhost_proto.c: messages, their descriptors, the
 * memory table, the rings' addresses, features, configuration).
 *
 * The harness plays the front end on a socketpair whose other end is the port's
 * connection; the port's thread is not started, the harness calls vh_handle() itself
 * with both locks held, as the thread does.
 *
 * Input: byte 0 bit 0 turns the port's offloads on.  Then messages, each:
 *   1 control byte: bits 0-2 how many descriptors go with it (0-7), bit 3 eventfds
 *     (else 64 KiB memfds, the guest's "memory"), bit 4 raw: the size field is sent as
 *     given, so the stream may lose its framing (from then on the rest of the input is
 *     sent as it is, without descriptors, and read until the stream ends);
 *   12 header bytes (request, flags, size, little-endian);
 *   the payload: size bytes (framed: size mod 513, at most what is left).
 *
 * What must hold, besides ASan/UBSan:
 *   - a framed message's replies are whole, echo its request, carry the reply flag,
 *     and a GET_* request that was handled gets exactly one;
 *   - a query (GET_FEATURES, GET_CONFIG and the like) leaves the transmit grant's
 *     generation alone (held spliced frames survive it); any other handled request
 *     starts a new one (a relay reading the old queue lets go);
 *   - every ring a queue has mapped lies inside one region of the memory table, whose
 *     mapping is readable to its end (a region past its descriptor's end is refused,
 *     not left to fault);
 *   - no descriptor is left open once the port is freed.
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAIL(...) do { fprintf(stderr, "vhost_proto invariant: " __VA_ARGS__); fputc('\n', stderr); \
                       abort(); } while (0)

#define MEMFD_SIZE 65536
#define MAX_PAYLOAD 512

/* requests that only ask or set what no queue reader relies on (vhost_proto.c) */
static int is_query(uint32_t request)
{
    switch (request) {
    case 1: case 3: case 6: case 7: case 13: case 14: case 15: case 16: case 17: case 21:
    case 24: case 25:
        return 1;
    default:
        return 0;
    }
}

static int is_get(uint32_t request)
{
    return request == 1 || request == 11 || request == 15 || request == 17 || request == 24;
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads every reply the port wrote; checks them against the request when framed. */
static void read_replies(int fd, int framed, uint32_t request, int handled)
{
    static uint8_t buf[1 << 16];
    size_t have = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + have, sizeof buf - have, MSG_DONTWAIT);
        if (k <= 0)
            break;
        have += (size_t)k;
    }
    if (!framed)
        return;
    size_t at = 0;
    int replies = 0;
    while (at < have) {
        if (have - at < 12)
            FAIL("a reply cut short: %zu bytes", have - at);
        uint32_t rq = le32(buf + at), fl = le32(buf + at + 4), sz = le32(buf + at + 8);
        if (rq != request)
            FAIL("a reply to request %u for request %u", rq, request);
        if (!(fl & 4))
            FAIL("a reply without the reply flag: %#x", fl);
        if (sz > MAX_PAYLOAD + 12 || have - at - 12 < sz)
            FAIL("a reply of %u bytes with %zu there", sz, have - at - 12);
        at += 12 + sz;
        replies++;
    }
    if (replies > 1)
        FAIL("%d replies to request %u", replies, request);
    if (handled && is_get(request) && replies != 1)
        FAIL("request %u handled with %d replies", request, replies);
}

static const vu_region *region_of(const vu_mem *m, const void *p, uint64_t len)
{
    for (uint32_t i = 0; i < m->n; i++) {
        const vu_region *r = &m->r[i];
        const uint8_t *b = p;
        if (r->host && b >= r->host && (uint64_t)(b - r->host) <= r->size &&
            len <= r->size - (uint64_t)(b - r->host))
            return r;
    }
    return NULL;
}

static void check_memory(relay_vhost *v)
{
    if (v->mem.n > VU_MAX_REGIONS)
        FAIL("%u regions", v->mem.n);
    volatile uint8_t sink = 0;
    for (uint32_t i = 0; i < v->mem.n; i++) {
        const vu_region *r = &v->mem.r[i];
        if (!r->host)
            FAIL("region %u counted but not mapped", i);
        if (r->size)
            sink ^= r->host[0] ^ r->host[r->size - 1];   /* a fault here: past the file */
    }
    for (int i = 0; i < 2; i++) {
        vu_queue *q = &v->q[i];
        if (!q->desc)
            continue;
        if (!region_of(&v->mem, q->desc, 16ull * q->num) ||
            !region_of(&v->mem, q->avail, 4 + 2ull * q->num + 2) ||
            !region_of(&v->mem, q->used_hdr, 4 + 8ull * q->num + 2))
            FAIL("queue %d (%u entries) mapped outside the memory table", i, q->num);
        (void)vq_avail(q);
    }
    (void)sink;
}

static int make_fd(int eventfds)
{
    if (eventfds)
        return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int fd = memfd_create("stdpkt-fuzz-guest", MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, MEMFD_SIZE) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends one message with nfds descriptors; 0 or -1. */
static int send_msg(int fd, const uint8_t *bytes, size_t len, int nfds, int eventfds)
{
    int fds[8];
    char cbuf[CMSG_SPACE(sizeof fds)];
    struct iovec iov = { (void *)bytes, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    int made = 0;
    for (; made < nfds; made++)
        if ((fds[made] = make_fd(eventfds)) < 0)
            break;
    if (made) {
        memset(cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)made);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)made);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)made);
    }
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
    for (int i = 0; i < made; i++)
        close(fds[i]);                /* in flight, the port's once read */
    return w == (ssize_t)len ? 0 : -1;
}

static int handle(relay_vhost *v)
{
    pthread_mutex_lock(&v->tx_lock);
    pthread_mutex_lock(&v->rx_lock);
    int rc = vh_handle(v);
    pthread_mutex_unlock(&v->rx_lock);
    pthread_mutex_unlock(&v->tx_lock);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384)
        return 0;
    int before = open_fds();
    int s[2], d[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) < 0)
        return 0;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, d) < 0) {
        close(s[0]);
        close(s[1]);
        return 0;
    }
    char path[96];
    snprintf(path, sizeof path, "/tmp/stdpkt-fuzz-vhost_proto-%d.sock", (int)getpid());
    unlink(path);
    const uint8_t mac[6] = { 2, 0, 0, 0, 0, 1 };
    relay_vhost *v = relay_vhost_new(path, d[1], 1500, mac, data[0] & 1);
    unlink(path);                     /* nobody connects: the harness is the guest */
    if (!v)
        goto out;
    v->cfd = s[1];
    s[1] = -1;
    size_t at = 1;
    uint8_t m[12 + MAX_PAYLOAD];
    while (at + 13 <= size) {
        uint8_t c = data[at++];
        memcpy(m, data + at, 12);
        at += 12;
        uint32_t request = le32(m), sz = le32(m + 8);
        if (c & 16) {                 /* raw: the rest as it is, read to the end */
            if (send_msg(s[0], m, 12, 0, 0) < 0 ||
                (size > at && send_msg(s[0], data + at, size - at, 0, 0) < 0))
                break;
            shutdown(s[0], SHUT_WR);
            for (size_t k = 0; k <= (size - at) / 12 + 1; k++) {
                int rc = handle(v);
                read_replies(s[0], 0, 0, 0);
                if (rc < 0)
                    break;
                check_memory(v);
            }
            break;
        }
        sz %= MAX_PAYLOAD + 1;
        if (sz > size - at)
            sz = (uint32_t)(size - at);
        m[8] = (uint8_t)sz;
        m[9] = (uint8_t)(sz >> 8);
        m[10] = m[11] = 0;
        memcpy(m + 12, data + at, sz);
        at += sz;
        if (send_msg(s[0], m, 12 + sz, c & 7, !!(c & 8)) < 0)
            break;
        uint32_t gen = v->tx_gen;
        int rc = handle(v);
        read_replies(s[0], 1, request, rc == 0);
        if (rc < 0)
            break;                    /* the port's thread would end the guest here */
        if (is_query(request) && v->tx_gen != gen)
            FAIL("query %u ended the transmit grant", request);
        if (!is_query(request) && v->tx_gen == gen)
            FAIL("request %u handled without ending the transmit grant", request);
        check_memory(v);
    }
    relay_vhost_free(v);
out:
    if (s[1] >= 0)
        close(s[1]);
    close(s[0]);
    close(d[0]);
    close(d[1]);
    int after = open_fds();
    if (before >= 0 && after != before)
        FAIL("%d descriptors before, %d after", before, after);
    return 0;
}
