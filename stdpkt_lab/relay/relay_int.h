/*
 * relay_int.h - what the relay's C files share (internal; the public API is relay.h).
 *
 * The relay is split by job:
 *   relay.c    life cycle (new/open/free/stop), the loop, inject
 *   io.c       descriptors and socket/pipe I/O: taking descriptors, waiting,
 *              reading socket sources, writing frames to an output
 *   pcap_in.c  parsing a pcap byte stream in place (resynchronisation, errors)
 *   bpf.c      classic BPF: validation and interpreter
 *   trace.c    the trace ring and its filter
 *   steer.c    retargeting and steering (outputs, rules, classification)
 *   flow.c     the flow table behind steering (flow.h)
 *   bench.c    benchmark helpers
 *   vhost_ring.c  a socket source that is a vhost-user port's host end: the relay
 *              reads the guest's transmit queue itself (one copy, one thread less)
 *   vhost_pcap.c  a vhost-user port's queues straight to and from a pcap stream
 *              (a pipe): writev() from, readv() into the guest's buffers
 *   vhost.c, vhost_proto.c, vhost_io.c, vring.c, offload.c   the vhost-user port back end (vhost.h)
 * Internal functions shared between files carry an rl_ prefix and hidden visibility;
 * none of the files has a main(), so all of them link together.
 */
#ifndef STDPKT_RELAY_INT_H
#define STDPKT_RELAY_INT_H

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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REC_HDR 16                    /* pcap record header */
#define GHDR 24                       /* pcap global header */
#define SLOT_SIZE 65568               /* REC_HDR + RELAY_FRAME_MAX, rounded up to 16 */
#define SOCK_BATCH 16                 /* frames per recvmmsg (default; STDPKT_RELAY_SOCK_BATCH) */
#define SOCK_BATCH_MAX 256            /* <= PCAP_BATCH: a batch fits r->fr */
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
    struct relay_vhost *vh;       /* the default destination is this port's host end (vhost_ring.c) */
    uint64_t wrote;               /* bytes written to fd so far (vhost_splice.c counts on it) */
    uint32_t epoch;               /* bumped by every new default destination (relay_set_dst) */
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
    uint32_t *fid;                /* per frame of a batch: its rule id, 0 = default path */
    int ctl_pending;              /* atomic: control operations (retarget, steering changes)
                                   * waiting for dst_lock; a writer blocked on a full
                                   * destination yields to them at a frame boundary */

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
    uint32_t pend_incl;           /* the record at rpos is valid but not all read: its length */
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

    /* tuning, read from the environment at relay_open() (README, Performance) */
    uint32_t sock_batch;          /* frames per recvmmsg: STDPKT_RELAY_SOCK_BATCH */
    uint64_t spin_ns;             /* busy-poll the source this long before sleeping:
                                   * STDPKT_RELAY_SPIN_US (0: off, the default) */
    int direct;                   /* the direct paths of vhost_pcap.c, STDPKT_RELAY_DIRECT:
                                   * bit 0 transmit, bit 1 receive, bit 2 transmit by
                                   * vmsplice() into a pipe whose reader copies
                                   * (vhost_splice.c); 4, the default: splice where
                                   * that holds, else the general path */

    /* a vhost-user port whose transmit queue this relay reads itself (vhost_ring.c) */
    struct relay_vhost *vh;
    int vh_own;                   /* the port granted us its queue */
    int vh_kick;                  /* while owned: our duplicate of the queue's kick descriptor */
    int vh_dirty;                 /* the socket may still hold frames sent before the grant */
    uint32_t vh_gen;
    /* the direct paths between a port's queues and a pcap stream (vhost_pcap.c) */
    struct vu_chain *vtx;         /* one transmit batch: the guest's buffers */
    uint8_t *vhdr;                /* its record headers */
    struct iovec *viov;           /* MAX_IOV: the iovecs of one writev() / readv() */
    uint8_t *vsnap;               /* trace_snap bytes: a frame's start for the trace ring */
    /* transmit frames spliced into a pipe, until its reader has read them (vhost_splice.c) */
    struct rl_held *held;         /* RL_HELD_MAX: their heads, oldest at held_tail */
    uint8_t *held_hdr;            /* RL_HELD_MAX * REC_HDR: their record headers */
    uint32_t held_tail, held_n;
    uint32_t held_gen, held_epoch;  /* the queue's generation, the destination's epoch */
    int reader_sock;              /* -1, or the name saying this relay copies its pipe source */
    int vs_ok;                    /* the destination's reader copies (for epoch vs_epoch - 1) */
    uint32_t vs_epoch;
    uint64_t vs_probe_ns;         /* when to look for the reader's name again */

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

