/*
 * vhost_pcap.c - a vhost-user port's queues straight to and from a pcap stream: the
 * path of `stdpkt run`'s pipes.
 *
 *   transmit: the guest's transmit queue -> one writev() of pcap records whose frames
 *             are the guest's own buffers -> the pipe.  One copy (into the pipe) where
 *             the general path makes two (into the relay's slots, then into the pipe).
 *   receive:  a large record not yet read whole -> readv() of the rest of it straight
 *             into the guest's receive buffers, and of the next record's header into
 *             the read buffer.  One copy (out of the pipe) where the general path makes
 *             two (into the read buffer, then into the guest's buffers).
 *
 * Both are off unless STDPKT_RELAY_DIRECT asks for them (bit 0 transmit, bit 1 receive).
 * Bit 2, on by default, is the transmit path by vmsplice() into a pipe whose reader
 * copies (vhost_splice.c): that one measured 1.5x the general path at 1 MiB writes.
 * The copying direct paths:
 * in interleaved runs they measured nothing consistent against the general path on this
 * 2-core machine (README, Performance), whose pumps spend their time in the pipe's own
 * copies, its lock and wake-ups more than in their own copies.
 *
 * Both run only when the relay needs nothing else of the frame: no steering (flow
 * table) and no trace filter.  The trace ring still gets the first trace_snap bytes of
 * every frame, the counters count it as the general path does, and a control operation
 * (retarget, steering) takes dst_lock between two batches as before.  When a condition
 * does not hold the general path runs on the same stream; nothing is lost or reordered.
 *
 * Locks: dst_lock, then the port's tx_lock or rx_lock, as the general path takes them.
 * Both are held only around non-blocking system calls, so the port's thread (which
 * takes them for protocol messages) never waits for a pipe:
 *   - a write that leaves a record partly written copies the rest of that one record into
 *     the relay's slots before the guest's buffers are handed back, and writes it after;
 *     records not written at all are put back in the queue (taken again next time);
 *   - a record is read straight into the guest only once the source holds all of it
 *     (FIONREAD), so the read cannot stop halfway.
 */
#define _GNU_SOURCE
#include "relay_int.h"
#include "vhost.h"

#include <sys/ioctl.h>

/* Records of at least this many bytes are read straight into the guest's buffers; a
 * smaller one is cheaper to take in a large read with its neighbours. */
#define DIRECT_RX_MIN 4096

static int alloc_direct(relay *r, int tx)
{
    if (r->viov == NULL)
        r->viov = calloc(MAX_IOV, sizeof *r->viov);
    if (r->tslots && r->vsnap == NULL)
        r->vsnap = malloc(r->tsnap);
    if (tx && r->vtx == NULL) {
        r->vtx = calloc(r->sock_batch, sizeof *r->vtx);
        r->vhdr = calloc(r->sock_batch, REC_HDR + 1);   /* then a GSO flag per frame */
    }
    return r->viov == NULL || (r->tslots && r->vsnap == NULL) ||
                   (tx && (r->vtx == NULL || r->vhdr == NULL))
               ? -1
               : 0;
}

void rl_direct_free(relay *r)
{
    free(r->viov);
    free(r->vsnap);
    free(r->vtx);
    free(r->vhdr);
    r->viov = NULL;
    r->vsnap = NULL;
    r->vtx = NULL;
    r->vhdr = NULL;
}

/* Copies bytes [from, from + len) of the data behind iov[0..niov) to out. */
static void gather(uint8_t *out, const struct iovec *iov, uint32_t niov, size_t from, size_t len)
{
    for (uint32_t i = 0; i < niov && len; i++) {
        size_t l = iov[i].iov_len;
        if (from >= l) {
            from -= l;
            continue;
        }
        size_t k = l - from < len ? l - from : len;
        memcpy(out, (const uint8_t *)iov[i].iov_base + from, k);
        out += k;
        len -= k;
        from = 0;
    }
}

static int tracing(relay *r)
{
    return r->tslots && __atomic_load_n(&r->trace_on, __ATOMIC_RELAXED);
}

