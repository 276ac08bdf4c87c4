/*
 * pcap_in.c - parsing a pcap byte stream in place (global headers, records,
 * malformed records, resynchronisation, the end of the stream).
 */
#define _GNU_SOURCE
#include "relay_int.h"

/* ---------------------------------------------------------------- sources */

/* Parses the global header at p (GHDR bytes). 0 or RD_BAD. */
static int parse_ghdr(relay *r, const uint8_t *p, uint64_t at)
{
    uint32_t m = ld32(p);
    if (!is_magic(m)) {
        rl_set_err(r, "bad pcap magic 0x%08x (bytes %02x %02x %02x %02x) at byte %llu: expected "
                "0xa1b2c3d4 or 0xa1b23c4d in either byte order", m, p[0], p[1], p[2], p[3],
                (unsigned long long)at);
        return RD_BAD;
    }
    r->swapped = (m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED);
    r->nsec = (m == MAGIC_NS || m == MAGIC_NS_SWAPPED);
    uint32_t lt = get32(r, p + 20) & 0xffffu;
    if (lt != LINKTYPE_ETHERNET) {
        rl_set_err(r, "pcap stream at byte %llu has link type %u, not Ethernet (1)",
                (unsigned long long)at, lt);
        return RD_BAD;
    }
    r->have_ghdr = 1;
    r->have_ts = 0;        /* a new stream may start at another time */
    return 0;
}

/* A second global header in mid-stream (a writer restarted on the same FIFO)? */
static int is_ghdr(const uint8_t *p)
{
    uint32_t m = ld32(p);
    uint16_t major;
    if (!is_magic(m))
        return 0;
    memcpy(&major, p + 4, 2);
    if (m == MAGIC_US_SWAPPED || m == MAGIC_NS_SWAPPED)
        major = __builtin_bswap16(major);
    return major == 2;
}

/* A record header that could start a record: sane fields and, once a record
 * was read, a timestamp within a day of the last one. */
static int plausible(const relay *r, const uint8_t *p)
{
    if (is_ghdr(p))
        return 1;
    uint32_t sec = get32(r, p), frac = get32(r, p + 4);
    uint32_t incl = get32(r, p + 8), orig = get32(r, p + 12);
    if (frac >= (r->nsec ? 1000000000u : 1000000u) || incl < RELAY_FRAME_MIN ||
        incl > RELAY_FRAME_MAX || orig < incl || orig > RELAY_SNAPLEN)
        return 0;
    if (r->have_ts) {
        uint32_t d = sec > r->last_sec ? sec - r->last_sec : r->last_sec - sec;
        if (d > 86400)
            return 0;
    }
    return 1;
}

/* Parses complete records of the read buffer into r->fr. Returns RD_OK (with
 * *nout frames, possibly 0 when more input is needed) or RD_BAD. */
int rl_pcap_parse(relay *r, uint32_t *nout)
{
    uint32_t n = 0;
    uint64_t skipped = 0;
    int rc = RD_OK;
    r->pend_incl = 0;
    while (n < PCAP_BATCH) {
        size_t avail = r->rend - r->rpos;
        uint8_t *p = r->rbuf + r->rpos;
        uint64_t at = r->rbase + r->rpos;
        if (r->skip_left) {
            size_t d = avail < r->skip_left ? avail : (size_t)r->skip_left;
            r->rpos += d;
            r->skip_left -= d;
            skipped += d;
            if (r->skip_left)
                break;
            continue;
        }
        if (!r->have_ghdr) {
            if (avail < GHDR)
                break;
            if (parse_ghdr(r, p, at) != 0) {
                rc = RD_BAD;
                break;
            }
            r->rpos += GHDR;
            continue;
        }
        if (r->resync) {
            /* a candidate must be plausible; its timestamp must be near the last
             * good record's, or, with no record seen yet, the header after its
             * record must be plausible too (or the stream end right there): sane
             * fields alone turn up too easily a byte before a real header */
            size_t s = 0;
            int more = 0;
            for (; avail - s >= REC_HDR; s++) {
                if (!plausible(r, p + s))
                    continue;
                if (r->have_ts || is_ghdr(p + s))
                    break;
                size_t next = s + REC_HDR + get32(r, p + s + 8);
                if (avail >= next + REC_HDR) {
                    if (plausible(r, p + next))
                        break;
                    continue;
                }
                if (r->src_eof) {
                    if (next == avail)
                        break;  /* the last record of the stream */
                    continue;
                }
                more = 1;       /* decide when the next header is here */
                break;
            }
            if (avail < REC_HDR)
                s = 0;
            r->rpos += s;
            skipped += s;
            if (more || avail - s < REC_HDR)
                break;
            r->resync = 0;
            rl_set_err(r, "corrupt pcap record header at byte %llu; resynchronised at byte %llu "
                    "after skipping %llu bytes", (unsigned long long)r->resync_from,
                    (unsigned long long)(r->rbase + r->rpos),
                    (unsigned long long)(r->rbase + r->rpos - r->resync_from));
            continue;
        }
        if (avail < REC_HDR)
            break;
        if (is_ghdr(p)) {
            if (avail < GHDR)
                break;
            if (parse_ghdr(r, p, at) != 0) {
                rc = RD_BAD;
                break;
            }
            r->rpos += GHDR;
            continue;
        }
        uint32_t frac = get32(r, p + 4), incl = get32(r, p + 8), orig = get32(r, p + 12);
        uint32_t frac_max = r->nsec ? 1000000000u : 1000000u;
        if (incl > RELAY_SNAPLEN || frac >= frac_max) {
            stat_add(&r->st->malformed, 1);
            if (incl > RELAY_SNAPLEN)
                rl_set_err(r, "corrupt pcap record header at byte %llu: incl_len=%u > %u; "
                        "resynchronising", (unsigned long long)at, incl, RELAY_SNAPLEN);
            else
                rl_set_err(r, "corrupt pcap record header at byte %llu: %s=%u >= %u; "
                        "resynchronising", (unsigned long long)at,
                        r->nsec ? "ts_nsec" : "ts_usec", frac, frac_max);
            r->resync = 1;
            r->resync_from = at;
            r->rpos += 1;
            skipped += 1;
            continue;
        }
        if (incl < RELAY_FRAME_MIN || orig < incl || incl > RELAY_FRAME_MAX) {
            stat_add(&r->st->malformed, 1);
            if (incl < RELAY_FRAME_MIN)
                rl_set_err(r, "malformed pcap record at byte %llu: incl_len=%u < %u; skipped",
                        (unsigned long long)at, incl, RELAY_FRAME_MIN);
            else if (orig < incl)
                rl_set_err(r, "malformed pcap record at byte %llu: orig_len=%u < incl_len=%u; "
                        "skipped", (unsigned long long)at, orig, incl);
            else
                rl_set_err(r, "malformed pcap record at byte %llu: incl_len=%u > %u (frame too "
                        "large); skipped", (unsigned long long)at, incl, RELAY_FRAME_MAX);
            r->skip_left = (uint64_t)REC_HDR + incl;
            continue;
        }
        if (avail < (size_t)REC_HDR + incl) {
            r->pend_incl = incl;
            break;
        }
        r->fr[n].rec = p;
        r->fr[n].len = incl;
        r->fr[n].orig = orig;
        n++;
        r->last_sec = get32(r, p);
        r->have_ts = 1;
        r->rpos += REC_HDR + incl;
    }
    if (skipped)
        stat_add(&r->st->skipped_bytes, skipped);
    *nout = n;
    return rc;
}

