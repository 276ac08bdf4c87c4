/*
 * vhost_ring.c - a relay whose source is a vhost-user port's host end reads the
 * guest's transmit queue itself (relay_set_vhost_src, relay.h).
 *
 * Without it a frame the guest sends crosses two threads and three copies before
 * the relay writes it: the port's thread sendmmsg()s it from guest memory into the
 * socketpair, the relay's thread recvmmsg()s it into its slots.  With it the relay
 * copies it once from guest memory into its slots and the port's thread is not
 * involved: traces, steering, counters and retargeting see the same batch as before.
 *
 * The queue has one reader at a time.  The port's tx_lock guards it, the guest's
 * memory and tx_owner.  The relay takes the queue ("claims" it) when both queues run,
 * no finishing is asked for (that stays in the port's thread: a super-frame becomes
 * dozens of frames) and no other relay has it.  It lets go when finishing is turned
 * on, when it ends, and when the port's thread revokes the grant because a protocol
 * message may change the queues or the memory, or the guest went away.  The socket
 * stays the fallback: it is read first after a claim (frames the port's thread sent
 * before), whenever the relay does not own the queue, and for the end of the stream
 * (the port shuts it down when its guest goes away).
 */
#define _GNU_SOURCE
#include "relay_int.h"
#include "vhost.h"

static void wake_port(relay_vhost *v)
{
    uint64_t one = 1;
    if (!v->closed && v->wakefd >= 0) {
        ssize_t w = write(v->wakefd, &one, sizeof one);   /* it re-reads tx_owner */
        (void)w;
    }
}

/* tx_lock held. */
void vh_revoke(relay_vhost *v)
{
    v->tx_gen++;
    if (v->tx_owner != NULL) {
        rl_kick(v->tx_owner);          /* it notices at its next step */
        v->tx_owner = NULL;
    }
}

/* tx_lock held: the port's thread drained a kick the owner may have been waiting for. */
void vh_pass_kick(relay_vhost *v)
{
    if (v->tx_owner != NULL)
        rl_kick(v->tx_owner);
}

int relay_set_vhost_src(relay *r, relay_vhost *v)
{
    if (r == NULL || v == NULL || !r->opened || r->ran || r->vh != NULL ||
        r->src_kind != RELAY_KIND_SOCKET)
        return -EINVAL;
    __atomic_add_fetch(&v->refs, 1, __ATOMIC_ACQ_REL);
    r->vh = v;
    r->vh_kick = -1;
    return 0;
}

/* tx_lock held. */
static void drop_own(relay *r)
{
    if (r->vh_kick >= 0)
        close(r->vh_kick);
    r->vh_kick = -1;
    r->vh_own = 0;
}

void rl_vh_try_claim(relay *r)
{
    relay_vhost *v = r->vh;
    pthread_mutex_lock(&v->tx_lock);
    if (!v->closed && v->tx_owner == NULL && !v->tx_busy && v->cfd >= 0 && !v->guest_gone &&
        vh_ready(v) &&
        !__atomic_load_n(&v->finish, __ATOMIC_RELAXED)) {
        int k = fcntl(v->q[1].kick, F_DUPFD_CLOEXEC, 3);
        if (k >= 0) {
            __atomic_store_n(&v->tx_owner, (void *)r, __ATOMIC_RELEASE);
            v->tx_blocked = 0;
            r->vh_kick = k;
            r->vh_own = 1;
            r->vh_dirty = 1;
            r->vh_gen = v->tx_gen;
            wake_port(v);
        }
    }
    pthread_mutex_unlock(&v->tx_lock);
}

static void copy_chain(uint8_t *to, const vu_chain *c)
{
    for (uint32_t i = 0; i < c->niov; i++) {
        memcpy(to, c->iov[i].iov_base, c->iov[i].iov_len);
        to += c->iov[i].iov_len;
    }
}

/* Takes up to sock_batch frames from the transmit queue into the slots.  The grant
 * may have ended: then the relay lets go and the socket is read instead. */