/* trace_lock held: offers a frame of len bytes at byte skip of iov to the trace ring. */
static void trace_iov(relay *r, const struct iovec *iov, uint32_t niov, size_t skip,
                      uint32_t len, uint64_t ts, uint64_t seq)
{
    uint32_t cap = len < r->tsnap ? len : r->tsnap;
    gather(r->vsnap, iov, niov, skip, cap);
    rl_trace_put(r, r->vsnap, cap, len, ts, seq, 0);
}

/* dst_lock held: nothing but the default pcap output needs this relay's frames. */
static int plain_route(relay *r)
{
    return r->ft == NULL && __atomic_load_n(&r->filt, __ATOMIC_RELAXED) == NULL;
}

/* ------------------------------------------------------------ transmit queue -> pcap */

/* Bytes a pipe takes now without a partial write; SIZE_MAX if fd is not a pipe. */
static size_t pipe_room(int fd)
{
    int size = fcntl(fd, F_GETPIPE_SZ), inq = 0;
    if (size <= 0 || ioctl(fd, FIONREAD, &inq) < 0)
        return SIZE_MAX;
    return inq < size ? (size_t)(size - inq) : 0;
}

/* The record header of frame k of a batch: kept with the frame while it is held if the
 * batch is spliced (vs), else in the batch's own headers. */
static uint8_t *rec_hdr(relay *r, int vs, uint32_t k)
{
    return vs ? rl_held_hdr(r, k) : r->vhdr + (size_t)k * REC_HDR;
}

/* tx_lock held: takes up to sock_batch frames, at most room bytes of records, from the
 * transmit queue into r->vtx and the record iovecs r->viov (a header, then the guest's
 * buffers), each frame's GSO flag after the headers.  *n frames, *niov; *full: the next
 * frame did not fit in room. */
static void take_batch(relay *r, relay_vhost *v, uint64_t ts, size_t room, int vs,
                       uint32_t *n_out, uint32_t *niov_out, int *full)
{
    vu_queue *q = &v->q[1];
    uint32_t n = 0, niov = 0;
    uint64_t drops = 0;
    size_t bytes = 0;
    *full = 0;
    vq_notify_off(q);
    for (;;) {
        int avail = vq_avail(q);
        while (n < r->sock_batch && avail-- > 0) {
            vu_chain *c = &r->vtx[n];
            const char *why = NULL;
            vnet_hdr h;
            int bad = vh_pop_tx(v, c, &h, &why) < 0;
            int fits = bad || bytes + REC_HDR + c->len <= room;
            if ((bad && n) || niov + 1 + c->niov > MAX_IOV || !fits) {
                q->last_avail--;          /* first of the next batch: put-backs stay a tail */
                *full = !fits;
                break;
            }
            if (bad) {
                vh_err(v, "transmit queue: %s", why);
                drops++;
                vq_push(q, c->head, 0);
                continue;
            }
            r->vhdr[(size_t)r->sock_batch * REC_HDR + n] = h.gso_type != VNH_GSO_NONE;
            uint8_t *hd = rec_hdr(r, vs, n);
            put_rec_hdr(hd, ts, (uint32_t)c->len, (uint32_t)c->len);
            r->viov[niov].iov_base = hd;
            r->viov[niov].iov_len = REC_HDR;
            memcpy(r->viov + niov + 1, c->iov, c->niov * sizeof c->iov[0]);
            niov += 1 + c->niov;
            bytes += REC_HDR + c->len;
            n++;
        }
        if (n || *full || !vq_notify_on(q))
            break;                        /* frames; or none, and the guest kicks next time */
    }
    if (drops)
        vh_add(&v->st.tx_drops, drops);
    *n_out = n;
    *niov_out = niov;
}

