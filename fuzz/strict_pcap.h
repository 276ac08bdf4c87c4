/*
 * strict_pcap.h - the fuzz harnesses' oracle: an independent, strict reading of a pcap
 * stream (pcap_stream.c, pcap_rx.c).  Static functions: each harness has its own copy.
 */
#ifndef STDPKT_FUZZ_STRICT_PCAP_H
#define STDPKT_FUZZ_STRICT_PCAP_H

#include "relay.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static int magic_kind(uint32_t m, int *swapped, int *nsec)
{
    switch (m) {
    case 0xa1b2c3d4u: *swapped = 0; *nsec = 0; return 1;
    case 0xa1b23c4du: *swapped = 0; *nsec = 1; return 1;
    case 0xd4c3b2a1u: *swapped = 1; *nsec = 0; return 1;
    case 0x4d3cb2a1u: *swapped = 1; *nsec = 1; return 1;
    }
    return 0;
}

/* A strict reading of the stream: global header, then records, where a
 * "record" starting with a pcap magic and version major 2 is a new global
 * header.  Returns 1 and fills out/out_len (concatenated frames), *nframes and,
 * if lens is not NULL, the first max_lens frame lengths, if the whole stream is
 * well-formed; 0 otherwise. */
static int strict_parse(const uint8_t *p, size_t n, uint8_t *out, size_t *out_len,
                        uint64_t *nframes, uint32_t *lens, size_t max_lens)
{
    size_t off = 0;
    int swapped = 0, nsec = 0, have = 0;
    *out_len = 0;
    *nframes = 0;
    while (off < n) {
        uint32_t m;
        int sw, ns;
        if (n - off >= 4) {
            memcpy(&m, p + off, 4);
            int is_hdr = 0;
            if (magic_kind(m, &sw, &ns)) {
                if (!have) {
                    is_hdr = 1;       /* the first header: any version */
                } else if (n - off >= 6) {
                    uint16_t major;   /* mid-stream: a magic with version major 2 */
                    memcpy(&major, p + off + 4, 2);
                    if (sw)
                        major = __builtin_bswap16(major);
                    is_hdr = major == 2;
                }
            }
            if (is_hdr) {
                if (n - off < 24 || (rd32(p + off + 20, sw) & 0xffffu) != 1)
                    return 0;
                swapped = sw;
                nsec = ns;
                have = 1;
                off += 24;
                continue;
            }
        }
        if (!have || n - off < 16)
            return 0;
        uint32_t frac = rd32(p + off + 4, swapped), incl = rd32(p + off + 8, swapped);
        uint32_t orig = rd32(p + off + 12, swapped);
        if (frac >= (nsec ? 1000000000u : 1000000u) || incl < RELAY_FRAME_MIN ||
            incl > RELAY_FRAME_MAX || orig < incl || n - off - 16 < incl)
            return 0;
        memcpy(out + *out_len, p + off + 16, incl);
        *out_len += incl;
        if (lens != NULL && *nframes < max_lens)
            lens[*nframes] = incl;
        (*nframes)++;
        off += 16 + (size_t)incl;
    }
    return 1;
}

#endif /* STDPKT_FUZZ_STRICT_PCAP_H */
