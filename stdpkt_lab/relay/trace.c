/*
 * trace.c - the trace ring of recent frames and its BPF filter.
 */
#define _GNU_SOURCE
#include "relay_int.h"

/* ---------------------------------------------------------------- trace */

void rl_trace_put(relay *r, const uint8_t *data, uint32_t len, uint32_t orig,
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
void rl_trace_batch(relay *r, uint32_t n, uint64_t ts)
{
    if (!r->tslots || !__atomic_load_n(&r->trace_on, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&r->seq, n, __ATOMIC_RELAXED);
        return;
    }
    pthread_mutex_lock(&r->trace_lock);
    uint64_t seq = __atomic_fetch_add(&r->seq, n, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < n; i++)
        rl_trace_put(r, r->fr[i].rec + REC_HDR, r->fr[i].len, r->fr[i].orig, ts, seq + i, 0);
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
