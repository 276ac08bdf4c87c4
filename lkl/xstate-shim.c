/*
 * stdpkt-xstate.so: LD_PRELOAD'ed into linux.uml by stdpkt-launch on hosts whose
 * XSAVE area is larger than the 832 bytes Debian's UML 6.1 assumes (AVX-512,
 * AMX, PKU).
 *
 * UML saves and restores each guest process's FPU/vector state with
 * ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE) and a buffer of
 * sizeof(struct _xstate) = 832 bytes (x87/SSE, the XSAVE header, the upper
 * halves of YMM0-15).  The host kernel accepts SETREGSET only with a buffer of
 * exactly its own XSAVE size (arch/x86/kernel/fpu/regset.c: -EFAULT otherwise),
 * so on such hosts every guest process dies at its first switch ("ptrace set fp
 * regs failed, errno = 14").  Refusing the regset (so UML falls back to the
 * 512-byte FXSAVE registers) lets guests boot but corrupts programs that use
 * AVX: their YMM upper halves are not restored (seen: modprobe's getopt reading
 * garbage).  This shim keeps UML's view and gives the kernel what it wants:
 * every XSTATE regset call is done with a whole host-sized buffer.  A GET keeps
 * the whole state of that tracee (host pid) in a table and hands UML the first
 * 832 bytes; a SET overlays UML's 832 bytes on the state kept at that tracee's
 * last GET and writes it whole.  So the components UML does not know (AVX-512
 * opmask and upper ZMM, AMX) come back as they were when the process trapped,
 * even though UML's stub ran a signal handler (FPU in its init state) in
 * between.  One host process serves all threads of a guest process: for those
 * the extra components are not switched between threads, so the guest init
 * also tells glibc not to choose AVX-512 routines (GLIBC_TUNABLES).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#define MAX_XSTATE 32768
#define SLOTS 4096 /* tracees remembered at once; more fall back to the current state */

struct slot {
    pid_t pid;
    size_t len;
    unsigned char *state;
};

static struct slot table[SLOTS];
static unsigned char scratch[MAX_XSTATE] __attribute__((aligned(64)));

static long raw(long req, pid_t pid, void *addr, void *data) {
    return syscall(SYS_ptrace, req, pid, addr, data);
}

/* the slot of pid (create = take a free or same-pid slot) */
static struct slot *slot_of(pid_t pid, int create) {
    unsigned h = (unsigned)pid * 2654435761u % SLOTS;
    for (unsigned i = 0; i < SLOTS; i++) {
        struct slot *s = &table[(h + i) % SLOTS];
        if (s->pid == pid) return s;
        if (s->pid == 0) {
            if (!create) return NULL;
            s->pid = pid;
            return s;
        }
    }
    return NULL;
}

static int whole_get(pid_t pid, void *addr, unsigned char **out, size_t *len) {
    struct iovec whole = {scratch, sizeof scratch};
    if (raw(PTRACE_GETREGSET, pid, addr, &whole) < 0) return -1;
    *len = whole.iov_len;
    *out = scratch;
    struct slot *s = slot_of(pid, 1);
    if (s) {
        if (!s->state || s->len != whole.iov_len) {
            free(s->state);
            s->state = aligned_alloc(64, (whole.iov_len + 63) / 64 * 64);
        }
        if (s->state) {
            memcpy(s->state, scratch, whole.iov_len);
            s->len = whole.iov_len;
            *out = s->state;
        } else {
            s->pid = 0;
        }
    }
    return 0;
}

long ptrace(enum __ptrace_request req, ...) {
    va_list ap;
    va_start(ap, req);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) && (long)addr == NT_X86_XSTATE && data) {
        struct iovec *iov = data;
        if (req == PTRACE_GETREGSET) {
            unsigned char *state;
            size_t len;
            if (whole_get(pid, addr, &state, &len) < 0) return -1;
            if (len > iov->iov_len) { /* UML's buffer is smaller than the host's */
                memcpy(iov->iov_base, state, iov->iov_len);
                return 0;
            }
            memcpy(iov->iov_base, state, len);
            iov->iov_len = len;
            return 0;
        }
        struct slot *s = slot_of(pid, 0);
        unsigned char *state = s && s->state ? s->state : NULL;
        size_t len = s ? s->len : 0;
        if (!state) { /* never trapped through us: start from its current state */
            struct iovec whole = {scratch, sizeof scratch};
            if (raw(PTRACE_GETREGSET, pid, addr, &whole) < 0) return -1;
            state = scratch;
            len = whole.iov_len;
        }
        if (len > iov->iov_len) {
            memcpy(state, iov->iov_base, iov->iov_len);
            struct iovec whole = {state, len};
            return raw(PTRACE_SETREGSET, pid, addr, &whole);
        }
    }
    static long (*next)(enum __ptrace_request, ...);
    if (!next) next = (long (*)(enum __ptrace_request, ...))dlsym(RTLD_NEXT, "ptrace");
    return next(req, pid, addr, data);
}
