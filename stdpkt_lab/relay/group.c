/*
 * group.c - one event loop for several relays (relay_run_group, see relay.h).
 *
 * Each round offers every relay one step (a batch from its source, written to
 * its outputs); when no source had anything the thread sleeps in one poll()
 * over every source, stop eventfd, retarget eventfd and default destination
 * (for a hangup).  A write to a full destination still blocks the round; it
 * ends at that relay's stop like a single relay's loop.
 */
#define _GNU_SOURCE
#include "relay_int.h"

#define GROUP_FDS 4

static int group_wait(relay **rs, uint32_t n, uint32_t *ended, int *res)
{
    struct pollfd p[RELAY_GROUP_MAX * GROUP_FDS];
    for (;;) {
        int held = 0;
        for (uint32_t i = 0; i < n; i++) {
            held |= rs[i]->held_n != 0;   /* frames a pipe refers to (vhost_splice.c) */
            if (stopping(rs[i])) {
                *ended = i;
                *res = RELAY_STOPPED;
                return 1;
            }
            struct pollfd *q = p + i * GROUP_FDS;
            q[0].fd = rs[i]->src_fd;
            q[0].events = POLLIN;
            q[1].fd = rs[i]->stopfd;
            q[1].events = POLLIN;
            q[2].fd = __atomic_load_n(&rs[i]->dst.fd, __ATOMIC_RELAXED);
            q[2].events = 0;
            q[3].fd = rs[i]->kickfd;
            q[3].events = POLLIN;
            for (int k = 0; k < GROUP_FDS; k++)
                q[k].revents = 0;
        }
        struct timespec release = { 0, RL_RELEASE_NS };
        int got = ppoll(p, n * GROUP_FDS, held ? &release : NULL, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            rl_set_err(rs[0], "poll on sources: %s", strerror(errno));
            *ended = 0;
            *res = RELAY_ERROR;
            return 1;
        }
        if (got == 0)
            return 0;                     /* a round: held frames the reader has read go back */
        int ready = 0, kicked = 0;
        for (uint32_t i = 0; i < n; i++) {
            struct pollfd *q = p + i * GROUP_FDS;
            if (q[1].revents) {
                *ended = i;
                *res = RELAY_STOPPED;
                return 1;
            }
            if (q[3].revents) {
                uint64_t v;
                ssize_t k = read(rs[i]->kickfd, &v, sizeof v);
                (void)k;
                kicked = 1;
                continue;
            }
            if (q[0].revents)
                ready = 1;
            else if (q[2].revents & (POLLERR | POLLHUP)) {
                rl_set_err(rs[i], "destination closed by its peer (%s)",
                           q[2].revents & POLLHUP ? "hangup" : "error");
                *ended = i;
                *res = RELAY_PEER_CLOSED;
                return 1;
            }
        }
        if (ready || kicked)
            return 0;
    }
}

int relay_run_group(relay **rs, uint32_t n)
{
    sigset_t old;
    uint32_t ended = 0;
    int res = 0;
    if (rs == NULL || n == 0 || n > RELAY_GROUP_MAX)
        return -1;
    prctl(PR_SET_NAME, "stdpkt-pumps");
    for (uint32_t i = 0; i < n; i++)
        if (rs[i] == NULL || !rs[i]->opened || __atomic_load_n(&rs[i]->result, __ATOMIC_ACQUIRE))
            return -1;
    for (uint32_t i = 0; i < n; i++)
        rl_vh_release(rs[i]);   /* one poll() for all: the vhost queues stay with their ports */
    rl_block_sigpipe(&old);
    for (uint32_t i = 0; i < n && !res; i++)
        if (!rs[i]->ran && (res = rl_begin(rs[i])) != 0)
            ended = i;
    while (!res) {
        int any = 0;
        for (uint32_t i = 0; i < n; i++) {
            int idle;
            res = rl_step(rs[i], &idle);
            if (res) {
                ended = i;
                break;
            }
            any |= !idle;
        }
        if (!res && !any && group_wait(rs, n, &ended, &res))
            break;
    }
    rl_finish(rs[ended], res);
    rl_restore_sigpipe(&old);
    return (int)ended;
}
