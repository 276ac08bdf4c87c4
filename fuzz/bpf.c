/*
 * bpf.c - libFuzzer harness of the relay's classic BPF validator and interpreter
 * (relay_bpf_validate, relay_bpf_run: the trace filter a user's expression
 * compiles to, run on every frame a guest sends).
 *
 * Input layout: byte 0 = number of instructions n (0..255; more than the
 * input holds are cut), byte 1 = wirelen slack, then n * 8 bytes of
 * struct bpf_insn (code u16, jt u8, jf u8, k u32, host order), the rest is
 * the packet.
 *
 * What must hold:
 *   - relay_bpf_validate never reads past the n instructions (exact-size heap
 *     copy under ASan);
 *   - a validated program, run on a packet in an exact-size heap buffer,
 *     never reads out of bounds (ASan), never loops (libFuzzer -timeout);
 *   - rejected programs are also refused by relay_set_filter;
 *   - differential: when libpcap (libpcap.so.0.8, loaded at run time) is
 *     present and also validates the program, and every opcode is one
 *     libpcap's bpf_filter() implements, both interpreters return the same
 *     value ("libpcap semantics", relay.c's comment).
 */
#define _GNU_SOURCE
#include "relay.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, "bpf invariant: " __VA_ARGS__); fputc('\n', stderr); \
                       abort(); } while (0)

typedef unsigned (*pcap_filter_fn)(const relay_bpf_insn *, const unsigned char *, unsigned,
                                   unsigned);
typedef int (*pcap_validate_fn)(const relay_bpf_insn *, int);

static pcap_filter_fn pcap_filter;
static pcap_validate_fn pcap_validate;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    void *h = dlopen("libpcap.so.0.8", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        h = dlopen("libpcap.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h != NULL) {
        pcap_filter = (pcap_filter_fn)dlsym(h, "bpf_filter");
        pcap_validate = (pcap_validate_fn)dlsym(h, "bpf_validate");
    }
    if (pcap_filter == NULL || pcap_validate == NULL) {
        pcap_filter = NULL;
        fprintf(stderr, "bpf harness: libpcap not found, differential check off\n");
    }
    return 0;
}

/* The opcodes libpcap's bpf_filter() has a case for (its default aborts). */
static int pcap_implements(uint16_t c)
{
    switch (c) {
    case 0x06: case 0x16:                                     /* ret k/a (no ret x) */
    case 0x20: case 0x28: case 0x30:                          /* ld abs */
    case 0x40: case 0x48: case 0x50:                          /* ld ind */
    case 0x80: case 0x81:                                     /* ld/ldx len */
    case 0x00: case 0x01: case 0x60: case 0x61: case 0xb1:    /* imm, mem, msh */
    case 0x02: case 0x03:                                     /* st, stx */
    case 0x05: case 0x15: case 0x25: case 0x35: case 0x45:    /* ja, jmp k */
    case 0x1d: case 0x2d: case 0x3d: case 0x4d:               /* jmp x */
    case 0x04: case 0x14: case 0x24: case 0x34: case 0x94:    /* alu k */
    case 0x44: case 0x54: case 0xa4: case 0x64: case 0x74:
    case 0x0c: case 0x1c: case 0x2c: case 0x3c: case 0x9c:    /* alu x */
    case 0x4c: case 0x5c: case 0xac: case 0x6c: case 0x7c:
    case 0x84:                                                /* neg */
    case 0x07: case 0x87:                                     /* tax, txa */
        return 1;
    }
    return 0;
}

/* Programs whose libpcap result is defined.  libpcap's scratch memory is uninitialised
 * (relay's is zeroed): compare only programs
 * that store a slot on every path before loading it.  Programs jump forward only, so
 * one pass in order computes, per instruction, the slots stored on all paths to it. */
static int mem_defined(const relay_bpf_insn *f, uint32_t n)
{
    uint16_t in[256];
    uint8_t seen[256] = {0};
    seen[0] = 1;
    in[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!seen[i])
            continue;
        uint16_t c = f[i].code, s = in[i];
        if ((c == 0x60 || c == 0x61) && !(s >> (f[i].k & 15) & 1))
            return 0;
        if ((c == 0x64 || c == 0x74) && f[i].k >= 32)
            return 0;     /* libpcap shifts by k >= 32: undefined in C (x86 masks k) */
        if (c == 0x02 || c == 0x03)
            s |= (uint16_t)(1u << (f[i].k & 15));
        uint32_t succ[2];
        int ns = 0;
        if ((c & 7) == 0x06)
            continue;
        if (c == 0x05)
            succ[ns++] = i + 1 + f[i].k;
        else if ((c & 7) == 0x05) {
            succ[ns++] = i + 1 + f[i].jt;
            succ[ns++] = i + 1 + f[i].jf;
        } else
            succ[ns++] = i + 1;
        for (int j = 0; j < ns; j++) {
            uint32_t t = succ[j];
            if (t >= n)
                continue;
            in[t] = seen[t] ? (uint16_t)(in[t] & s) : s;
            seen[t] = 1;
        }
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t n = data[0];
    uint32_t slack = data[1];
    size_t have = (size - 2) / sizeof(relay_bpf_insn);
    if (n > have)
        n = (uint32_t)have;
    size_t plen = size - 2 - (size_t)n * sizeof(relay_bpf_insn);

    /* exact-size copies: ASan sees any read past the end */
    relay_bpf_insn *prog = malloc((size_t)n * sizeof *prog + 1);
    memcpy(prog, data + 2, (size_t)n * sizeof *prog);
    uint8_t *pkt = malloc(plen ? plen : 1);
    memcpy(pkt, data + 2 + (size_t)n * sizeof *prog, plen);

    int v = relay_bpf_validate(n ? prog : NULL, n);
    if (v != 0 && v != -22)
        FAIL("relay_bpf_validate returned %d", v);

    relay_stats st;
    relay *r = relay_new(&st, 4, 64);
    if (r == NULL)
        FAIL("relay_new");
    int sf = relay_set_filter(r, prog, n);
    if (n && (sf == 0) != (v == 0))
        FAIL("relay_set_filter %d disagrees with relay_bpf_validate %d", sf, v);
    relay_free(r);

    if (v == 0) {
        uint32_t wire = (uint32_t)plen + slack;
        uint32_t got = relay_bpf_run(prog, pkt, (uint32_t)plen, wire);
        if (pcap_filter != NULL && pcap_validate(prog, (int)n)) {
            int all = 1;
            for (uint32_t i = 0; i < n; i++)
                all &= pcap_implements(prog[i].code);
            if (all && mem_defined(prog, n)) {
                uint32_t want = pcap_filter(prog, pkt, wire, (uint32_t)plen);
                if (got != want)
                    FAIL("relay_bpf_run returned %u, libpcap bpf_filter %u (n=%u, buflen=%zu)",
                         got, want, n, plen);
            }
        }
    }
    free(prog);
    free(pkt);
    return 0;
}
