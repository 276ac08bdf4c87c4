/*
 * stdpkt-launch: start a User-Mode Linux kernel confined so that its guest
 * cannot write the host filesystem.
 *
 *   stdpkt-launch [--rw DIR]... [--drop-to UID:GID] [--no-aslr] [--require-landlock]
 *                 [--parent PID] [--cleanup DIR] [--cpu N [--cpu-lock FD]] -- PROGRAM ARG...
 *
 * UML's hostfs performs the guest's file operations with the kernel process's
 * own host credentials, so "ro" on the kernel command line protects nothing
 * once the guest remounts.  This launcher closes that door before exec:
 *   - Landlock (unprivileged, inherited across exec): every write-type
 *     filesystem right is denied except beneath the --rw directories (the
 *     instance's private run directory: guest memory file, uml_dir).
 *   - --drop-to: as host root, also switch to an unprivileged uid/gid
 *     (the fallback when the host kernel has no Landlock).
 *   - --parent PID: the launcher stays as the kernel's supervisor (a child
 *     subreaper) and stops it when PID (the thread that started us) ends, so
 *     a killed stdpkt never leaves a guest or its helper processes behind;
 *     SIGUSR1 is the owner's own request to stop (the owner then removes
 *     the run directory); SIGTERM, SIGINT, SIGHUP stop the kernel too.
 *     --cleanup DIR: then also remove DIR (the run directory), its sibling
 *     files DIR.owner and DIR.created and the FIFOs that ledger names, and a
 *     Lab's stdpkt-lab-* root once it is empty (stdpkt_lab/engine/ownership.py).
 *     The kernel gets PR_SET_PDEATHSIG=SIGTERM, so a SIGKILLed launcher still
 *     takes it down (linux.uml runs in a session of its own: no group signal
 *     sent to the launcher reaches it).
 *   - --cpu N: the kernel and every process it starts run on core N only
 *     (stdpkt_lab/engine/cpus.py says why); --cpu-lock FD: the shared flock
 *     that counts this instance on core N, held by this supervisor as long
 *     as it lives and closed in the kernel.  A core that cannot be set is
 *     reported and the kernel runs unpinned.
 *   - --no-aslr: personality(ADDR_NO_RANDOMIZE): linux.uml is PIE and wastes
 *     guest memory (or fails to boot with small mem=) at random addresses.
 *   - always, on hosts whose XSAVE area is not the 832 bytes UML 6.1 assumes
 *     (AVX-512, AMX, PKU): LD_PRELOAD of stdpkt-xstate.so (next to this
 *     program; lkl/xstate-shim.c says why), or, when it is missing, a seccomp
 *     filter that makes the NT_X86_XSTATE regset fail so the kernel falls back
 *     to FXSAVE registers (guests boot, but AVX programs in them may compute
 *     garbage).  Without either every guest process dies at its first switch
 *     ("ptrace set fp regs failed, errno = 14").
 * Exit status: the kernel's; 126 and a one-line message on stderr when
 * confinement fails.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/landlock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/personality.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RW 16

/* Debian 12's headers predate these rights (kernel ABI 2 and 3). */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif

static void die(const char *what) {
    fprintf(stderr, "stdpkt-launch: %s: %s\n", what, strerror(errno));
    exit(126);
}

static int landlock_abi(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int)abi;
}

static __u64 write_rights(int abi) {
    __u64 r = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR |
              LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
              LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |
              LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |
              LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM;
    if (abi >= 2) r |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3) r |= LANDLOCK_ACCESS_FS_TRUNCATE;
    return r;
}

static int allow_beneath(int ruleset, const char *path, __u64 rights) {
    struct landlock_path_beneath_attr pb = {0};
    pb.allowed_access = rights;
    pb.parent_fd = open(path, O_PATH | O_CLOEXEC);
    if (pb.parent_fd < 0) return -1;
    int rc = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
    close(pb.parent_fd);
    return rc;
}

/* Hosts whose XSAVE area UML 6.1 does not fit: see lkl/xstate-shim.c. */
#define UML_XSTATE_SIZE 832u
/* glibc in guest processes: no AVX-512 routines (their registers are not switched) */
#define GUEST_TUNABLES "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF"
#define PTRACE_GETREGSET_ 0x4204
#define PTRACE_SETREGSET_ 0x4205
#define NT_X86_XSTATE_ 0x202

