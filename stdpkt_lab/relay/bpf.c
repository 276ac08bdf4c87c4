/*
 * bpf.c - classic BPF (libpcap semantics): validation and interpreter.
 */
#define _GNU_SOURCE
#include "relay_int.h"

/* ---------------------------------------------------------------- BPF */

#define BPF_CLASS(c) ((c) & 0x07)
#define BPF_SIZE(c) ((c) & 0x18)
#define BPF_MODE(c) ((c) & 0xe0)
#define BPF_OP(c) ((c) & 0xf0)
#define BPF_SRC(c) ((c) & 0x08)
#define BPF_RVAL(c) ((c) & 0x18)
#define BPF_MISCOP(c) ((c) & 0xf8)

enum {
    C_LD = 0x00, C_LDX = 0x01, C_ST = 0x02, C_STX = 0x03,
    C_ALU = 0x04, C_JMP = 0x05, C_RET = 0x06, C_MISC = 0x07,
    S_W = 0x00, S_H = 0x08, S_B = 0x10,
    M_IMM = 0x00, M_ABS = 0x20, M_IND = 0x40, M_MEM = 0x60, M_LEN = 0x80, M_MSH = 0xa0,
    O_ADD = 0x00, O_SUB = 0x10, O_MUL = 0x20, O_DIV = 0x30, O_OR = 0x40, O_AND = 0x50,
    O_LSH = 0x60, O_RSH = 0x70, O_NEG = 0x80, O_MOD = 0x90, O_XOR = 0xa0,
    J_JA = 0x00, J_JEQ = 0x10, J_JGT = 0x20, J_JGE = 0x30, J_JSET = 0x40,
    SRC_K = 0x00, SRC_X = 0x08,
    RV_K = 0x00, RV_X = 0x08, RV_A = 0x10,
    MISC_TAX = 0x00, MISC_TXA = 0x80,
};

