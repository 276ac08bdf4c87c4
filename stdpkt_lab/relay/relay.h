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
 * relay_free().  relay_stop(), relay_inject(), the trace functions,
 * relay_set_dst() (retarget) and the steering functions may be called from
 * any thread while relay_run() is running.
 *
 * Steering (docs/links.md): a relay with a flow table (relay_set_flowtab(),
 * one table shared by the two relays of a link) records every IPv4/IPv6 flow
 * it sees under a symmetric key (proto, {addr,port} pair).  A *new* flow (TCP:
 * SYN without ACK; UDP and others: first frame of an unknown or expired key)
 * is offered to the relay's rules in the order they were added; the first
 * whose BPF filter accepts the frame owns it, and the flow is recorded with
 * that rule's id (0 = default path).  Frames of a recorded flow go, in either
 * relay, to that relay's output for the recorded id: the reverse relay
 * registers the same rule id with its own output (and no filter) so that the
 * replies take their own detour.  A relay without an output for the id uses
 * its default destination.  Non-IP frames always take the default path.
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
/* Runs the loops of n opened relays in the calling thread (one event loop: a batch of
 * each ready source in turn, one poll() over all of them when none is ready) until one
 * of them ends; returns its index (its result: relay_result()), or -1 (bad arguments:
 * n == 0, n > RELAY_GROUP_MAX, a relay not opened or already ended).  Call again with
 * the others to go on; a relay is started by the first call that includes it.
 * A write to a full destination blocks the whole group until there is room. */
#define RELAY_GROUP_MAX 64
int relay_run_group(relay **rs, uint32_t n);
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
/* ---- steering and retargeting ---- */
#define RELAY_MAX_RULES 64

typedef struct relay_steer_stats {
    uint64_t flows;          /* new flows this rule took (on this relay) */
    uint64_t frames;         /* frames this relay wrote to the rule's output */
    uint64_t bytes;          /* their frame bytes */
    uint64_t drops;          /* frames for the output lost because it failed */
} relay_steer_stats;

typedef struct relay_flowtab relay_flowtab;

typedef struct relay_flowtab_stats {
    uint64_t capacity;       /* slots */
    uint64_t active;         /* entries not expired */
    uint64_t flows;          /* entries ever recorded */
    uint64_t evictions;      /* live entries overwritten because their bucket was full */
} relay_flowtab_stats;

typedef struct relay_flow_info {
    uint8_t family;          /* 4 or 6 */
    uint8_t proto;           /* IP protocol number */
    uint8_t closing;         /* TCP FIN or RST seen: the short timeout applies */
    uint8_t reserved;
    uint16_t port_lo, port_hi;  /* host order, the ports of addr_lo and addr_hi */
    uint8_t addr_lo[16], addr_hi[16];  /* IPv4 in the first 4 bytes; lo < hi as (addr, port) */
    uint32_t rule;           /* 0 = default path */
    uint64_t idle_ns;        /* since the last frame */
} relay_flow_info;

/* capacity: a power of two >= 64; idle_ns: timeout of a flow without frames;
 * closed_ns: timeout once a TCP FIN or RST was seen.  NULL on bad arguments. */
relay_flowtab *relay_flowtab_new(uint32_t capacity, uint64_t idle_ns, uint64_t closed_ns);
/* Only once no relay uses it (relay_set_flowtab(r, NULL) or relay_free). */
void relay_flowtab_free(relay_flowtab *t);
void relay_flowtab_get_stats(relay_flowtab *t, relay_flowtab_stats *out);
/* Copies up to max live entries; returns the number copied. */
uint32_t relay_flowtab_dump(relay_flowtab *t, relay_flow_info *out, uint32_t max);
void relay_flowtab_clear(relay_flowtab *t);

/* Attaches a flow table (NULL detaches). 0. */
int relay_set_flowtab(relay *r, relay_flowtab *t);
/* Retarget: the relay takes a private description of fd (as relay_open does)
 * and sends every frame after the current batch there; the old destination's
 * description is closed.  Waits while a write to a full old destination is in
 * progress.  write_header: a pcap destination gets a global header first.
 * 0 or -errno (-EINVAL: not opened; -EBADF: the loop has ended). */
