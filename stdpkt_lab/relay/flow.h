/*
 * flow.h - the flow table behind steering (internal to the relay; the public
 * API is in relay.h).
 *
 * Keys are symmetric: both directions of a flow map to one entry, so the two
 * relays of a link that share a table agree on every flow.  The table is a
 * fixed array probed linearly over a short window; expired entries are reused
 * in place, and when a window holds only live entries the least recently
 * used one is evicted (counted).  Callers lock the table around a batch.
 */
#ifndef STDPKT_FLOW_H
#define STDPKT_FLOW_H

#include <pthread.h>
#include <stdint.h>

#include "relay.h"

#define FLOW_TCP_FIN 0x01
#define FLOW_TCP_SYN 0x02
#define FLOW_TCP_RST 0x04
#define FLOW_TCP_ACK 0x10

typedef struct flow_key {
    uint8_t lo[16], hi[16];   /* addresses: lo < hi as (address, port) */
    uint16_t plo, phi;        /* network order */
    uint8_t proto, family;
    uint8_t pad[2];
} flow_key;

typedef struct flow_ent {
    flow_key k;
    uint64_t last_ns;
    uint32_t rule;
    uint8_t used, closing;
} flow_ent;

struct relay_flowtab {
    pthread_mutex_t lock;
    uint32_t mask;
    uint64_t idle_ns, closed_ns;
    uint64_t flows, evictions;
    flow_ent *ents;
};

/* The key of an IPv4/IPv6 frame and its TCP flags (0 for other protocols).
 * Returns 0 for frames that are no IP flow (non-IP, truncated headers). */
__attribute__((visibility("hidden"))) int flow_key_of(const uint8_t *f, uint32_t len, flow_key *k, uint8_t *tcp_flags);

/* With t->lock held: the live entry for k, or NULL (none, or expired). */
__attribute__((visibility("hidden"))) flow_ent *flow_find(relay_flowtab *t, const flow_key *k, uint64_t now);
/* With t->lock held: records k (replacing an expired entry of the same key). */
__attribute__((visibility("hidden"))) void flow_insert(relay_flowtab *t, const flow_key *k, uint32_t rule, uint64_t now, int closing);
/* CLOCK_MONOTONIC, the clock of the table. */
__attribute__((visibility("hidden"))) uint64_t flow_now_ns(void);

#endif /* STDPKT_FLOW_H */
