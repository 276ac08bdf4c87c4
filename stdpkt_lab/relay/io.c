/*
 * io.c - descriptors and I/O of the relay: errors, waiting, taking
 * descriptors, reading socket sources, writing frames to an output.
 */
#define _GNU_SOURCE
#include "relay_int.h"

void rl_set_err(relay *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void rl_set_err(relay *r, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&r->err_lock);
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&r->err_lock);
}

/* Waits until fd has `events` (or an error/hangup), or stop is asked.
 * 0 ready, 1 stop, -errno poll failure. */
int rl_wait_fd(relay *r, int fd, short events, int may_yield)
{
    struct pollfd p[3];
    for (;;) {
        if (stopping(r))
            return 1;
        if (may_yield && __atomic_load_n(&r->ctl_pending, __ATOMIC_ACQUIRE))
            return 2;
        p[0].fd = fd;
        p[0].events = events;
        p[0].revents = 0;
        p[1].fd = r->stopfd;
        p[1].events = POLLIN;
        p[1].revents = 0;
        p[2].fd = r->kickfd;      /* a control operation is waiting for the lock */
        p[2].events = POLLIN;
        p[2].revents = 0;
        if (poll(p, may_yield ? 3 : 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (p[1].revents)
            return 1;
        if (p[0].revents)
            return 0;
        if (p[2].revents) {
            uint64_t v;
            ssize_t k = read(r->kickfd, &v, sizeof v);
            (void)k;
        }
    }
}

int rl_is_peer_gone(int e)
{
    return e == EPIPE || e == ECONNRESET || e == ECONNREFUSED || e == ENOTCONN;
}

int rl_peer_closed(relay *r, int e)
{
    rl_set_err(r, "destination closed by its peer: %s", strerror(e));
    return RELAY_PEER_CLOSED;
}

void rl_grow_pipe(int fd)
{
    int sz = fcntl(fd, F_GETPIPE_SZ);
    if (sz >= 0 && sz < PIPE_SIZE)
        (void)fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE);   /* may fail (limits): fine */
}

/* Gives the relay its own description of fd. */
int rl_take_fd(relay *r, int fd, int kind, int for_write, const char *role, int *out,
                   int *sotype, int *is_sock)
{
    struct stat sb;
    int fl, nfd;
    const char *dir = for_write ? "destination" : "source";

    *sotype = 0;
    *is_sock = 0;
    if (fstat(fd, &sb) < 0 || (fl = fcntl(fd, F_GETFL)) < 0) {
        int e = errno;
        rl_set_err(r, "%s fd %d: %s", role, fd, strerror(e));
        return -e;
    }
    int acc = fl & O_ACCMODE;
    if ((for_write && acc == O_RDONLY) || (!for_write && acc == O_WRONLY)) {
        rl_set_err(r, "%s fd %d is not open for %s", role, fd, for_write ? "writing" : "reading");
        return -EBADF;
    }
    if (kind == RELAY_KIND_SOCKET) {
        int t = 0;
        socklen_t tl = sizeof t;
        if (!S_ISSOCK(sb.st_mode)) {
            rl_set_err(r, "%s fd %d is not a socket (use a pcap endpoint for pipes and files)",
                    role, fd);
            return -ENOTSOCK;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &tl) < 0) {
            int e = errno;
            rl_set_err(r, "%s fd %d: %s", role, fd, strerror(e));
            return -e;
        }
        if (t != SOCK_SEQPACKET && t != SOCK_DGRAM) {
            rl_set_err(r, "%s fd %d: a socket endpoint needs SOCK_SEQPACKET or SOCK_DGRAM "
                    "(a stream socket carries pcap: use a pcap endpoint)", role, fd);
            return -EPROTOTYPE;
        }
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* MSG_DONTWAIT: the description is untouched */
        if (nfd < 0) {
            int e = errno;
            rl_set_err(r, "%s fd %d: dup: %s", role, fd, strerror(e));
            return -e;
        }
        *sotype = t;
        *is_sock = 1;
        *out = nfd;
        return 0;
    }
    if (kind != RELAY_KIND_PCAP) {
        rl_set_err(r, "%s: unknown endpoint kind %d", dir, kind);
        return -EINVAL;
    }
    if (S_ISREG(sb.st_mode)) {
        /* regular files never block; share the caller's offset */
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    } else if (S_ISSOCK(sb.st_mode)) {
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        *is_sock = 1;   /* recv/send with MSG_DONTWAIT */
    } else {
        /* pipe, FIFO, tty: a separate open file description, so that setting
         * O_NONBLOCK does not change the caller's (e.g. a shell's stdin) */
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        nfd = open(path, (for_write ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_CLOEXEC);
        if (nfd < 0) {
            nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
            if (nfd >= 0 && fcntl(nfd, F_SETFL, fl | O_NONBLOCK) < 0) {
                int e = errno;
                close(nfd);
                rl_set_err(r, "%s fd %d: O_NONBLOCK: %s", role, fd, strerror(e));
                return -e;
            }
        }
        if (nfd >= 0 && S_ISFIFO(sb.st_mode))
            rl_grow_pipe(nfd);
    }
    if (nfd < 0) {
        int e = errno;
        rl_set_err(r, "%s fd %d: %s", role, fd, strerror(e));
        return -e;
    }
    *out = nfd;
    return 0;
}

/* One non-blocking write attempt of iov[0..cnt) to the destination. */
ssize_t rl_dst_write_once(relay_out *o, struct iovec *iov, int cnt)
{
    if (o->is_sock) {
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)cnt;
        return sendmsg(o->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    ssize_t w = writev(o->fd, iov, cnt);
    if (w > 0)
        o->wrote += (uint64_t)w;
    return w;
}

/* Writes iov[0..cnt) completely to a byte-stream destination (dst lock held).
 * *done: iovecs written completely.  0 or a RELAY_* result. */
int rl_dst_writev_all(relay *r, relay_out *o, struct iovec *iov, int cnt, int *done,
                      int may_yield)
{
    int i = 0, partial = 0;
    *done = 0;
    while (i < cnt) {
        int k = cnt - i < MAX_IOV ? cnt - i : MAX_IOV;
        ssize_t w = rl_dst_write_once(o, iov + i, k);
        if (w < 0) {
            int e = errno, rc;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                /* a control operation may take over at a record boundary only, so
                 * that the old stream ends with a whole record */
                rc = rl_wait_fd(r, o->fd, POLLOUT, may_yield && !partial);
                if (rc == 2)
                    return RL_YIELD;
                if (rc == 1)
                    return RELAY_STOPPED;
                if (rc < 0) {
                    rl_set_err(r, "poll on destination: %s", strerror(-rc));
                    return RELAY_ERROR;
                }
                continue;
            }
            if (rl_is_peer_gone(e))
                return rl_peer_closed(r, e);
            rl_set_err(r, "writing to destination: %s", strerror(e));
            return RELAY_ERROR;
        }
        size_t left = (size_t)w;
        while (i < cnt && left >= iov[i].iov_len) {
            left -= iov[i].iov_len;
            i++;
            *done = i;
            partial = 0;
        }
        if (left) {
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + left;
            iov[i].iov_len -= left;
            partial = 1;
        }
    }
    return 0;
}

int rl_flush_ghdr(relay *r, relay_out *o)
{
    if (o->ghdr_off >= o->ghdr_len)
        return 0;
    struct iovec v = { o->ghdr + o->ghdr_off, o->ghdr_len - o->ghdr_off };
    int done;
    int rc = rl_dst_writev_all(r, o, &v, 1, &done, 0);
    if (rc == 0)
        o->ghdr_off = o->ghdr_len;
    else
        o->ghdr_off = (uint32_t)(o->ghdr_len - v.iov_len);
    return rc;
}

/* Prepares the global header of a pcap output and writes what fits now, so a
 * reader sees a valid (possibly empty) stream at once; the rest goes first
 * with the output's first records. */
void rl_start_ghdr(relay_out *o)
{
    uint32_t h[6] = { MAGIC_US, 2u | 4u << 16, 0, 0, RELAY_SNAPLEN, LINKTYPE_ETHERNET };
    memcpy(o->ghdr, h, GHDR);
    o->ghdr_len = GHDR;
    o->ghdr_off = 0;
    struct iovec v = { o->ghdr, GHDR };
    ssize_t w = rl_dst_write_once(o, &v, 1);
    if (w > 0)
        o->ghdr_off = (uint32_t)w;
}

int rl_read_sock(relay *r, uint32_t *n)
{
    *n = 0;
    if (r->src_eof)
        return RD_EOF;
    for (;;) {
        int k = recvmmsg(r->src_fd, r->rmm, r->sock_batch, MSG_DONTWAIT, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return RD_AGAIN;
            if (errno == ECONNRESET || errno == ENOTCONN) {
                r->src_eof = 1;
                return RD_EOF;
            }
            rl_set_err(r, "receiving from source: %s", strerror(errno));
            return RD_ERROR;
        }
        if (k == 0) {
            r->src_eof = 1;
            return RD_EOF;
        }
        uint32_t drops = 0;
        int eof = 0;
        for (int i = 0; i < k; i++) {
            uint32_t len = r->rmm[i].msg_len;
            if (len == 0 && r->src_sotype == SOCK_SEQPACKET) {
                eof = 1;           /* peer closed */
                break;
            }
            if (r->rmm[i].msg_hdr.msg_flags & MSG_TRUNC) {
                drops++;
                rl_set_err(r, "frame longer than %d bytes from source; dropped", RELAY_FRAME_MAX);
                continue;
            }
            if (len < RELAY_FRAME_MIN) {
                drops++;
                rl_set_err(r, "runt frame of %u bytes from source; dropped", len);
                continue;
            }
            r->fr[*n].rec = r->slots + (size_t)i * SLOT_SIZE;
            r->fr[*n].len = len;
            r->fr[*n].orig = len;
            (*n)++;
        }
        if (drops)
            stat_add(&r->st->drops, drops);
        if (eof) {
            r->src_eof = 1;
            return RD_EOF;
        }
        if (*n)
            return RD_OK;
    }
}

/* ---------------------------------------------------------------- destinations */

/* Writes frames [first, first + n) of the batch to o as pcap records.
 * *sent, *bytes: frames written and their bytes (added to the relay's counters). */
static int write_pcap(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t ts,
                      uint32_t *sent, uint64_t *bytes_out)
{
    uint64_t bytes = 0;
    int done = 0, rc;
    frame *fr = r->fr + first;
    struct iovec *iov = r->wiov + first;
    for (uint32_t i = 0; i < n; i++) {
        put_rec_hdr(fr[i].rec, ts, fr[i].len, fr[i].orig);
        iov[i].iov_base = fr[i].rec;
        iov[i].iov_len = REC_HDR + fr[i].len;
    }
    rc = rl_flush_ghdr(r, o);
    if (rc == 0)
        rc = rl_dst_writev_all(r, o, iov, (int)n, &done, 1);
    for (int i = 0; i < done; i++)
        bytes += fr[i].len;
    stat_add(&r->st->frames, (uint64_t)done);
    stat_add(&r->st->bytes, bytes);
    *sent = (uint32_t)done;
    *bytes_out = bytes;
    return rc;
}

static int write_sock(relay *r, relay_out *o, uint32_t first, uint32_t n,
                      uint32_t *sent_out, uint64_t *bytes_out)
{
    uint32_t i = 0, sent = 0, drops = 0;
    uint64_t bytes = 0;
    int rc = 0;
    frame *fr = r->fr + first;
    if (o->vh != NULL) {   /* a vhost port's host end: straight into its queue (vhost_ring.c) */
        i = sent = rl_vh_put(r, o, first, n, &bytes);
        if (i == n)
            goto counted;
    }
    for (uint32_t j = i; j < n; j++) {
        r->wiov[first + j].iov_base = fr[j].rec + REC_HDR;
        r->wiov[first + j].iov_len = fr[j].len;
    }
    while (i < n) {
        int k = sendmmsg(o->fd, r->wmm + first + i, n - i, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k > 0) {
            for (int j = 0; j < k; j++)
                bytes += fr[i + (uint32_t)j].len;
            sent += (uint32_t)k;
            i += (uint32_t)k;
            continue;
        }
        int e = k == 0 ? EAGAIN : errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
            int w = rl_wait_fd(r, o->fd, POLLOUT, 1);
            if (w == 2) {
                rc = RL_YIELD;    /* messages are whole: any frame boundary will do */
                break;
            }
            if (w == 1) {
                rc = RELAY_STOPPED;
                break;
            }
            if (w < 0) {
                rl_set_err(r, "poll on destination: %s", strerror(-w));
                rc = RELAY_ERROR;
                break;
            }
            continue;
        }
        if (e == EMSGSIZE || e == ENOBUFS || e == ENOMEM) {
            rl_set_err(r, "destination refused a frame of %u bytes: %s; dropped", fr[i].len,
                    strerror(e));
            drops++;
            i++;
            continue;
        }
        if (rl_is_peer_gone(e)) {
            rc = rl_peer_closed(r, e);
            break;
        }
        rl_set_err(r, "sending to destination: %s", strerror(e));
        rc = RELAY_ERROR;
        break;
    }
counted:
    stat_add(&r->st->frames, sent);
    stat_add(&r->st->bytes, bytes);
    if (drops)
        stat_add(&r->st->drops, drops);
    *sent_out = sent;
    *bytes_out = bytes;
    return rc;
}

int rl_write_out(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t ts,
                     uint32_t *sent, uint64_t *bytes)
{
    *sent = 0;
    *bytes = 0;
    return o->kind == RELAY_KIND_PCAP ? write_pcap(r, o, first, n, ts, sent, bytes)
                                      : write_sock(r, o, first, n, sent, bytes);
}