int relay_set_dst(relay *r, int fd, int kind, int write_header);
/* Adds a rule (id != 0, unique on this relay). insns NULL / n == 0: the rule
 * classifies nothing and only carries flows recorded by the other relay.
 * 0, -EINVAL (id 0 or bad program), -EEXIST, -ENOSPC, -ENOMEM or a take_fd error. */
int relay_add_steer(relay *r, uint32_t rule_id, const relay_bpf_insn *insns, uint32_t n,
                    int fd, int kind, int write_header);
/* Removes a rule and closes its output; its flows take the default path on
 * this relay from the next batch. 0 or -ENOENT. */
int relay_remove_steer(relay *r, uint32_t rule_id);
/* 0 or -ENOENT. */
int relay_get_steer_stats(relay *r, uint32_t rule_id, relay_steer_stats *out);
/* ---- vhost-user ports (vhost.c) ----
 * A guest booted with virtio_uml.device=PATH:1 connects to PATH; the port's thread
 * answers the protocol and bridges its virtio-net queues to data_fd, a
 * SOCK_SEQPACKET socket (one frame per message), like a vector port's host end. */
typedef struct relay_vhost relay_vhost;

typedef struct relay_vhost_stats {
    uint64_t tx_frames;      /* guest -> socket */
    uint64_t tx_bytes;
    uint64_t tx_drops;       /* bad chains, refused or unsent frames */
    uint64_t tx_gso;         /* TCP super-frames the guest sent (TSO) */
    uint64_t rx_frames;      /* socket -> guest */
    uint64_t rx_bytes;
    uint64_t rx_drops;       /* frames larger than all of the guest's buffers */
    uint64_t rx_gso;         /* frames given to the guest as super-frames */
    uint64_t features;       /* what the guest's driver accepted (virtio feature bits) */
    uint32_t connected;      /* the guest's kernel is connected */
    uint32_t ready;          /* both queues are running */
    uint64_t tx_relayed;     /* of tx_frames: read from the queue by a relay itself (vhost_ring.c) */
    uint64_t rx_relayed;     /* of rx_frames: written into the queue by a relay itself */
    uint64_t tx_spliced;     /* of tx_relayed: spliced into a pipe, not copied (vhost_splice.c) */
} relay_vhost_stats;

/* Listens on path (a new unix stream socket; removed once the guest connects or at
 * free).  data_fd: the relay's side is duplicated.  mac: 6 bytes.  offload: offer
 * checksum offload and TSO.  NULL on error (errno). */
relay_vhost *relay_vhost_new(const char *path, int data_fd, uint32_t mtu, const uint8_t *mac,
                             int offload);
/* Starts the port's thread. 0 or -errno. */
int relay_vhost_start(relay_vhost *v);
/* on: complete checksums and cut super-frames before they leave (for a peer without
 * offload: a vector port, a pcap reader that checks checksums). */
void relay_vhost_set_finish(relay_vhost *v, int on);
/* Asks the guest to remove the device (its slave channel ends; it unregisters the
 * device in a worker while the thread still answers).  Before stopping the kernel:
 * UML 6.1 panics removing a virtio_uml device in its exit path. */
void relay_vhost_detach(relay_vhost *v);
void relay_vhost_get_stats(relay_vhost *v, relay_vhost_stats *out);
size_t relay_vhost_last_error(relay_vhost *v, char *buf, size_t len);
/* Stops the thread, unmaps the guest's memory, closes everything. */
void relay_vhost_free(relay_vhost *v);
/* r's source (an opened socket relay, not yet run) is v's host end: r reads v's
 * transmit queue itself whenever it can (both queues running, no finishing, no other
 * relay reading it), copying each frame once from guest memory, and the socket
 * otherwise.  r holds a reference on v until it ends.  0 or -EINVAL. */
int relay_set_vhost_src(relay *r, relay_vhost *v);
/* r's default destination (an opened socket) is v's host end: r writes frames straight
 * into v's receive queue while the guest has buffers for them and the port's socket
 * holds nothing older; the socket otherwise.  Until r ends or is retargeted (then call
 * again if the new destination is a port's host end).  0 or -EINVAL. */
int relay_set_vhost_dst(relay *r, relay_vhost *v);
/* ---- cdef end ---- */

#endif /* STDPKT_RELAY_H */
