/*
 * relay.c - the packet relay of stdpkt-lab (see relay.h): life cycle, loop, inject.
 * The other jobs are in the files listed in relay_int.h.
 *
 * One loop per relay, in one thread:
 *
 *   read a batch from the source  (recvmmsg, or read() + pcap parsing in place)
 *   offer the batch to the trace ring (if tracing is on: one mutex per batch)
 *   write the batch to the destination under the dst lock (sendmmsg, or writev
 *     of pcap records whose headers are written in place in front of the frames)
 *
 * All I/O is non-blocking; when a descriptor is not ready the loop polls it
 * together with the stop eventfd, so relay_stop() ends the loop even when the
 * destination is full.  Frames never get copied between read and write: the
 * 16 bytes before each frame in the read buffer hold its pcap record header.
 */
#define _GNU_SOURCE
#include "relay_int.h"

relay *relay_new(relay_stats *stats, uint32_t trace_slots, uint32_t trace_snap)
{
    if (stats == NULL || (trace_slots & (trace_slots - 1)) != 0 ||
        trace_snap > RELAY_FRAME_MAX || (trace_slots && trace_snap == 0))
        return NULL;
    relay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->st = stats;
    r->src_fd = r->dst.fd = -1;
    r->kickfd = -1;
    r->reader_sock = -1;
    r->trace_on = 1;
    pthread_mutex_init(&r->dst_lock, NULL);
    pthread_mutex_init(&r->rules_lock, NULL);
    pthread_mutex_init(&r->err_lock, NULL);
    pthread_mutex_init(&r->trace_lock, NULL);
    r->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->stopfd < 0)
        goto fail;
    r->kickfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->kickfd < 0)
        goto fail;
    r->tslots = trace_slots;
    r->tsnap = trace_snap;
    if (trace_slots) {
        r->tmeta = calloc(trace_slots, sizeof *r->tmeta);
        r->tdata = malloc((size_t)trace_slots * trace_snap);
        if (r->tmeta == NULL || r->tdata == NULL)
            goto fail;
    }
    return r;
fail:
    relay_free(r);
    return NULL;
}

static void rl_free_io(relay *r)
{
    free(r->rbuf);
    free(r->slots);
    free(r->rmm);
    free(r->riov);
    free(r->fr);
    free(r->wiov);
    free(r->wmm);
    free(r->fid);
    rl_direct_free(r);
    rl_held_free(r);
    r->fid = NULL;
    r->rbuf = r->slots = NULL;
    r->rmm = r->wmm = NULL;
    r->riov = r->wiov = NULL;
    r->fr = NULL;
}

static void rl_close_fds(relay *r)
{
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&r->rules_lock);
    if (r->src_fd >= 0)
        close(r->src_fd);
    if (r->dst.fd >= 0)
        close(r->dst.fd);
    r->src_fd = r->dst.fd = -1;
    if (r->reader_sock >= 0)
        close(r->reader_sock);
    r->reader_sock = -1;
    rl_vh_drop_dst(&r->dst);
    for (uint32_t i = 0; i < r->nrules; i++) {
        if (r->rules[i]->out.fd >= 0)
            close(r->rules[i]->out.fd);
        r->rules[i]->out.fd = -1;
        r->rules[i]->out.dead = 1;
    }
    pthread_mutex_unlock(&r->rules_lock);
    pthread_mutex_unlock(&r->dst_lock);
}

void relay_free(relay *r)
{
    if (r == NULL)
        return;
    rl_vh_release(r);
    rl_close_fds(r);
    if (r->stopfd >= 0)
        close(r->stopfd);
    if (r->kickfd >= 0)
        close(r->kickfd);
    for (uint32_t i = 0; i < r->nrules; i++) {
        free(r->rules[i]->filt);
        free(r->rules[i]);
    }
    rl_free_io(r);
    free(r->tmeta);
    free(r->tdata);
    free(r->filt);
    pthread_mutex_destroy(&r->dst_lock);
    pthread_mutex_destroy(&r->err_lock);
    pthread_mutex_destroy(&r->trace_lock);
    pthread_mutex_destroy(&r->rules_lock);
    free(r);
}

void relay_stop(relay *r)
{
    uint64_t one = 1;
    __atomic_store_n(&r->stopping, 1, __ATOMIC_SEQ_CST);
    ssize_t w = write(r->stopfd, &one, sizeof one);
    (void)w;
}

