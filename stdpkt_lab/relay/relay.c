/*
 * relay.c - the packet relay of stdpkt-lab (see relay.h).
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
#include "relay.h"
#include "flow.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REC_HDR 16                    /* pcap record header */
#define GHDR 24                       /* pcap global header */
#define SLOT_SIZE 65568               /* REC_HDR + RELAY_FRAME_MAX, rounded up to 16 */
#define SOCK_BATCH 16                 /* frames per recvmmsg */
#define PCAP_BATCH 256                /* frames per parse/write batch */
#define RBUF_READ (1u << 20)          /* bytes per read() of a pcap source */
#define RBUF_SIZE (RBUF_READ + SLOT_SIZE + 64)
#define PIPE_SIZE (1 << 20)
#define MAX_IOV 1024
#define ERR_LEN 320
#define BPF_MAX_INSNS 4096
#define BPF_MEMWORDS 16

#define MAGIC_US 0xa1b2c3d4u
#define MAGIC_NS 0xa1b23c4du
#define MAGIC_US_SWAPPED 0xd4c3b2a1u
#define MAGIC_NS_SWAPPED 0x4d3cb2a1u
#define LINKTYPE_ETHERNET 1u

enum { RD_OK, RD_AGAIN, RD_EOF, RD_BAD, RD_ERROR };

typedef struct frame {
    uint8_t *rec;      /* REC_HDR bytes of room, then the frame */
    uint32_t len;
    uint32_t orig;
} frame;

/* A destination: the default one or a steering rule's. */
typedef struct relay_out {
    int fd;
    int kind;
    int is_sock;                  /* sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL) on a pcap destination */
    int dead;                     /* a steering output that failed: its frames are dropped */
    uint8_t ghdr[GHDR];           /* global header still to be written */
    uint32_t ghdr_off, ghdr_len;
} relay_out;

typedef struct steer_rule {
    uint32_t id;
    relay_bpf_insn *filt;         /* NULL: the rule only carries flows recorded by the other pump */
    uint32_t filt_len;
    relay_out out;
    relay_steer_stats st;         /* single writer (the loop); read under rules_lock */
} steer_rule;

typedef struct trace_meta {
    uint64_t ts_ns;
    uint64_t seq;
    uint32_t orig_len;
    uint32_t cap_len;
    uint32_t flags;
} trace_meta;

struct relay {
    relay_stats *st;
    int stopfd;
    int stopping;                 /* atomic */
    int result;                   /* atomic */
    int opened, ran;

    int src_fd;
    int src_kind;
    int src_sotype;               /* SOCK_SEQPACKET / SOCK_DGRAM, or 0 */
    int src_is_sock;              /* use recv(MSG_DONTWAIT) on a pcap source */
    int kickfd;                   /* eventfd: the destination changed, re-poll */

    pthread_mutex_t dst_lock;     /* every destination write, retarget, steering changes */
    relay_out dst;                /* the default destination */

    /* steering (under dst_lock; rules_lock too for changes, alone for stats) */
    pthread_mutex_t rules_lock;
    relay_flowtab *ft;
    steer_rule *rules[RELAY_MAX_RULES];
    uint32_t nrules;
    int16_t *fout;                /* per frame of a batch: rule index, or -1 (default) */

    pthread_mutex_t err_lock;
    char err[ERR_LEN];

    /* pcap source */
    uint8_t *rbuf;
    size_t rpos, rend;
    uint64_t rbase;               /* stream offset of rbuf[0] */
    int have_ghdr, swapped, nsec;
    uint64_t skip_left;           /* bytes of a malformed record still to discard */
    int resync;                   /* scanning for a plausible record header */
    int have_ts;                  /* last_sec holds the ts_sec of the last good record */
    uint32_t last_sec;
    uint64_t resync_from;         /* stream offset where the scan started */
    int src_eof;

    /* socket source */
    uint8_t *slots;
    struct mmsghdr *rmm;
    struct iovec *riov;

    /* one batch */
    frame *fr;
    struct iovec *wiov;
    struct mmsghdr *wmm;

    uint64_t seq;                 /* atomic: frames handled (read + injected) */

    /* trace ring */
    pthread_mutex_t trace_lock;
    int trace_on;                 /* atomic */
    uint32_t tslots, tsnap;
    uint64_t thead;
    trace_meta *tmeta;
    uint8_t *tdata;
    relay_bpf_insn *filt;
    uint32_t filt_len;
};

/* ------------------------------------------------------------------ helpers */

static void set_err(relay *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_err(relay *r, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&r->err_lock);
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&r->err_lock);
}

