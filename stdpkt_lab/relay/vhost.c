/*
 * vhost.c - a vhost-user net back end per port (vhost.h; API in relay.h).
 *
 * One thread per port: it listens on the port's socket path, accepts the
 * guest kernel (UML's virtio_uml, the front end), answers the protocol, maps
 * the guest's memory, and then moves frames between the two virtqueues and a
 * SOCK_SEQPACKET socket (the port's host end, which relays serve):
 *
 *   transmit queue (1) -> sendmmsg() straight from guest buffers -> socket
 *   socket -> recvmsg() straight into guest receive buffers -> receive queue (0)
 *
 * With offload (the default) the guest may send partial checksums and TCP
 * super-frames (TSO); the receiving port re-creates the virtio-net header from
 * each frame (offload.c).  relay_vhost_set_finish() makes the transmit side
 * complete checksums and segment super-frames in software, for a peer that
 * cannot take them (a vector port).
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
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

void vh_err(relay_vhost *v, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&v->err_lock);
    va_start(ap, fmt);
    vsnprintf(v->err, sizeof v->err, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&v->err_lock);
}

/* ------------------------------------------------------------ memory, queues */

static void unmap_all(relay_vhost *v)
{
    for (uint32_t i = 0; i < v->mem.n; i++)
        if (v->mem.r[i].map_base)
            munmap(v->mem.r[i].map_base, v->mem.r[i].map_len);
    memset(&v->mem, 0, sizeof v->mem);
    for (int i = 0; i < 2; i++) {
        v->q[i].desc = NULL;
        v->q[i].avail = v->q[i].used_hdr = NULL;
        v->q[i].used = NULL;
    }
}

static void close_queue(vu_queue *q)
{
    if (q->kick >= 0)
        close(q->kick);
    if (q->call >= 0)
        close(q->call);
    if (q->err >= 0)
        close(q->err);
    memset(q, 0, sizeof *q);
    q->kick = q->call = q->err = -1;
}

static int ready(relay_vhost *v)
{
    for (int i = 0; i < 2; i++)
        if (!v->q[i].desc || !v->q[i].enabled || v->q[i].kick < 0)
            return 0;
    return 1;
}

/* The guest went away (or broke the protocol): its port's socket ends, as a
 * vector port's does when its kernel exits. */
