/*
 * relay.h - the packet relay of stdpkt-lab.
 *
 * A relay moves Ethernet frames from one endpoint to another:
 *
 *   RELAY_KIND_SOCKET  a SOCK_SEQPACKET or SOCK_DGRAM socket, one frame per message
 *   RELAY_KIND_PCAP    a byte stream (pipe, FIFO, file, stream socket) in pcap format
 *
 * Life cycle: relay_new() (memory only) -> relay_open() (descriptors) ->
 * relay_run() (blocks in the calling thread until stopped, EOF or error) ->
 * relay_free().  relay_stop(), relay_inject() and the trace functions may be
 * called from any thread while relay_run() is running.
 *
 * The block between the "cdef" markers is fed verbatim to cffi's cdef(): it
 * must stay plain declarations (no #if, no macros with arguments).
 */
#ifndef STDPKT_RELAY_H
#define STDPKT_RELAY_H

#include <stddef.h>
#include <stdint.h>

/* ---- cdef begin ---- */
#define RELAY_KIND_SOCKET 0
#define RELAY_KIND_PCAP 1

/* results of relay_run() */
#define RELAY_RUNNING 0
#define RELAY_STOPPED 1
#define RELAY_EOF 2
#define RELAY_PEER_CLOSED 3
#define RELAY_BAD_STREAM 4
#define RELAY_ERROR 5

#define RELAY_FRAME_MIN 14        /* an Ethernet header */
#define RELAY_FRAME_MAX 65550     /* largest frame relayed (64 KiB MTU + headers) */
#define RELAY_SNAPLEN 262144      /* snaplen written in global headers; larger incl_len is corrupt */

#define RELAY_TRACE_INJECTED 1    /* relay_trace_entry.flags: the frame came from relay_inject() */

/* Counters, allocated by the caller; written by the relay, read without locks. */
typedef struct relay_stats {
    uint64_t frames;         /* frames relayed from source to destination */
    uint64_t bytes;          /* frame bytes of those (pcap headers not counted) */
    uint64_t drops;          /* frames read but not delivered (oversize, runt, EMSGSIZE, ENOBUFS) */
    uint64_t malformed;      /* malformed pcap records on a pcap source */
    uint64_t skipped_bytes;  /* pcap source bytes discarded: bad records and resynchronisation */
    uint64_t injected;       /* frames written by relay_inject() */
} relay_stats;

/* One classic BPF instruction (the layout of struct bpf_insn / sock_filter). */
typedef struct relay_bpf_insn {
    uint16_t code;
    uint8_t jt;
    uint8_t jf;
    uint32_t k;
} relay_bpf_insn;

typedef struct relay_trace_entry {
    uint64_t ts_ns;          /* CLOCK_REALTIME when the relay read (or injected) the frame */
    uint64_t seq;            /* per-relay ordinal of the frame among all frames it handled */
    uint32_t orig_len;       /* length of the frame */
    uint32_t cap_len;        /* bytes kept (<= trace_snap) */
    uint32_t flags;          /* RELAY_TRACE_* */
    uint32_t reserved;
} relay_trace_entry;

typedef struct relay relay;

/* trace_slots: a power of two (0 disables the ring); trace_snap: bytes kept per frame. */
relay *relay_new(relay_stats *stats, uint32_t trace_slots, uint32_t trace_snap);
void relay_free(relay *r);

/* Takes private descriptions of the two descriptors (the caller keeps its own).
 * Returns 0 or -errno (message in relay_last_error). */
int relay_open(relay *r, int src_fd, int src_kind, int dst_fd, int dst_kind, int write_header);

/* Runs the loop in the calling thread; returns a RELAY_* result. Once only. */
int relay_run(relay *r);
/* Asks the loop to end (async-signal-safe, idempotent). */
void relay_stop(relay *r);
/* The result of relay_run(), RELAY_RUNNING while it runs or before. */
int relay_result(relay *r);

/* Writes one frame into the destination, serialised with the loop's writes.
 * 0, -EMSGSIZE (bad length), -EBADF (not open), -ECANCELED (stopped while
 * waiting for room), -EPIPE (peer closed), -EIO (other; see last error). */
int relay_inject(relay *r, const void *data, uint32_t len);

void relay_set_trace(relay *r, int enabled);
int relay_get_trace(relay *r);
/* Sets the trace filter (NULL or n == 0 clears it). 0 or -EINVAL (invalid program). */
int relay_set_filter(relay *r, const relay_bpf_insn *insns, uint32_t n);
/* Copies the most recent min(max, held) entries, oldest first; data gets
 * trace_snap bytes per entry. Returns the number copied. */
uint32_t relay_trace_copy(relay *r, relay_trace_entry *out, uint8_t *data, uint32_t max);
void relay_clear_trace(relay *r);
/* Copies the latest problem message into buf (NUL-terminated); returns its length. */
size_t relay_last_error(relay *r, char *buf, size_t len);

/* Classic BPF: checks a program (0 or -EINVAL) and runs it (0 = reject). */
int relay_bpf_validate(const relay_bpf_insn *insns, uint32_t n);
uint32_t relay_bpf_run(const relay_bpf_insn *insns, const uint8_t *pkt, uint32_t buflen,
                       uint32_t wirelen);

/* Benchmark helpers on a blocking datagram socket: send count frames of len
 * bytes (returns frames sent or -errno); receive until count frames, EOF or
 * the socket's receive timeout (returns frames, adds their bytes to *bytes). */
int64_t relay_bench_send(int fd, uint32_t len, uint64_t count);
int64_t relay_bench_recv(int fd, uint64_t count, uint64_t *bytes);
/* ---- cdef end ---- */

#endif /* STDPKT_RELAY_H */