#define RL_HIDDEN __attribute__((visibility("hidden")))
#define RL_YIELD 100                  /* internal: a write gave way to a control operation */

/* ------------------------------------------------------------------ helpers */

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

static inline int is_magic(uint32_t m)
{
    return m == MAGIC_US || m == MAGIC_NS || m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED;
}

static inline int stopping(relay *r)
{
    return __atomic_load_n(&r->stopping, __ATOMIC_RELAXED);
}

/* io.c */
RL_HIDDEN void rl_set_err(relay *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
RL_HIDDEN int rl_wait_fd(relay *r, int fd, short events, int may_yield);
RL_HIDDEN int rl_is_peer_gone(int e);
RL_HIDDEN int rl_peer_closed(relay *r, int e);
RL_HIDDEN void rl_grow_pipe(int fd);
RL_HIDDEN int rl_take_fd(relay *r, int fd, int kind, int for_write, const char *role, int *out,
                         int *sotype, int *is_sock);
RL_HIDDEN ssize_t rl_dst_write_once(relay_out *o, struct iovec *iov, int cnt);
RL_HIDDEN int rl_dst_writev_all(relay *r, relay_out *o, struct iovec *iov, int cnt, int *done,
                                int may_yield);
RL_HIDDEN int rl_flush_ghdr(relay *r, relay_out *o);
RL_HIDDEN void rl_start_ghdr(relay_out *o);
RL_HIDDEN int rl_read_sock(relay *r, uint32_t *n);
RL_HIDDEN int rl_write_out(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t ts,
                           uint32_t *sent, uint64_t *bytes);
/* pcap_in.c */
RL_HIDDEN int rl_read_pcap(relay *r, uint32_t *n);
RL_HIDDEN int rl_pcap_parse(relay *r, uint32_t *nout);
/* trace.c */
RL_HIDDEN void rl_trace_put(relay *r, const uint8_t *data, uint32_t len, uint32_t orig,
                            uint64_t ts, uint64_t seq, uint32_t flags);
RL_HIDDEN void rl_trace_batch(relay *r, uint32_t n, uint64_t ts);
/* relay.c: the loop in steps, shared with group.c */
RL_HIDDEN int rl_begin(relay *r);
RL_HIDDEN int rl_step(relay *r, int *idle);
RL_HIDDEN void rl_finish(relay *r, int res);
RL_HIDDEN void rl_block_sigpipe(sigset_t *old);
RL_HIDDEN void rl_restore_sigpipe(const sigset_t *old);
/* vhost_ring.c */
RL_HIDDEN int rl_read_vhost(relay *r, uint32_t *n);
RL_HIDDEN void rl_vh_release(relay *r);
RL_HIDDEN void rl_vh_drop_dst(relay_out *o);
RL_HIDDEN uint32_t rl_vh_put(relay *r, relay_out *o, uint32_t first, uint32_t n, uint64_t *bytes);
RL_HIDDEN void rl_vh_try_claim(relay *r);
/* vhost_pcap.c: -1 when the direct path does not apply (the general one runs), else an
 * RD_* result with *res 0 or the RELAY_* result that ends the loop */
RL_HIDDEN int rl_vh_tx_pcap(relay *r, int *res);
/* 1: the incomplete record at rpos (pend_incl bytes) went straight into the guest with
 * those after it that came whole (the parse that ended the run left *n frames in r->fr,
 * *bad: the stream is bad), or more of it was read; 0: read it the general way */
RL_HIDDEN int rl_vh_rx_pcap(relay *r, uint32_t *n, int *bad);
RL_HIDDEN void rl_direct_free(relay *r);
/* vhost_splice.c */
#define RL_HELD_MAX 1024
#define RL_RELEASE_NS 100000          /* held frames: the loop looks again at least this often */
RL_HIDDEN void rl_reader_announce(relay *r);
RL_HIDDEN int rl_splice_usable(relay *r, relay_out *o);        /* dst_lock held */
RL_HIDDEN uint8_t *rl_held_hdr(relay *r, uint32_t k);
RL_HIDDEN void rl_held_add(relay *r, uint16_t head, uint64_t end);
RL_HIDDEN void rl_held_service(relay *r);
RL_HIDDEN void rl_held_finish(relay *r);
RL_HIDDEN void rl_held_free(relay *r);
/* steer.c */
RL_HIDDEN int rl_write_batch(relay *r, uint32_t n, uint64_t ts);
RL_HIDDEN void rl_kick(relay *r);
RL_HIDDEN void rl_ctl_lock(relay *r);     /* a control operation: a blocked writer yields */
RL_HIDDEN void rl_ctl_unlock(relay *r);

#endif /* STDPKT_RELAY_INT_H */
