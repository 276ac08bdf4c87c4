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
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

void vh_unmap_all(relay_vhost *v)
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

void vh_close_queue(vu_queue *q)
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

int vh_ready(relay_vhost *v)
{
    for (int i = 0; i < 2; i++)
        if (!v->q[i].desc || !v->q[i].enabled || v->q[i].kick < 0)
            return 0;
    return 1;
}

/* Everything a connected guest gave us: its connection, slave channel, memory, queues. */
static void release_guest(relay_vhost *v)
{
    if (v->cfd >= 0)
        close(v->cfd);
    v->cfd = -1;
    if (v->slave >= 0)
        close(v->slave);
    v->slave = -1;
    vh_unmap_all(v);
    vh_close_queue(&v->q[0]);
    vh_close_queue(&v->q[1]);
}

/* The guest went away (or broke the protocol): its port's socket ends, as a
 * vector port's does when its kernel exits. */
static void guest_gone(relay_vhost *v, const char *why)
{
    release_guest(v);
    if (why)
        vh_err(v, "%s", why);
    if (!v->guest_gone && v->data >= 0)
        shutdown(v->data, SHUT_RDWR);
    v->guest_gone = 1;
    __atomic_store_n(&v->st.connected, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&v->st.ready, 0, __ATOMIC_RELAXED);
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
    prctl(PR_SET_NAME, "stdpkt-vhost");
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
        int owned = __atomic_load_n(&v->tx_owner, __ATOMIC_ACQUIRE) != NULL;
        if (v->cfd >= 0 && vh_ready(v)) {
            if (!v->tx_blocked && !owned) {   /* a relay reading the queue polls the kick */
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
            int c = accept4(v->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                pthread_mutex_lock(&v->tx_lock);
                pthread_mutex_lock(&v->rx_lock);
                v->cfd = c;
                pthread_mutex_unlock(&v->rx_lock);
                pthread_mutex_unlock(&v->tx_lock);
                close(v->lfd);               /* one guest per port */
                v->lfd = -1;
                unlink(v->path);
                __atomic_store_n(&v->st.connected, 1, __ATOMIC_RELAXED);
            }
            continue;
        }
        if (i_c >= 0 && p[i_c].revents) {
            /* a message that may change the queues or the memory a relay reads ends its
             * grant (vh_handle) */
            pthread_mutex_lock(&v->tx_lock);
            pthread_mutex_lock(&v->rx_lock);
            int gone = vh_handle(v) < 0;
            if (gone) {
                vh_revoke(v);
                guest_gone(v, NULL);
            }
            pthread_mutex_unlock(&v->rx_lock);
            pthread_mutex_unlock(&v->tx_lock);
            if (gone)
                continue;
        }
        if (v->cfd < 0 || !vh_ready(v))
            continue;
        if (i_tx >= 0 && p[i_tx].revents) {
            drain(v->q[1].kick);
            pthread_mutex_lock(&v->tx_lock);
            vh_pass_kick(v);                 /* claimed meanwhile: the relay must look */
            pthread_mutex_unlock(&v->tx_lock);
        }
        if (i_rx >= 0 && p[i_rx].revents) {
            drain(v->q[0].kick);
            v->rx_starved = 0;
        }
        if (i_d >= 0 && (p[i_d].revents & POLLOUT))
            v->tx_blocked = 0;
        if (i_d >= 0 && (p[i_d].revents & (POLLHUP | POLLERR)) && !(p[i_d].revents & POLLIN))
            v->data_eof = 1;
        if (!v->tx_blocked) {
            /* not under tx_lock: finishing may wait for room in the socket, which the
             * relay drains only if it can take the lock; tx_busy keeps it from claiming */
            pthread_mutex_lock(&v->tx_lock);
            int mine = v->tx_owner == NULL;
            v->tx_busy = mine;
            pthread_mutex_unlock(&v->tx_lock);
            if (mine) {
                vh_do_tx(v);
                pthread_mutex_lock(&v->tx_lock);
                v->tx_busy = 0;
                pthread_mutex_unlock(&v->tx_lock);
            }
        }
        if (!v->rx_starved) {
            pthread_mutex_lock(&v->rx_lock);
            vh_do_rx(v);
            pthread_mutex_unlock(&v->rx_lock);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ API */

relay_vhost *relay_vhost_new(const char *path, int data_fd, uint32_t mtu, const uint8_t *mac,
                             int offload)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (path == NULL || mtu < 68 || mtu > 65535) {
        errno = EINVAL;
        return NULL;
    }
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;   /* the caller binds through /proc/self/fd/N/name */
        return NULL;
    }
    relay_vhost *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    pthread_mutex_init(&v->err_lock, NULL);
    pthread_mutex_init(&v->tx_lock, NULL);
    pthread_mutex_init(&v->rx_lock, NULL);
    v->refs = 1;
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
    pthread_mutex_lock(&v->tx_lock);    /* a relay reading the queue lets go first */
    pthread_mutex_lock(&v->rx_lock);
    vh_revoke(v);
    v->closed = 1;
    release_guest(v);
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
    v->lfd = v->data = v->stopfd = v->wakefd = -1;
    pthread_mutex_unlock(&v->rx_lock);
    pthread_mutex_unlock(&v->tx_lock);
    vh_unref(v);
}

void vh_unref(relay_vhost *v)
{
    if (__atomic_sub_fetch(&v->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(v->bounce);
    free(v->scratch);
    pthread_mutex_destroy(&v->err_lock);
    pthread_mutex_destroy(&v->tx_lock);
    pthread_mutex_destroy(&v->rx_lock);
    free(v);
}
