/*
 * steer.c - retargeting (relay_set_dst) and steering: rules, their outputs,
 * classifying a batch against the flow table (flow.c), writing it in runs.
 */
#define _GNU_SOURCE
#include "relay_int.h"

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

/* Chooses each frame's output (dst lock held): r->fid[i] = the rule id its flow is
 * recorded with (0: default); the output is looked up when the frame is written. */
static void steer_classify(relay *r, uint32_t n)
{
    relay_flowtab *t = r->ft;
    uint64_t now = flow_now_ns();
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *f = r->fr[i].rec + REC_HDR;
        flow_key k;
        uint8_t fl;
        uint32_t rule = 0;
        r->fid[i] = 0;
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
        r->fid[i] = rule;
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
    rl_set_err(r, "steering rule %u: output failed (%s); its frames are dropped", s->id, msg);
    return 0;
}

/* Writes the batch (dst lock held): in runs of consecutive frames with one output. */
/* Lets a waiting control operation take dst_lock (held by the caller), then takes it back. */
static void give_way(relay *r)
{
    pthread_mutex_unlock(&r->dst_lock);
    while (__atomic_load_n(&r->ctl_pending, __ATOMIC_ACQUIRE))
        sched_yield();
    pthread_mutex_lock(&r->dst_lock);
}

int rl_write_batch(relay *r, uint32_t n, uint64_t ts)
{
    uint32_t sent;
    uint64_t bytes;
    if (r->ft != NULL)
        steer_classify(r, n);
    else          /* no flow table: no steering, every frame to the default path */
        memset(r->fid, 0, sizeof *r->fid * n);
    for (uint32_t i = 0; i < n;) {
        uint32_t id = r->fid[i];
        uint32_t j = i + 1;
        while (j < n && r->fid[j] == id)
            j++;
        steer_rule *s = id ? find_rule(r, id, NULL) : NULL;  /* removed: default path */
        int rc;
        if (s == NULL) {
            rc = rl_write_out(r, &r->dst, i, j - i, ts, &sent, &bytes);
        } else if (s->out.dead) {
            stat_add(&s->st.drops, j - i);
            stat_add(&r->st->drops, j - i);
            i = j;
            continue;
        } else {
            rc = rl_write_out(r, &s->out, i, j - i, ts, &sent, &bytes);
            stat_add(&s->st.frames, sent);
            stat_add(&s->st.bytes, bytes);
        }
        if (rc == RL_YIELD) {   /* the rest of the run goes where the operation says */
            i += sent;
            give_way(r);
            continue;
        }
        if (rc && s == NULL)
            return rc;
        if (rc && steer_failed(r, s, rc, j - i - sent))
            return rc;
        i = j;
    }
    return 0;
}

/* A control operation: announce it (a blocked writer yields), then take dst_lock. */
void rl_ctl_lock(relay *r)
{
    __atomic_add_fetch(&r->ctl_pending, 1, __ATOMIC_ACQ_REL);
    rl_kick(r);
    pthread_mutex_lock(&r->dst_lock);
}

void rl_ctl_unlock(relay *r)
{
    pthread_mutex_unlock(&r->dst_lock);
    __atomic_sub_fetch(&r->ctl_pending, 1, __ATOMIC_ACQ_REL);
}

int relay_set_flowtab(relay *r, relay_flowtab *t)
{
    rl_ctl_lock(r);
    r->ft = t;
    rl_ctl_unlock(r);
    return 0;
}

void rl_kick(relay *r)
{
    uint64_t one = 1;
    ssize_t w = write(r->kickfd, &one, sizeof one);
    (void)w;
}

int relay_set_dst(relay *r, int fd, int kind, int write_header)
{
    int nfd, sotype, is_sock, rc;
    if (!r->opened) {
        rl_set_err(r, "relay not opened: cannot retarget");
        return -EINVAL;
    }
    rc = rl_take_fd(r, fd, kind, 1, "new destination", &nfd, &sotype, &is_sock);
    if (rc < 0)
        return rc;
    relay_out o;
    memset(&o, 0, sizeof o);
    o.fd = nfd;
    o.kind = kind;
    o.is_sock = is_sock;
    rl_ctl_lock(r);
    o.epoch = r->dst.epoch + 1;
    if (r->dst.fd < 0) {
        rl_ctl_unlock(r);
        close(nfd);
        return -EBADF;
    }
    int old = r->dst.fd;
    rl_vh_drop_dst(&r->dst);   /* a new destination: the caller says if it is a vhost port's */
    r->dst = o;
    if (kind == RELAY_KIND_PCAP && write_header)
        rl_start_ghdr(&r->dst);
    rl_ctl_unlock(r);
    close(old);
    rl_kick(r);        /* the loop may be polling the old descriptor for a hangup */
    return 0;
}

int relay_add_steer(relay *r, uint32_t rule_id, const relay_bpf_insn *insns, uint32_t n,
                    int fd, int kind, int write_header)
{
    int rc, sotype;
    if (rule_id == 0) {
        rl_set_err(r, "steering rule id 0 is the default path");
        return -EINVAL;
    }
    if (insns != NULL && n > 0 && relay_bpf_validate(insns, n) != 0) {
        rl_set_err(r, "steering rule %u: invalid BPF program", rule_id);
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
    rc = rl_take_fd(r, fd, kind, 1, "steering destination", &s->out.fd, &sotype, &s->out.is_sock);
    if (rc < 0) {
        free(s->filt);
        free(s);
        return rc;
    }
    rl_ctl_lock(r);
    pthread_mutex_lock(&r->rules_lock);
    rc = 0;
    if (find_rule(r, rule_id, NULL) != NULL) {
        rl_set_err(r, "steering rule %u exists already", rule_id);
        rc = -EEXIST;
    } else if (r->nrules >= RELAY_MAX_RULES) {
        rl_set_err(r, "steering: at most %d rules per pump", RELAY_MAX_RULES);
        rc = -ENOSPC;
    } else if (r->ran && r->dst.fd < 0) {
        rl_set_err(r, "steering rule %u: the pump has ended", rule_id);
        rc = -EBADF;
    } else {
        if (kind == RELAY_KIND_PCAP && write_header)
            rl_start_ghdr(&s->out);
        r->rules[r->nrules++] = s;
    }
    pthread_mutex_unlock(&r->rules_lock);
    rl_ctl_unlock(r);
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
    rl_ctl_lock(r);
    pthread_mutex_lock(&r->rules_lock);
    steer_rule *s = find_rule(r, rule_id, &idx);
    if (s != NULL) {
        memmove(r->rules + idx, r->rules + idx + 1, sizeof *r->rules * (r->nrules - idx - 1));
        r->nrules--;
    }
    pthread_mutex_unlock(&r->rules_lock);
    rl_ctl_unlock(r);
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
