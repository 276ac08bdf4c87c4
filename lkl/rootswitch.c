/* stdpkt-rootswitch: give a guest a writable root, with system calls instead of programs.
 *
 *   build:  gcc -static -O2 -Wall -o stdpkt-rootswitch lkl/rootswitch.c   (setup.py does it)
 *
 * Run as root inside an instance (by the set-up of the kathara and frr kinds,
 * stdpkt_lab/describe/guestfs.py, which falls back to the same steps in shell when
 * this program is not reachable from the guest).  The guest's root is the host's
 * filesystem, read-only (hostfs).  This mounts an overlayfs whose lower layer is that
 * root and whose upper layer is a tmpfs, moves lkl/init.c's mounts (/proc, /sys,
 * /dev, /run, /tmp, /root, /var/lib, /var/log) into it and makes it the root with
 * pivot_root(2), which also moves every process whose root was the old one (the
 * agent).  The host's files are never written: writes land in guest memory.
 * Under UML every exec costs tens of ms (ptrace): the shell version needs ~15 execs.
 * Exit status 0 when the root is (or already was) the overlay, 1 on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#define OVERLAYFS_MAGIC 0x794c7630

static const char *moved[] = {"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/var/lib", "/var/log"};

static int fail(const char *what) {
    printf("@@STDPKT WARN writable root: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

static void copy_file(const char *src, const char *dst) {
    char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out >= 0) {
        ssize_t n;
        while ((n = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)n) != n)
                break;
        close(out);
    }
    close(in);
}

int main(void) {
    struct statfs st;
    if (statfs("/", &st) == 0 && st.f_type == OVERLAYFS_MAGIC)
        return 0;
    umount2("/etc/hosts", 0); /* init's bind mount: the new root gets its own copy */
    if (mount("stdpkt-root", "/mnt", "tmpfs", 0, "mode=755") < 0)
        return fail("tmpfs on /mnt");
    mkdir("/mnt/upper", 0755);
    mkdir("/mnt/work", 0755);
    mkdir("/mnt/new", 0755);
    /* the kernel loads the overlay module on demand (its modprobe helper is lkl/init.c's) */
    if (mount("stdpkt-root", "/mnt/new", "overlay", 0,
              "lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work") < 0) {
        int saved = errno;
        umount2("/mnt", MNT_DETACH);
        errno = saved;
        return fail("overlay over /");
    }
    char target[256];
    for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
        snprintf(target, sizeof target, "/mnt/new%s", moved[i]);
        if (mount(moved[i], target, NULL, MS_MOVE, NULL) < 0 && errno != EINVAL)
            printf("@@STDPKT WARN writable root: move %s: %s\n", moved[i], strerror(errno));
    }
    if (chdir("/mnt/new") < 0)
        return fail("chdir");
    mkdir(".oldroot", 0700);
    if (syscall(SYS_pivot_root, ".", ".oldroot") < 0)
        return fail("pivot_root");
    if (chdir("/") < 0)
        return fail("chdir /");
    if (umount2("/.oldroot", MNT_DETACH) < 0)
        return fail("detach the old root");
    rmdir("/.oldroot");
    copy_file("/run/stdpkt/host/hosts", "/etc/hosts");
    return 0;
}
