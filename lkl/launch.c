/*
 * stdpkt-launch: start a User-Mode Linux kernel confined so that its guest
 * cannot write the host filesystem.
 *
 *   stdpkt-launch [--rw DIR]... [--drop-to UID:GID] [--no-aslr] [--require-landlock]
 *                 [--parent PID] -- PROGRAM ARG...
 *
 * UML's hostfs performs the guest's file operations with the kernel process's
 * own host credentials, so "ro" on the kernel command line protects nothing
 * once the guest remounts.  This launcher closes that door before exec:
 *   - Landlock (unprivileged, inherited across exec): every write-type
 *     filesystem right is denied except beneath the --rw directories (the
 *     instance's private run directory: guest memory file, uml_dir).
 *   - --drop-to: as host root, also switch to an unprivileged uid/gid
 *     (the fallback when the host kernel has no Landlock).
 *   - --parent PID: SIGTERM the kernel when PID (the thread that started us)
 *     ends, so a killed stdpkt never leaves a guest behind (SIGTERM, not
 *     SIGKILL: UML's helper processes only go away on a clean exit).
 *   - --no-aslr: personality(ADDR_NO_RANDOMIZE): linux.uml is PIE and wastes
 *     guest memory (or fails to boot with small mem=) at random addresses.
 * Exit status 126 and a one-line message on stderr when confinement fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/landlock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
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
    static const char *devs[] = {"/dev/null", "/dev/zero", "/dev/tty", "/dev/urandom", "/dev/random", "/dev/ptmx", "/dev/pts"};
    for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++)
        allow_beneath(rs, devs[i], LANDLOCK_ACCESS_FS_WRITE_FILE | (abi >= 3 ? LANDLOCK_ACCESS_FS_TRUNCATE : 0));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
    if (syscall(SYS_landlock_restrict_self, rs, 0) < 0) die("landlock_restrict_self");
    close(rs);
    return abi;
}

int main(int argc, char **argv) {
    char *rw[MAX_RW];
    int nrw = 0, no_aslr = 0, require_ll = 0, i;
    long uid = -1, gid = -1, parent = -1;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        else if (!strcmp(argv[i], "--rw") && i + 1 < argc && nrw < MAX_RW) rw[nrw++] = argv[++i];
        else if (!strcmp(argv[i], "--drop-to") && i + 1 < argc) {
            if (sscanf(argv[++i], "%ld:%ld", &uid, &gid) != 2) { fprintf(stderr, "stdpkt-launch: bad --drop-to %s\n", argv[i]); return 2; }
        } else if (!strcmp(argv[i], "--parent") && i + 1 < argc) parent = atol(argv[++i]);
        else if (!strcmp(argv[i], "--no-aslr")) no_aslr = 1;
        else if (!strcmp(argv[i], "--require-landlock")) require_ll = 1;
        else { fprintf(stderr, "stdpkt-launch: unknown option %s\n", argv[i]); return 2; }
    }
    if (i >= argc) { fprintf(stderr, "stdpkt-launch: no program given\n"); return 2; }
    if (no_aslr && personality(ADDR_NO_RANDOMIZE) < 0) die("personality");
    if (gid >= 0) {
        if (setgroups(0, NULL) < 0) die("setgroups");
        if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0) die("setresgid");
    }
    if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0) die("setresuid");
    /* after the uid change: a credential change clears the parent-death signal */
    if (parent > 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0) die("PR_SET_PDEATHSIG");
        if (getppid() != (pid_t)parent) { fprintf(stderr, "stdpkt-launch: parent %ld already gone\n", parent); return 126; }
    }
    if (apply_landlock(rw, nrw) < 0 && require_ll) {
        fprintf(stderr, "stdpkt-launch: Landlock is not available on this host kernel\n");
        return 126;
    }
    execvp(argv[i], &argv[i]);
    die(argv[i]);
    return 126;
}