static int read_ring(relay *r, uint32_t *n)
{
    relay_vhost *v = r->vh;
    vu_chain c;
    pthread_mutex_lock(&v->tx_lock);
    if (v->tx_owner != (void *)r || v->tx_gen != r->vh_gen ||
        __atomic_load_n(&v->finish, __ATOMIC_RELAXED)) {
        if (v->tx_owner == (void *)r) {
            __atomic_store_n(&v->tx_owner, NULL, __ATOMIC_RELEASE);
            wake_port(v);
        }
        drop_own(r);
        pthread_mutex_unlock(&v->tx_lock);
        return rl_read_sock(r, n);
    }
    vu_queue *q = &v->q[1];
    uint64_t bytes = 0, gso = 0, drops = 0;
    for (;;) {
        vq_notify_off(q);
        int avail = vq_avail(q);
        while (*n < r->sock_batch && avail-- > 0) {
            const char *why = NULL;
            vnet_hdr h;
            if (vh_pop_tx(v, &c, &h, &why) < 0) {
                vh_err(v, "transmit queue: %s", why);
                drops++;
                vq_push(q, c.head, 0);
                continue;
            }
            if (h.gso_type != VNH_GSO_NONE)
                gso++;
            uint8_t *slot = r->slots + (size_t)*n * SLOT_SIZE;
            copy_chain(slot + REC_HDR, &c);
            vq_push(q, c.head, 0);
            r->fr[*n].rec = slot;
            r->fr[*n].len = (uint32_t)c.len;
            r->fr[*n].orig = (uint32_t)c.len;
            bytes += c.len;
            (*n)++;
        }
        if (*n || !vq_notify_on(q))
            break;                        /* frames; or none, and the guest kicks next time */
    }
    vq_signal(q);
    vh_add(&v->st.tx_frames, *n);
    vh_add(&v->st.tx_relayed, *n);
    vh_add(&v->st.tx_bytes, bytes);
    vh_add(&v->st.tx_gso, gso);
    vh_add(&v->st.tx_drops, drops);
    pthread_mutex_unlock(&v->tx_lock);
    return *n ? RD_OK : RD_AGAIN;
}

int rl_read_vhost(relay *r, uint32_t *n)
{
    *n = 0;
    if (!r->vh_own)
        rl_vh_try_claim(r);
    if (!r->vh_own || r->vh_dirty) {
        int st = rl_read_sock(r, n);
        if (!r->vh_own || st != RD_AGAIN)
            return st;                    /* frames, the end, or the socket is the source */
        r->vh_dirty = 0;                  /* what the port sent before the grant is read */
    }
    return read_ring(r, n);
}

void rl_vh_release(relay *r)
{
    relay_vhost *v = r->vh;
    if (v == NULL)
        return;
    rl_held_finish(r);                    /* frames a pipe still refers to go back first */
    pthread_mutex_lock(&v->tx_lock);
    if (v->tx_owner == (void *)r) {
        __atomic_store_n(&v->tx_owner, NULL, __ATOMIC_RELEASE);
        wake_port(v);                     /* its thread serves the queue again */
    }
    drop_own(r);
    pthread_mutex_unlock(&v->tx_lock);
    r->vh = NULL;
    vh_unref(v);
}

/* ------------------------------------------------------------ the receive queue */

int relay_set_vhost_dst(relay *r, relay_vhost *v)
{
    if (r == NULL || v == NULL || !r->opened)
        return -EINVAL;
    rl_ctl_lock(r);
    int ok = r->dst.fd >= 0 && r->dst.kind == RELAY_KIND_SOCKET && r->dst.vh == NULL;
    if (ok) {
        __atomic_add_fetch(&v->refs, 1, __ATOMIC_ACQ_REL);
        r->dst.vh = v;
    }
    rl_ctl_unlock(r);
    return ok ? 0 : -EINVAL;
}

/* dst_lock held (or the loop has ended): the destination is no longer v's host end. */
void rl_vh_drop_dst(relay_out *o)
{
    relay_vhost *v = o->vh;
    o->vh = NULL;
    if (v != NULL)
        vh_unref(v);
}

/* Frames [first, first + n) of the batch straight into the guest's receive queue, as
 * many as its buffers take, if nothing older waits in the port's socket (the port's
 * thread is not waiting for buffers and the socket is empty: order is kept).  Returns
 * how many were delivered; the caller sends the rest through the socket. */
uint32_t rl_vh_put(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t *bytes)
{
    relay_vhost *v = o->vh;
    uint32_t k = 0;
    pthread_mutex_lock(&v->rx_lock);
    if (!v->closed && v->cfd >= 0 && !v->guest_gone && !v->data_eof && !v->rx_starved &&
        vh_ready(v)) {
        struct pollfd p = { v->data, POLLIN, 0 };
        if (poll(&p, 1, 0) == 0) {
            for (; k < n; k++) {
                frame *f = &r->fr[first + k];
                if (!vh_rx_put(v, f->rec + REC_HDR, f->len))
                    break;
                *bytes += f->len;
            }
            if (k)
                vq_signal(&v->q[0]);
        }
    }
    pthread_mutex_unlock(&v->rx_lock);
    return k;
}