int relay_result(relay *r)
{
    return __atomic_load_n(&r->result, __ATOMIC_ACQUIRE);
}

size_t relay_last_error(relay *r, char *buf, size_t len)
{
    size_t n;
    if (len == 0)
        return 0;
    pthread_mutex_lock(&r->err_lock);
    n = strnlen(r->err, sizeof r->err);
    if (n >= len)
        n = len - 1;
    memcpy(buf, r->err, n);
    buf[n] = 0;
    pthread_mutex_unlock(&r->err_lock);
    return n;
}

static int rl_alloc_io(relay *r)
{
    r->fr = calloc(PCAP_BATCH, sizeof *r->fr);
    r->wiov = calloc(PCAP_BATCH, sizeof *r->wiov);
    r->wmm = calloc(PCAP_BATCH, sizeof *r->wmm);
    r->fid = calloc(PCAP_BATCH, sizeof *r->fid);
    if (!r->fr || !r->wiov || !r->wmm || !r->fid)
        return -ENOMEM;
    for (uint32_t i = 0; i < PCAP_BATCH; i++) {
        r->wmm[i].msg_hdr.msg_iov = &r->wiov[i];
        r->wmm[i].msg_hdr.msg_iovlen = 1;
    }
    if (r->src_kind == RELAY_KIND_PCAP) {
        r->rbuf = malloc(RBUF_SIZE);
        if (!r->rbuf)
            return -ENOMEM;
    } else {
        r->slots = malloc((size_t)r->sock_batch * SLOT_SIZE);
        r->rmm = calloc(r->sock_batch, sizeof *r->rmm);
        r->riov = calloc(r->sock_batch, sizeof *r->riov);
        if (!r->slots || !r->rmm || !r->riov)
            return -ENOMEM;
        for (uint32_t i = 0; i < r->sock_batch; i++) {
            /* one byte more than the largest frame: a longer one shows MSG_TRUNC */
            r->riov[i].iov_base = r->slots + (size_t)i * SLOT_SIZE + REC_HDR;
            r->riov[i].iov_len = RELAY_FRAME_MAX;
            r->rmm[i].msg_hdr.msg_iov = &r->riov[i];
            r->rmm[i].msg_hdr.msg_iovlen = 1;
        }
    }
    return 0;
}

static uint64_t env_u64(const char *name, uint64_t dflt, uint64_t max);

int relay_open(relay *r, int src_fd, int src_kind, int dst_fd, int dst_kind, int write_header)
{
    int rc, dummy;
    if (r->opened) {
        rl_set_err(r, "relay already opened");
        return -EALREADY;
    }
    r->src_kind = src_kind;
    r->dst.kind = dst_kind;
    rc = rl_take_fd(r, src_fd, src_kind, 0, "source", &r->src_fd, &r->src_sotype, &r->src_is_sock);
    if (rc < 0)
        return rc;
    rc = rl_take_fd(r, dst_fd, dst_kind, 1, "destination", &r->dst.fd, &dummy, &r->dst.is_sock);
    if (rc < 0)
        goto fail;
    r->sock_batch = (uint32_t)env_u64("STDPKT_RELAY_SOCK_BATCH", SOCK_BATCH, SOCK_BATCH_MAX);
    if (r->sock_batch == 0)
        r->sock_batch = SOCK_BATCH;
    r->spin_ns = env_u64("STDPKT_RELAY_SPIN_US", 0, 1000000) * 1000u;
    r->direct = (int)env_u64("STDPKT_RELAY_DIRECT", 4, 7);
    if (src_kind == RELAY_KIND_PCAP)
        rl_reader_announce(r);        /* this relay copies what it reads (vhost_splice.c) */
    rc = rl_alloc_io(r);
    if (rc < 0) {
        rl_set_err(r, "out of memory");
        goto fail;
    }
    if (dst_kind == RELAY_KIND_PCAP && write_header)
        rl_start_ghdr(&r->dst);
    r->opened = 1;
    return 0;
fail:
    rl_close_fds(r);
    rl_free_io(r);
    return rc;
}

/* ---------------------------------------------------------------- loop */