static inline void stat_add(uint64_t *p, uint64_t v)
{
    /* single writer per counter; readers do plain aligned loads */
    __atomic_store_n(p, *p + v, __ATOMIC_RELAXED);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t get32(const relay *r, const uint8_t *p)
{
    uint32_t v = ld32(p);
    return r->swapped ? __builtin_bswap32(v) : v;
}

static inline void put_rec_hdr(uint8_t *h, uint64_t ts_ns, uint32_t len, uint32_t orig)
{
    uint32_t v[4];
    v[0] = (uint32_t)(ts_ns / 1000000000u);
    v[1] = (uint32_t)(ts_ns % 1000000000u / 1000u);
    v[2] = len;
    v[3] = orig;
    memcpy(h, v, sizeof v);
}

static int is_magic(uint32_t m)
{
    return m == MAGIC_US || m == MAGIC_NS || m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED;
}

static int stopping(relay *r)
{
    return __atomic_load_n(&r->stopping, __ATOMIC_RELAXED);
}

/* Waits until fd has `events` (or an error/hangup), or stop is asked.
 * 0 ready, 1 stop, -errno poll failure. */
static int wait_fd(relay *r, int fd, short events)
{
    struct pollfd p[2];
    for (;;) {
        if (stopping(r))
            return 1;
        p[0].fd = fd;
        p[0].events = events;
        p[0].revents = 0;
        p[1].fd = r->stopfd;
        p[1].events = POLLIN;
        p[1].revents = 0;
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (p[1].revents)
            return 1;
        if (p[0].revents)
            return 0;
    }
}

static int is_peer_gone(int e)
{
    return e == EPIPE || e == ECONNRESET || e == ECONNREFUSED || e == ENOTCONN;
}

/* ---------------------------------------------------------------- BPF */

#define BPF_CLASS(c) ((c) & 0x07)
#define BPF_SIZE(c) ((c) & 0x18)
#define BPF_MODE(c) ((c) & 0xe0)
#define BPF_OP(c) ((c) & 0xf0)
#define BPF_SRC(c) ((c) & 0x08)
#define BPF_RVAL(c) ((c) & 0x18)
#define BPF_MISCOP(c) ((c) & 0xf8)

enum {
    C_LD = 0x00, C_LDX = 0x01, C_ST = 0x02, C_STX = 0x03,
    C_ALU = 0x04, C_JMP = 0x05, C_RET = 0x06, C_MISC = 0x07,
    S_W = 0x00, S_H = 0x08, S_B = 0x10,
    M_IMM = 0x00, M_ABS = 0x20, M_IND = 0x40, M_MEM = 0x60, M_LEN = 0x80, M_MSH = 0xa0,
    O_ADD = 0x00, O_SUB = 0x10, O_MUL = 0x20, O_DIV = 0x30, O_OR = 0x40, O_AND = 0x50,
    O_LSH = 0x60, O_RSH = 0x70, O_NEG = 0x80, O_MOD = 0x90, O_XOR = 0xa0,
    J_JA = 0x00, J_JEQ = 0x10, J_JGT = 0x20, J_JGE = 0x30, J_JSET = 0x40,
    SRC_K = 0x00, SRC_X = 0x08,
    RV_K = 0x00, RV_X = 0x08, RV_A = 0x10,
    MISC_TAX = 0x00, MISC_TXA = 0x80,
};

int relay_bpf_validate(const relay_bpf_insn *f, uint32_t n)
{
    if (f == NULL || n == 0 || n > BPF_MAX_INSNS)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        uint16_t c = f[i].code;
        uint32_t k = f[i].k;
        switch (BPF_CLASS(c)) {
        case C_LD:
        case C_LDX:
            switch (BPF_MODE(c)) {
            case M_IMM:
            case M_LEN:
                break;
            case M_ABS:
            case M_IND:
                if (BPF_CLASS(c) == C_LDX)
                    return -EINVAL;
                if (BPF_SIZE(c) != S_W && BPF_SIZE(c) != S_H && BPF_SIZE(c) != S_B)
                    return -EINVAL;
                break;
            case M_MSH:
                if (BPF_CLASS(c) != C_LDX || BPF_SIZE(c) != S_B)
                    return -EINVAL;
                break;
            case M_MEM:
                if (k >= BPF_MEMWORDS)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        case C_ST:
        case C_STX:
            if (k >= BPF_MEMWORDS)
                return -EINVAL;
            break;
        case C_ALU:
            switch (BPF_OP(c)) {
            case O_ADD: case O_SUB: case O_MUL: case O_OR: case O_AND:
            case O_LSH: case O_RSH: case O_NEG: case O_XOR:
                break;
            case O_DIV:
            case O_MOD:
                if (BPF_SRC(c) == SRC_K && k == 0)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        case C_JMP: {
            uint32_t left = n - i - 1;
            switch (BPF_OP(c)) {
            case J_JA:
                if (k >= left)
                    return -EINVAL;
                break;
            case J_JEQ: case J_JGT: case J_JGE: case J_JSET:
                if (f[i].jt >= left || f[i].jf >= left)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        }
        case C_RET:
            if (BPF_RVAL(c) != RV_K && BPF_RVAL(c) != RV_A && BPF_RVAL(c) != RV_X)
                return -EINVAL;
            break;
        case C_MISC:
            if (BPF_MISCOP(c) != MISC_TAX && BPF_MISCOP(c) != MISC_TXA)
                return -EINVAL;
            break;
        }
    }
    return BPF_CLASS(f[n - 1].code) == C_RET ? 0 : -EINVAL;
}

/* Runs a validated program (libpcap semantics: out-of-bounds loads reject). */
uint32_t relay_bpf_run(const relay_bpf_insn *f, const uint8_t *p, uint32_t buflen,
                       uint32_t wirelen)
{
    uint32_t A = 0, X = 0, mem[BPF_MEMWORDS] = {0};
    const relay_bpf_insn *pc = f;
    for (;; pc++) {
        uint32_t k = pc->k, off;
        switch (pc->code) {
        case C_RET | RV_K:
            return k;
        case C_RET | RV_A:
            return A;
        case C_RET | RV_X:
            return X;
        case C_LD | S_W | M_ABS:
            off = k;
        ld_w:
            if (off > buflen || buflen - off < 4)
                return 0;
            A = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
                (uint32_t)p[off + 2] << 8 | p[off + 3];
            continue;
        case C_LD | S_H | M_ABS:
            off = k;
        ld_h:
            if (off > buflen || buflen - off < 2)
                return 0;
            A = (uint32_t)p[off] << 8 | p[off + 1];
            continue;
        case C_LD | S_B | M_ABS:
            off = k;
        ld_b:
            if (off >= buflen)
                return 0;
            A = p[off];
            continue;
        case C_LD | S_W | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_w;
        case C_LD | S_H | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_h;
        case C_LD | S_B | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_b;
        case C_LD | S_W | M_LEN:
            A = wirelen;
            continue;
        case C_LDX | S_W | M_LEN:
            X = wirelen;
            continue;
        case C_LD | M_IMM:
            A = k;
            continue;
        case C_LDX | M_IMM:
            X = k;
            continue;
        case C_LD | M_MEM:
            A = mem[k];
            continue;
        case C_LDX | M_MEM:
            X = mem[k];
            continue;
        case C_LDX | S_B | M_MSH:
            if (k >= buflen)
                return 0;
            X = (uint32_t)(p[k] & 0xf) << 2;
            continue;
        case C_ST:
            mem[k] = A;
            continue;
        case C_STX:
            mem[k] = X;
            continue;
        case C_JMP | J_JA:
            pc += k;
            continue;
        case C_JMP | J_JGT | SRC_K:
            pc += (A > k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGE | SRC_K:
            pc += (A >= k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JEQ | SRC_K:
            pc += (A == k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JSET | SRC_K:
            pc += (A & k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGT | SRC_X:
            pc += (A > X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGE | SRC_X:
            pc += (A >= X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JEQ | SRC_X:
            pc += (A == X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JSET | SRC_X:
            pc += (A & X) ? pc->jt : pc->jf;
            continue;
        case C_ALU | O_ADD | SRC_X: A += X; continue;
        case C_ALU | O_SUB | SRC_X: A -= X; continue;
        case C_ALU | O_MUL | SRC_X: A *= X; continue;
        case C_ALU | O_DIV | SRC_X:
            if (X == 0)
                return 0;
            A /= X;
            continue;
        case C_ALU | O_MOD | SRC_X:
            if (X == 0)
                return 0;
            A %= X;
            continue;
        case C_ALU | O_AND | SRC_X: A &= X; continue;
        case C_ALU | O_OR | SRC_X: A |= X; continue;
        case C_ALU | O_XOR | SRC_X: A ^= X; continue;
        case C_ALU | O_LSH | SRC_X: A = X < 32 ? A << X : 0; continue;
        case C_ALU | O_RSH | SRC_X: A = X < 32 ? A >> X : 0; continue;
        case C_ALU | O_ADD | SRC_K: A += k; continue;
        case C_ALU | O_SUB | SRC_K: A -= k; continue;
        case C_ALU | O_MUL | SRC_K: A *= k; continue;
        case C_ALU | O_DIV | SRC_K: A /= k; continue;   /* k != 0: validated */
        case C_ALU | O_MOD | SRC_K: A %= k; continue;
        case C_ALU | O_AND | SRC_K: A &= k; continue;
        case C_ALU | O_OR | SRC_K: A |= k; continue;
        case C_ALU | O_XOR | SRC_K: A ^= k; continue;
        case C_ALU | O_LSH | SRC_K: A = k < 32 ? A << k : 0; continue;
        case C_ALU | O_RSH | SRC_K: A = k < 32 ? A >> k : 0; continue;
        case C_ALU | O_NEG: A = -A; continue;
        case C_MISC | MISC_TAX: X = A; continue;
        case C_MISC | MISC_TXA: A = X; continue;
        default:
            /* codes with ignored bits set: normalise the way libpcap does */
            switch (BPF_CLASS(pc->code)) {
            case C_ST: mem[k] = A; continue;
            case C_STX: mem[k] = X; continue;
            case C_RET:
                return BPF_RVAL(pc->code) == RV_A ? A : BPF_RVAL(pc->code) == RV_X ? X : k;
            case C_MISC:
                if (BPF_MISCOP(pc->code) == MISC_TAX)
                    X = A;
                else
                    A = X;
                continue;
            }
            return 0;
        }
    }
}

/* ---------------------------------------------------------------- trace */

static void trace_put(relay *r, const uint8_t *data, uint32_t len, uint32_t orig,
                      uint64_t ts, uint64_t seq, uint32_t flags)
{
    if (r->filt && relay_bpf_run(r->filt, data, len, orig) == 0)
        return;
    uint32_t i = (uint32_t)(r->thead & (r->tslots - 1));
    uint32_t cap = len < r->tsnap ? len : r->tsnap;
    trace_meta *m = &r->tmeta[i];
    m->ts_ns = ts;
    m->seq = seq;
    m->orig_len = orig;
    m->cap_len = cap;
    m->flags = flags;
    memcpy(r->tdata + (size_t)i * r->tsnap, data, cap);
    r->thead++;
}

/* Gives the batch its sequence numbers and offers it to the trace ring. */
static void trace_batch(relay *r, uint32_t n, uint64_t ts)
{
    if (!r->tslots || !__atomic_load_n(&r->trace_on, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&r->seq, n, __ATOMIC_RELAXED);
        return;
    }
    pthread_mutex_lock(&r->trace_lock);
    uint64_t seq = __atomic_fetch_add(&r->seq, n, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < n; i++)
        trace_put(r, r->fr[i].rec + REC_HDR, r->fr[i].len, r->fr[i].orig, ts, seq + i, 0);
    pthread_mutex_unlock(&r->trace_lock);
}

void relay_set_trace(relay *r, int enabled)
{
    __atomic_store_n(&r->trace_on, enabled ? 1 : 0, __ATOMIC_RELAXED);
}

int relay_get_trace(relay *r)
{
    return __atomic_load_n(&r->trace_on, __ATOMIC_RELAXED);
}

int relay_set_filter(relay *r, const relay_bpf_insn *insns, uint32_t n)
{
    relay_bpf_insn *copy = NULL;
    if (insns != NULL && n > 0) {
        if (relay_bpf_validate(insns, n) != 0)
            return -EINVAL;
        copy = malloc(sizeof *copy * n);
        if (copy == NULL)
            return -ENOMEM;
        memcpy(copy, insns, sizeof *copy * n);
    }
    pthread_mutex_lock(&r->trace_lock);
    relay_bpf_insn *old = r->filt;
    r->filt = copy;
    r->filt_len = copy ? n : 0;
    pthread_mutex_unlock(&r->trace_lock);
    free(old);
    return 0;
}

uint32_t relay_trace_copy(relay *r, relay_trace_entry *out, uint8_t *data, uint32_t max)
{
    uint32_t n = 0;
    if (!r->tslots)
        return 0;
    pthread_mutex_lock(&r->trace_lock);
    uint64_t held = r->thead < r->tslots ? r->thead : r->tslots;
    if (held > max)
        held = max;
    for (uint64_t s = r->thead - held; s < r->thead; s++, n++) {
        uint32_t i = (uint32_t)(s & (r->tslots - 1));
        const trace_meta *m = &r->tmeta[i];
        out[n].ts_ns = m->ts_ns;
        out[n].seq = m->seq;
        out[n].orig_len = m->orig_len;
        out[n].cap_len = m->cap_len;
        out[n].flags = m->flags;
        out[n].reserved = 0;
        memcpy(data + (size_t)n * r->tsnap, r->tdata + (size_t)i * r->tsnap, m->cap_len);
    }
    pthread_mutex_unlock(&r->trace_lock);
    return n;
}

void relay_clear_trace(relay *r)
{
    pthread_mutex_lock(&r->trace_lock);
    r->thead = 0;
    pthread_mutex_unlock(&r->trace_lock);
}

/* ---------------------------------------------------------------- life cycle */

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

static void free_io(relay *r)
{
    free(r->rbuf);
    free(r->slots);
    free(r->rmm);
    free(r->riov);
    free(r->fr);
    free(r->wiov);
    free(r->wmm);
    free(r->fout);
    r->fout = NULL;
    r->rbuf = r->slots = NULL;
    r->rmm = r->wmm = NULL;
    r->riov = r->wiov = NULL;
    r->fr = NULL;
}

static void close_fds(relay *r)
{
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&r->rules_lock);
    if (r->src_fd >= 0)
        close(r->src_fd);
    if (r->dst.fd >= 0)
        close(r->dst.fd);
    r->src_fd = r->dst.fd = -1;
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
    close_fds(r);
    if (r->stopfd >= 0)
        close(r->stopfd);
    if (r->kickfd >= 0)
        close(r->kickfd);
    for (uint32_t i = 0; i < r->nrules; i++) {
        free(r->rules[i]->filt);
        free(r->rules[i]);
    }
    free_io(r);
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

static void grow_pipe(int fd)
{
    int sz = fcntl(fd, F_GETPIPE_SZ);
    if (sz >= 0 && sz < PIPE_SIZE)
        (void)fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE);   /* may fail (limits): fine */
}

/* Gives the relay its own description of fd. */
static int take_fd(relay *r, int fd, int kind, int for_write, const char *role, int *out,
                   int *sotype, int *is_sock)
{
    struct stat sb;
    int fl, nfd;
    const char *dir = for_write ? "destination" : "source";

    *sotype = 0;
    *is_sock = 0;
    if (fstat(fd, &sb) < 0 || (fl = fcntl(fd, F_GETFL)) < 0) {
        int e = errno;
        set_err(r, "%s fd %d: %s", role, fd, strerror(e));
        return -e;
    }
    int acc = fl & O_ACCMODE;
    if ((for_write && acc == O_RDONLY) || (!for_write && acc == O_WRONLY)) {
        set_err(r, "%s fd %d is not open for %s", role, fd, for_write ? "writing" : "reading");
        return -EBADF;
    }
    if (kind == RELAY_KIND_SOCKET) {
        int t = 0;
        socklen_t tl = sizeof t;
        if (!S_ISSOCK(sb.st_mode)) {
            set_err(r, "%s fd %d is not a socket (use a pcap endpoint for pipes and files)",
                    role, fd);
            return -ENOTSOCK;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &tl) < 0) {
            int e = errno;
            set_err(r, "%s fd %d: %s", role, fd, strerror(e));
            return -e;
        }
        if (t != SOCK_SEQPACKET && t != SOCK_DGRAM) {
            set_err(r, "%s fd %d: a socket endpoint needs SOCK_SEQPACKET or SOCK_DGRAM "
                    "(a stream socket carries pcap: use a pcap endpoint)", role, fd);
            return -EPROTOTYPE;
        }
        nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* MSG_DONTWAIT: the description is untouched */
        if (nfd < 0) {
            int e = errno;
            set_err(r, "%s fd %d: dup: %s", role, fd, strerror(e));
            return -e;
        }
        *sotype = t;
        *is_sock = 1;
        *out = nfd;
        return 0;
    }
    if (kind != RELAY_KIND_PCAP) {
        set_err(r, "%s: unknown endpoint kind %d", dir, kind);
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
                set_err(r, "%s fd %d: O_NONBLOCK: %s", role, fd, strerror(e));
                return -e;
            }
        }
        if (nfd >= 0 && S_ISFIFO(sb.st_mode))
            grow_pipe(nfd);
    }
    if (nfd < 0) {
        int e = errno;
        set_err(r, "%s fd %d: %s", role, fd, strerror(e));
        return -e;
    }
    *out = nfd;
    return 0;
}

static int alloc_io(relay *r)
{
    r->fr = calloc(PCAP_BATCH, sizeof *r->fr);
    r->wiov = calloc(PCAP_BATCH, sizeof *r->wiov);
    r->wmm = calloc(PCAP_BATCH, sizeof *r->wmm);
    r->fout = calloc(PCAP_BATCH, sizeof *r->fout);
    if (!r->fr || !r->wiov || !r->wmm || !r->fout)
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
        r->slots = malloc((size_t)SOCK_BATCH * SLOT_SIZE);
        r->rmm = calloc(SOCK_BATCH, sizeof *r->rmm);
        r->riov = calloc(SOCK_BATCH, sizeof *r->riov);
        if (!r->slots || !r->rmm || !r->riov)
            return -ENOMEM;
        for (uint32_t i = 0; i < SOCK_BATCH; i++) {
            /* one byte more than the largest frame: a longer one shows MSG_TRUNC */
            r->riov[i].iov_base = r->slots + (size_t)i * SLOT_SIZE + REC_HDR;
            r->riov[i].iov_len = RELAY_FRAME_MAX;
            r->rmm[i].msg_hdr.msg_iov = &r->riov[i];
            r->rmm[i].msg_hdr.msg_iovlen = 1;
        }
    }
    return 0;
}

/* One non-blocking write attempt of iov[0..cnt) to the destination. */
static ssize_t dst_write_once(relay_out *o, struct iovec *iov, int cnt)
{
    if (o->is_sock) {
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)cnt;
        return sendmsg(o->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    return writev(o->fd, iov, cnt);
}

static int peer_closed(relay *r, int e)
{
    set_err(r, "destination closed by its peer: %s", strerror(e));
    return RELAY_PEER_CLOSED;
}

/* Writes iov[0..cnt) completely to a byte-stream destination (dst lock held).
 * *done: iovecs written completely.  0 or a RELAY_* result. */
static int dst_writev_all(relay *r, relay_out *o, struct iovec *iov, int cnt, int *done)
{
    int i = 0;
    *done = 0;
    while (i < cnt) {
        int k = cnt - i < MAX_IOV ? cnt - i : MAX_IOV;
        ssize_t w = dst_write_once(o, iov + i, k);
        if (w < 0) {
            int e = errno, rc;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                rc = wait_fd(r, o->fd, POLLOUT);
                if (rc == 1)
                    return RELAY_STOPPED;
                if (rc < 0) {
                    set_err(r, "poll on destination: %s", strerror(-rc));
                    return RELAY_ERROR;
                }
                continue;
            }
            if (is_peer_gone(e))
                return peer_closed(r, e);
            set_err(r, "writing to destination: %s", strerror(e));
            return RELAY_ERROR;
        }
        size_t left = (size_t)w;
        while (i < cnt && left >= iov[i].iov_len) {
            left -= iov[i].iov_len;
            i++;
            *done = i;
        }
        if (left) {
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + left;
            iov[i].iov_len -= left;
        }
    }
    return 0;
}

static int flush_ghdr(relay *r, relay_out *o)
{
    if (o->ghdr_off >= o->ghdr_len)
        return 0;
    struct iovec v = { o->ghdr + o->ghdr_off, o->ghdr_len - o->ghdr_off };
    int done;
    int rc = dst_writev_all(r, o, &v, 1, &done);
    if (rc == 0)
        o->ghdr_off = o->ghdr_len;
    else
        o->ghdr_off = (uint32_t)(o->ghdr_len - v.iov_len);
    return rc;
}

/* Prepares the global header of a pcap output and writes what fits now, so a
 * reader sees a valid (possibly empty) stream at once; the rest goes first
 * with the output's first records. */
static void start_ghdr(relay_out *o)
{
    uint32_t h[6] = { MAGIC_US, 2u | 4u << 16, 0, 0, RELAY_SNAPLEN, LINKTYPE_ETHERNET };
    memcpy(o->ghdr, h, GHDR);
    o->ghdr_len = GHDR;
    o->ghdr_off = 0;
    struct iovec v = { o->ghdr, GHDR };
    ssize_t w = dst_write_once(o, &v, 1);
    if (w > 0)
        o->ghdr_off = (uint32_t)w;
}

int relay_open(relay *r, int src_fd, int src_kind, int dst_fd, int dst_kind, int write_header)
{
    int rc, dummy;
    if (r->opened) {
        set_err(r, "relay already opened");
        return -EALREADY;
    }
    r->src_kind = src_kind;
    r->dst.kind = dst_kind;
    rc = take_fd(r, src_fd, src_kind, 0, "source", &r->src_fd, &r->src_sotype, &r->src_is_sock);
    if (rc < 0)
        return rc;
    rc = take_fd(r, dst_fd, dst_kind, 1, "destination", &r->dst.fd, &dummy, &r->dst.is_sock);
    if (rc < 0)
        goto fail;
    rc = alloc_io(r);
    if (rc < 0) {
        set_err(r, "out of memory");
        goto fail;
    }
    if (dst_kind == RELAY_KIND_PCAP && write_header)
        start_ghdr(&r->dst);
    r->opened = 1;
    return 0;
fail:
    close_fds(r);
    free_io(r);
    return rc;
}

/* ---------------------------------------------------------------- sources */

/* Parses the global header at p (GHDR bytes). 0 or RD_BAD. */
static int parse_ghdr(relay *r, const uint8_t *p, uint64_t at)
{
    uint32_t m = ld32(p);
    if (!is_magic(m)) {
        set_err(r, "bad pcap magic 0x%08x (bytes %02x %02x %02x %02x) at byte %llu: expected "
                "0xa1b2c3d4 or 0xa1b23c4d in either byte order", m, p[0], p[1], p[2], p[3],
                (unsigned long long)at);
        return RD_BAD;
    }
    r->swapped = (m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED);
    r->nsec = (m == MAGIC_NS || m == MAGIC_NS_SWAPPED);
    uint32_t lt = get32(r, p + 20) & 0xffffu;
    if (lt != LINKTYPE_ETHERNET) {
        set_err(r, "pcap stream at byte %llu has link type %u, not Ethernet (1)",
                (unsigned long long)at, lt);
        return RD_BAD;
    }
    r->have_ghdr = 1;
    r->have_ts = 0;        /* a new stream may start at another time */
    return 0;
}

/* A second global header in mid-stream (a writer restarted on the same FIFO)? */
static int is_ghdr(const uint8_t *p)
{
    uint32_t m = ld32(p);
    uint16_t major;
    if (!is_magic(m))
        return 0;
    memcpy(&major, p + 4, 2);
    if (m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED)
        major = __builtin_bswap16(major);
    return major == 2;
}

/* A record header that could start a record: sane fields and, once a record
 * was read, a timestamp within a day of the last one. */
static int plausible(const relay *r, const uint8_t *p)
{
    if (is_ghdr(p))
        return 1;
    uint32_t sec = get32(r, p), frac = get32(r, p + 4);
    uint32_t incl = get32(r, p + 8), orig = get32(r, p + 12);
    if (frac >= (r->nsec ? 1000000000u : 1000000u) || incl < RELAY_FRAME_MIN ||
        incl > RELAY_FRAME_MAX || orig < incl || orig > RELAY_SNAPLEN)
        return 0;
    if (r->have_ts) {
        uint32_t d = sec > r->last_sec ? sec - r->last_sec : r->last_sec - sec;
        if (d > 86400)
            return 0;
    }
    return 1;
}

/* Parses complete records of the read buffer into r->fr. Returns RD_OK (with
 * *nout frames, possibly 0 when more input is needed) or RD_BAD. */
static int pcap_parse(relay *r, uint32_t *nout)
{
    uint32_t n = 0;
    uint64_t skipped = 0;
    int rc = RD_OK;
    while (n < PCAP_BATCH) {
        size_t avail = r->rend - r->rpos;
        uint8_t *p = r->rbuf + r->rpos;
        uint64_t at = r->rbase + r->rpos;
        if (r->skip_left) {
            size_t d = avail < r->skip_left ? avail : (size_t)r->skip_left;
            r->rpos += d;
            r->skip_left -= d;
            skipped += d;
            if (r->skip_left)
                break;
            continue;
        }
        if (!r->have_ghdr) {
            if (avail < GHDR)
                break;
            if (parse_ghdr(r, p, at) != 0) {
                rc = RD_BAD;
                break;
            }
            r->rpos += GHDR;
            continue;
        }
        if (r->resync) {
            /* a candidate must be plausible; its timestamp must be near the last
             * good record's, or, with no record seen yet, the header after its
             * record must be plausible too (or the stream end right there): sane
             * fields alone turn up too easily a byte before a real header */
            size_t s = 0;
            int more = 0;
            for (; avail - s >= REC_HDR; s++) {
                if (!plausible(r, p + s))
                    continue;
                if (r->have_ts || is_ghdr(p + s))
                    break;
                size_t next = s + REC_HDR + get32(r, p + s + 8);
                if (avail >= next + REC_HDR) {
                    if (plausible(r, p + next))
                        break;
                    continue;
                }
                if (r->src_eof) {
                    if (next == avail)
                        break;  /* the last record of the stream */
                    continue;
                }
                more = 1;       /* decide when the next header is here */
                break;
            }
            if (avail < REC_HDR)
                s = 0;
            r->rpos += s;
            skipped += s;
            if (more || avail - s < REC_HDR)
                break;
            r->resync = 0;
            set_err(r, "corrupt pcap record header at byte %llu; resynchronised at byte %llu "
                    "after skipping %llu bytes", (unsigned long long)r->resync_from,
                    (unsigned long long)(r->rbase + r->rpos),
                    (unsigned long long)(r->rbase + r->rpos - r->resync_from));
            continue;
        }
        if (avail < REC_HDR)
            break;
        if (is_ghdr(p)) {
            if (avail < GHDR)
                break;
            if (parse_ghdr(r, p, at) != 0) {
                rc = RD_BAD;
                break;
            }
            r->rpos += GHDR;
            continue;
        }
        uint32_t frac = get32(r, p + 4), incl = get32(r, p + 8), orig = get32(r, p + 12);
        uint32_t frac_max = r->nsec ? 1000000000u : 1000000u;
        if (incl > RELAY_SNAPLEN || frac >= frac_max) {
            stat_add(&r->st->malformed, 1);
            if (incl > RELAY_SNAPLEN)
                set_err(r, "corrupt pcap record header at byte %llu: incl_len=%u > %u; "
                        "resynchronising", (unsigned long long)at, incl, RELAY_SNAPLEN);
            else
                set_err(r, "corrupt pcap record header at byte %llu: %s=%u >= %u; "
                        "resynchronising", (unsigned long long)at,
                        r->nsec ? "ts_nsec" : "ts_usec", frac, frac_max);
            r->resync = 1;
            r->resync_from = at;
            r->rpos += 1;
            skipped += 1;
            continue;
        }
        if (incl < RELAY_FRAME_MIN || orig < incl || incl > RELAY_FRAME_MAX) {
            stat_add(&r->st->malformed, 1);
            if (incl < RELAY_FRAME_MIN)
                set_err(r, "malformed pcap record at byte %llu: incl_len=%u < %u; skipped",
                        (unsigned long long)at, incl, RELAY_FRAME_MIN);
            else if (orig < incl)
                set_err(r, "malformed pcap record at byte %llu: orig_len=%u < incl_len=%u; "
                        "skipped", (unsigned long long)at, orig, incl);
            else
                set_err(r, "malformed pcap record at byte %llu: incl_len=%u > %u (frame too "
                        "large); skipped", (unsigned long long)at, incl, RELAY_FRAME_MAX);
            r->skip_left = (uint64_t)REC_HDR + incl;
            continue;
        }
        if (avail < (size_t)REC_HDR + incl)
            break;
        r->fr[n].rec = p;
        r->fr[n].len = incl;
        r->fr[n].orig = orig;
        n++;
        r->last_sec = get32(r, p);
        r->have_ts = 1;
        r->rpos += REC_HDR + incl;
    }
    if (skipped)
        stat_add(&r->st->skipped_bytes, skipped);
    *nout = n;
    return rc;
}

/* The source reached its end: account for what is left in the buffer. */
static int pcap_at_eof(relay *r)
{
    size_t avail = r->rend - r->rpos;
    uint64_t at = r->rbase + r->rpos;
    if (!r->have_ghdr) {
        if (avail == 0)
            return RD_EOF;     /* empty stream */
        set_err(r, "truncated pcap global header: %zu of %d bytes before end of stream",
                avail, GHDR);
        return RD_BAD;
    }
    if (r->skip_left) {
        set_err(r, "pcap stream ended inside a malformed record (%llu bytes missing)",
                (unsigned long long)r->skip_left);
    } else if (r->resync) {
        stat_add(&r->st->skipped_bytes, avail);
        set_err(r, "corrupt pcap record header at byte %llu; no plausible record before end "
                "of stream (%llu bytes skipped)", (unsigned long long)r->resync_from,
                (unsigned long long)(at + avail - r->resync_from));
    } else if (avail) {
        stat_add(&r->st->malformed, 1);
        stat_add(&r->st->skipped_bytes, avail);
        if (avail >= REC_HDR)
            set_err(r, "truncated pcap record at byte %llu: %zu of %u bytes before end of "
                    "stream", (unsigned long long)at, avail - REC_HDR,
                    get32(r, r->rbuf + r->rpos + 8));
        else
            set_err(r, "truncated pcap record header at byte %llu: %zu of %d bytes before end "
                    "of stream", (unsigned long long)at, avail, REC_HDR);
    }
    r->rpos = r->rend;
    return RD_EOF;
}

static int read_pcap(relay *r, uint32_t *n)
{
    *n = 0;
    for (;;) {
        if (pcap_parse(r, n) == RD_BAD)
            return RD_BAD;
        if (*n)
            return RD_OK;
        if (r->src_eof)
            return pcap_at_eof(r);
        /* nothing complete: keep the tail, read more */
        if (r->rpos) {
            size_t avail = r->rend - r->rpos;
            memmove(r->rbuf, r->rbuf + r->rpos, avail);
            r->rbase += r->rpos;
            r->rpos = 0;
            r->rend = avail;
        }
        size_t room = RBUF_SIZE - r->rend;   /* > 0: a tail is at most a record + a header */
        if (room > RBUF_READ)
            room = RBUF_READ;
        ssize_t k = r->src_is_sock ? recv(r->src_fd, r->rbuf + r->rend, room, MSG_DONTWAIT)
                                   : read(r->src_fd, r->rbuf + r->rend, room);
        if (k > 0) {
            r->rend += (size_t)k;
            continue;
        }
        if (k == 0 || errno == ECONNRESET) {
            r->src_eof = 1;     /* parse what is left once more, then account for the rest */
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return RD_AGAIN;
        set_err(r, "reading source: %s", strerror(errno));
        return RD_ERROR;
    }
}

static int read_sock(relay *r, uint32_t *n)
{
    *n = 0;
    if (r->src_eof)
        return RD_EOF;
    for (;;) {
        int k = recvmmsg(r->src_fd, r->rmm, SOCK_BATCH, MSG_DONTWAIT, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return RD_AGAIN;
            if (errno == ECONNRESET || errno == ENOTCONN) {
                r->src_eof = 1;
                return RD_EOF;
            }
            set_err(r, "receiving from source: %s", strerror(errno));
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
                set_err(r, "frame longer than %d bytes from source; dropped", RELAY_FRAME_MAX);
                continue;
            }
            if (len < RELAY_FRAME_MIN) {
                drops++;
                set_err(r, "runt frame of %u bytes from source; dropped", len);
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
    rc = flush_ghdr(r, o);
    if (rc == 0)
        rc = dst_writev_all(r, o, iov, (int)n, &done);
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
    for (uint32_t j = 0; j < n; j++) {
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
            int w = wait_fd(r, o->fd, POLLOUT);
            if (w == 1) {
                rc = RELAY_STOPPED;
                break;
            }
            if (w < 0) {
                set_err(r, "poll on destination: %s", strerror(-w));
                rc = RELAY_ERROR;
                break;
            }
            continue;
        }
        if (e == EMSGSIZE || e == ENOBUFS || e == ENOMEM) {
            set_err(r, "destination refused a frame of %u bytes: %s; dropped", fr[i].len,
                    strerror(e));
            drops++;
            i++;
            continue;
        }
        if (is_peer_gone(e)) {
            rc = peer_closed(r, e);
            break;
        }
        set_err(r, "sending to destination: %s", strerror(e));
        rc = RELAY_ERROR;
        break;
    }
    stat_add(&r->st->frames, sent);
    stat_add(&r->st->bytes, bytes);
    if (drops)
        stat_add(&r->st->drops, drops);
    *sent_out = sent;
    *bytes_out = bytes;
    return rc;
}

static int write_out(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t ts,
                     uint32_t *sent, uint64_t *bytes)
{
    *sent = 0;
    *bytes = 0;
    return o->kind == RELAY_KIND_PCAP ? write_pcap(r, o, first, n, ts, sent, bytes)
                                      : write_sock(r, o, first, n, sent, bytes);
}

/* ---------------------------------------------------------------- steering */

static steer_rule *find_rule(relay *r, uint32_t id, uint32_t *idx)
{
    for (uint32_t i = 0; i < r->nrules; i++)
        if (r->rules[i]->id == id) {
            if (idx)
                *idx = i;
            return r->rules[i];
        }
    return NULL;
}

/* Chooses each frame's output (dst lock held): r->fout[i] = rule index or -1. */
static void steer_classify(relay *r, uint32_t n)
{
    relay_flowtab *t = r->ft;
    uint64_t now = flow_now_ns();
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *f = r->fr[i].rec + REC_HDR;
        flow_key k;
        uint8_t fl;
        uint32_t rule = 0, idx;
        r->fout[i] = -1;
        if (!flow_key_of(f, r->fr[i].len, &k, &fl))
            continue;
        int tcp = k.proto == 6;
        int syn = tcp && (fl & FLOW_TCP_SYN) && !(fl & FLOW_TCP_ACK);
        int fin = tcp && (fl & (FLOW_TCP_FIN | FLOW_TCP_RST));
        flow_ent *e = flow_find(t, &k, now);
        if (e != NULL && !(syn && e->closing)) {
            rule = e->rule;
            e->last_ns = now;
            if (fin)
                e->closing = 1;
        } else {
            if (!tcp || syn) {
                for (uint32_t j = 0; j < r->nrules; j++) {
                    steer_rule *s = r->rules[j];
                    if (s->filt && relay_bpf_run(s->filt, f, r->fr[i].len, r->fr[i].orig)) {
                        rule = s->id;
                        stat_add(&s->st.flows, 1);
                        break;
                    }
                }
            }
            flow_insert(t, &k, rule, now, fin);
        }
        if (rule && find_rule(r, rule, &idx))
            r->fout[i] = (int16_t)idx;
    }
    pthread_mutex_unlock(&t->lock);
}

/* A steering output failed: from now on its frames are dropped (counted), the
 * pump goes on. Rule outputs never end the loop, except on stop. */
static int steer_failed(relay *r, steer_rule *s, int rc, uint32_t lost)
{
    if (rc == RELAY_STOPPED)
        return rc;
    s->out.dead = 1;
    stat_add(&s->st.drops, lost);
    stat_add(&r->st->drops, lost);
    char msg[ERR_LEN];
    relay_last_error(r, msg, sizeof msg);
    set_err(r, "steering rule %u: output failed (%s); its frames are dropped", s->id, msg);
    return 0;
}

/* Writes the batch (dst lock held): in runs of consecutive frames with one output. */
static int write_batch(relay *r, uint32_t n, uint64_t ts)
{
    uint32_t sent;
    uint64_t bytes;
    if (r->ft == NULL)    /* no flow table: no steering, every frame to the default path */
        return write_out(r, &r->dst, 0, n, ts, &sent, &bytes);
    steer_classify(r, n);
    for (uint32_t i = 0; i < n;) {
        int o = r->fout[i];
        uint32_t j = i + 1;
        while (j < n && r->fout[j] == o)
            j++;
        int rc;
        if (o < 0) {
            rc = write_out(r, &r->dst, i, j - i, ts, &sent, &bytes);
            if (rc)
                return rc;
        } else {
            steer_rule *s = r->rules[o];
            if (s->out.dead) {
                stat_add(&s->st.drops, j - i);
                stat_add(&r->st->drops, j - i);
            } else {
                rc = write_out(r, &s->out, i, j - i, ts, &sent, &bytes);
                stat_add(&s->st.frames, sent);
                stat_add(&s->st.bytes, bytes);
                if (rc && steer_failed(r, s, rc, j - i - sent))
                    return rc;
            }
        }
        i = j;
    }
    return 0;
}

int relay_set_flowtab(relay *r, relay_flowtab *t)
{
    pthread_mutex_lock(&r->dst_lock);
    r->ft = t;
    pthread_mutex_unlock(&r->dst_lock);
    return 0;
}

static void kick(relay *r)
{
    uint64_t one = 1;
    ssize_t w = write(r->kickfd, &one, sizeof one);
    (void)w;
}

int relay_set_dst(relay *r, int fd, int kind, int write_header)
{
    int nfd, sotype, is_sock, rc;
    if (!r->opened) {
        set_err(r, "relay not opened: cannot retarget");
        return -EINVAL;
    }
    rc = take_fd(r, fd, kind, 1, "new destination", &nfd, &sotype, &is_sock);
    if (rc < 0)
        return rc;
    relay_out o;
    memset(&o, 0, sizeof o);
    o.fd = nfd;
    o.kind = kind;
    o.is_sock = is_sock;
    pthread_mutex_lock(&r->dst_lock);
    if (r->dst.fd < 0) {
        pthread_mutex_unlock(&r->dst_lock);
        close(nfd);
        return -EBADF;
    }
    int old = r->dst.fd;
    r->dst = o;
    if (kind == RELAY_KIND_PCAP && write_header)
        start_ghdr(&r->dst);
    pthread_mutex_unlock(&r->dst_lock);
    close(old);
    kick(r);        /* the loop may be polling the old descriptor for a hangup */
    return 0;
}

int relay_add_steer(relay *r, uint32_t rule_id, const relay_bpf_insn *insns, uint32_t n,
                    int fd, int kind, int write_header)
{
    int rc, sotype;
    if (rule_id == 0) {
        set_err(r, "steering rule id 0 is the default path");
        return -EINVAL;
    }
    if (insns != NULL && n > 0 && relay_bpf_validate(insns, n) != 0) {
        set_err(r, "steering rule %u: invalid BPF program", rule_id);
        return -EINVAL;
    }
    steer_rule *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->id = rule_id;
    if (insns != NULL && n > 0) {
        s->filt = malloc(sizeof *s->filt * n);
        if (s->filt == NULL) {
            free(s);
            return -ENOMEM;
        }
        memcpy(s->filt, insns, sizeof *s->filt * n);
        s->filt_len = n;
    }
    s->out.kind = kind;
    rc = take_fd(r, fd, kind, 1, "steering destination", &s->out.fd, &sotype, &s->out.is_sock);
    if (rc < 0) {
        free(s->filt);
        free(s);
        return rc;
    }
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&r->rules_lock);
    rc = 0;
    if (find_rule(r, rule_id, NULL) != NULL) {
        set_err(r, "steering rule %u exists already", rule_id);
        rc = -EEXIST;
    } else if (r->nrules >= RELAY_MAX_RULES) {
        set_err(r, "steering: at most %d rules per pump", RELAY_MAX_RULES);
        rc = -ENOSPC;
    } else if (r->ran && r->dst.fd < 0) {
        set_err(r, "steering rule %u: the pump has ended", rule_id);
        rc = -EBADF;
    } else {
        if (kind == RELAY_KIND_PCAP && write_header)
            start_ghdr(&s->out);
        r->rules[r->nrules++] = s;
    }
    pthread_mutex_unlock(&r->rules_lock);
    pthread_mutex_unlock(&r->dst_lock);
    if (rc) {
        close(s->out.fd);
        free(s->filt);
        free(s);
    }
    return rc;
}

int relay_remove_steer(relay *r, uint32_t rule_id)
{
    uint32_t idx;
    pthread_mutex_lock(&r->dst_lock);
    pthread_mutex_lock(&r->rules_lock);
    steer_rule *s = find_rule(r, rule_id, &idx);
    if (s != NULL) {
        memmove(r->rules + idx, r->rules + idx + 1, sizeof *r->rules * (r->nrules - idx - 1));
        r->nrules--;
    }
    pthread_mutex_unlock(&r->rules_lock);
    pthread_mutex_unlock(&r->dst_lock);
    if (s == NULL)
        return -ENOENT;
    if (s->out.fd >= 0)
        close(s->out.fd);
    free(s->filt);
    free(s);
    return 0;
}

int relay_get_steer_stats(relay *r, uint32_t rule_id, relay_steer_stats *out)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&r->rules_lock);
    steer_rule *s = find_rule(r, rule_id, NULL);
    if (s != NULL) {
        out->flows = __atomic_load_n(&s->st.flows, __ATOMIC_RELAXED);
        out->frames = __atomic_load_n(&s->st.frames, __ATOMIC_RELAXED);
        out->bytes = __atomic_load_n(&s->st.bytes, __ATOMIC_RELAXED);
        out->drops = __atomic_load_n(&s->st.drops, __ATOMIC_RELAXED);
        rc = 0;
    }
    pthread_mutex_unlock(&r->rules_lock);
    return rc;
}

/* ---------------------------------------------------------------- loop */

/* Waits for the source; also notices a destination whose peer went away. */
static int wait_src(relay *r)
{
    struct pollfd p[4];
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
        p[0].revents = p[1].revents = p[2].revents = p[3].revents = 0;
        if (poll(p, 4, -1) < 0) {
            if (errno == EINTR)
                continue;
            set_err(r, "poll on source: %s", strerror(errno));
            return RELAY_ERROR;
        }
        if (p[1].revents)
            return RELAY_STOPPED;
        if (p[3].revents) {
            uint64_t v;
            ssize_t k = read(r->kickfd, &v, sizeof v);   /* retargeted: poll the new one */
            (void)k;
            continue;
        }
        if (p[0].revents)
            return 0;
        if (p[2].revents & (POLLERR | POLLHUP)) {
            set_err(r, "destination closed by its peer (%s)",
                    p[2].revents & POLLHUP ? "hangup" : "error");
            return RELAY_PEER_CLOSED;
        }
    }
}

static int run_loop(relay *r)
{
    int rc;
    if (stopping(r))
        return RELAY_STOPPED;
    pthread_mutex_lock(&r->dst_lock);
    rc = flush_ghdr(r, &r->dst);
    pthread_mutex_unlock(&r->dst_lock);
    if (rc)
        return rc;
    for (;;) {
        uint32_t n = 0;
        if (stopping(r))
            return RELAY_STOPPED;
        int st = r->src_kind == RELAY_KIND_PCAP ? read_pcap(r, &n) : read_sock(r, &n);
        if (n) {
            uint64_t ts = now_ns();
            trace_batch(r, n, ts);
            pthread_mutex_lock(&r->dst_lock);
            rc = write_batch(r, n, ts);
            pthread_mutex_unlock(&r->dst_lock);
            if (rc)
                return rc;
        }
        switch (st) {
        case RD_OK:
            break;
        case RD_AGAIN:
            rc = wait_src(r);
            if (rc)
                return rc;
            break;
        case RD_EOF:
            return RELAY_EOF;
        case RD_BAD:
            return RELAY_BAD_STREAM;
        default:
            return RELAY_ERROR;
        }
    }
}

int relay_run(relay *r)
{
    sigset_t pipe_set, old;
    int res;
    if (!r->opened || r->ran) {
        set_err(r, r->ran ? "relay already ran" : "relay not opened");
        return RELAY_ERROR;
    }
    r->ran = 1;
    /* EPIPE instead of SIGPIPE in this thread, whatever the process does */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);

    res = run_loop(r);

    relay_stop(r);      /* an inject() waiting for room gives up rather than block close_fds */
    close_fds(r);
    free_io(r);
    if (!sigismember(&old, SIGPIPE)) {
        sigset_t pending;
        struct timespec zero = { 0, 0 };
        sigpending(&pending);
        while (sigismember(&pending, SIGPIPE) && sigtimedwait(&pipe_set, NULL, &zero) > 0)
            sigpending(&pending);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    __atomic_store_n(&r->result, res, __ATOMIC_RELEASE);
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
        trace_put(r, data, len, len, ts, seq, RELAY_TRACE_INJECTED);
        pthread_mutex_unlock(&r->trace_lock);
    } else {
        __atomic_fetch_add(&r->seq, 1, __ATOMIC_RELAXED);
    }
    if (r->dst.kind == RELAY_KIND_PCAP) {
        uint8_t hdr[REC_HDR];
        struct iovec v[2] = { { hdr, REC_HDR }, { (void *)data, len } };
        int done;
        put_rec_hdr(hdr, ts, len, len);
        rc = flush_ghdr(r, &r->dst);
        if (rc == 0)
            rc = dst_writev_all(r, &r->dst, v, 2, &done);
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
                int w = wait_fd(r, r->dst.fd, POLLOUT);
                if (w == 0)
                    continue;
                rc = w == 1 ? RELAY_STOPPED : RELAY_ERROR;
                break;
            }
            if (is_peer_gone(e)) {
                rc = peer_closed(r, e);
            } else {
                set_err(r, "injecting a frame of %u bytes: %s", len, strerror(e));
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

/* ---------------------------------------------------------------- bench helpers */

int64_t relay_bench_send(int fd, uint32_t len, uint64_t count)
{
    enum { B = 32 };
    struct mmsghdr mm[B];
    struct iovec iov;
    uint8_t *buf = calloc(1, len ? len : 1);
    uint64_t sent = 0;
    if (buf == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(i * 7u);
    if (len >= 14) {
        memset(buf, 0xff, 6);
        buf[12] = 0x88;
        buf[13] = 0xb5;    /* local experimental ethertype */
    }
    iov.iov_base = buf;
    iov.iov_len = len;
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < B; i++) {
        mm[i].msg_hdr.msg_iov = &iov;
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    while (sent < count) {
        unsigned want = count - sent < B ? (unsigned)(count - sent) : B;
        int k = sendmmsg(fd, mm, want, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            return sent ? (int64_t)sent : -e;
        }
        sent += (uint64_t)k;
    }
    free(buf);
    return (int64_t)sent;
}

int64_t relay_bench_recv(int fd, uint64_t count, uint64_t *bytes)
{
    enum { B = 16 };
    struct mmsghdr mm[B];
    struct iovec iov[B];
    uint8_t *buf = malloc((size_t)B * SLOT_SIZE);
    uint64_t got = 0;
    if (buf == NULL)
        return -ENOMEM;
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < B; i++) {
        iov[i].iov_base = buf + (size_t)i * SLOT_SIZE;
        iov[i].iov_len = SLOT_SIZE;
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    while (got < count) {
        int k = recvmmsg(fd, mm, B, MSG_WAITFORONE, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            break;            /* timeout or error: report what arrived */
        }
        for (int i = 0; i < k; i++) {
            if (mm[i].msg_len == 0) {
                k = -1;
                break;
            }
            *bytes += mm[i].msg_len;
            got++;
        }
        if (k < 0)
            break;
    }
    free(buf);
    return (int64_t)got;
}
