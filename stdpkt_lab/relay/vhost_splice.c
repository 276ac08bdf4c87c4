/*
 * vhost_splice.c - a vhost port's transmit frames spliced into a pipe, not copied.
 *
 * With STDPKT_RELAY_DIRECT bit 2 the transmit path of vhost_pcap.c hands the pipe
 * references to the guest's own buffers (vmsplice()) instead of copying them into it:
 * the reader's read() is then the frame's only copy on the writing side's account.
 * The price is that a buffer the pipe refers to must not change until it has been
 * read, so its descriptor goes back to the guest only once the reader has read past
 * the record's last byte: bytes written to the pipe so far less what it still holds
 * (FIONREAD).  Until then it is "held" here, with its record header.
 *
 * Safe only when the reader copies what it reads.  A reader that splices the pipe on
 * (pv, or tee(2)) would pass the references along, and the guest would overwrite
 * frames still waiting in the next pipe.  So the writer splices only into a pipe
 * whose reader has said it copies: a relay reading a pcap pipe binds an abstract
 * unix socket named after the pipe's inode (rl_reader_announce), and the writer looks
 * for that name (every 50 ms until it is there).  Any other reader (tee, tcpdump, a
 * file) gets the copying path, as before.
 *
 * Held frames are released at every step and, while any are held, at least every
 * RELEASE_NS (the loop's poll has that timeout), since a guest whose TCP waits for
 * its transmit completions would not kick the queue again.  A new destination or a
 * failed FIONREAD releases them all; a reset queue (a new generation: vhost_proto.c
 * changes_queues) forgets them,
 * since the heads are the old queue's.  When the loop ends they are released once
 * the reader has read them, or after SETTLE_NS.
 */
#define _GNU_SOURCE
#include "relay_int.h"
#include "vhost.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>

#define PROBE_NS 50000000ull          /* look for the reader's name this often */
#define SETTLE_NS 100000000ull        /* at the end: wait this long for the reader */

typedef struct rl_held {
    uint64_t end;                     /* the pipe's byte count at the record's end */
    uint16_t head;
} rl_held;

static socklen_t reader_name(int fd, struct sockaddr_un *a)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode))
        return 0;
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "stdpkt-copying-reader/%llx/%llx",
                     (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

void rl_reader_announce(relay *r)
{
    struct sockaddr_un a;
    socklen_t len = reader_name(r->src_fd, &a);
    if (len == 0)
        return;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    if (bind(s, (struct sockaddr *)&a, len) < 0) {
        close(s);                     /* another reader of the same pipe: nobody says it */
        return;
    }
    r->reader_sock = s;
}

/* dst_lock held: the reader of o's pipe said it copies. */
static int reader_copies(relay *r, relay_out *o)
{
    if (r->vs_epoch == o->epoch + 1 && r->vs_ok)
        return 1;
    uint64_t t = now_ns();
    if (r->vs_epoch == o->epoch + 1 && t < r->vs_probe_ns)
        return 0;
    r->vs_epoch = o->epoch + 1;
    r->vs_ok = 0;
    r->vs_probe_ns = t + PROBE_NS;
    struct sockaddr_un a;
    socklen_t len = reader_name(o->fd, &a);
    if (len == 0)
        return 0;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return 0;
    r->vs_ok = connect(s, (struct sockaddr *)&a, len) == 0;
    close(s);
    return r->vs_ok;
}

int rl_splice_usable(relay *r, relay_out *o)
{
    if (!(r->direct & 4) || o->is_sock)
        return 0;
    if (r->held == NULL) {
        r->held = calloc(RL_HELD_MAX, sizeof *r->held);
        r->held_hdr = calloc(RL_HELD_MAX, REC_HDR);
        if (r->held == NULL || r->held_hdr == NULL)
            return 0;
    }
    if (r->held_n && (r->held_epoch != o->epoch || r->held_gen != r->vh_gen))
        return 0;                     /* the old ones first (rl_held_service) */
    return RL_HELD_MAX - r->held_n >= r->sock_batch && reader_copies(r, o);
}

uint8_t *rl_held_hdr(relay *r, uint32_t k)
{
    return r->held_hdr + (size_t)((r->held_tail + r->held_n + k) % RL_HELD_MAX) * REC_HDR;
}

void rl_held_add(relay *r, uint16_t head, uint64_t end)
{
    if (r->held_n == 0) {
        r->held_epoch = r->dst.epoch;
        r->held_gen = r->vh_gen;
    }
    rl_held *h = &r->held[(r->held_tail + r->held_n) % RL_HELD_MAX];
    h->head = head;
    h->end = end;
    r->held_n++;
}

/* dst_lock and the port's tx_lock held: gives back what the reader has read (all:
 * everything); signals the guest if any went back. */
static void release_locked(relay *r, relay_vhost *v, int all)
{
    if (v->tx_gen != r->held_gen) {
        r->held_n = 0;                /* a reset queue: those heads are not its */
        return;
    }
    relay_out *o = &r->dst;
    uint64_t done = UINT64_MAX;
    int inq = 0;
    if (!all && o->epoch == r->held_epoch && o->fd >= 0 && ioctl(o->fd, FIONREAD, &inq) == 0)
        done = o->wrote - (uint64_t)inq;
    uint32_t k = 0;
    while (r->held_n && r->held[r->held_tail].end <= done) {
        vq_push(&v->q[1], r->held[r->held_tail].head, 0);
        r->held_tail = (r->held_tail + 1) % RL_HELD_MAX;
        r->held_n--;
        k++;
    }
    if (k)
        vq_signal(&v->q[1]);
}

void rl_held_service(relay *r)
{
    relay_vhost *v = r->vh;
    if (v == NULL) {
        r->held_n = 0;
        return;
    }
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&v->tx_lock);
    release_locked(r, v, 0);
    pthread_mutex_unlock(&v->tx_lock);
    pthread_mutex_unlock(&r->dst_lock);
}

void rl_held_finish(relay *r)
{
    relay_vhost *v = r->vh;
    if (!r->held_n || v == NULL) {
        r->held_n = 0;
        return;
    }
    uint64_t until = now_ns() + SETTLE_NS;
    for (;;) {
        rl_held_service(r);
        if (!r->held_n || now_ns() >= until)
            break;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&v->tx_lock);
    release_locked(r, v, 1);          /* the reader is gone or stuck: the guest's anyway */
    pthread_mutex_unlock(&v->tx_lock);
    pthread_mutex_unlock(&r->dst_lock);
}

void rl_held_free(relay *r)
{
    free(r->held);
    free(r->held_hdr);
    r->held = NULL;
    r->held_hdr = NULL;
    r->held_n = r->held_tail = 0;
}