/* tx_lock held: frames [0, k) of the batch were taken: the trace ring, the sequence. */
static void tx_trace(relay *r, uint32_t k, uint64_t ts)
{
    if (!tracing(r)) {
        __atomic_fetch_add(&r->seq, k, __ATOMIC_RELAXED);
        return;
    }
    pthread_mutex_lock(&r->trace_lock);
    uint64_t seq = __atomic_fetch_add(&r->seq, k, __ATOMIC_RELAXED);
    for (uint32_t j = 0; j < k; j++)
        trace_iov(r, r->vtx[j].iov, r->vtx[j].niov, 0, (uint32_t)r->vtx[j].len, ts, seq + j);
    pthread_mutex_unlock(&r->trace_lock);
}

int rl_vh_tx_pcap(relay *r, int *res)
{
    relay_vhost *v = r->vh;
    relay_out *o = &r->dst;
    *res = 0;
    if (!r->vh_own)
        rl_vh_try_claim(r);
    if (!r->vh_own || r->vh_dirty || __atomic_load_n(&o->kind, __ATOMIC_RELAXED) != RELAY_KIND_PCAP)
        return -1;                        /* the socket first; or not a pcap stream (a Lab link) */
    pthread_mutex_lock(&r->dst_lock);
    if (o->kind != RELAY_KIND_PCAP || o->fd < 0 || o->ghdr_off < o->ghdr_len || !plain_route(r) ||
        alloc_direct(r, 1) < 0) {
        pthread_mutex_unlock(&r->dst_lock);
        return -1;
    }
    pthread_mutex_lock(&v->tx_lock);
    if (v->tx_owner != (void *)r || v->tx_gen != r->vh_gen ||
        __atomic_load_n(&v->finish, __ATOMIC_RELAXED)) {
        pthread_mutex_unlock(&v->tx_lock);
        pthread_mutex_unlock(&r->dst_lock);
        return -1;                        /* the general path lets the queue go */
    }
    vu_queue *q = &v->q[1];
    uint64_t ts = now_ns(), gso = 0, base = o->wrote;
    uint32_t n, niov;
    int full, vs = rl_splice_usable(r, o);
    if (!vs && !(r->direct & 1)) {
        pthread_mutex_unlock(&v->tx_lock);
        pthread_mutex_unlock(&r->dst_lock);
        return -1;                        /* no splice, and copies go the general way */
    }
    take_batch(r, v, ts, pipe_room(o->fd), vs, &n, &niov, &full);
    if (n == 0 && full) {
        /* the pipe cannot take the next frame whole: the general path copies it out and
         * waits for room (a write here would stop halfway, and poll() wakes a writer as
         * soon as one page is free) */
        pthread_mutex_unlock(&v->tx_lock);
        pthread_mutex_unlock(&r->dst_lock);
        return -1;
    }
    if (n == 0) {
        vq_signal(q);
        pthread_mutex_unlock(&v->tx_lock);
        pthread_mutex_unlock(&r->dst_lock);
        return RD_AGAIN;
    }
    ssize_t w;
    do
        w = vs ? vmsplice(o->fd, r->viov, niov, SPLICE_F_NONBLOCK)
               : rl_dst_write_once(o, r->viov, (int)niov);
    while (w < 0 && errno == EINTR);
    if (vs && w > 0)
        o->wrote += (uint64_t)w;
    int e = w < 0 ? errno : 0;
    uint32_t whole = 0, taken;
    size_t part = 0;                      /* bytes written of record `whole` */
    if (w < 0 && (e == EAGAIN || e == EWOULDBLOCK)) {
        taken = 0;
    } else if (w < 0) {
        taken = n;                        /* the destination failed: the frames are lost */
    } else {
        size_t left = (size_t)w;
        while (whole < n && left >= REC_HDR + r->vtx[whole].len) {
            left -= REC_HDR + r->vtx[whole].len;
            whole++;
        }
        part = left;
        taken = whole + (part ? 1 : 0);
    }
    uint8_t *rest = r->slots;            /* the rest of a record written in part */
    size_t rest_len = 0;
    if (part) {
        vu_chain *c = &r->vtx[whole];
        size_t rec = REC_HDR + c->len;
        rest_len = rec - part;
        if (part < REC_HDR) {
            memcpy(rest, rec_hdr(r, vs, whole) + part, REC_HDR - part);
            gather(rest + REC_HDR - part, c->iov, c->niov, 0, c->len);
        } else {
            gather(rest, c->iov, c->niov, part - REC_HDR, rest_len);
        }
    }
    uint64_t bytes = 0, end = base;
    if (w >= 0)
        tx_trace(r, taken, ts);
    for (uint32_t j = 0; j < taken; j++) {
        bytes += r->vtx[j].len;
        gso += r->vhdr[(size_t)r->sock_batch * REC_HDR + j];
        end += REC_HDR + r->vtx[j].len;
        if (vs && w >= 0)
            rl_held_add(r, r->vtx[j].head, end);   /* back once the reader is past end */
        else
            vq_push(q, r->vtx[j].head, 0);
    }
    if (vs && w >= 0)
        vh_add(&v->st.tx_spliced, taken);
    q->last_avail = (uint16_t)(q->last_avail - (n - taken));   /* not taken: next time */
    vh_add(&v->st.tx_frames, taken);
    vh_add(&v->st.tx_relayed, taken);
    vh_add(&v->st.tx_bytes, bytes);
    vh_add(&v->st.tx_gso, gso);
    vq_signal(q);
    pthread_mutex_unlock(&v->tx_lock);

    int rc = 0;
    uint32_t sent = whole;
    uint64_t sent_bytes = bytes - (part ? r->vtx[whole].len : 0);
    if (w < 0 && taken == 0) {
        rc = rl_wait_fd(r, o->fd, POLLOUT, 1);
        if (rc < 0) {
            rl_set_err(r, "poll on destination: %s", strerror(-rc));
            rc = RELAY_ERROR;
        } else {
            rc = rc == 1 ? RELAY_STOPPED : 0;
        }
    } else if (w < 0) {
        if (rl_is_peer_gone(e)) {
            rc = rl_peer_closed(r, e);
        } else {
            rl_set_err(r, "writing to destination: %s", strerror(e));
            rc = RELAY_ERROR;
        }
    } else if (part) {
        struct iovec iv = { rest, rest_len };
        int done;
        rc = rl_dst_writev_all(r, o, &iv, 1, &done, 0);   /* mid-record: no yielding */
        if (rc == 0) {
            sent++;
            sent_bytes += r->vtx[whole].len;
        }
    }
    stat_add(&r->st->frames, sent);
    stat_add(&r->st->bytes, sent_bytes);
    pthread_mutex_unlock(&r->dst_lock);
    *res = rc;
    return RD_OK;
}

