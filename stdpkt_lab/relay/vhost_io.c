/*
 * vhost_io.c - the data path of a vhost-user port (vhost.h), run by the port's thread:
 *
 *   transmit queue (1) -> sendmmsg() straight from guest buffers -> the port's socket
 *   the port's socket -> recvmsg() straight into guest receive buffers -> receive queue (0)
 *
 * With finishing on (a peer without offload) a transmitted frame is copied once into a
 * linear buffer, its checksum completed or the TCP super-frame cut (offload.c).
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* After a receive on the port's socket failed or read nothing: 1 to try again
 * (EINTR), 0 to stop this round (no frame; or the socket ended: data_eof). */
static int rx_retry(relay_vhost *v, ssize_t k)
{
    if (k < 0 && errno == EINTR)
        return 1;
    if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
        v->data_eof = 1;
    return 0;
}

/* ------------------------------------------------------------ transmit: guest -> socket */

/* Drops the virtio-net header from the front of a chain (copied into h). */
int vh_strip_header(vu_chain *c, vnet_hdr *h)
{
    size_t need = VU_NET_HDR, got = 0;
    uint32_t i = 0;
    while (need && i < c->niov) {
        size_t k = c->iov[i].iov_len < need ? c->iov[i].iov_len : need;
        memcpy((uint8_t *)h + got, c->iov[i].iov_base, k);
        got += k;
        need -= k;
        c->iov[i].iov_base = (uint8_t *)c->iov[i].iov_base + k;
        c->iov[i].iov_len -= k;
        if (c->iov[i].iov_len == 0)
            i++;
    }
    if (need)
        return -1;
    memmove(c->iov, c->iov + i, (c->niov - i) * sizeof c->iov[0]);
    c->niov -= i;
    c->len -= VU_NET_HDR;
    return 0;
}

int vh_pop_tx(relay_vhost *v, vu_chain *c, vnet_hdr *h, const char **why)
{
    *why = NULL;
    if (vq_pop(&v->q[1], &v->mem, 0, c, why) < 0 || vh_strip_header(c, h) < 0 ||
        c->len < RELAY_FRAME_MIN || c->len > RELAY_FRAME_MAX) {
        if (*why == NULL)
            *why = "bad frame length";
        return -1;
    }
    return 0;
}

static int wait_out(relay_vhost *v)
{
    struct pollfd p[2] = { { v->data, POLLOUT, 0 }, { v->stopfd, POLLIN, 0 } };
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        return p[1].revents ? -1 : 0;
    }
}

static int send_one(void *ctx, const uint8_t *f, size_t n)
{
    relay_vhost *v = ctx;
    for (;;) {
        ssize_t w = send(v->data, f, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w >= 0) {
            vh_add(&v->st.tx_frames, 1);
            vh_add(&v->st.tx_bytes, n);
            return 0;
        }
        if (errno == EINTR)
            continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_out(v) == 0)
            continue;
        vh_add(&v->st.tx_drops, 1);
        return 0;                             /* peer gone or stopping: the frame is lost */
    }
}

/* Finishing: a linear copy, then a complete checksum or segments. */
static void tx_finish(relay_vhost *v, vu_chain *c, const vnet_hdr *h)
{
    size_t n = 0;
    for (uint32_t i = 0; i < c->niov; i++) {
        memcpy(v->bounce + n, c->iov[i].iov_base, c->iov[i].iov_len);
        n += c->iov[i].iov_len;
    }
    if ((h->gso_type & 0x7f) == VNH_GSO_TCPV4 || (h->gso_type & 0x7f) == VNH_GSO_TCPV6) {
        if (ol_segment(v->bounce, n, h, v->scratch, send_one, v) < 0)
            vh_add(&v->st.tx_drops, 1);
        return;
    }
    if (h->gso_type != VNH_GSO_NONE || ol_finish_csum(v->bounce, n, h) < 0) {
        vh_add(&v->st.tx_drops, 1);
        vh_err(v, "guest sent a frame the port cannot finish (gso type %u)", h->gso_type);
        return;
    }
    (void)send_one(v, v->bounce, n);
}