static int fpregs_fallback_needed(void) {
#if defined(__x86_64__)
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(0xd, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return ebx != 0 && ebx != UML_XSTATE_SIZE;
#else
    return 0;
#endif
}

/* stdpkt-xstate.so beside this program, if it is there */
static int xstate_shim(char *out, size_t len) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash) return -1;
    *slash = 0;
    if ((size_t)snprintf(out, len, "%s/stdpkt-xstate.so", self) >= len) return -1;
    return access(out, R_OK);
}

static int fpregs_fallback(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ptrace, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PTRACE_GETREGSET_, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PTRACE_SETREGSET_, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NT_X86_XSTATE_, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EIO),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static int apply_landlock(char **rw, int nrw) {
    int abi = landlock_abi();
    if (abi < 1) return -1;
    __u64 handled = write_rights(abi);
    struct landlock_ruleset_attr attr = {.handled_access_fs = handled};
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (rs < 0) return -1;
    for (int i = 0; i < nrw; i++)
        if (allow_beneath(rs, rw[i], handled) < 0) die(rw[i]);
    /* character devices the kernel process opens for writing (never regular files) */
    static const char *devs[] = {"/dev/null", "/dev/zero", "/dev/tty", "/dev/urandom", "/dev/random", "/dev/ptmx", "/dev/pts", "/dev/net/tun"};
    for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++)
        allow_beneath(rs, devs[i], LANDLOCK_ACCESS_FS_WRITE_FILE | (abi >= 3 ? LANDLOCK_ACCESS_FS_TRUNCATE : 0));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
    if (syscall(SYS_landlock_restrict_self, rs, 0) < 0) die("landlock_restrict_self");
    close(rs);
    return abi;
}

/* Run the kernel in a child and stay as its supervisor until it and every
 * helper process it forked are gone.  The supervisor is a child subreaper, so
 * UML's helpers are re-parented to it if the kernel dies first; when the
 * parent (stdpkt) dies, or SIGTERM/SIGINT arrives, it asks the kernel to stop
 * (SIGTERM), waits up to 3 s, then SIGKILLs every process left below it. */
static pid_t kernel_pid = -1;

/* the parent pid of pid, from /proc (0 if unknown) */
static pid_t parent_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close = strrchr(buf, ')');
    int ppid = 0;
    if (!close || sscanf(close + 1, " %*c %d", &ppid) != 1) return 0;
    return (pid_t)ppid;
}

/* linux.uml may move itself into a session of its own, so its helpers are not all in
   our process group; as a subreaper we inherit them once the kernel is gone, so our
   own children are signalled too (the loop repeats until none is left). */
static void kill_descendants(int sig) {
    /* our descendants all share our process group (the session stdpkt made):
       signal every member but ourselves */
    pid_t self = getpid(), group = getpgrp();
    DIR *proc = opendir("/proc");
    struct dirent *de;
    if (!proc) return;
    while ((de = readdir(proc)) != NULL) {
        pid_t pid = (pid_t)atol(de->d_name);
        if (pid <= 0 || pid == self) continue;
        if (getpgid(pid) == group || parent_of(pid) == self) kill(pid, sig);
    }
    closedir(proc);
}

static int reap_all(int *kernel_status) {
    int status, n = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == kernel_pid) { *kernel_status = status; kernel_pid = -1; }
        n++;
    }
    return pid < 0 && errno == ECHILD ? -1 : n;
}

/* ---- the run directory, when stdpkt died and cannot remove it (engine/ownership.py) ----
 * D has two sibling files the guest cannot reach: D.owner (its owners' pid and
 * start time) and D.created (FIFOs made for IFn: "DEV INO PATH", or "- - PATH"
 * for a temporary name of ours recorded before it was made). */