/* ------------------------------------------------------------ pcap -> receive queue */

/* rx_lock held: the source holds all of the incomplete record at rpos (incl bytes), and
 * the guest's buffers for it are gathered (vh_rx_gather): the part already read is
 * copied into them, the rest read straight into them, with the next record's header
 * into the read buffer.  0 when it was handed to the guest; 1 when it was not but more
 * of it is in the read buffer; -1 when nothing changed. */
static int take_record(relay *r, relay_vhost *v, uint32_t incl, uint32_t nchain, uint32_t niov)
{
    if (r->rpos) {                                 /* the record to the front: room for a header */
        memmove(r->rbuf, r->rbuf + r->rpos, r->rend - r->rpos);
        r->rbase += r->rpos;
        r->rend -= r->rpos;
        r->rpos = 0;
    }
    size_t have = r->rend - REC_HDR, rest = incl - have;
    const uint8_t *pre = r->rbuf + REC_HDR;
    size_t skip = VU_NET_HDR, at = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < niov && at < incl; i++) {
        uint8_t *b = (uint8_t *)v->rx_iov[i].iov_base + skip;
        size_t room = v->rx_iov[i].iov_len - skip;
        skip = 0;
        if (room > incl - at)
            room = incl - at;
        if (at < have) {
            size_t c = have - at < room ? have - at : room;
            memcpy(b, pre + at, c);
            at += c;
            b += c;
            room -= c;
        }
        if (room) {
            r->viov[k].iov_base = b;
            r->viov[k].iov_len = room;
            k++;
            at += room;
        }
    }
    r->viov[k].iov_base = r->rbuf + r->rend;       /* and the next record's header */
    r->viov[k].iov_len = REC_HDR;
    k++;
    ssize_t got;
    do
        got = readv(r->src_fd, r->viov, (int)k);
    while (got < 0 && errno == EINTR);
    if (got < 0 || (size_t)got < rest) {
        /* cannot happen with FIONREAD's count and one reader; if it does, what was read
         * goes into the read buffer and the general path goes on from there */
        if (got <= 0)
            return -1;
        gather(r->rbuf + r->rend, r->viov, k - 1, 0, (size_t)got);
        r->rend += (size_t)got;
        return 1;
    }
    uint64_t ts = now_ns();
    if (tracing(r)) {
        pthread_mutex_lock(&r->trace_lock);
        uint64_t seq = __atomic_fetch_add(&r->seq, 1, __ATOMIC_RELAXED);
        trace_iov(r, v->rx_iov, niov, VU_NET_HDR, incl, ts, seq);
        pthread_mutex_unlock(&r->trace_lock);
    } else {
        __atomic_fetch_add(&r->seq, 1, __ATOMIC_RELAXED);
    }
    r->last_sec = get32(r, r->rbuf);
    r->have_ts = 1;
    vh_rx_commit(v, nchain, incl);
    stat_add(&r->st->frames, 1);
    stat_add(&r->st->bytes, incl);
    /* the record is consumed; what came after it is the next header (or part of it) */
    size_t tail = (size_t)got - rest;
    memmove(r->rbuf, r->rbuf + r->rend, tail);
    r->rbase += r->rend + rest;
    r->rpos = 0;
    r->rend = tail;
    return 0;
}

