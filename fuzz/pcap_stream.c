/*
 * pcap_stream.c - libFuzzer harness of the relay's pcap stream parser.
 *
 * Drives the relay only through its public API (relay.h), the way the engine
 * does: the input bytes are a RELAY_KIND_PCAP source (a memfd, or a pipe fed
 * in chunks by a writer thread), the destination a SOCK_SEQPACKET socketpair
 * (RELAY_KIND_SOCKET, one frame per message) drained by a reader thread;
 * relay_run() goes to the end of the stream.
 *
 * Input layout: byte 0 = flags, the rest = the pcap stream.
 *   flags & 1  feed through a pipe in chunks (sizes from flags >> 4 and the
 *              stream bytes) instead of a memfd read in one go
 *   flags & 2  trace ring on (8 slots, 96-byte snap)
 *   flags & 4  trace filter "ip" (the program tcpdump -dd compiles)
 *
 * What must hold, else the harness aborts (a crash libFuzzer records):
 *   - relay_run() ends with RELAY_EOF or RELAY_BAD_STREAM (never a hang, an
 *     error, a peer-closed);
 *   - messages received == stats.frames, their bytes == stats.bytes, each
 *     14..65550 bytes; no drops (a unix seqpacket socket takes them all);
 *   - byte conservation: at RELAY_EOF every input byte is a global header
 *     (24), a relayed record (16 + frame) or counted in skipped_bytes, so
 *     input - sum(16 + frame) - skipped_bytes is a non-negative multiple of
 *     24; at RELAY_BAD_STREAM it is non-negative;
 *   - skipped bytes imply malformed records; malformed records imply a
 *     last-error message;
 *   - oracle: when the stream is well-formed by an independent strict parse
 *     (strict_pcap.h), the relay delivers exactly its frames, in order, byte for
 *     byte, with malformed == skipped_bytes == 0;
 *   - the trace ring holds min(frames offered, 8) entries at most, each with
 *     cap_len <= snap and <= orig_len.
 */
#define _GNU_SOURCE
#include "relay.h"
#include "strict_pcap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAIL(...) do { fprintf(stderr, "pcap_stream invariant: " __VA_ARGS__); \
                       fputc('\n', stderr); abort(); } while (0)

/* ------------------------------------------------------------ the drain */

typedef struct drain {
    int fd;
    uint8_t *buf;          /* concatenated frames */
    size_t len, cap;
    uint64_t msgs;
    int bad_len;           /* a message outside 14..65550 */
} drain;