static void remove_created(const char *dir) {
    char ledger[4200], line[4400];
    snprintf(ledger, sizeof ledger, "%s.created", dir);
    FILE *f = fopen(ledger, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        char dev[32], ino[32];
        int off = 0;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%31s %31s %n", dev, ino, &off) != 2 || off <= 0) continue;
        const char *path = line + off;
        struct stat st;
        if (lstat(path, &st) < 0 || !S_ISFIFO(st.st_mode)) continue;
        if (strcmp(dev, "-") && (strtoull(dev, NULL, 10) != (unsigned long long)st.st_dev ||
                                 strtoull(ino, NULL, 10) != (unsigned long long)st.st_ino)) continue;
        unlink(path);
    }
    fclose(f);
    unlink(ledger);
}

/* true if DIR has no entry at all */
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int empty = 1;
    if (!d) return 0;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) { empty = 0; break; }
    closedir(d);
    return empty;
}

static void remove_run_dir(const char *dir) {
    char path[4200];
    remove_created(dir);
    char *argv[] = {"rm", "-rf", "--", (char *)dir, NULL};
    pid_t pid = fork();
    if (pid == 0) { execvp("rm", argv); execv("/bin/rm", argv); _exit(127); }
    if (pid > 0) waitpid(pid, NULL, 0);
    snprintf(path, sizeof path, "%s.owner", dir);
    unlink(path);
    /* an instance of a Lab: remove the lab's root too once it is empty */
    char up[4096];
    snprintf(up, sizeof up, "%s", dir);
    char *slash = strrchr(up, '/');
    if (!slash) return;
    *slash = 0;
    const char *base = strrchr(up, '/');
    if (!base || strncmp(base + 1, "stdpkt-lab-", 11) || !dir_is_empty(up)) return;
    if (rmdir(up) == 0) {
        snprintf(path, sizeof path, "%s.owner", up);
        unlink(path);
    }
}

static int supervise(const char *cleanup, pid_t parent) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    int kernel_status = 0, stopping = 0, owner_stop = 0;
    struct timespec tick = {0, 100 * 1000 * 1000};
    int ticks_left = 30;
    for (;;) {
        siginfo_t info;
        int sig = sigtimedwait(&set, &info, &tick);
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGUSR1) {
            if (!stopping && kernel_pid > 0) kill(kernel_pid, SIGTERM);
            stopping = 1;
            if (sig == SIGUSR1) owner_stop = 1;
        }
        if (reap_all(&kernel_status) < 0) break; /* no children left at all */
        if (kernel_pid < 0) {
            /* the kernel is gone: its helpers (some stopped under ptrace) have no purpose */
            kill_descendants(SIGKILL);
        } else if (stopping && sig < 0 && --ticks_left == 0) {
            kill(kernel_pid, SIGKILL);
        }
    }
    /* SIGUSR1 is the owner's own stop (Instance teardown): it removes the run
       directory itself.  Any other stop may be the parent-death signal, which
       comes when the *thread* that started us ends: while its process is exiting
       (SIGKILL ends threads one by one) getppid() is still that process for a
       moment, so wait (up to 5 s) for it to be gone before deciding. */
    if (cleanup && parent > 0 && (getppid() != parent || (stopping && !owner_stop))) {
        struct timespec pause = {0, 50 * 1000 * 1000};
        for (int i = 0; i < 100 && getppid() == parent; i++) nanosleep(&pause, NULL);
        if (getppid() != parent) remove_run_dir(cleanup);
    }
    if (WIFEXITED(kernel_status)) return WEXITSTATUS(kernel_status);
    if (WIFSIGNALED(kernel_status)) return 128 + WTERMSIG(kernel_status);
    return 1;
}

