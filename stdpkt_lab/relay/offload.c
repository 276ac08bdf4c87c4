/*
 * offload.c - virtio-net headers, checksums and segmentation for vhost-user ports.
 *
 * With checksum offload and TSO a guest hands over TCP/UDP frames whose
 * checksum field holds only the pseudo-header sum (NEEDS_CSUM), and TCP
 * "super-frames" of up to 64 KiB that the device is to cut at gso_size.  Such
 * frames travel through relays and pipes as they are (a pcap reader sees a
 * large frame with a partial checksum, as tcpdump on a host with offload
 * does).  The receiving port re-creates the header from the frame itself
 * (ol_rx_header), and a port whose peer cannot take them finishes them in
 * software (ol_finish_csum, ol_segment).  All parsing here bounds-checks the
 * frame: it comes from a guest or a pipe.
 */
#define _GNU_SOURCE
#include "vhost.h"

#include <errno.h>
#include <string.h>

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* Internet checksum on native-order 16-bit words (RFC 1071: byte order does not
 * matter if the result is stored with the same order). */
uint64_t ol_csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        sum += (uint64_t)a + b;
        p += 8;
        len -= 8;
    }
    while (len >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        sum += a;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint8_t last[2] = { p[0], 0 };
        uint16_t a;
        memcpy(&a, last, 2);
        sum += a;
    }
    return sum;
}

uint16_t ol_csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* Where the L4 header is: 0 when the frame is not plain IPv4/IPv6 TCP/UDP. */
typedef struct l4info {
    int v6;
    uint32_t l3, l4;             /* offsets */
    uint8_t proto;
    uint32_t l4len;              /* L4 header + payload, from the IP header */
    uint64_t pseudo;             /* pseudo-header sum (native words) */
} l4info;

static int parse_l4(const uint8_t *f, size_t have, size_t len, l4info *o)
{
    if (have < 14 + 20)
        return 0;
    uint16_t et = rd16(f + 12);
    o->l3 = 14;
    if (et == 0x0800) {
        const uint8_t *ip = f + 14;
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20 || have < 14 + ihl)
            return 0;
        if (rd16(ip + 6) & 0x3fff)           /* a fragment */
            return 0;
        uint32_t tot = rd16(ip + 2);
        if (tot < ihl || 14 + (size_t)tot > len)
            return 0;
        o->v6 = 0;
        o->proto = ip[9];
        o->l4 = 14 + ihl;
        o->l4len = tot - ihl;
        uint8_t ph[12];
        memcpy(ph, ip + 12, 8);
        ph[8] = 0;
        ph[9] = o->proto;
        wr16(ph + 10, (uint16_t)o->l4len);
        o->pseudo = ol_csum_add(0, ph, sizeof ph);
    } else if (et == 0x86dd) {
        const uint8_t *ip = f + 14;
        if (have < 14 + 40 || (ip[0] >> 4) != 6)
            return 0;
        uint32_t plen = rd16(ip + 4);
        if (14 + 40 + (size_t)plen > len)
            return 0;
        o->v6 = 1;
        o->proto = ip[6];                    /* extension headers: not handled */
        o->l4 = 14 + 40;
        o->l4len = plen;
        /* the IPv6 pseudo header: src, dst, 32-bit length, 3 zero bytes, next header */
        uint8_t p6[40];
        memcpy(p6, ip + 8, 32);
        p6[32] = (uint8_t)(plen >> 24);
        p6[33] = (uint8_t)(plen >> 16);
        p6[34] = (uint8_t)(plen >> 8);
        p6[35] = (uint8_t)plen;
        p6[36] = p6[37] = p6[38] = 0;
        p6[39] = o->proto;
        o->pseudo = ol_csum_add(0, p6, sizeof p6);
    } else {
        return 0;
    }
    if (o->proto == 6) {
        if (o->l4len < 20 || have < o->l4 + 20)
            return 0;
        uint32_t thl = (uint32_t)(f[o->l4 + 12] >> 4) * 4;
        if (thl < 20 || thl > o->l4len || have < o->l4 + thl)
            return 0;
        return 1;
    }
    if (o->proto == 17)
        return o->l4len >= 8 && have >= o->l4 + 8;
    return 0;
}