/* The source reached its end: account for what is left in the buffer. */
static int pcap_at_eof(relay *r)
{
    size_t avail = r->rend - r->rpos;
    uint64_t at = r->rbase + r->rpos;
    if (!r->have_ghdr) {
        if (avail == 0)
            return RD_EOF;     /* empty stream */
        rl_set_err(r, "truncated pcap global header: %zu of %d bytes before end of stream",
                avail, GHDR);
        return RD_BAD;
    }
    if (r->skip_left) {
        rl_set_err(r, "pcap stream ended inside a malformed record (%llu bytes missing)",
                (unsigned long long)r->skip_left);
    } else if (r->resync) {
        stat_add(&r->st->skipped_bytes, avail);
        rl_set_err(r, "corrupt pcap record header at byte %llu; no plausible record before end "
                "of stream (%llu bytes skipped)", (unsigned long long)r->resync_from,
                (unsigned long long)(at + avail - r->resync_from));
    } else if (avail) {
        stat_add(&r->st->malformed, 1);
        stat_add(&r->st->skipped_bytes, avail);
        if (avail >= REC_HDR)
            rl_set_err(r, "truncated pcap record at byte %llu: %zu of %u bytes before end of "
                    "stream", (unsigned long long)at, avail - REC_HDR,
                    get32(r, r->rbuf + r->rpos + 8));
        else
            rl_set_err(r, "truncated pcap record header at byte %llu: %zu of %d bytes before end "
                    "of stream", (unsigned long long)at, avail, REC_HDR);
    }
    r->rpos = r->rend;
    return RD_EOF;
}

int rl_read_pcap(relay *r, uint32_t *n)
{
    *n = 0;
    for (;;) {
        if (rl_pcap_parse(r, n) == RD_BAD)
            return RD_BAD;
        if (*n)
            return RD_OK;
        if (r->src_eof)
            return pcap_at_eof(r);
        /* a large record not all read, for a vhost port: straight into its guest
         * (vhost_pcap.c); the destination is looked at again under its lock */
        if (r->pend_incl && (r->direct & 2) &&
            __atomic_load_n(&r->dst.vh, __ATOMIC_RELAXED) != NULL) {
            int bad;
            if (rl_vh_rx_pcap(r, n, &bad))
                return bad ? RD_BAD : RD_OK;   /* its frames, or none: the loop comes back */
        }
        /* nothing complete: keep the tail, read more */
        if (r->rpos) {
            size_t avail = r->rend - r->rpos;
            memmove(r->rbuf, r->rbuf + r->rpos, avail);
            r->rbase += r->rpos;
            r->rpos = 0;
            r->rend = avail;
        }
        size_t room = RBUF_SIZE - r->rend;   /* > 0: a tail is at most a record + a header */
        if (room > RBUF_READ)
            room = RBUF_READ;
        ssize_t k = r->src_is_sock ? recv(r->src_fd, r->rbuf + r->rend, room, MSG_DONTWAIT)
                                   : read(r->src_fd, r->rbuf + r->rend, room);
        if (k > 0) {
            r->rend += (size_t)k;
            continue;
        }
        if (k == 0 || errno == ECONNRESET) {
            r->src_eof = 1;     /* parse what is left once more, then account for the rest */
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return RD_AGAIN;
        rl_set_err(r, "reading source: %s", strerror(errno));
        return RD_ERROR;
    }
}
