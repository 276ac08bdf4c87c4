/*
 * vhost.c - libFuzzer harness of what a vhost-user port parses from a guest or a pipe:
 * the split virtqueue a guest writes (vring.c: descriptor chains, indirect tables,
 * indices) and the frames whose virtio-net headers offload.c re-creates, finishes
 * and segments.
 *
 * Input: byte 0 selects the target.
 *   even: a ring.  The rest (up to 4 KiB) is copied to the start of a 64 KiB
 *         "guest memory" region at guest address 0x10000: a 16-entry descriptor
 *         table at 0x10000, the available ring at 0x10100, the used ring at
 *         0x10200.  Byte 1 sets the direction (bit 0: receive chains).  The
 *         chains are popped (at most 64) and pushed back.  With bit 1 too, a relay
 *         instead puts frames into the receive ring as vhost_ring.c does (vh_rx_put):
 *         bytes 2.. are also the frame (bits 2-3 pick mergeable buffers and offload).
 *   odd:  a frame.  Bytes 1-2 give the MTU, the rest is the frame (exact-size
 *         heap copy): its header is made as for a receiving guest, its checksum
 *         finished, and a TCP super-frame cut into segments.
 *
 * What must hold: no access outside the region or the frame (ASan), every iovec
 * of a chain inside the region, no chain longer than the ring allows, every segment
 * at most header + gso_size bytes with a valid IPv4 header checksum.
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, "vhost invariant: " __VA_ARGS__); fputc('\n', stderr); \
                       abort(); } while (0)

#define REGION 65536u
#define GPA 0x10000u

/* A relay writing frames into a receive ring the guest made (vh_rx_put). */
static void put(const vu_queue *q, const vu_mem *m, const uint8_t *in, size_t n)
{
    relay_vhost *v = calloc(1, sizeof *v);
    size_t len = n - 2 < RELAY_FRAME_MAX ? n - 2 : RELAY_FRAME_MAX;
    uint8_t *f = malloc(len ? len : 1);
    if (!v || !f)
        goto done;
    v->q[0] = *q;
    v->mem = *m;
    v->mtu = 1500;
    v->offload = !!(in[1] & 8);
    v->acked = (in[1] & 4 ? BIT(F_MRG_RXBUF) : 0) |
               (in[1] & 8 ? BIT(F_GUEST_CSUM) | BIT(F_GUEST_TSO4) | BIT(F_GUEST_TSO6) : 0);
    for (int k = 0; k < 8 && len >= RELAY_FRAME_MIN; k++) {
        memcpy(f, in + 2, len);
        uint16_t before = v->q[0].used_idx;
        int ok = vh_rx_put(v, f, (uint32_t)len);
        uint16_t used = (uint16_t)(v->q[0].used_idx - before);
        if (!ok && used)
            FAIL("a refused frame used %u buffers", used);
        if (ok && (used == 0 || used > v->q[0].num))
            FAIL("a frame put into %u buffers", used);
        if (!ok)
            break;
    }
done:
    free(f);
    free(v);
}

static void ring(const uint8_t *in, size_t n)
{
    uint8_t *mem = calloc(1, REGION);
    if (!mem)
        return;
    int writable = n > 1 && (in[1] & 1);
    if (n > 2)
        memcpy(mem, in + 2, n - 2 < 4096 ? n - 2 : 4096);
    vu_mem m = { .n = 1 };
    m.r[0] = (vu_region){ .gpa = GPA, .size = REGION, .uva = GPA, .host = mem };
    vu_queue q = { .num = 16, .desc_addr = GPA, .avail_addr = GPA + 0x100,
                   .used_addr = GPA + 0x200, .kick = -1, .call = -1, .err = -1, .enabled = 1 };
    if (vq_map(&q, &m) != 0)
        FAIL("a ring inside the region did not map");
    if (writable && (in[1] & 2)) {
        put(&q, &m, in, n);
        free(mem);
        return;
    }
    for (int k = 0; k < 64 && vq_avail(&q) > 0; k++) {
        vu_chain c;
        const char *why = NULL;
        int rc = vq_pop(&q, &m, writable, &c, &why);
        if (rc == 0) {
            if (c.niov > VU_CHAIN_IOV)
                FAIL("%u iovecs", c.niov);
            uint64_t sum = 0;
            for (uint32_t i = 0; i < c.niov; i++) {
                uint8_t *b = c.iov[i].iov_base;
                if (b < mem || b + c.iov[i].iov_len > mem + REGION || c.iov[i].iov_len == 0)
                    FAIL("iovec %u outside the guest's memory", i);
                sum += c.iov[i].iov_len;
                memset(b, 0xa5, c.iov[i].iov_len);   /* what a receive would do */
            }
            if (sum != c.len)
                FAIL("chain length %llu != %llu", (unsigned long long)c.len,
                     (unsigned long long)sum);
        } else if (!why) {
            FAIL("a failed chain without a reason");
        }
        vq_push(&q, c.head, 0);
    }
    /* a ring that claims more entries than it holds yields none */
    free(mem);
}

typedef struct seg_ctx {
    uint32_t max;
    uint32_t count;
} seg_ctx;

static int seg(void *ctx, const uint8_t *f, size_t n)
{
    seg_ctx *s = ctx;
    if (n > s->max)
        FAIL("segment of %zu bytes > %u", n, s->max);
    if (n >= 34 && f[12] == 0x08 && f[13] == 0x00) {
        uint32_t ihl = (uint32_t)(f[14] & 15) * 4;
        if (n >= 14 + ihl && ol_csum_fold(ol_csum_add(0, f + 14, ihl)) != 0xffff)
            FAIL("segment with a bad IPv4 header checksum");
    }
    s->count++;
    return 0;
}

static void frame(const uint8_t *in, size_t n)
{
    if (n < 3)
        return;
    uint32_t mtu = 68u + ((uint32_t)in[1] << 8 | in[2]) % 65468u;
    size_t len = n - 3;
    uint8_t *f = malloc(len ? len : 1);
    uint8_t *out = malloc(RELAY_FRAME_MAX + 64);
    if (!f || !out)
        goto done;
    memcpy(f, in + 3, len);
    vnet_hdr h;
    ol_rx_header(f, len, len, mtu, 1, 1, &h);
    if (h.flags & VNH_F_NEEDS_CSUM) {
        if (h.csum_start + h.csum_offset + 2u > len)
            FAIL("checksum field outside the frame");
        if (ol_finish_csum(f, len, &h) != 0)
            FAIL("a header we made cannot be finished");
    }
    if (h.gso_type != VNH_GSO_NONE) {
        if (!h.gso_size || h.hdr_len > len)
            FAIL("bad gso header");
        seg_ctx s = { .max = (uint32_t)h.hdr_len + h.gso_size };
        if (len <= RELAY_FRAME_MAX && ol_segment(f, len, &h, out, seg, &s) == 0 && s.count < 2)
            FAIL("a super-frame gave %u segment(s)", s.count);
    }
    /* any header a guest may send, on the same frame */
    if (len >= 10 && len <= RELAY_FRAME_MAX) {
        vnet_hdr g;
        memcpy(&g, in + 3, sizeof g < len ? sizeof g : len);
        g.gso_size = (uint16_t)(g.gso_size % 9000 + 1);
        seg_ctx s = { .max = RELAY_FRAME_MAX + 64 };
        (void)ol_segment(f, len, &g, out, seg, &s);
        (void)ol_finish_csum(f, len, &g);
    }
done:
    free(f);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        frame(data, size);
    else
        ring(data, size);
    return 0;
}