static void guest_gone(relay_vhost *v, const char *why)
{
    if (v->cfd >= 0)
        close(v->cfd);
    v->cfd = -1;
    if (v->slave >= 0)
        close(v->slave);
    v->slave = -1;
    unmap_all(v);
    close_queue(&v->q[0]);
    close_queue(&v->q[1]);
    if (why)
        vh_err(v, "%s", why);
    if (!v->guest_gone && v->data >= 0)
        shutdown(v->data, SHUT_RDWR);
    v->guest_gone = 1;
    __atomic_store_n(&v->st.connected, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&v->st.ready, 0, __ATOMIC_RELAXED);
}

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
    unmap_all(v);
    for (uint32_t i = 0; i < n; i++) {
        vu_region *r = &v->mem.r[i];
        memcpy(&r->gpa, m->payload + 8 + 32 * i, 8);
        memcpy(&r->size, m->payload + 16 + 32 * i, 8);
        memcpy(&r->uva, m->payload + 24 + 32 * i, 8);
        memcpy(&r->mmap_offset, m->payload + 32 + 32 * i, 8);
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

static int handle(relay_vhost *v)
{
    msg m;
    int fds[VU_MAX_REGIONS], nfds, ok = 0;
    if (recv_msg(v, &m, fds, &nfds) < 0)
        return -1;
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
    int r = ready(v);
    if (r && !__atomic_load_n(&v->st.ready, __ATOMIC_RELAXED)) {
        vq_notify_on(&v->q[0]);
        vq_notify_on(&v->q[1]);
    }
    __atomic_store_n(&v->st.ready, (uint32_t)r, __ATOMIC_RELAXED);
    return 0;
}

/* ------------------------------------------------------------ the thread */

static void drain(int fd)
{
    uint64_t x;
    while (read(fd, &x, sizeof x) > 0)
        ;
}

static void *loop(void *arg)
{
    relay_vhost *v = arg;
    for (;;) {
        struct pollfd p[7];
        int n = 0, i_l = -1, i_c = -1, i_tx = -1, i_rx = -1, i_d = -1;
        p[n++] = (struct pollfd){ v->stopfd, POLLIN, 0 };
        p[n++] = (struct pollfd){ v->wakefd, POLLIN, 0 };
        if (v->cfd < 0 && v->lfd >= 0 && !v->guest_gone) {
            i_l = n;
            p[n++] = (struct pollfd){ v->lfd, POLLIN, 0 };
        }
        if (v->cfd >= 0) {
            i_c = n;
            p[n++] = (struct pollfd){ v->cfd, POLLIN, 0 };
        }
        if (v->cfd >= 0 && ready(v)) {
            if (!v->tx_blocked) {
                i_tx = n;
                p[n++] = (struct pollfd){ v->q[1].kick, POLLIN, 0 };
            }
            if (v->rx_starved) {
                i_rx = n;
                p[n++] = (struct pollfd){ v->q[0].kick, POLLIN, 0 };
            }
            short ev = (short)((v->tx_blocked ? POLLOUT : 0) |
                               (!v->rx_starved && !v->data_eof ? POLLIN : 0));
            if (ev) {
                i_d = n;
                p[n++] = (struct pollfd){ v->data, ev, 0 };
            }
        }
        if (poll(p, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            vh_err(v, "poll: %s", strerror(errno));
            break;
        }
        if (p[0].revents)
            break;
        if (p[1].revents) {
            drain(v->wakefd);
            if (__atomic_load_n(&v->detach, __ATOMIC_RELAXED) && v->slave >= 0) {
                close(v->slave);             /* the guest sees the connection end and removes */
                v->slave = -1;               /* the device in a worker (we still answer it) */
            }
        }
        if (i_l >= 0 && p[i_l].revents) {
            v->cfd = accept4(v->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (v->cfd >= 0) {
                close(v->lfd);               /* one guest per port */
                v->lfd = -1;
                unlink(v->path);
                __atomic_store_n(&v->st.connected, 1, __ATOMIC_RELAXED);
            }
            continue;
        }
        if (i_c >= 0 && p[i_c].revents) {
            if (handle(v) < 0) {
                guest_gone(v, NULL);
                continue;
            }
        }
        if (v->cfd < 0 || !ready(v))
            continue;
        if (i_tx >= 0 && p[i_tx].revents)
            drain(v->q[1].kick);
        if (i_rx >= 0 && p[i_rx].revents) {
            drain(v->q[0].kick);
            v->rx_starved = 0;
        }
        if (i_d >= 0 && (p[i_d].revents & POLLOUT))
            v->tx_blocked = 0;
        if (i_d >= 0 && (p[i_d].revents & (POLLHUP | POLLERR)) && !(p[i_d].revents & POLLIN))
            v->data_eof = 1;
        if (!v->tx_blocked)
            vh_do_tx(v);
        if (!v->rx_starved)
            vh_do_rx(v);
    }
    return NULL;
}

/* ------------------------------------------------------------ API */

relay_vhost *relay_vhost_new(const char *path, int data_fd, uint32_t mtu, const uint8_t *mac,
                             int offload)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (path == NULL || strlen(path) >= sizeof sa.sun_path || mtu < 68 || mtu > 65535)
        return NULL;
    relay_vhost *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    pthread_mutex_init(&v->err_lock, NULL);
    v->lfd = v->cfd = v->data = v->stopfd = v->slave = v->wakefd = -1;
    v->q[0].kick = v->q[0].call = v->q[0].err = -1;
    v->q[1].kick = v->q[1].call = v->q[1].err = -1;
    snprintf(v->path, sizeof v->path, "%s", path);
    v->mtu = mtu;
    if (mac)
        memcpy(v->mac, mac, 6);
    v->offload = !!offload;
    const char *sig = getenv("STDPKT_VHOST_RX_SIGNAL");
    v->rx_signal = sig && atoi(sig) > 0 && atoi(sig) <= 256 ? (uint32_t)atoi(sig) : 32;
    v->offered = BIT(F_MTU) | BIT(F_MAC) | BIT(F_MRG_RXBUF) | BIT(F_INDIRECT) |
                 BIT(F_PROTOCOL) | BIT(F_VERSION_1);
    if (offload)
        v->offered |= BIT(F_CSUM) | BIT(F_GUEST_CSUM) | BIT(F_GUEST_TSO4) | BIT(F_GUEST_TSO6) |
                      BIT(F_GUEST_ECN) | BIT(F_HOST_TSO4) | BIT(F_HOST_TSO6);
    v->bounce = malloc(RELAY_FRAME_MAX + 64);
    v->scratch = malloc(RELAY_FRAME_MAX + 64);
    v->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    v->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    v->data = fcntl(data_fd, F_DUPFD_CLOEXEC, 3);
    v->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (!v->bounce || !v->scratch || v->stopfd < 0 || v->wakefd < 0 || v->data < 0 || v->lfd < 0 ||
        bind(v->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(v->lfd, 1) < 0) {
        int e = errno;
        relay_vhost_free(v);
        errno = e;
        return NULL;
    }
    return v;
}

int relay_vhost_start(relay_vhost *v)
{
    if (v->started)
        return -EALREADY;
    int rc = pthread_create(&v->thread, NULL, loop, v);
    if (rc)
        return -rc;
    v->started = 1;
    return 0;
}

void relay_vhost_set_finish(relay_vhost *v, int on)
{
    __atomic_store_n(&v->finish, !!on, __ATOMIC_RELAXED);
}

void relay_vhost_detach(relay_vhost *v)
{
    uint64_t one = 1;
    __atomic_store_n(&v->detach, 1, __ATOMIC_RELAXED);
    ssize_t w = write(v->wakefd, &one, sizeof one);
    (void)w;
}

void relay_vhost_get_stats(relay_vhost *v, relay_vhost_stats *out)
{
    memcpy(out, &v->st, sizeof *out);
}

size_t relay_vhost_last_error(relay_vhost *v, char *buf, size_t len)
{
    if (len == 0)
        return 0;
    pthread_mutex_lock(&v->err_lock);
    size_t n = strnlen(v->err, sizeof v->err);
    if (n >= len)
        n = len - 1;
    memcpy(buf, v->err, n);
    buf[n] = 0;
    pthread_mutex_unlock(&v->err_lock);
    return n;
}

void relay_vhost_free(relay_vhost *v)
{
    if (!v)
        return;
    if (v->started) {
        uint64_t one = 1;
        ssize_t w = write(v->stopfd, &one, sizeof one);
        (void)w;
        pthread_join(v->thread, NULL);
    }
    if (v->cfd >= 0)
        close(v->cfd);
    v->cfd = -1;
    if (v->slave >= 0)
        close(v->slave);
    v->slave = -1;
    unmap_all(v);
    close_queue(&v->q[0]);
    close_queue(&v->q[1]);
    if (v->lfd >= 0) {
        close(v->lfd);
        unlink(v->path);
    }
    if (v->data >= 0)
        close(v->data);
    if (v->stopfd >= 0)
        close(v->stopfd);
    if (v->wakefd >= 0)
        close(v->wakefd);
    if (v->slave >= 0)
        close(v->slave);
    free(v->bounce);
    free(v->scratch);
    pthread_mutex_destroy(&v->err_lock);
    free(v);
}
