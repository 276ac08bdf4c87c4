/*
 * vhost.h - the vhost-user back end of a port (internal; the API is in relay.h).
 *
 * A guest booted with virtio_uml.device=PATH:1 is the vhost-user front end: its
 * kernel connects to PATH, hands over its memory (a file descriptor) and two
 * split virtqueues (0: receive, 1: transmit), and then moves frames by writing
 * descriptors into its own memory and kicking an eventfd.  The back end is one
 * thread per port that answers the protocol and bridges the queues to a
 * SOCK_SEQPACKET socket, so that the port's host end is the same kind of socket
 * a vector port has and every relay, link, trace and re-wiring works unchanged:
 *
 *   vhost.c      the port's thread, its life cycle and the API
 *   vhost_proto.c  the protocol (messages, memory table, rings set-up, features)
 *   vhost_io.c   the data path: transmit queue -> socket, socket -> receive queue
 *   vring.c      split virtqueues: guest addresses, descriptor chains, used ring,
 *                notifications; every guest-written value is checked
 *   offload.c    virtio-net headers: reading them (transmit) and making them for
 *                frames that arrive without one (receive), checksums, segmentation
 *   vhost_ring.c a relay on the port's host end using the queues itself: it reads
 *                the transmit queue and writes into the receive queue, one copy and
 *                one thread less each way (the socket stays the fallback)
 */
#ifndef STDPKT_VHOST_H
#define STDPKT_VHOST_H

#include "relay.h"

#include <stdint.h>
#include <sys/uio.h>

#define VU_MAX_REGIONS 8
#define VU_QUEUE_MAX 1024
#define VU_NET_HDR 12              /* struct virtio_net_hdr_v1 (VERSION_1 / MRG_RXBUF) */
#define VU_CHAIN_IOV 64            /* iovecs of one frame */

/* virtio-net header flags and GSO types */
#define VNH_F_NEEDS_CSUM 1
#define VNH_F_DATA_VALID 2
#define VNH_GSO_NONE 0
#define VNH_GSO_TCPV4 1
#define VNH_GSO_UDP 3
#define VNH_GSO_TCPV6 4
#define VNH_GSO_ECN 0x80

typedef struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
} __attribute__((packed)) vnet_hdr;

typedef struct vu_region {
    uint64_t gpa, size, uva, mmap_offset;
    uint8_t *host;                 /* guest address gpa, in our mapping */
    void *map_base;                /* the mapping (mmap_offset rounded down to a page) */
    size_t map_len;
} vu_region;

typedef struct vu_mem {
    vu_region r[VU_MAX_REGIONS];
    uint32_t n;
} vu_mem;

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vring_used_elem { uint32_t id; uint32_t len; };

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_USED_F_NO_NOTIFY 1
#define VRING_AVAIL_F_NO_INTERRUPT 1

typedef struct vu_queue {
    uint32_t num;                  /* 0: not set up */
    uint64_t desc_addr, avail_addr, used_addr;   /* front-end (user) addresses */
    struct vring_desc *desc;
    uint16_t *avail;               /* flags, idx, ring[num] */
    uint16_t *used_hdr;            /* flags, idx */
    struct vring_used_elem *used;
    uint16_t last_avail;           /* next avail entry to take */
    uint16_t used_idx;             /* next used entry to write (ours) */
    int kick, call, err;           /* descriptors from the front end, -1 if none */
    int enabled;                   /* SET_VRING_ENABLE, or started by the kick without
                                    * VHOST_USER_F_PROTOCOL_FEATURES */
    int pending_call;              /* used entries not yet signalled */
} vu_queue;

/* One chain of descriptors, translated to host iovecs. */
typedef struct vu_chain {
    uint16_t head;
    uint32_t niov;
    uint64_t len;                  /* bytes in all iovecs */
    struct iovec iov[VU_CHAIN_IOV];
} vu_chain;

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

/* ------------------------------------------------------------ the port (vhost.c, vhost_io.c) */

/* features */
#define F_CSUM 0
#define F_GUEST_CSUM 1
#define F_MTU 3
#define F_MAC 5
#define F_GUEST_TSO4 7
#define F_GUEST_TSO6 8
#define F_GUEST_ECN 9
#define F_HOST_TSO4 11
#define F_HOST_TSO6 12
#define F_MRG_RXBUF 15
#define F_INDIRECT 28
#define F_PROTOCOL 30
#define F_VERSION_1 32
#define PF_REPLY_ACK 3
#define PF_SLAVE_REQ 5                /* UML 6.1 takes its device's interrupt number from it */
#define PF_CONFIG 9
#define PF_OFFERED (BIT(PF_REPLY_ACK) | BIT(PF_SLAVE_REQ) | BIT(PF_CONFIG))
#define BIT(n) (1ull << (n))

#define TX_BATCH 64
#define RX_IOV 256
#define FRAME_ROOM (VU_NET_HDR + RELAY_FRAME_MAX)