void vh_do_tx(relay_vhost *v)
{
    vu_queue *q = &v->q[1];
    vu_chain *ch = v->tx;
    struct mmsghdr *mm = v->mm;
    vq_notify_off(q);
    for (;;) {
        uint32_t n = 0;
        int avail = vq_avail(q);
        int finish = __atomic_load_n(&v->finish, __ATOMIC_RELAXED);
        while (n < TX_BATCH && avail-- > 0) {
            const char *why = NULL;
            vnet_hdr h;
            vu_chain *c = &ch[n];
            if (vh_pop_tx(v, c, &h, &why) < 0) {
                vh_err(v, "transmit queue: %s", why);
                vh_add(&v->st.tx_drops, 1);
                vq_push(q, c->head, 0);
                continue;
            }
            if (h.gso_type != VNH_GSO_NONE)
                vh_add(&v->st.tx_gso, 1);
            if (finish && (h.flags & VNH_F_NEEDS_CSUM || h.gso_type != VNH_GSO_NONE)) {
                tx_finish(v, c, &h);
                vq_push(q, c->head, 0);
                continue;
            }
            memset(&mm[n], 0, sizeof mm[n]);
            mm[n].msg_hdr.msg_iov = c->iov;
            mm[n].msg_hdr.msg_iovlen = c->niov;
            n++;
        }
        uint32_t done = 0;
        while (done < n) {
            int k = sendmmsg(v->data, mm + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) {
                for (int j = 0; j < k; j++) {
                    vh_add(&v->st.tx_bytes, ch[done + (uint32_t)j].len);
                    vq_push(q, ch[done + (uint32_t)j].head, 0);
                }
                vh_add(&v->st.tx_frames, (uint64_t)k);
                done += (uint32_t)k;
                continue;
            }
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                q->last_avail = (uint16_t)(q->last_avail - (n - done));   /* not taken */
                v->tx_blocked = 1;
                vq_signal(q);
                return;
            }
            /* the peer is gone, or the frame was refused: lost, counted */
            vh_add(&v->st.tx_drops, 1);
            vq_push(q, ch[done].head, 0);
            done++;
        }
        vq_signal(q);
        if (n == 0 && vq_avail(q) == 0 && !vq_notify_on(q))
            return;
        vq_notify_off(q);
    }
}

/* ------------------------------------------------------------ receive: socket -> guest */

/* Reads and drops the next frame (it can never fit the guest's buffers). */
static void rx_discard(relay_vhost *v, ssize_t len, uint64_t room)
{
    ssize_t k = recv(v->data, v->bounce, RELAY_FRAME_MAX, MSG_DONTWAIT | MSG_TRUNC);
    (void)k;
    vh_add(&v->st.rx_drops, 1);
    vh_err(v, "a frame of %zd bytes is larger than the guest's receive buffers (%llu bytes)",
           len, (unsigned long long)room);
}

/* A frame of len bytes is in the chains gathered in rx_head/rx_room (its header's
 * place at hdrp): write the header with the number of buffers it took and hand
 * them back to the guest. */
static void rx_give(relay_vhost *v, uint8_t *hdrp, vnet_hdr *h, uint32_t nchain, uint64_t len)
{
    vu_queue *q = &v->q[0];
    uint64_t need = len + VU_NET_HDR, left = need;
    uint16_t used = 0;
    while (left && used < nchain) {
        left -= left < v->rx_room[used] ? left : v->rx_room[used];
        used++;
    }
    h->num_buffers = used;
    memcpy(hdrp, h, VU_NET_HDR);
    left = need;
    for (uint16_t j = 0; j < used; j++) {
        uint32_t take = left < v->rx_room[j] ? (uint32_t)left : v->rx_room[j];
        left -= take;
        vq_push(q, v->rx_head[j], take);
    }
    q->last_avail = (uint16_t)(q->last_avail + used);
    if (h->gso_type != VNH_GSO_NONE)
        vh_add(&v->st.rx_gso, 1);
    vh_add(&v->st.rx_frames, 1);
    vh_add(&v->st.rx_bytes, len);
}

