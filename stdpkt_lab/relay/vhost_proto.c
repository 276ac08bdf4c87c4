/*
 * vhost_proto.c - the vhost-user protocol of a port (vhost.h): reading the front
 * end's messages and their descriptors, the memory table, the rings' set-up,
 * features and configuration (MAC, MTU).  Run by the port's thread (vhost.c).
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* protocol */
enum {
    GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, RESET_OWNER = 4, SET_MEM_TABLE = 5,
    SET_LOG_BASE = 6, SET_LOG_FD = 7, SET_VRING_NUM = 8, SET_VRING_ADDR = 9,
    SET_VRING_BASE = 10, GET_VRING_BASE = 11, SET_VRING_KICK = 12, SET_VRING_CALL = 13,
    SET_VRING_ERR = 14, GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16,
    GET_QUEUE_NUM = 17, SET_VRING_ENABLE = 18, SET_SLAVE_REQ_FD = 21, GET_CONFIG = 24,
    SET_CONFIG = 25,
};
#define FLAG_VERSION 1u
#define FLAG_REPLY 4u
#define FLAG_NEED_REPLY 8u
#define VRING_NOFD 0x100u
#define MAX_PAYLOAD 512


typedef struct msg {
    uint32_t request, flags, size;
    uint8_t payload[MAX_PAYLOAD];
} __attribute__((packed)) msg;

/* ------------------------------------------------------------ messages */

static int reply(relay_vhost *v, msg *m, const void *payload, uint32_t size)
{
    msg r;
    r.request = m->request;
    r.flags = FLAG_VERSION | FLAG_REPLY;
    r.size = size;
    memcpy(r.payload, payload, size);
    size_t len = 12 + size;
    const uint8_t *p = (const uint8_t *)&r;
    while (len) {
        ssize_t w = send(v->cfd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int reply_u64(relay_vhost *v, msg *m, uint64_t x)
{
    return reply(v, m, &x, 8);
}

static int read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t k = recv(fd, p, len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Reads one message and its descriptors (up to VU_MAX_REGIONS).  0, or -1: gone. */
static int recv_msg(relay_vhost *v, msg *m, int *fds, int *nfds)
{
    char cbuf[CMSG_SPACE(sizeof(int) * VU_MAX_REGIONS)];
    struct iovec iov = { m, 12 };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf };
    ssize_t k;
    *nfds = 0;
    do
        k = recvmsg(v->cfd, &mh, MSG_CMSG_CLOEXEC);
    while (k < 0 && errno == EINTR);
    if (k <= 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (*nfds < VU_MAX_REGIONS)
                    fds[(*nfds)++] = fd;
                else
                    close(fd);
            }
        }
    }
    if (k < 12 && read_full(v->cfd, (uint8_t *)m + k, (size_t)(12 - k)) < 0)
        return -1;
    if (m->size > MAX_PAYLOAD) {
        vh_err(v, "vhost-user message %u with a payload of %u bytes", m->request, m->size);
        return -1;
    }
    return m->size ? read_full(v->cfd, m->payload, m->size) : 0;
}

static int set_mem_table(relay_vhost *v, msg *m, int *fds, int nfds)
{
    uint32_t n;
    memcpy(&n, m->payload, 4);
    if (n == 0 || n > VU_MAX_REGIONS || (int)n != nfds || m->size < 8 + 32 * n) {
        vh_err(v, "memory table with %u regions and %d descriptors", n, nfds);
        return -1;
    }
    vh_unmap_all(v);
    for (uint32_t i = 0; i < n; i++) {
        vu_region *r = &v->mem.r[i];
        memcpy(&r->gpa, m->payload + 8 + 32 * i, 8);
        memcpy(&r->size, m->payload + 16 + 32 * i, 8);
        memcpy(&r->uva, m->payload + 24 + 32 * i, 8);
        memcpy(&r->mmap_offset, m->payload + 32 + 32 * i, 8);
        struct stat st = { 0 };
        if (fstat(fds[i], &st) < 0 || st.st_size < 0 || r->size == 0 ||
            r->mmap_offset > (uint64_t)st.st_size || r->size > (uint64_t)st.st_size - r->mmap_offset) {
            vh_err(v, "memory region %u: %llu bytes at offset %llu of a %lld-byte file", i,
                   (unsigned long long)r->size, (unsigned long long)r->mmap_offset,
                   (long long)st.st_size);   /* mapped, its end would fault when touched */
            v->mem.n = i;
            return -1;
        }
        long page = sysconf(_SC_PAGESIZE);
        uint64_t lead = r->mmap_offset % (uint64_t)page;
        r->map_len = (size_t)(r->size + lead);
        void *p = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i],
                       (off_t)(r->mmap_offset - lead));
        if (p == MAP_FAILED) {
            vh_err(v, "mapping the guest's memory (%llu bytes): %s",
                   (unsigned long long)r->size, strerror(errno));
            r->host = NULL;
            v->mem.n = i;
            return -1;
        }
        r->host = (uint8_t *)p + lead;
        r->map_base = p;
        v->mem.n = i + 1;
    }
    for (int i = 0; i < 2; i++)
        if (v->q[i].num && v->q[i].desc_addr)
            (void)vq_map(&v->q[i], &v->mem);
    return 0;
}