struct relay_vhost {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int lfd, cfd, data, stopfd, slave, wakefd;
    int detach;                   /* atomic: close the slave channel (the guest removes the device) */
    pthread_t thread;
    int started;
    uint64_t offered, acked, proto;
    uint32_t mtu;
    uint8_t mac[6];
    int offload;
    uint32_t rx_signal;           /* frames received between interrupts (STDPKT_VHOST_RX_SIGNAL) */
    int finish;                   /* atomic: complete frames in software on transmit */
    vu_mem mem;
    vu_queue q[2];                /* 0 receive, 1 transmit */
    int tx_blocked, rx_starved, data_eof, guest_gone;
    relay_vhost_stats st;
    pthread_mutex_t err_lock;
    char err[320];
    uint8_t *bounce, *scratch;    /* finishing: a linear copy of a frame, and a segment */
    vu_chain tx[TX_BATCH];        /* one transmit batch */
    struct mmsghdr mm[TX_BATCH];
    /* a relay may read the transmit queue itself (vhost_ring.c): tx_lock guards the queue,
     * the guest's memory and the owner; the port's thread takes it to change them */
    pthread_mutex_t tx_lock;
    pthread_mutex_t rx_lock;      /* the receive queue: the port's thread, and relays writing
                                   * frames straight into it (vhost_ring.c); the protocol
                                   * takes both locks, tx_lock first */
    void *tx_owner;               /* the relay reading the transmit queue, or NULL */
    int tx_busy;                  /* the port's thread is serving the queue (no claim) */
    uint32_t tx_gen;              /* bumped when the queues or memory may have changed */
    int closed;                   /* relay_vhost_free() ran: only the memory is left */
    int refs;                     /* atomic: the port's own reference and one per relay */
    struct iovec rx_iov[RX_IOV];  /* the receive buffers one frame may fill */
    uint16_t rx_head[RX_IOV];
    uint32_t rx_room[RX_IOV];
};

#pragma GCC visibility push(hidden)
/* vring.c */
void *vu_gpa(const vu_mem *m, uint64_t addr, uint64_t len);
void *vu_uva(const vu_mem *m, uint64_t addr, uint64_t len);
int vq_map(vu_queue *q, const vu_mem *m);
int vq_avail(vu_queue *q);                             /* entries the guest made available */
int vq_pop(vu_queue *q, const vu_mem *m, int writable, vu_chain *c, const char **why);
int vq_peek_at(vu_queue *q, const vu_mem *m, uint16_t k, int writable, vu_chain *c,
               const char **why);                    /* the k-th available entry, not taken */
void vq_push(vu_queue *q, uint16_t head, uint32_t len);
void vq_signal(vu_queue *q);                          /* call if the guest wants it */
int vq_notify_on(vu_queue *q);                        /* enable kicks; 1 if work came meanwhile */
void vq_notify_off(vu_queue *q);

/* offload.c */
uint16_t ol_csum_fold(uint64_t sum);
uint64_t ol_csum_add(uint64_t sum, const uint8_t *p, size_t len);
/* Makes the header of a frame that arrives without one (frame: its first bytes,
 * len: whole length).  Fills h; may rewrite the TCP/UDP checksum field in frame. */
void ol_rx_header(uint8_t *frame, size_t have, size_t len, uint32_t mtu, int csum, int tso,
                  vnet_hdr *h);
/* Completes the checksum a NEEDS_CSUM header asks for, over a frame in one buffer. */
int ol_finish_csum(uint8_t *frame, size_t len, const vnet_hdr *h);
/* Cuts a TCP super-frame (in one buffer) into frames of at most gso_size payload,
 * each with its checksums complete; calls emit for each.  0 or -EINVAL. */
int ol_segment(const uint8_t *frame, size_t len, const vnet_hdr *h, uint8_t *scratch,
               int (*emit)(void *ctx, const uint8_t *f, size_t n), void *ctx);
/* vhost.c */
void vh_err(relay_vhost *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vh_unmap_all(relay_vhost *v);
void vh_close_queue(vu_queue *q);
int vh_ready(relay_vhost *v);                   /* both queues mapped, kicked and enabled */
/* vhost_proto.c: one message of the front end (tx_lock and rx_lock held); a request that
 * may change the queues ends the transmit grant first.  -1 when the connection is gone or
 * broken (the caller ends the grant). */
int vh_handle(relay_vhost *v);
static inline void vh_add(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, *p + n, __ATOMIC_RELAXED);   /* one writer: the port's thread */
}
/* vhost_io.c: the data path, run by the port's thread */
void vh_do_tx(relay_vhost *v);
void vh_do_rx(relay_vhost *v);
int vh_strip_header(vu_chain *c, vnet_hdr *h);
/* Takes the transmit queue's next frame, its virtio-net header stripped into h: 0, or -1
 * for a bad chain or frame length (*why says which; the chain is taken all the same). */
int vh_pop_tx(relay_vhost *v, vu_chain *c, vnet_hdr *h, const char **why);
/* vhost_ring.c: a relay reading the transmit queue */
void vh_pass_kick(relay_vhost *v);           /* tx_lock held: the owner may have missed a kick */
void vh_revoke(relay_vhost *v);              /* tx_lock held: the queues change, owner lets go */
void vh_unref(relay_vhost *v);               /* the last reference frees the memory */
/* rx_lock held: puts one frame into the receive queue if it fits the buffers there; 1 or 0 */
int vh_rx_put(relay_vhost *v, uint8_t *frame, uint32_t len);
/* rx_lock held: the buffers for a frame of len bytes, gathered into rx_iov (the header's
 * room first), not taken; 0 if they cannot hold it.  Then vh_rx_commit() hands them over
 * once the frame is in them. */
int vh_rx_gather(relay_vhost *v, uint64_t len, uint32_t *nchain, uint32_t *niov);
void vh_rx_commit(relay_vhost *v, uint32_t nchain, uint64_t len);
#pragma GCC visibility pop

#endif /* STDPKT_VHOST_H */