void ol_rx_header(uint8_t *f, size_t have, size_t len, uint32_t mtu, int csum, int tso,
                  vnet_hdr *h)
{
    l4info o;
    memset(h, 0, sizeof *h);
    if (!csum || !parse_l4(f, have, len, &o))
        return;
    uint32_t field = o.l4 + (o.proto == 6 ? 16 : 6);
    if (o.proto == 17 && !o.v6 && f[field] == 0 && f[field + 1] == 0)
        return;                              /* UDP over IPv4 without a checksum */
    uint16_t ps = ol_csum_fold(o.pseudo);
    memcpy(f + field, &ps, 2);
    h->flags = VNH_F_NEEDS_CSUM;
    h->csum_start = (uint16_t)o.l4;
    h->csum_offset = o.proto == 6 ? 16 : 6;
    if (!tso || o.proto != 6)
        return;
    uint32_t thl = (uint32_t)(f[o.l4 + 12] >> 4) * 4;
    uint32_t l3len = o.l4 - o.l3;
    if (mtu <= l3len + thl)
        return;
    uint32_t mss = mtu - l3len - thl;
    if (o.l4len - thl <= mss)
        return;
    h->gso_type = o.v6 ? VNH_GSO_TCPV6 : VNH_GSO_TCPV4;
    if (f[o.l4 + 13] & 0x80)                 /* CWR */
        h->gso_type |= VNH_GSO_ECN;
    h->gso_size = (uint16_t)mss;
    h->hdr_len = (uint16_t)(o.l4 + thl);
}

int ol_finish_csum(uint8_t *f, size_t len, const vnet_hdr *h)
{
    if (!(h->flags & VNH_F_NEEDS_CSUM))
        return 0;
    size_t start = h->csum_start, at = start + h->csum_offset;
    if (start >= len || at + 2 > len)
        return -EINVAL;
    uint16_t c = (uint16_t)~ol_csum_fold(ol_csum_add(0, f + start, len - start));
    if (c == 0 && h->csum_offset == 6)
        c = 0xffff;                          /* UDP: 0 means "no checksum" */
    memcpy(f + at, &c, 2);
    return 0;
}

int ol_segment(const uint8_t *f, size_t len, const vnet_hdr *h, uint8_t *out,
               int (*emit)(void *ctx, const uint8_t *f, size_t n), void *ctx)
{
    l4info o;
    if (!parse_l4(f, len, len, &o) || o.proto != 6 || h->gso_size == 0)
        return -EINVAL;
    uint32_t thl = (uint32_t)(f[o.l4 + 12] >> 4) * 4;
    uint32_t hdr = o.l4 + thl;
    size_t payload = o.l4 + o.l4len - hdr;
    uint32_t seq0 = (uint32_t)rd16(f + o.l4 + 4) << 16 | rd16(f + o.l4 + 6);
    uint16_t id0 = o.v6 ? 0 : rd16(f + 16);
    uint8_t flags0 = f[o.l4 + 13];
    uint32_t mss = h->gso_size;
    size_t off = 0;
    uint32_t k = 0;
    do {
        size_t seg = payload - off < mss ? payload - off : mss;
        int last = off + seg >= payload;
        memcpy(out, f, hdr);
        memcpy(out + hdr, f + hdr + off, seg);
        uint32_t l4len = thl + (uint32_t)seg;
        uint8_t *ip = out + 14, *th = out + o.l4;
        if (o.v6) {
            wr16(ip + 4, (uint16_t)l4len);
        } else {
            wr16(ip + 2, (uint16_t)(o.l4 - 14 + l4len));
            wr16(ip + 4, (uint16_t)(id0 + k));
            ip[10] = ip[11] = 0;
            uint16_t ic = (uint16_t)~ol_csum_fold(ol_csum_add(0, ip, o.l4 - 14));
            memcpy(ip + 10, &ic, 2);
        }
        uint32_t seq = seq0 + (uint32_t)off;
        wr16(th + 4, (uint16_t)(seq >> 16));
        wr16(th + 6, (uint16_t)seq);
        uint8_t fl = flags0;
        if (!last)
            fl &= (uint8_t)~0x09;            /* FIN, PSH only on the last */
        if (k)
            fl &= (uint8_t)~0x80;            /* CWR only on the first */
        th[13] = fl;
        /* pseudo header with this segment's length */
        l4info so;
        if (!parse_l4(out, hdr + seg, hdr + seg, &so))
            return -EINVAL;
        th[16] = th[17] = 0;
        uint16_t tc = (uint16_t)~ol_csum_fold(ol_csum_add(so.pseudo, th, l4len));
        memcpy(th + 16, &tc, 2);
        int rc = emit(ctx, out, hdr + seg);
        if (rc)
            return rc;
        off += seg;
        k++;
    } while (off < payload);
    return 0;
}