static void *drain_main(void *arg)
{
    drain *d = arg;
    static __thread uint8_t msg[RELAY_FRAME_MAX + 16];
    for (;;) {
        ssize_t k = recv(d->fd, msg, sizeof msg, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        if (k < RELAY_FRAME_MIN || k > RELAY_FRAME_MAX)
            d->bad_len = 1;
        d->msgs++;
        if (d->len + (size_t)k > d->cap) {
            d->cap = (d->len + (size_t)k) * 2;
            d->buf = realloc(d->buf, d->cap);
            if (d->buf == NULL)
                abort();
        }
        memcpy(d->buf + d->len, msg, (size_t)k);
        d->len += (size_t)k;
    }
    return NULL;
}

/* ------------------------------------------------------------ the feeder */

typedef struct feeder {
    int fd;
    const uint8_t *data;
    size_t len;
    unsigned chunk_seed;
} feeder;

static void *feed_main(void *arg)
{
    feeder *f = arg;
    size_t off = 0;
    /* EPIPE, not SIGPIPE, when the relay stops reading a bad stream (this thread only:
     * a SIGPIPE elsewhere would still show a relay bug) */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    unsigned s = f->chunk_seed * 2654435761u + 1;
    while (off < f->len) {
        s = s * 1103515245u + 12345u;
        /* mostly small chunks (header boundaries), sometimes large ones */
        size_t want = (s >> 16) % 8 == 0 ? 1 + (s >> 8) % 70000 : 1 + (s >> 16) % 40;
        if (want > f->len - off)
            want = f->len - off;
        ssize_t w = write(f->fd, f->data + off, want);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;         /* the relay closed its end (bad stream): stop */
        off += (size_t)w;
    }
    close(f->fd);
    return NULL;
}

/* ------------------------------------------------------------ the harness */

static const relay_bpf_insn FILTER_IP[] = {
    { 0x28, 0, 0, 0x0000000c },
    { 0x15, 0, 1, 0x00000800 },
    { 0x06, 0, 0, 0x00040000 },
    { 0x06, 0, 0, 0x00000000 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    const uint8_t *stream = data + 1;
    size_t slen = size - 1;
    int use_pipe = flags & 1, trace = flags & 2, filter = flags & 4;

    relay_stats st;
    memset(&st, 0, sizeof st);
    relay *r = relay_new(&st, trace ? 8 : 0, trace ? 96 : 0);
    if (r == NULL)
        FAIL("relay_new failed");
    if (filter && relay_set_filter(r, FILTER_IP, 4) != 0)
        FAIL("the ip filter did not validate");

    int src = -1, feed_fd = -1;
    if (use_pipe) {
        int pp[2];
        if (pipe2(pp, O_CLOEXEC) < 0)
            FAIL("pipe: %s", strerror(errno));
        src = pp[0];
        feed_fd = pp[1];
    } else {
        src = memfd_create("pcap-fuzz", MFD_CLOEXEC);
        if (src < 0)
            FAIL("memfd_create: %s", strerror(errno));
        size_t off = 0;
        while (off < slen) {
            ssize_t w = write(src, stream + off, slen - off);
            if (w <= 0)
                FAIL("memfd write: %s", strerror(errno));
            off += (size_t)w;
        }
        lseek(src, 0, SEEK_SET);
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        FAIL("socketpair: %s", strerror(errno));

    int rc = relay_open(r, src, RELAY_KIND_PCAP, sp[0], RELAY_KIND_SOCKET, 0);
    if (rc != 0) {
        char msg[400];
        relay_last_error(r, msg, sizeof msg);
        FAIL("relay_open: %d %s", rc, msg);
    }
    close(src);       /* the relay holds its own descriptions */
    close(sp[0]);

    drain d = { .fd = sp[1] };
    pthread_t dt, ft;
    pthread_create(&dt, NULL, drain_main, &d);
    feeder f = { .fd = feed_fd, .data = stream, .len = slen, .chunk_seed = flags >> 4 };
    if (use_pipe)
        pthread_create(&ft, NULL, feed_main, &f);

    int res = relay_run(r);

    if (use_pipe)
        pthread_join(ft, NULL);
    pthread_join(dt, NULL);
    close(sp[1]);

    char err[400];
    size_t elen = relay_last_error(r, err, sizeof err);

    if (res != RELAY_EOF && res != RELAY_BAD_STREAM)
        FAIL("relay_run returned %d (%s)", res, err);
    if (relay_result(r) != res)
        FAIL("relay_result %d != relay_run %d", relay_result(r), res);
    if (d.bad_len)
        FAIL("a message outside %d..%d bytes", RELAY_FRAME_MIN, RELAY_FRAME_MAX);
    if (d.msgs != st.frames || d.len != st.bytes)
        FAIL("received %llu frames / %zu bytes, counters say %llu / %llu",
             (unsigned long long)d.msgs, d.len, (unsigned long long)st.frames,
             (unsigned long long)st.bytes);
    if (st.drops)
        FAIL("%llu drops on a seqpacket destination", (unsigned long long)st.drops);
    uint64_t accounted = 16 * st.frames + st.bytes + st.skipped_bytes;
    if (accounted > slen)
        FAIL("accounted %llu bytes of a %zu-byte stream", (unsigned long long)accounted, slen);
    if (res == RELAY_EOF && (slen - accounted) % 24 != 0)
        FAIL("at EOF, %llu unaccounted bytes are not whole global headers "
             "(frames %llu bytes %llu skipped %llu malformed %llu, stream %zu)",
             (unsigned long long)(slen - accounted), (unsigned long long)st.frames,
             (unsigned long long)st.bytes, (unsigned long long)st.skipped_bytes,
             (unsigned long long)st.malformed, slen);
    if (st.skipped_bytes && !st.malformed)
        FAIL("%llu bytes skipped without a malformed record", (unsigned long long)st.skipped_bytes);
    if ((st.malformed || res == RELAY_BAD_STREAM) && elen == 0)
        FAIL("malformed input without an error message");
    if (st.injected)
        FAIL("injected counter moved without relay_inject");

    uint8_t *expect = malloc(slen + 1);
    size_t elen2;
    uint64_t nexp;
    if (strict_parse(stream, slen, expect, &elen2, &nexp, NULL, 0)) {
        if (res != RELAY_EOF || st.malformed || st.skipped_bytes)
            FAIL("well-formed stream (%llu frames): result %d, malformed %llu, skipped %llu: %s",
                 (unsigned long long)nexp, res, (unsigned long long)st.malformed,
                 (unsigned long long)st.skipped_bytes, err);
        if (nexp != st.frames || elen2 != d.len || (d.len && memcmp(expect, d.buf, d.len) != 0))
            FAIL("well-formed stream of %llu frames / %zu bytes relayed as %llu / %zu",
                 (unsigned long long)nexp, elen2, (unsigned long long)st.frames, d.len);
    }
    free(expect);

    if (trace) {
        relay_trace_entry ent[8];
        static uint8_t tdata[8 * 96];
        uint32_t got = relay_trace_copy(r, ent, tdata, 8);
        if (got > 8 || got > st.frames)
            FAIL("trace ring holds %u entries after %llu frames", got,
                 (unsigned long long)st.frames);
        for (uint32_t i = 0; i < got; i++) {
            if (ent[i].cap_len > 96 || ent[i].cap_len > ent[i].orig_len)
                FAIL("trace entry %u: cap_len %u orig_len %u", i, ent[i].cap_len,
                     ent[i].orig_len);
            if (i && ent[i].seq <= ent[i - 1].seq)
                FAIL("trace entries out of order");
        }
    }
    free(d.buf);
    relay_free(r);
    return 0;
}