/* Whether a request may change the queues, the memory or the features a relay reading
 * them relies on.  Only those end its grant (vh_revoke): a grant ended forgets the
 * transmit frames a relay still holds spliced in a pipe (vhost_splice.c), so a query
 * (GET_CONFIG and the like) must not end it. */
static int changes_queues(uint32_t request)
{
    switch (request) {
    case GET_FEATURES:
    case GET_PROTOCOL_FEATURES:
    case SET_PROTOCOL_FEATURES:
    case GET_QUEUE_NUM:
    case GET_CONFIG:
    case SET_CONFIG:
    case SET_LOG_BASE:
    case SET_LOG_FD:
    case SET_SLAVE_REQ_FD:
    case SET_VRING_CALL:               /* used only under the queue's lock (vq_signal) */
    case SET_VRING_ERR:
    case SET_OWNER:
        return 0;
    default:                           /* and any request we do not know */
        return 1;
    }
}

/* tx_lock and rx_lock held. */
int vh_handle(relay_vhost *v)
{
    msg m;
    int fds[VU_MAX_REGIONS], nfds, ok = 0;
    if (recv_msg(v, &m, fds, &nfds) < 0)
        return -1;                     /* the caller ends the grant */
    if (changes_queues(m.request))
        vh_revoke(v);
    uint32_t idx = 0, num = 0;
    uint64_t u = 0;
    if (m.size >= 8)
        memcpy(&u, m.payload, 8);
    if (m.size >= 4)
        memcpy(&idx, m.payload, 4);
    if (m.size >= 8)
        memcpy(&num, m.payload + 4, 4);
    int need_ack = !!(m.flags & FLAG_NEED_REPLY);   /* also on SET_PROTOCOL_FEATURES itself */
    if (getenv("STDPKT_VHOST_DEBUG"))
        fprintf(stderr, "vhost %s: request %u flags %#x size %u fds %d\n", v->path, m.request,
                m.flags, m.size, nfds);
    int replied = 0;
    switch (m.request) {
    case GET_FEATURES:
        replied = 1;
        ok = reply_u64(v, &m, v->offered) == 0 ? 0 : -1;
        if (ok < 0)
            return -1;
        break;
    case SET_FEATURES:
        v->acked = u;
        __atomic_store_n(&v->st.features, u, __ATOMIC_RELAXED);
        break;
    case SET_OWNER:
    case RESET_OWNER:
        break;
    case GET_PROTOCOL_FEATURES:
        replied = 1;
        if (reply_u64(v, &m, PF_OFFERED) < 0)
            return -1;
        break;
    case SET_PROTOCOL_FEATURES:
        v->proto = u & PF_OFFERED;
        break;
    case GET_QUEUE_NUM:
        replied = 1;
        if (reply_u64(v, &m, 1) < 0)
            return -1;
        break;
    case SET_MEM_TABLE:
        ok = set_mem_table(v, &m, fds, nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        nfds = 0;
        break;
    case SET_VRING_NUM:
        if (idx > 1 || num == 0 || num > VU_QUEUE_MAX || (num & (num - 1)))
            ok = -1;
        else
            v->q[idx].num = num;
        break;
    case SET_VRING_ADDR: {
        if (idx > 1 || m.size < 40) {
            ok = -1;
            break;
        }
        vu_queue *q = &v->q[idx];
        memcpy(&q->desc_addr, m.payload + 8, 8);
        memcpy(&q->used_addr, m.payload + 16, 8);
        memcpy(&q->avail_addr, m.payload + 24, 8);
        ok = vq_map(q, &v->mem) == 0 ? 0 : -1;
        if (ok < 0)
            vh_err(v, "queue %u: ring addresses outside the guest's memory", idx);
        break;
    }
    case SET_VRING_BASE:
        if (idx > 1)
            ok = -1;
        else
            v->q[idx].last_avail = v->q[idx].used_idx = (uint16_t)num;
        break;
    case GET_VRING_BASE: {
        replied = 1;
        uint32_t st[2] = { idx, idx <= 1 ? v->q[idx].last_avail : 0 };
        if (idx <= 1)
            v->q[idx].enabled = 0;
        if (reply(v, &m, st, 8) < 0)
            return -1;
        break;
    }
    case SET_VRING_KICK:
    case SET_VRING_CALL:
    case SET_VRING_ERR: {
        uint32_t qi = (uint32_t)(u & 0xff);
        int fd = (u & VRING_NOFD) || nfds < 1 ? -1 : fds[0];
        if (qi > 1) {
            ok = -1;
            break;
        }
        vu_queue *q = &v->q[qi];
        int *slot = m.request == SET_VRING_KICK ? &q->kick
                    : m.request == SET_VRING_CALL ? &q->call : &q->err;
        if (*slot >= 0)
            close(*slot);
        *slot = fd;
        if (fd >= 0) {
            fds[0] = -1;
            if (m.request == SET_VRING_KICK)
                (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        }
        if (m.request == SET_VRING_KICK && !(v->acked & BIT(F_PROTOCOL)))
            q->enabled = 1;
        break;
    }
    case SET_VRING_ENABLE:
        if (idx > 1)
            ok = -1;
        else
            v->q[idx].enabled = num != 0;
        break;
    case GET_CONFIG: {
        replied = 1;
        uint32_t off, size;
        memcpy(&off, m.payload, 4);
        memcpy(&size, m.payload + 4, 4);
        uint8_t cfg[64] = { 0 };
        memcpy(cfg, v->mac, 6);
        cfg[6] = 1;                          /* status: link up */
        cfg[8] = 1;                          /* max_virtqueue_pairs */
        cfg[10] = (uint8_t)v->mtu;
        cfg[11] = (uint8_t)(v->mtu >> 8);
        if (m.size < 12 || size > sizeof cfg || off > sizeof cfg - size || m.size < 12 + size) {
            m.size = 12;                     /* an empty answer: the front end gives up */
            memset(m.payload + 4, 0, 4);
            if (reply(v, &m, m.payload, 12) < 0)
                return -1;
            break;
        }
        memcpy(m.payload + 12, cfg + off, size);
        if (reply(v, &m, m.payload, 12 + size) < 0)
            return -1;
        break;
    }
    case SET_SLAVE_REQ_FD:             /* kept open, never written: we send no requests */
        if (v->slave >= 0)
            close(v->slave);
        v->slave = nfds ? fds[0] : -1;
        if (nfds)
            fds[0] = -1;
        break;
    case SET_CONFIG:
    case SET_LOG_BASE:
    case SET_LOG_FD:
        break;
    default:
        vh_err(v, "unknown vhost-user request %u (ignored)", m.request);
        ok = -1;
        break;
    }
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (need_ack && !replied && reply_u64(v, &m, ok == 0 ? 0 : 1) < 0)
        return -1;
    int r = vh_ready(v);
    if (r && !__atomic_load_n(&v->st.ready, __ATOMIC_RELAXED)) {
        vq_notify_on(&v->q[0]);
        vq_notify_on(&v->q[1]);
    }
    __atomic_store_n(&v->st.ready, (uint32_t)r, __ATOMIC_RELAXED);
    return 0;
}