void vh_do_rx(relay_vhost *v)
{
    vu_queue *q = &v->q[0];
    int mrg = !!(v->acked & BIT(F_MRG_RXBUF));
    int csum = v->offload && (v->acked & BIT(F_GUEST_CSUM));
    int tso = csum && (v->acked & (BIT(F_GUEST_TSO4) | BIT(F_GUEST_TSO6)));
    struct iovec *iov = v->rx_iov;
    uint16_t *heads = v->rx_head;
    uint32_t *room = v->rx_room, frames = 0;
    vq_notify_off(q);
    while (!v->data_eof) {
        int avail = vq_avail(q);
        if (avail == 0) {
            if (vq_notify_on(q))
                continue;
            v->rx_starved = 1;
            break;
        }
        /* gather chains until a largest frame fits (one chain without MRG_RXBUF) */
        uint32_t nchain = 0, niov = 0;
        uint64_t total = 0;
        while (nchain < (uint32_t)avail && total < FRAME_ROOM && (mrg || nchain == 0)) {
            vu_chain c;
            const char *why = NULL;
            int rc = vq_peek_at(q, &v->mem, (uint16_t)nchain, 1, &c, &why);
            if (rc == 0 && niov + c.niov > RX_IOV)
                break;
            if (rc < 0 || (nchain == 0 && (c.niov == 0 || c.iov[0].iov_len < VU_NET_HDR))) {
                if (nchain)
                    break;                   /* use what we have; this one fails next time */
                vh_err(v, "receive queue: %s", why ? why : "buffer smaller than the header");
                q->last_avail++;
                vq_push(q, c.head, 0);
                goto next;
            }
            memcpy(iov + niov, c.iov, c.niov * sizeof c.iov[0]);
            niov += c.niov;
            heads[nchain] = c.head;
            room[nchain] = (uint32_t)c.len;
            total += c.len;
            nchain++;
        }
        if (total < FRAME_ROOM) {
            /* not room for every frame: does the next one fit? */
            ssize_t want = recv(v->data, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
            if (want <= 0) {
                if (rx_retry(v, want))
                    continue;
                break;
            }
            if ((uint64_t)want + VU_NET_HDR > total) {
                uint64_t most = mrg ? (uint64_t)q->num * room[0] : room[0];
                if ((uint64_t)want + VU_NET_HDR > most) {
                    rx_discard(v, want, most);
                    continue;
                }
                if (vq_notify_on(q) && vq_avail(q) > avail)
                    continue;                /* more buffers came meanwhile */
                v->rx_starved = 1;
                break;
            }
        }
        {
            uint8_t *hdrp = iov[0].iov_base;
            iov[0].iov_base = hdrp + VU_NET_HDR;
            iov[0].iov_len -= VU_NET_HDR;
            struct msghdr mh = { .msg_iov = iov, .msg_iovlen = niov };
            ssize_t k = recvmsg(v->data, &mh, MSG_DONTWAIT);
            if (k <= 0) {
                if (rx_retry(v, k))
                    continue;
                break;
            }
            if (mh.msg_flags & MSG_TRUNC) {   /* cannot happen after the check above */
                vh_add(&v->st.rx_drops, 1);
                continue;                     /* buffers not taken: they are reused */
            }
            vnet_hdr h;
            ol_rx_header(hdrp + VU_NET_HDR, iov[0].iov_len, (size_t)k, v->mtu, csum, tso, &h);
            rx_give(v, hdrp, &h, nchain, (uint64_t)k);
            if (++frames % v->rx_signal == 0)
                vq_signal(q);
        }
    next:;
    }
    vq_signal(q);
}

/* ------------------------------------------------------------ receive: a relay's frame -> guest */

/* rx_lock held: gathers the buffers the guest made available for a frame of len
 * bytes (its header's room first) into rx_iov / rx_head / rx_room, without taking
 * them.  0 when they cannot hold it (then nothing is taken: the frame goes through
 * the socket and the port's thread waits for buffers). */
int vh_rx_gather(relay_vhost *v, uint64_t len, uint32_t *nchain_out, uint32_t *niov_out)
{
    vu_queue *q = &v->q[0];
    int mrg = !!(v->acked & BIT(F_MRG_RXBUF));
    struct iovec *iov = v->rx_iov;
    uint32_t nchain = 0, niov = 0;
    uint64_t total = 0, need = len + VU_NET_HDR;
    int avail = vq_avail(q);
    while (total < need && nchain < (uint32_t)avail && (mrg || nchain == 0)) {
        vu_chain c;
        const char *why = NULL;
        if (vq_peek_at(q, &v->mem, (uint16_t)nchain, 1, &c, &why) < 0 || niov + c.niov > RX_IOV ||
            (nchain == 0 && (c.niov == 0 || c.iov[0].iov_len < VU_NET_HDR)))
            return 0;                         /* the port's thread deals with odd buffers */
        memcpy(iov + niov, c.iov, c.niov * sizeof c.iov[0]);
        niov += c.niov;
        v->rx_head[nchain] = c.head;
        v->rx_room[nchain] = (uint32_t)c.len;
        total += c.len;
        nchain++;
    }
    if (total < need)
        return 0;
    *nchain_out = nchain;
    *niov_out = niov;
    return 1;
}

/* rx_lock held: the frame of len bytes is in the gathered buffers, after the header's
 * room: writes its header and hands the buffers to the guest. */
void vh_rx_commit(relay_vhost *v, uint32_t nchain, uint64_t len)
{
    int csum = v->offload && (v->acked & BIT(F_GUEST_CSUM));
    int tso = csum && (v->acked & (BIT(F_GUEST_TSO4) | BIT(F_GUEST_TSO6)));
    uint8_t *hdrp = v->rx_iov[0].iov_base;
    size_t have = v->rx_iov[0].iov_len - VU_NET_HDR;
    vnet_hdr h;
    ol_rx_header(hdrp + VU_NET_HDR, have < len ? have : len, len, v->mtu, csum, tso, &h);
    rx_give(v, hdrp, &h, nchain, len);
    vh_add(&v->st.rx_relayed, 1);
}

/* A relay writing straight into the receive queue (vhost_ring.c), rx_lock held: the
 * frame goes into the buffers the guest made available, as vh_do_rx() puts one it
 * received from the socket.  0 when they cannot hold it (nothing is taken: the frame
 * then goes through the socket and the port's thread waits for buffers). */
int vh_rx_put(relay_vhost *v, uint8_t *frame, uint32_t len)
{
    uint32_t nchain, niov;
    if (!vh_rx_gather(v, len, &nchain, &niov))
        return 0;
    struct iovec *iov = v->rx_iov;
    size_t off = VU_NET_HDR;                  /* in iov[0]: the header first */
    uint32_t done = 0;
    for (uint32_t i = 0; i < niov && done < len; i++) {
        size_t k = iov[i].iov_len - off;
        if (k > len - done)
            k = len - done;
        memcpy((uint8_t *)iov[i].iov_base + off, frame + done, k);
        done += (uint32_t)k;
        off = 0;
    }
    vh_rx_commit(v, nchain, len);
    return 1;
}
