/*
 * bench.c - benchmark helpers on blocking datagram sockets.
 */
#define _GNU_SOURCE
#include "relay_int.h"

/* ---------------------------------------------------------------- bench helpers */

int64_t relay_bench_send(int fd, uint32_t len, uint64_t count)
{
    enum { B = 32 };
    struct mmsghdr mm[B];
    struct iovec iov;
    uint8_t *buf = calloc(1, len ? len : 1);
    uint64_t sent = 0;
    if (buf == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(i * 7u);
    if (len >= 14) {
        memset(buf, 0xff, 6);
        buf[12] = 0x88;
        buf[13] = 0xb5;    /* local experimental ethertype */
    }
    iov.iov_base = buf;
    iov.iov_len = len;
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < B; i++) {
        mm[i].msg_hdr.msg_iov = &iov;
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    while (sent < count) {
        unsigned want = count - sent < B ? (unsigned)(count - sent) : B;
        int k = sendmmsg(fd, mm, want, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            return sent ? (int64_t)sent : -e;
        }
        sent += (uint64_t)k;
    }
    free(buf);
    return (int64_t)sent;
}

int64_t relay_bench_recv(int fd, uint64_t count, uint64_t *bytes)
{
    enum { B = 16 };
    struct mmsghdr mm[B];
    struct iovec iov[B];
    uint8_t *buf = malloc((size_t)B * SLOT_SIZE);
    uint64_t got = 0;
    if (buf == NULL)
        return -ENOMEM;
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < B; i++) {
        iov[i].iov_base = buf + (size_t)i * SLOT_SIZE;
        iov[i].iov_len = SLOT_SIZE;
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    while (got < count) {
        int k = recvmmsg(fd, mm, B, MSG_WAITFORONE, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            break;            /* timeout or error: report what arrived */
        }
        for (int i = 0; i < k; i++) {
            if (mm[i].msg_len == 0) {
                k = -1;
                break;
            }
            *bytes += mm[i].msg_len;
            got++;
        }
        if (k < 0)
            break;
    }
    free(buf);
    return (int64_t)got;
}