/* The source holds all of the incomplete record at rpos, of at least DIRECT_RX_MIN bytes. */
static int whole_in_source(relay *r)
{
    int inq = 0;
    size_t have = r->rend - r->rpos - REC_HDR;
    return r->pend_incl >= DIRECT_RX_MIN && have < r->pend_incl &&
           ioctl(r->src_fd, FIONREAD, &inq) == 0 && (size_t)inq >= r->pend_incl - have;
}

int rl_vh_rx_pcap(relay *r, uint32_t *n, int *bad)
{
    relay_out *o = &r->dst;
    *n = 0;
    *bad = 0;
    if (!whole_in_source(r))
        return 0;                                  /* not all there: a read could stop midway */
    pthread_mutex_lock(&r->dst_lock);
    relay_vhost *v = o->vh;
    if (v == NULL || o->fd < 0 || !plain_route(r) || alloc_direct(r, 0) < 0) {
        pthread_mutex_unlock(&r->dst_lock);
        return 0;
    }
    pthread_mutex_lock(&v->rx_lock);
    struct pollfd pf = { v->data, POLLIN, 0 };
    int moved = 0, given = 0;
    if (!v->closed && v->cfd >= 0 && !v->guest_gone && !v->data_eof && !v->rx_starved &&
        vh_ready(v) && poll(&pf, 1, 0) == 0) {     /* no older frame waits in the socket */
        /* records straight into the guest while they come whole and large; the next
         * small or incomplete one ends the run (and goes the general way) */
        while (given < PCAP_BATCH) {
            uint32_t nchain, niov;
            if (!vh_rx_gather(v, r->pend_incl, &nchain, &niov))
                break;                             /* no room: the general path waits for it */
            int t = take_record(r, v, r->pend_incl, nchain, niov);
            if (t < 0)
                break;
            moved = 1;
            if (t > 0)
                break;
            if (++given % 4 == 0)
                vq_signal(&v->q[0]);
            if (rl_pcap_parse(r, n) == RD_BAD) {
                *bad = 1;
                break;
            }
            if (*n || !whole_in_source(r))
                break;                             /* complete records: the general path */
        }
        if (given % 4)
            vq_signal(&v->q[0]);
    }
    pthread_mutex_unlock(&v->rx_lock);
    pthread_mutex_unlock(&r->dst_lock);
    return moved;
}
