/*
 * stdpkt-blast: a small static TCP traffic tool for the goodput bench, run
 * inside the guests.  Every guest system call is a ptrace stop (~25-50 us
 * here), so a sender doing one send() per 1 KiB write cannot pass ~0.3 Gbit/s;
 * this one submits a batch of IORING_OP_SEND operations (default 64 x the
 * write size) per io_uring_enter(), so the application still hands the kernel
 * 1 KiB writes, but the guest pays one system call per batch.
 *
 *   stdpkt-blast recv PORT [BUFSIZE]
 *       listens on PORT, accepts one connection, reads with BUFSIZE-byte
 *       buffers (default 1 MiB) until EOF, then closes.  Repeats forever.
 *   stdpkt-blast send HOST PORT SECONDS [WRITE [BATCH]]
 *       connects, sends WRITE-byte (default 1024) writes, BATCH (default 64)
 *       per io_uring_enter, for SECONDS; then shuts down its side and waits for
 *       the receiver's EOF, so every byte counted was received.  Prints one
 *       JSON line: {"sender": "stdpkt-blast", "bytes": N, "seconds": S,
 *       "gbps": G, "write": W, "batch": B, "enters": E}.
 *
 * Raw system calls (no liburing), so the binary links statically.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static int ring_init(struct ring *r, unsigned entries)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0)
        return -1;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
    uint8_t *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                       IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        return -1;
    uint8_t *cq = sq;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                  IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED)
            return -1;
    }
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        return -1;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: stdpkt-blast recv PORT [BUFSIZE]\n"
                    "       stdpkt-blast send HOST PORT SECONDS [WRITE [BATCH]]\n");
    return 2;
}

static int do_recv(int port, size_t bufsize)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a;
    char *buf = malloc(bufsize);
    if (ls < 0 || buf == NULL) {
        perror("stdpkt-blast recv");
        return 1;
    }
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4) < 0) {
        perror("stdpkt-blast recv: bind/listen");
        return 1;
    }
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            perror("stdpkt-blast recv: accept");
            return 1;
        }
        while (read(c, buf, bufsize) > 0)
            ;
        close(c);
    }
}

static int do_send(const char *host, int port, double seconds, unsigned wsize, unsigned batch)
{
    struct ring r;
    struct sockaddr_in a;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    char *buf = calloc(1, wsize);
    unsigned entries = 1;
    while (entries < batch)
        entries <<= 1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (s < 0 || buf == NULL || inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "stdpkt-blast send: bad host %s or no memory\n", host);
        return 2;
    }
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("stdpkt-blast send: connect");
        return 1;
    }
    if (ring_init(&r, entries) < 0) {
        perror("stdpkt-blast send: io_uring_setup");
        return 1;
    }
    uint64_t bytes = 0, enters = 0;
    double t0 = now(), end = t0 + seconds;
    int failed = 0;
    while (!failed && now() < end) {
        unsigned tail = *r.sq_tail;
        for (unsigned i = 0; i < batch; i++) {
            unsigned idx = (tail + i) & *r.sq_mask;
            struct io_uring_sqe *q = &r.sqes[idx];
            memset(q, 0, sizeof *q);
            q->opcode = IORING_OP_SEND;
            q->fd = s;
            q->addr = (uint64_t)(uintptr_t)buf;
            q->len = wsize;
            r.sq_array[idx] = idx;
        }
        __atomic_store_n(r.sq_tail, tail + batch, __ATOMIC_RELEASE);
        int k = (int)syscall(__NR_io_uring_enter, r.fd, batch, batch, IORING_ENTER_GETEVENTS,
                             NULL, 0);
        enters++;
        if (k < 0 && errno != EINTR) {
            perror("stdpkt-blast send: io_uring_enter");
            return 1;
        }
        /* reap every completion of the batch (min_complete = batch) */
        unsigned got = 0;
        while (got < batch) {
            unsigned head = *r.cq_head;
            unsigned ctail = __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE);
            if (head == ctail) {
                syscall(__NR_io_uring_enter, r.fd, 0, batch - got, IORING_ENTER_GETEVENTS,
                        NULL, 0);
                enters++;
                continue;
            }
            for (; head != ctail; head++, got++) {
                struct io_uring_cqe *c = &r.cqes[head & *r.cq_mask];
                if (c->res < 0) {
                    fprintf(stderr, "stdpkt-blast send: send: %s\n", strerror(-c->res));
                    failed = 1;
                } else {
                    bytes += (uint64_t)c->res;
                }
            }
            __atomic_store_n(r.cq_head, head, __ATOMIC_RELEASE);
        }
    }
    /* every byte counted must have reached the receiver: half-close, wait for its EOF */
    shutdown(s, SHUT_WR);
    char sink[4096];
    while (read(s, sink, sizeof sink) > 0)
        ;
    double t = now() - t0;
    close(s);
    printf("{\"sender\": \"stdpkt-blast\", \"bytes\": %llu, \"seconds\": %.6f, \"gbps\": %.6f, "
           "\"write\": %u, \"batch\": %u, \"enters\": %llu}\n",
           (unsigned long long)bytes, t, (double)bytes * 8 / t / 1e9, wsize, batch,
           (unsigned long long)enters);
    return failed;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "recv") == 0) {
        long bs = argc > 3 ? atol(argv[3]) : 1 << 20;
        if (bs <= 0)
            return usage();
        return do_recv(atoi(argv[2]), (size_t)bs);
    }
    if (argc >= 5 && strcmp(argv[1], "send") == 0) {
        double sec = atof(argv[4]);
        long w = argc > 5 ? atol(argv[5]) : 1024, b = argc > 6 ? atol(argv[6]) : 64;
        if (sec <= 0 || w <= 0 || w > (1 << 24) || b <= 0 || b > 4096)
            return usage();
        return do_send(argv[2], atoi(argv[3]), sec, (unsigned)w, (unsigned)b);
    }
    return usage();
}
