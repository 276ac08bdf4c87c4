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
 * every XSTATE regset call is done with a whole host-sized buffer; a GET hands
 * UML the first 832 bytes; a SET overlays UML's 832 bytes on the tracee's
 * current whole state.  Components beyond them (AVX-512, AMX) stay as the
 * tracee's host process holds them: the guest init tells glibc not to choose
 * AVX-512 routines (GLIBC_TUNABLES, set by stdpkt-launch).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#define MAX_XSTATE 32768

static unsigned char full[MAX_XSTATE] __attribute__((aligned(64)));

static long raw(long req, pid_t pid, void *addr, void *data) {
    return syscall(SYS_ptrace, req, pid, addr, data);
}

long ptrace(enum __ptrace_request req, ...) {
    va_list ap;
    va_start(ap, req);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) && (long)addr == NT_X86_XSTATE && data) {
        struct iovec *iov = data, whole = {full, sizeof full};
        if (raw(PTRACE_GETREGSET, pid, addr, &whole) < 0) return -1;
        if (whole.iov_len > iov->iov_len) {   /* UML's buffer is smaller than the host's */
            if (req == PTRACE_GETREGSET) {
                memcpy(iov->iov_base, full, iov->iov_len);
                return 0;
            }
            memcpy(full, iov->iov_base, iov->iov_len);
            return raw(PTRACE_SETREGSET, pid, addr, &whole);
        }
    }
    static long (*next)(enum __ptrace_request, ...);
    if (!next) next = (long (*)(enum __ptrace_request, ...))dlsym(RTLD_NEXT, "ptrace");
    return next(req, pid, addr, data);
}