int relay_bpf_validate(const relay_bpf_insn *f, uint32_t n)
{
    if (f == NULL || n == 0 || n > BPF_MAX_INSNS)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        uint16_t c = f[i].code;
        uint32_t k = f[i].k;
        switch (BPF_CLASS(c)) {
        case C_LD:
        case C_LDX:
            switch (BPF_MODE(c)) {
            case M_IMM:
            case M_LEN:
                break;
            case M_ABS:
            case M_IND:
                if (BPF_CLASS(c) == C_LDX)
                    return -EINVAL;
                if (BPF_SIZE(c) != S_W && BPF_SIZE(c) != S_H && BPF_SIZE(c) != S_B)
                    return -EINVAL;
                break;
            case M_MSH:
                if (BPF_CLASS(c) != C_LDX || BPF_SIZE(c) != S_B)
                    return -EINVAL;
                break;
            case M_MEM:
                if (k >= BPF_MEMWORDS)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        case C_ST:
        case C_STX:
            if (k >= BPF_MEMWORDS)
                return -EINVAL;
            break;
        case C_ALU:
            switch (BPF_OP(c)) {
            case O_ADD: case O_SUB: case O_MUL: case O_OR: case O_AND:
            case O_LSH: case O_RSH: case O_NEG: case O_XOR:
                break;
            case O_DIV:
            case O_MOD:
                if (BPF_SRC(c) == SRC_K && k == 0)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        case C_JMP: {
            uint32_t left = n - i - 1;
            switch (BPF_OP(c)) {
            case J_JA:
                if (k >= left)
                    return -EINVAL;
                break;
            case J_JEQ: case J_JGT: case J_JGE: case J_JSET:
                if (f[i].jt >= left || f[i].jf >= left)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
            break;
        }
        case C_RET:
            if (BPF_RVAL(c) != RV_K && BPF_RVAL(c) != RV_A && BPF_RVAL(c) != RV_X)
                return -EINVAL;
            break;
        case C_MISC:
            if (BPF_MISCOP(c) != MISC_TAX && BPF_MISCOP(c) != MISC_TXA)
                return -EINVAL;
            break;
        }
    }
    return BPF_CLASS(f[n - 1].code) == C_RET ? 0 : -EINVAL;
}

/* Runs a validated program (libpcap semantics: out-of-bounds loads reject). */
uint32_t relay_bpf_run(const relay_bpf_insn *f, const uint8_t *p, uint32_t buflen,
                       uint32_t wirelen)
{
    uint32_t A = 0, X = 0, mem[BPF_MEMWORDS] = {0};
    const relay_bpf_insn *pc = f;
    for (;; pc++) {
        uint32_t k = pc->k, off;
        switch (pc->code) {
        case C_RET | RV_K:
            return k;
        case C_RET | RV_A:
            return A;
        case C_RET | RV_X:
            return X;
        case C_LD | S_W | M_ABS:
            off = k;
        ld_w:
            if (off > buflen || buflen - off < 4)
                return 0;
            A = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
                (uint32_t)p[off + 2] << 8 | p[off + 3];
            continue;
        case C_LD | S_H | M_ABS:
            off = k;
        ld_h:
            if (off > buflen || buflen - off < 2)
                return 0;
            A = (uint32_t)p[off] << 8 | p[off + 1];
            continue;
        case C_LD | S_B | M_ABS:
            off = k;
        ld_b:
            if (off >= buflen)
                return 0;
            A = p[off];
            continue;
        case C_LD | S_W | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_w;
        case C_LD | S_H | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_h;
        case C_LD | S_B | M_IND:
            off = X + k;
            if (off < X)
                return 0;
            goto ld_b;
        case C_LD | S_W | M_LEN:
            A = wirelen;
            continue;
        case C_LDX | S_W | M_LEN:
            X = wirelen;
            continue;
        case C_LD | M_IMM:
            A = k;
            continue;
        case C_LDX | M_IMM:
            X = k;
            continue;
        case C_LD | M_MEM:
            A = mem[k];
            continue;
        case C_LDX | M_MEM:
            X = mem[k];
            continue;
        case C_LDX | S_B | M_MSH:
            if (k >= buflen)
                return 0;
            X = (uint32_t)(p[k] & 0xf) << 2;
            continue;
        case C_ST:
            mem[k] = A;
            continue;
        case C_STX:
            mem[k] = X;
            continue;
        case C_JMP | J_JA:
            pc += k;
            continue;
        case C_JMP | J_JGT | SRC_K:
            pc += (A > k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGE | SRC_K:
            pc += (A >= k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JEQ | SRC_K:
            pc += (A == k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JSET | SRC_K:
            pc += (A & k) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGT | SRC_X:
            pc += (A > X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JGE | SRC_X:
            pc += (A >= X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JEQ | SRC_X:
            pc += (A == X) ? pc->jt : pc->jf;
            continue;
        case C_JMP | J_JSET | SRC_X:
            pc += (A & X) ? pc->jt : pc->jf;
            continue;
        case C_ALU | O_ADD | SRC_X: A += X; continue;
        case C_ALU | O_SUB | SRC_X: A -= X; continue;
        case C_ALU | O_MUL | SRC_X: A *= X; continue;
        case C_ALU | O_DIV | SRC_X:
            if (X == 0)
                return 0;
            A /= X;
            continue;
        case C_ALU | O_MOD | SRC_X:
            if (X == 0)
                return 0;
            A %= X;
            continue;
        case C_ALU | O_AND | SRC_X: A &= X; continue;
        case C_ALU | O_OR | SRC_X: A |= X; continue;
        case C_ALU | O_XOR | SRC_X: A ^= X; continue;
        case C_ALU | O_LSH | SRC_X: A = X < 32 ? A << X : 0; continue;
        case C_ALU | O_RSH | SRC_X: A = X < 32 ? A >> X : 0; continue;
        case C_ALU | O_ADD | SRC_K: A += k; continue;
        case C_ALU | O_SUB | SRC_K: A -= k; continue;
        case C_ALU | O_MUL | SRC_K: A *= k; continue;
        case C_ALU | O_DIV | SRC_K: A /= k; continue;   /* k != 0: validated */
        case C_ALU | O_MOD | SRC_K: A %= k; continue;
        case C_ALU | O_AND | SRC_K: A &= k; continue;
        case C_ALU | O_OR | SRC_K: A |= k; continue;
        case C_ALU | O_XOR | SRC_K: A ^= k; continue;
        case C_ALU | O_LSH | SRC_K: A = k < 32 ? A << k : 0; continue;
        case C_ALU | O_RSH | SRC_K: A = k < 32 ? A >> k : 0; continue;
        case C_ALU | O_NEG: A = -A; continue;
        case C_MISC | MISC_TAX: X = A; continue;
        case C_MISC | MISC_TXA: A = X; continue;
        default:
            /* codes with ignored bits set: normalise the way libpcap does */
            switch (BPF_CLASS(pc->code)) {
            case C_ST: mem[k] = A; continue;
            case C_STX: mem[k] = X; continue;
            case C_RET:
                return BPF_RVAL(pc->code) == RV_A ? A : BPF_RVAL(pc->code) == RV_X ? X : k;
            case C_MISC:
                if (BPF_MISCOP(pc->code) == MISC_TAX)
                    X = A;
                else
                    A = X;
                continue;
            }
            return 0;
        }
    }
}
