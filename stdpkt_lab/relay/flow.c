/*
 * flow.c - the flow table of steering (see flow.h and relay.h).
 */
#define _GNU_SOURCE
#include "flow.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLOW_WINDOW 16            /* slots probed per key */

static int expired(const relay_flowtab *t, const flow_ent *e, uint64_t now)
{
    uint64_t limit = e->closing ? t->closed_ns : t->idle_ns;
    return now > e->last_ns && now - e->last_ns > limit;
}

static uint32_t flow_hash(const flow_key *k)
{
    uint64_t w[5];
    uint64_t h = 0x9e3779b97f4a7c15ull;
    memcpy(w, k, sizeof w);
    for (int i = 0; i < 5; i++) {
        h ^= w[i];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    return (uint32_t)h;
}

static int key_eq(const flow_key *a, const flow_key *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

static inline uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* Orders the two (address, port) ends so both directions give one key. */
static void set_ends(flow_key *k, const uint8_t *sa, const uint8_t *da, size_t alen,
                     const uint8_t *sp, const uint8_t *dp)
{
    uint16_t ps = 0, pd = 0;
    uint8_t a[16] = {0}, b[16] = {0};
    memcpy(a, sa, alen);
    memcpy(b, da, alen);
    if (sp) {
        memcpy(&ps, sp, 2);
        memcpy(&pd, dp, 2);
    }
    int c = memcmp(a, b, 16);
    if (c == 0)
        c = memcmp(&ps, &pd, 2);
    if (c <= 0) {
        memcpy(k->lo, a, 16);
        memcpy(k->hi, b, 16);
        k->plo = ps;
        k->phi = pd;
    } else {
        memcpy(k->lo, b, 16);
        memcpy(k->hi, a, 16);
        k->plo = pd;
        k->phi = ps;
    }
}

static int has_ports(uint8_t proto)
{
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;  /* TCP UDP SCTP UDP-Lite */
}

/* ICMP / ICMPv6 echo: the identifier keys the flow (one ping run, one flow), as
 * conntrack does; other ICMP messages key by addresses only. */
static const uint8_t *echo_id(uint8_t proto, const uint8_t *l4, uint32_t l4len)
{
    if (l4len < 6)
        return NULL;
    if (proto == 1 && (l4[0] == 8 || l4[0] == 0))
        return l4 + 4;
    if (proto == 58 && (l4[0] == 128 || l4[0] == 129))
        return l4 + 4;
    return NULL;
}

int flow_key_of(const uint8_t *f, uint32_t len, flow_key *k, uint8_t *tcp_flags)
{
    uint32_t off = 12;
    uint16_t type;
    const uint8_t *l4;
    uint32_t l4len;
    uint8_t proto;
    *tcp_flags = 0;
    memset(k, 0, sizeof *k);
    if (len < 14)
        return 0;
    type = be16(f + off);
    for (int tags = 0; (type == 0x8100 || type == 0x88a8) && tags < 2; tags++) {
        off += 4;
        if (len < off + 2)
            return 0;
        type = be16(f + off);
    }
    off += 2;
    if (type == 0x0800) {
        if (len < off + 20)
            return 0;
        const uint8_t *ip = f + off;
        uint32_t ihl = (uint32_t)(ip[0] & 0xf) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20 || len < off + ihl)
            return 0;
        proto = ip[9];
        k->family = 4;
        k->proto = proto;
        /* fragments: only the first carries ports; key every fragment without them */
        int frag = (be16(ip + 6) & 0x3fff) != 0;
        l4 = ip + ihl;
        l4len = len - off - ihl;
        const uint8_t *id = frag ? NULL : echo_id(proto, l4, l4len);
        if (!frag && has_ports(proto) && l4len >= 4)
            set_ends(k, ip + 12, ip + 16, 4, l4, l4 + 2);
        else if (id)
            set_ends(k, ip + 12, ip + 16, 4, id, id);
        else
            set_ends(k, ip + 12, ip + 16, 4, NULL, NULL);
        if (!frag && proto == 6 && l4len >= 14)
            *tcp_flags = l4[13];
        return 1;
    }
    if (type == 0x86dd) {
        if (len < off + 40)
            return 0;
        const uint8_t *ip = f + off;
        if ((ip[0] >> 4) != 6)
            return 0;
        proto = ip[6];      /* extension headers are not walked: they key by protocol */
        k->family = 6;
        k->proto = proto;
        l4 = ip + 40;
        l4len = len - off - 40;
        const uint8_t *id = echo_id(proto, l4, l4len);
        if (has_ports(proto) && l4len >= 4)
            set_ends(k, ip + 8, ip + 24, 16, l4, l4 + 2);
        else if (id)
            set_ends(k, ip + 8, ip + 24, 16, id, id);
        else
            set_ends(k, ip + 8, ip + 24, 16, NULL, NULL);
        if (proto == 6 && l4len >= 14)
            *tcp_flags = l4[13];
        return 1;
    }
    return 0;
}

flow_ent *flow_find(relay_flowtab *t, const flow_key *k, uint64_t now)
{
    uint32_t h = flow_hash(k);
    for (uint32_t i = 0; i < FLOW_WINDOW; i++) {
        flow_ent *e = &t->ents[(h + i) & t->mask];
        if (e->used && key_eq(&e->k, k))
            return expired(t, e, now) ? NULL : e;
    }
    return NULL;
}

void flow_insert(relay_flowtab *t, const flow_key *k, uint32_t rule, uint64_t now, int closing)
{
    uint32_t h = flow_hash(k);
    flow_ent *slot = NULL, *oldest = NULL;
    for (uint32_t i = 0; i < FLOW_WINDOW; i++) {
        flow_ent *e = &t->ents[(h + i) & t->mask];
        if (e->used && key_eq(&e->k, k)) {
            slot = e;          /* the same key, expired: replaced in place */
            break;
        }
        if (slot == NULL && (!e->used || expired(t, e, now)))
            slot = e;
        if (e->used && (oldest == NULL || e->last_ns < oldest->last_ns))
            oldest = e;
    }
    if (slot == NULL) {
        slot = oldest;
        t->evictions++;
    }
    slot->k = *k;
    slot->last_ns = now;
    slot->rule = rule;
    slot->used = 1;
    slot->closing = closing ? 1 : 0;
    t->flows++;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

relay_flowtab *relay_flowtab_new(uint32_t capacity, uint64_t idle_ns, uint64_t closed_ns)
{
    if (capacity < 64 || (capacity & (capacity - 1)) != 0 || capacity > (1u << 24))
        return NULL;
    relay_flowtab *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ents = calloc(capacity, sizeof *t->ents);
    if (t->ents == NULL) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    t->mask = capacity - 1;
    t->idle_ns = idle_ns;
    t->closed_ns = closed_ns;
    return t;
}

void relay_flowtab_free(relay_flowtab *t)
{
    if (t == NULL)
        return;
    pthread_mutex_destroy(&t->lock);
    free(t->ents);
    free(t);
}

void relay_flowtab_get_stats(relay_flowtab *t, relay_flowtab_stats *out)
{
    uint64_t now = mono_ns(), active = 0;
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i <= t->mask; i++)
        if (t->ents[i].used && !expired(t, &t->ents[i], now))
            active++;
    out->capacity = (uint64_t)t->mask + 1;
    out->active = active;
    out->flows = t->flows;
    out->evictions = t->evictions;
    pthread_mutex_unlock(&t->lock);
}

uint32_t relay_flowtab_dump(relay_flowtab *t, relay_flow_info *out, uint32_t max)
{
    uint64_t now = mono_ns();
    uint32_t n = 0;
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i <= t->mask && n < max; i++) {
        const flow_ent *e = &t->ents[i];
        if (!e->used || expired(t, e, now))
            continue;
        relay_flow_info *o = &out[n++];
        memset(o, 0, sizeof *o);
        o->family = e->k.family;
        o->proto = e->k.proto;
        o->closing = e->closing;
        o->port_lo = be16((const uint8_t *)&e->k.plo);
        o->port_hi = be16((const uint8_t *)&e->k.phi);
        memcpy(o->addr_lo, e->k.lo, 16);
        memcpy(o->addr_hi, e->k.hi, 16);
        o->rule = e->rule;
        o->idle_ns = now > e->last_ns ? now - e->last_ns : 0;
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

void relay_flowtab_clear(relay_flowtab *t)
{
    pthread_mutex_lock(&t->lock);
    memset(t->ents, 0, sizeof *t->ents * ((size_t)t->mask + 1));
    pthread_mutex_unlock(&t->lock);
}

uint64_t flow_now_ns(void)
{
    return mono_ns();
}