int main(int argc, char **argv) {
    char *rw[MAX_RW];
    const char *cleanup = NULL;
    int nrw = 0, no_aslr = 0, require_ll = 0, i;
    long uid = -1, gid = -1, parent = -1, cpu = -1, cpu_lock = -1;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        else if (!strcmp(argv[i], "--rw") && i + 1 < argc && nrw < MAX_RW) rw[nrw++] = argv[++i];
        else if (!strcmp(argv[i], "--drop-to") && i + 1 < argc) {
            if (sscanf(argv[++i], "%ld:%ld", &uid, &gid) != 2) { fprintf(stderr, "stdpkt-launch: bad --drop-to %s\n", argv[i]); return 2; }
        } else if (!strcmp(argv[i], "--parent") && i + 1 < argc) parent = atol(argv[++i]);
        else if (!strcmp(argv[i], "--cleanup") && i + 1 < argc) cleanup = argv[++i];
        else if (!strcmp(argv[i], "--cpu") && i + 1 < argc) {
            char *end;
            cpu = strtol(argv[++i], &end, 10);
            if (*end || cpu < 0 || cpu >= CPU_SETSIZE) { fprintf(stderr, "stdpkt-launch: bad --cpu %s\n", argv[i]); return 2; }
        } else if (!strcmp(argv[i], "--cpu-lock") && i + 1 < argc) cpu_lock = atol(argv[++i]);
        else if (!strcmp(argv[i], "--no-aslr")) no_aslr = 1;
        else if (!strcmp(argv[i], "--require-landlock")) require_ll = 1;
        else { fprintf(stderr, "stdpkt-launch: unknown option %s\n", argv[i]); return 2; }
    }
    if (i >= argc) { fprintf(stderr, "stdpkt-launch: no program given\n"); return 2; }
    if (nrw > 0 && require_ll && landlock_abi() < 1) {
        fprintf(stderr, "stdpkt-launch: Landlock is not available on this host kernel\n");
        return 126;
    }
    /* A killed stdpkt closes the console pipe: a kernel that then dies of
       SIGPIPE mid-write skips its clean-up. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old);
    if (parent > 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
        if (getppid() != (pid_t)parent) { fprintf(stderr, "stdpkt-launch: parent %ld already gone\n", parent); return 126; }
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) die("PR_SET_CHILD_SUBREAPER");
    pid_t supervisor = getpid();
    kernel_pid = fork();
    if (kernel_pid < 0) die("fork");
    if (kernel_pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
        if (no_aslr && personality(ADDR_NO_RANDOMIZE) < 0) die("personality");
        if (cpu_lock >= 0)
            close((int)cpu_lock);   /* the supervisor holds it */
        if (cpu >= 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET((int)cpu, &one);
            if (sched_setaffinity(0, sizeof one, &one) < 0)
                fprintf(stderr, "stdpkt-launch: cannot run on core %ld (%s): the kernel runs unpinned\n",
                        cpu, strerror(errno));
        }
        if (gid >= 0) {
            if (setgroups(0, NULL) < 0) die("setgroups");
            if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0) die("setresgid");
        }
        if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0) die("setresuid");
        /* If the supervisor itself is SIGKILLed, the kernel (in a session of its own,
           which linux.uml makes) would run on with parent 1: SIGTERM it then, which UML
           handles by halting and ending its helpers. Set after the uid change, which
           clears it; checked against a supervisor that died just before. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
        if (getppid() != supervisor) _exit(126);
        /* Landlock only when asked for (--rw names where writes stay allowed) */
        if (nrw > 0 && apply_landlock(rw, nrw) < 0 && require_ll) {
            fprintf(stderr, "stdpkt-launch: Landlock is not available on this host kernel\n");
            _exit(126);
        }
        char **args = &argv[i];
        if (fpregs_fallback_needed()) {
            char shim[4200];
            if (xstate_shim(shim, sizeof shim) == 0) {
                const char *old = getenv("LD_PRELOAD");
                char preload[8400];
                snprintf(preload, sizeof preload, "%s%s%s", shim, old && *old ? ":" : "", old ? old : "");
                if (setenv("LD_PRELOAD", preload, 1) < 0) die("setenv LD_PRELOAD");
            } else if (fpregs_fallback() < 0) {
                die("seccomp (FPU register fallback)");
            }
            /* one more KEY=VALUE on the kernel command line: it reaches the guest
               init's environment, and so every guest process's */
            int n = argc - i;
            args = calloc((size_t)n + 2, sizeof *args);
            if (!args) die("calloc");
            memcpy(args, &argv[i], (size_t)n * sizeof *args);
            args[n] = (char *)GUEST_TUNABLES;
        }
        execvp(args[0], args);
        die(argv[i]);
    }
    return supervise(cleanup, (pid_t)parent);
}