/* Waits for the source; also notices a destination whose peer went away. */
static int wait_src(relay *r)
{
    struct pollfd p[5];
    for (;;) {
        if (stopping(r))
            return RELAY_STOPPED;
        p[0].fd = r->src_fd;
        p[0].events = POLLIN;
        p[1].fd = r->stopfd;
        p[1].events = POLLIN;
        p[2].fd = __atomic_load_n(&r->dst.fd, __ATOMIC_RELAXED);
        p[2].events = 0;          /* POLLERR / POLLHUP only */
        p[3].fd = r->kickfd;
        p[3].events = POLLIN;
        p[4].fd = r->vh_own ? r->vh_kick : -1;   /* the guest's transmit queue (vhost_ring.c) */
        p[4].events = POLLIN;
        p[0].revents = p[1].revents = p[2].revents = p[3].revents = p[4].revents = 0;
        struct timespec release = { 0, RL_RELEASE_NS };
        int k = ppoll(p, 5, r->held_n ? &release : NULL, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            rl_set_err(r, "poll on source: %s", strerror(errno));
            return RELAY_ERROR;
        }
        if (k == 0)
            return 0;     /* frames held for a pipe's reader: see what it has read */
        if (p[1].revents)
            return RELAY_STOPPED;
        if (p[3].revents) {
            uint64_t v;
            ssize_t k = read(r->kickfd, &v, sizeof v);
            (void)k;
            return 0;     /* retargeted (poll the new one), or a vhost queue changed hands */
        }
        if (p[4].revents) {
            uint64_t v;
            while (read(r->vh_kick, &v, sizeof v) > 0)   /* the guest's kicks */
                ;
            return 0;
        }
        if (p[0].revents)
            return 0;
        if (p[2].revents & (POLLERR | POLLHUP)) {
            rl_set_err(r, "destination closed by its peer (%s)",
                    p[2].revents & POLLHUP ? "hangup" : "error");
            return RELAY_PEER_CLOSED;
        }
    }
}

/* Busy-polls the source for up to spin_ns: 1 once it is readable. Trades CPU for a
 * wake-up (12-16 us across cores here) when the next batch is about to arrive. */
static int spin_src(relay *r)
{
    struct pollfd p[2] = { { r->src_fd, POLLIN, 0 }, { r->vh_own ? r->vh_kick : -1, POLLIN, 0 } };
    uint64_t end = now_ns() + r->spin_ns;
    do {
        if (stopping(r))
            return 0;
        p[0].revents = p[1].revents = 0;
        if (poll(p, 2, 0) > 0)
            return 1;
    } while (now_ns() < end);
    return 0;
}

static uint64_t env_u64(const char *name, uint64_t dflt, uint64_t max)
{
    const char *v = getenv(name);
    char *end;
    if (v == NULL || *v == 0)
        return dflt;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end != 0)
        return dflt;
    return x > max ? max : x;
}

/* Before the first step: the global header of the default output. 0 or a RELAY_* result. */
int rl_begin(relay *r)
{
    int rc;
    r->ran = 1;
    if (stopping(r))
        return RELAY_STOPPED;
    pthread_mutex_lock(&r->dst_lock);
    rc = rl_flush_ghdr(r, &r->dst);
    pthread_mutex_unlock(&r->dst_lock);
    return rc;
}

/* One batch: read what the source has, trace it, write it.  0 to go on (*idle: the
 * source had nothing, wait for it), or the RELAY_* result that ends the loop. */
int rl_step(relay *r, int *idle)
{
    uint32_t n = 0;
    int rc;
    *idle = 0;
    if (stopping(r))
        return RELAY_STOPPED;
    if (r->held_n)
        rl_held_service(r);           /* what the pipe's reader has read goes back to the guest */
    if (r->vh != NULL && (r->direct & 5) && r->src_kind != RELAY_KIND_PCAP) {
        int res, dst = rl_vh_tx_pcap(r, &res);   /* guest buffers -> a pcap stream */
        if (dst >= 0) {
            if (res)
                return res;
            if (dst == RD_AGAIN)
                *idle = !(r->spin_ns && spin_src(r));
            return 0;
        }
    }
    int st = r->src_kind == RELAY_KIND_PCAP ? rl_read_pcap(r, &n)
             : r->vh != NULL                ? rl_read_vhost(r, &n)
                                            : rl_read_sock(r, &n);
    if (n) {
        uint64_t ts = now_ns();
        rl_trace_batch(r, n, ts);
        pthread_mutex_lock(&r->dst_lock);
        rc = rl_write_batch(r, n, ts);
        pthread_mutex_unlock(&r->dst_lock);
        if (rc)
            return rc;
    }
    switch (st) {
    case RD_OK:
        return 0;
    case RD_AGAIN:
        *idle = !(r->spin_ns && spin_src(r));
        return 0;
    case RD_EOF:
        return RELAY_EOF;
    case RD_BAD:
        return RELAY_BAD_STREAM;
    default:
        return RELAY_ERROR;
    }
}

/* The loop ended with res: release its descriptors and buffers, publish the result. */
void rl_finish(relay *r, int res)
{
    relay_stop(r);      /* an inject() waiting for room gives up rather than block close_fds */
    rl_vh_release(r);
    rl_close_fds(r);
    rl_free_io(r);
    __atomic_store_n(&r->result, res, __ATOMIC_RELEASE);
}

void rl_block_sigpipe(sigset_t *old)
{
    sigset_t pipe_set;
    /* EPIPE instead of SIGPIPE in this thread, whatever the process does */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, old);
}

void rl_restore_sigpipe(const sigset_t *old)
{
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (!sigismember(old, SIGPIPE)) {
        sigset_t pending;
        struct timespec zero = { 0, 0 };
        sigpending(&pending);
        while (sigismember(&pending, SIGPIPE) && sigtimedwait(&pipe_set, NULL, &zero) > 0)
            sigpending(&pending);
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

int relay_run(relay *r)
{
    sigset_t old;
    int res, idle;
    if (!r->opened || r->ran) {
        rl_set_err(r, r->ran ? "relay already ran" : "relay not opened");
        return RELAY_ERROR;
    }
    prctl(PR_SET_NAME, "stdpkt-pump");   /* how top -H and ps -L name this thread */
    rl_block_sigpipe(&old);
    res = rl_begin(r);
    while (res == 0) {
        res = rl_step(r, &idle);
        if (res == 0 && idle)
            res = wait_src(r);
    }
    rl_finish(r, res);
    rl_restore_sigpipe(&old);
    return res;
}

/* ---------------------------------------------------------------- inject */

int relay_inject(relay *r, const void *data, uint32_t len)
{
    int rc = 0;
    if (len < RELAY_FRAME_MIN || len > RELAY_FRAME_MAX)
        return -EMSGSIZE;
    pthread_mutex_lock(&r->dst_lock);
    if (r->dst.fd < 0) {
        pthread_mutex_unlock(&r->dst_lock);
        return -EBADF;
    }
    uint64_t ts = now_ns();
    if (r->tslots && __atomic_load_n(&r->trace_on, __ATOMIC_RELAXED)) {
        pthread_mutex_lock(&r->trace_lock);
        uint64_t seq = __atomic_fetch_add(&r->seq, 1, __ATOMIC_RELAXED);
        rl_trace_put(r, data, len, len, ts, seq, RELAY_TRACE_INJECTED);
        pthread_mutex_unlock(&r->trace_lock);
    } else {
        __atomic_fetch_add(&r->seq, 1, __ATOMIC_RELAXED);
    }
    if (r->dst.kind == RELAY_KIND_PCAP) {
        uint8_t hdr[REC_HDR];
        struct iovec v[2] = { { hdr, REC_HDR }, { (void *)data, len } };
        int done;
        put_rec_hdr(hdr, ts, len, len);
        rc = rl_flush_ghdr(r, &r->dst);
        if (rc == 0)
            rc = rl_dst_writev_all(r, &r->dst, v, 2, &done, 0);
    } else {
        struct iovec v = { (void *)data, len };
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &v;
        mh.msg_iovlen = 1;
        for (;;) {
            if (sendmsg(r->dst.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
                break;
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                int w = rl_wait_fd(r, r->dst.fd, POLLOUT, 0);
                if (w == 0)
                    continue;
                rc = w == 1 ? RELAY_STOPPED : RELAY_ERROR;
                break;
            }
            if (rl_is_peer_gone(e)) {
                rc = rl_peer_closed(r, e);
            } else {
                rl_set_err(r, "injecting a frame of %u bytes: %s", len, strerror(e));
                rc = e == EMSGSIZE ? -EMSGSIZE : RELAY_ERROR;
            }
            break;
        }
    }
    if (rc == 0)
        __atomic_store_n(&r->st->injected, r->st->injected + 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->dst_lock);
    switch (rc) {
    case 0:
        return 0;
    case -EMSGSIZE:
        return -EMSGSIZE;
    case RELAY_STOPPED:
        return -ECANCELED;
    case RELAY_PEER_CLOSED:
        return -EPIPE;
    default:
        return -EIO;
    }
}
