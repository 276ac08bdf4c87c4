/*
 * stdpkt-init: the fast guest init, PID 1 of a network-function instance.
 *
 *   build:  gcc -static -O2 -Wall -o stdpkt-init lkl/init.c   (setup.py does it)
 *   usage:  linux.uml ... init=/path/stdpkt-init STDPKT_CONF=<run dir>/guest.env
 *
 * It does what lkl/init.sh does, in the same order and with the same result
 * (tests/test_perf_init.py boots both and compares), but with system calls
 * instead of programs: under User-Mode Linux every fork/exec in the guest
 * costs tens of milliseconds (ptrace), and init.sh runs about a dozen
 * (mount, mkdir, ln, ip, ...).  Here the only programs started are the ones
 * the instance asks for: the agent, the setup script, the script.
 *
 *   1. mounts: proc, sysfs, tmpfs /run, the instance's host run directory
 *      (hostfs, at /run/stdpkt/host), devtmpfs if the kernel did not mount
 *      it, devpts, tmpfs on /tmp /root /var/lib /var/log;
 *   2. reads STDPKT_CONF: the shell fragment the engine writes
 *      (`export KEY=<shlex.quote(value)>` lines), exported to every program;
 *   3. modules on demand (a modprobe wrapper and a modules tree in tmpfs),
 *      iptables = the legacy backend (symlinks first in PATH);
 *   4. /etc/hosts (bind mount), hostname, ctrl-alt-del off, IPv4 forwarding,
 *      a gratuitous ARP when a socket port comes up (arp_notify on the
 *      ports in STDPKT_ANNOUNCE: the instance's first packet announces it);
 *   5. interfaces: vecN renamed ethN, IPn/NETMASKn (rtnetlink, exactly what
 *      `ip addr add` sends), up; default route via GATEWAY; the routes file
 *      (`route add DST [via GW] [dev DEV]` lines; any other form is handed to
 *      `ip -batch` unchanged);
 *   6. the agent in the background (stdin /dev/null, SIGINT/SIGQUIT ignored,
 *      as a shell's `&` does), cd STDPKT_CWD, the setup script;
 *   7. "@@STDPKT READY", the script (stdin /dev/null), "@@STDPKT SCRIPT-EXIT n";
 *   8. --oneshot: power off; otherwise reap orphans until the host stops us.
 *
 * Pooled (STDPKT_POOL=1; stdpkt_lab.engine.pool): an instance booted ahead of
 * need with no configuration does 1-3, announces and renames its ports,
 * starts the agent, prints "@@STDPKT POOLED" and reads "CONF <file>" from its
 * console; it loads that file (the instance's real configuration, written by
 * Instance.configure() into the run directory) and goes on with 4, 5, 7.
 * The agent was started before the configuration: commands it runs do not
 * see the configuration's variables (the setup script and script do).
 *
 * Markers on the console ("@@STDPKT READY|SCRIPT-EXIT n|WARN text|FAIL text")
 * are the host's only view of the boot, exactly as with init.sh.  One more is
 * init.c's alone: "@@STDPKT AGENT-EXIT how" when it reaps the agent, so that
 * the host fails the agent's calls at once (init.sh's agent ends unreported).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

#define RUN_HOST "/run/stdpkt/host"
#define MAX_NIF 8

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(1, buf, (size_t)n);
}

static void warn_errno(const char *what)
{
    say("stdpkt-init: %s: %s", what, strerror(errno));
}

static void poweroff(void)
{
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                     const char *data)
{
    if (mount(src, dst, type, flags, data) < 0) {
        char what[256];
        snprintf(what, sizeof what, "mount %s on %s", type ? type : src, dst);
        warn_errno(what);
    }
}

static void mkdir_p(const char *path, mode_t mode)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, mode);
            *p = '/';
        }
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        warn_errno(buf);
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    close(fd);
    return w == (ssize_t)len ? 0 : -1;
}

static void write_proc(const char *path, const char *text)
{
    if (write_file(path, text, 0644) < 0)
        warn_errno(path);
}

/* ------------------------------------------------------------ configuration */

/* Parses the engine's guest.env: `export KEY=VALUE` where VALUE is what
 * Python's shlex.quote() makes (bare, or '...' with ' written as '"'"').
 * Every pair goes into the environment.  Returns 0 or -1. */
static int load_conf(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t k = read(fd, buf + len, cap - len);
        if (k < 0) {
            close(fd);
            free(buf);
            return -1;
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    char *p = buf, *val = malloc(len + 1);
    int rc = 0;
    while (*p) {
        while (*p == '\n' || *p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (strncmp(p, "export ", 7) != 0) {
            rc = -1;
            break;
        }
        p += 7;
        char *key = p;
        while (*p && *p != '=' && *p != '\n')
            p++;
        if (*p != '=') {
            rc = -1;
            break;
        }
        *p++ = 0;
        size_t n = 0;
        while (*p && *p != '\n' && *p != ' ') {
            char q = *p;
            if (q == '\'' || q == '"') {
                char *end = strchr(p + 1, q);
                if (!end) {
                    rc = -1;
                    goto out;
                }
                memcpy(val + n, p + 1, (size_t)(end - p - 1));
                n += (size_t)(end - p - 1);
                p = end + 1;
            } else {
                if (q == '\\' && p[1])
                    p++;
                val[n++] = *p++;
            }
        }
        val[n] = 0;
        setenv(key, val, 1);
    }
out:
    free(val);
    free(buf);
    return rc;
}

static const char *env_or(const char *key, const char *dflt)
{
    const char *v = getenv(key);
    return v && *v ? v : dflt;
}

/* ------------------------------------------------------------ rtnetlink */

struct nl_req {
    struct nlmsghdr nh;
    union {
        struct ifaddrmsg ifa;
        struct rtmsg rt;
    };
    char attrs[256];
};

static void add_attr(struct nl_req *r, unsigned short type, const void *data, unsigned short len)
{
    struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));
    a->rta_type = type;
    a->rta_len = RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends one request and waits for its ack: 0 or -errno. */
static int nl_talk(int nl, struct nl_req *r)
{
    static unsigned seq;
    r->nh.nlmsg_seq = ++seq;
    r->nh.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    if (send(nl, r, r->nh.nlmsg_len, 0) < 0)
        return -errno;
    char buf[4096];
    for (;;) {
        ssize_t k = recv(nl, buf, sizeof buf, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)k);
             h = NLMSG_NEXT(h, k)) {
            if (h->nlmsg_seq != r->nh.nlmsg_seq)
                continue;
            if (h->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
        }
    }
}

/* `ip addr add ADDR/PREFIX dev DEV` */
static int addr_add(int nl, const char *dev, struct in_addr addr, int prefix)
{
    struct nl_req r;
    memset(&r, 0, sizeof r);
    r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
    r.nh.nlmsg_type = RTM_NEWADDR;
    r.nh.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    r.ifa.ifa_family = AF_INET;
    r.ifa.ifa_prefixlen = (unsigned char)prefix;
    r.ifa.ifa_index = if_nametoindex(dev);
    if (!r.ifa.ifa_index)
        return -ENODEV;
    add_attr(&r, IFA_LOCAL, &addr, 4);
    add_attr(&r, IFA_ADDRESS, &addr, 4);
    return nl_talk(nl, &r);
}

/* `ip route add DST [via GW] [dev DEV]` (DST "default" or a.b.c.d[/n]) */
static int route_add(int nl, struct in_addr dst, int dst_len, const struct in_addr *gw,
                     const char *dev)
{
    struct nl_req r;
    memset(&r, 0, sizeof r);
    r.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    r.nh.nlmsg_type = RTM_NEWROUTE;
    r.nh.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    r.rt.rtm_family = AF_INET;
    r.rt.rtm_dst_len = (unsigned char)dst_len;
    r.rt.rtm_table = RT_TABLE_MAIN;
    r.rt.rtm_protocol = RTPROT_BOOT;
    r.rt.rtm_scope = gw ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
    r.rt.rtm_type = RTN_UNICAST;
    if (dst_len)
        add_attr(&r, RTA_DST, &dst, 4);
    if (gw)
        add_attr(&r, RTA_GATEWAY, gw, 4);
    if (dev) {
        int idx = (int)if_nametoindex(dev);
        if (!idx)
            return -ENODEV;
        add_attr(&r, RTA_OIF, &idx, 4);
    }
    return nl_talk(nl, &r);
}

static int parse_prefix(const char *s, struct in_addr *a, int *len)
{
    char buf[64];
    if (!strcmp(s, "default")) {
        a->s_addr = 0;
        *len = 0;
        return 0;
    }
    snprintf(buf, sizeof buf, "%s", s);
    char *slash = strchr(buf, '/');
    *len = 32;
    if (slash) {
        char *end;
        *slash = 0;
        long n = strtol(slash + 1, &end, 10);
        if (*end || n < 0 || n > 32 || end == slash + 1)
            return -1;
        *len = (int)n;
    }
    return inet_pton(AF_INET, buf, a) == 1 ? 0 : -1;
}

/* One `route add ...` line of the routes file: 0 done, -errno failed, 1 not our grammar. */
static int route_line(int nl, char *line)
{
    char *tok[8];
    int n = 0;
    for (char *s = strtok(line, " \t"); s && n < 8; s = strtok(NULL, " \t"))
        tok[n++] = s;
    if (n == 0)
        return 0;
    if (n < 3 || strcmp(tok[0], "route") || strcmp(tok[1], "add"))
        return 1;
    struct in_addr dst, gw;
    int dst_len, have_gw = 0;
    const char *dev = NULL;
    if (parse_prefix(tok[2], &dst, &dst_len) < 0)
        return 1;
    for (int i = 3; i < n; i += 2) {
        if (i + 1 >= n)
            return 1;
        if (!strcmp(tok[i], "via") && !have_gw && inet_pton(AF_INET, tok[i + 1], &gw) == 1)
            have_gw = 1;
        else if (!strcmp(tok[i], "dev") && !dev)
            dev = tok[i + 1];
        else
            return 1;
    }
    if (!have_gw && !dev)
        return 1;
    return route_add(nl, dst, dst_len, have_gw ? &gw : NULL, dev);
}

static int set_up(int s, const char *dev)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return -errno;
    ifr.ifr_flags |= IFF_UP;
    return ioctl(s, SIOCSIFFLAGS, &ifr) < 0 ? -errno : 0;
}

static int rename_if(int s, const char *from, const char *to)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", from);
    snprintf(ifr.ifr_newname, IFNAMSIZ, "%s", to);
    return ioctl(s, SIOCSIFNAME, &ifr) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------ programs */

static pid_t spawn(const char *const argv[], int ignore_int, int stdin_null)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t all, none;
    pid_t pid;
    sigfillset(&all);
    /* glibc's sigfillset leaves out its two internal signals (32, 33); left out of
     * the defaults, its posix_spawn hands them to the child as SIG_IGN, which a
     * shell's children never see: set their bits directly */
    all.__val[0] |= 3UL << 31;
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    if (ignore_int) {
        sigdelset(&all, SIGINT);
        sigdelset(&all, SIGQUIT);
    }
    sigemptyset(&none);
    posix_spawn_file_actions_init(&fa);
    if (stdin_null)
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    int rc = posix_spawn(&pid, argv[0], &fa, &at, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return pid;
}

static pid_t agent_pid = -1;

/* A reaped child: the agent's end is told to the host ("@@STDPKT AGENT-EXIT ..."), which
 * fails its calls at once instead of waiting out their timeouts. */
static void reaped(pid_t got, int st)
{
    if (got <= 0 || got != agent_pid)
        return;
    agent_pid = -1;
    if (WIFSIGNALED(st))
        say("@@STDPKT AGENT-EXIT killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        say("@@STDPKT AGENT-EXIT exit status %d", WEXITSTATUS(st));
}

/* Waits for pid, reaping any orphan on the way; returns its status as a shell's $? */
static int wait_for(pid_t pid)
{
    int st;
    for (;;) {
        pid_t got = waitpid(-1, &st, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return 127;
        }
        reaped(got, st);
        if (got == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
}

static int run_sh(const char *script, int stdin_null)
{
    const char *argv[] = {"/bin/sh", script, NULL};
    pid_t pid = spawn(argv, 0, stdin_null);
    if (pid < 0) {
        warn_errno("/bin/sh");
        return 127;
    }
    return wait_for(pid);
}

/* ------------------------------------------------------------ main */

/* Mounts, configuration, modules, iptables: what every instance needs. */
static void prepare(void)
{
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 1);
    setenv("TERM", "dumb", 1);
    umask(022);

    do_mount("proc", "/proc", "proc", 0, NULL);
    do_mount("sys", "/sys", "sysfs", 0, NULL);
    do_mount("run", "/run", "tmpfs", 0, "mode=755");
    const char *conf = getenv("STDPKT_CONF");
    char hostdir[512] = "", conf_in_guest[768] = "";
    if (conf) {
        snprintf(hostdir, sizeof hostdir, "%s", conf);
        char *slash = strrchr(hostdir, '/');
        if (slash)
            *slash = 0;
        snprintf(conf_in_guest, sizeof conf_in_guest, RUN_HOST "/%s",
                 strrchr(conf, '/') ? strrchr(conf, '/') + 1 : conf);
    }
    mkdir_p(RUN_HOST, 0755);
    do_mount("hostfs", RUN_HOST, "hostfs", 0, hostdir);
    struct stat sb;
    if (stat("/dev/null", &sb) < 0 || !S_ISCHR(sb.st_mode))
        do_mount("dev", "/dev", "devtmpfs", 0, NULL);
    mkdir("/dev/pts", 0755);
    do_mount("devpts", "/dev/pts", "devpts", 0, NULL);
    do_mount("tmp", "/tmp", "tmpfs", 0, "mode=1777");
    do_mount("root", "/root", "tmpfs", 0, "mode=700");
    do_mount("varlib", "/var/lib", "tmpfs", 0, "mode=755");
    do_mount("varlog", "/var/log", "tmpfs", 0, "mode=755");

    if (!conf || load_conf(conf_in_guest) < 0) {
        say("@@STDPKT FAIL cannot read %s", conf ? conf : "(STDPKT_CONF not set)");
        poweroff();
    }

    /* modules on demand: modprobe looks only under <dir>/lib/modules/<release> */
    struct utsname un;
    uname(&un);
    char path[512], target[512];
    mkdir_p("/run/stdpkt/bin", 0755);
    mkdir_p("/run/stdpkt/mod/lib/modules", 0755);
    snprintf(target, sizeof target, "/usr/lib/uml/modules/%s", un.release);
    snprintf(path, sizeof path, "/run/stdpkt/mod/lib/modules/%s", un.release);
    if (symlink(target, path) < 0)
        warn_errno(path);
    /* the kernel runs modprobe with an environment of its own (HOME, TERM, PATH):
       hand it the launcher's GLIBC_TUNABLES, without which glibc's AVX memmove
       corrupts its memory on hosts where UML keeps only FXSAVE state (launch.c) */
    char wrapper[1024];
    const char *tunables = getenv("GLIBC_TUNABLES");
    snprintf(wrapper, sizeof wrapper, "#!/bin/sh\n%s%s%sexec /sbin/modprobe -d /run/stdpkt/mod \"$@\"\n",
             tunables && !strchr(tunables, '\'') ? "export GLIBC_TUNABLES='" : "",
             tunables && !strchr(tunables, '\'') ? tunables : "",
             tunables && !strchr(tunables, '\'') ? "'\n" : "");
    if (write_file("/run/stdpkt/bin/modprobe", wrapper, 0755) < 0)
        warn_errno("/run/stdpkt/bin/modprobe");
    chmod("/run/stdpkt/bin/modprobe", 0755);
    write_proc("/proc/sys/kernel/modprobe", "/run/stdpkt/bin/modprobe\n");
    /* Debian's UML kernel has no nf_tables for IPv4: `iptables` is the legacy backend */
    static const char *const tables[] = {"iptables", "ip6tables"};
    static const char *const suffix[] = {"", "-save", "-restore"};
    for (int t = 0; t < 2; t++)
        for (int s = 0; s < 3; s++) {
            snprintf(target, sizeof target, "/usr/sbin/%s-legacy%s", tables[t], suffix[s]);
            snprintf(path, sizeof path, "/run/stdpkt/bin/%s%s", tables[t], suffix[s]);
            if (symlink(target, path) < 0)
                warn_errno(path);
        }
    snprintf(path, sizeof path, "/run/stdpkt/bin:%s", getenv("PATH"));
    setenv("PATH", path, 1);
}

/* /etc/hosts, hostname, forwarding. */
static void identity(void)
{
    char path[512];
    const char *hosts = env_or("STDPKT_HOSTS", NULL);
    if (hosts)
        do_mount(hosts, "/etc/hosts", NULL, MS_BIND, NULL);
    const char *name = env_or("STDPKT_NAME", NULL);
    if (name) {
        snprintf(path, sizeof path, "%s\n", name);
        write_proc("/proc/sys/kernel/hostname", path);
    }
    write_proc("/proc/sys/kernel/ctrl-alt-del", "0\n");
    write_proc("/proc/sys/net/ipv4/ip_forward", "1\n");
    /* TCP's buffer maxima of a host with 1 GiB or more (the kernel scales them to the
     * guest's memory: 0.9 MB at 128 MB, which caps a flow's window and, through a chain's
     * longer round trip, its goodput; README, "The data path").  tcp_mem, the guest's
     * total, is raised with them: the kernel's own (pressure at 1/16 of RAM, 7 MB at
     * 128 MB) is one such window, so two flows into one guest pushed it into memory
     * pressure, which pruned and dropped received segments inside the guest
     * (TcpExtTCPRcvQDrop) and stalled the flows on retransmission timeouts.  Now: low
     * 1/8 of RAM, pressure 1/4, hard limit 1/2 (in pages). */
    const char *tcp = env_or("STDPKT_TCP_BUFFERS", "host");
    unsigned long rmem = 6291456, wmem = 4194304;   /* the host checked RMEM,WMEM */
    if (strcmp(tcp, "host") != 0 && sscanf(tcp, "%lu,%lu", &rmem, &wmem) != 2)
        rmem = wmem = 0;                             /* "kernel": leave them */
    if (rmem && wmem) {
        snprintf(path, sizeof path, "4096 131072 %lu\n", rmem);
        write_proc("/proc/sys/net/ipv4/tcp_rmem", path);
        snprintf(path, sizeof path, "4096 16384 %lu\n", wmem);
        write_proc("/proc/sys/net/ipv4/tcp_wmem", path);
        struct sysinfo si;
        long page = sysconf(_SC_PAGESIZE);
        if (sysinfo(&si) == 0 && page > 0) {
            unsigned long long pages = (unsigned long long)si.totalram * si.mem_unit / (unsigned long)page;
            snprintf(path, sizeof path, "%llu %llu %llu\n", pages / 8, pages / 4, pages / 2);
            write_proc("/proc/sys/net/ipv4/tcp_mem", path);
        }
    }
}

static void announce(void)
{
    char path[512];
    /* a gratuitous ARP as each socket port comes up (not taps: written before the
     * host brings them up, the kernel's tap end errors out for good) */
    char announce[64];
    snprintf(announce, sizeof announce, "%s", env_or("STDPKT_ANNOUNCE", ""));
    for (char *t = strtok(announce, " "); t; t = strtok(NULL, " ")) {
        snprintf(path, sizeof path, "/proc/sys/net/ipv4/conf/vec%d/arp_notify", atoi(t));
        write_proc(path, "1\n");
    }
}

/* vhost-user ports (STDPKT_VHOST="0 2": their indices): the kernel connected them at
 * boot as virtio-uml.<index>; load virtio_net and name each interface vec<index>, so
 * that everything after treats them as it treats vector ports. */
static void vhost_ports(void)
{
    const char *which = env_or("STDPKT_VHOST", NULL);
    if (!which || !*which)
        return;
    const char *argv[] = {"/run/stdpkt/bin/modprobe", "virtio_net", NULL};
    pid_t pid = spawn(argv, 0, 1);
    if (pid < 0 || wait_for(pid) != 0) {
        say("stdpkt-init: modprobe virtio_net failed");
        return;
    }
    DIR *d = opendir("/sys/class/net");
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), found = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], link[512], vec[IFNAMSIZ];
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/class/net/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = 0;
        const char *at = strstr(link, "/virtio-uml.");
        if (!at)
            continue;
        snprintf(vec, sizeof vec, "vec%d", atoi(at + strlen("/virtio-uml.")));
        int rc = rename_if(s, e->d_name, vec);
        if (rc < 0)
            say("stdpkt-init: link set %s name %s: %s", e->d_name, vec, strerror(-rc));
        else
            found++;
    }
    if (d)
        closedir(d);
    close(s);
    if (!found)
        say("stdpkt-init: no virtio-net interface for STDPKT_VHOST=%s", which);
}

/* vecN -> ethN (a pooled instance does it while it waits for its configuration). */
static void rename_all(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc;
    int nif = atoi(env_or("STDPKT_NIF", "0"));
    for (int i = 0; i < nif && i < MAX_NIF; i++) {
        char vec[IFNAMSIZ], eth[IFNAMSIZ];
        snprintf(vec, sizeof vec, "vec%d", i);
        snprintf(eth, sizeof eth, "eth%d", i);
        if ((rc = rename_if(s, vec, eth)) < 0)
            say("stdpkt-init: link set %s name %s: %s", vec, eth, strerror(-rc));
    }
    close(s);
}

/* Interfaces, in the order of init.sh's ip batch (also written, for the record). */
static void interfaces(int renamed)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    int failed = 0, rc;
    char batch[4096];
    size_t bl = 0;
#define BATCH(...) (bl += (size_t)snprintf(batch + bl, bl < sizeof batch ? sizeof batch - bl : 0, __VA_ARGS__))
    BATCH("link set lo up\n");
    if ((rc = set_up(s, "lo")) < 0) {
        say("stdpkt-init: lo up: %s", strerror(-rc));
        failed = 1;
    }
    int nif = atoi(env_or("STDPKT_NIF", "0"));
    for (int i = 0; i < nif && i < MAX_NIF; i++) {
        char vec[IFNAMSIZ], eth[IFNAMSIZ], key[16];
        snprintf(vec, sizeof vec, "vec%d", i);
        snprintf(eth, sizeof eth, "eth%d", i);
        BATCH("link set %s name %s\n", vec, eth);
        if (!renamed && (rc = rename_if(s, vec, eth)) < 0) {
            say("stdpkt-init: link set %s name %s: %s", vec, eth, strerror(-rc));
            failed = 1;
        }
        snprintf(key, sizeof key, "IP%d", i);
        const char *ip = env_or(key, NULL);
        snprintf(key, sizeof key, "NETMASK%d", i);
        const char *mask = env_or(key, "24");
        if (ip) {
            struct in_addr a;
            char *end;
            long plen = strtol(mask, &end, 10);
            BATCH("addr add %s/%s dev %s\n", ip, mask, eth);
            if (inet_pton(AF_INET, ip, &a) != 1 || *end || plen < 0 || plen > 32)
                rc = -EINVAL;
            else
                rc = addr_add(nl, eth, a, (int)plen);
            if (rc < 0) {
                say("stdpkt-init: addr add %s/%s dev %s: %s", ip, mask, eth, strerror(-rc));
                failed = 1;
            }
        }
        BATCH("link set %s up\n", eth);
        if ((rc = set_up(s, eth)) < 0) {
            say("stdpkt-init: link set %s up: %s", eth, strerror(-rc));
            failed = 1;
        }
    }
    const char *gwstr = env_or("GATEWAY", NULL);
    if (gwstr) {
        struct in_addr gw, any = {0};
        BATCH("route add default via %s\n", gwstr);
        rc = inet_pton(AF_INET, gwstr, &gw) == 1 ? route_add(nl, any, 0, &gw, NULL) : -EINVAL;
        if (rc < 0) {
            say("stdpkt-init: route add default via %s: %s", gwstr, strerror(-rc));
            failed = 1;
        }
    }
    const char *routes = env_or("STDPKT_ROUTES", NULL);
    if (routes) {
        /* our grammar line by line; from the first line that is not ours on,
         * the rest of the file goes through `ip -batch` unchanged */
        FILE *f = fopen(routes, "re"), *rest = NULL;
        char line[512];
        if (!f) {
            warn_errno(routes);
            failed = 1;
        }
        while (f && fgets(line, sizeof line, f)) {
            char shown[512], copy[512];
            snprintf(shown, sizeof shown, "%s", line);
            shown[strcspn(shown, "\n")] = 0;
            snprintf(copy, sizeof copy, "%s", shown);
            BATCH("%s\n", shown);
            if (!rest) {
                rc = route_line(nl, copy);   /* tokenises copy */
                if (rc < 0) {
                    say("stdpkt-init: %s: %s", shown, strerror(-rc));
                    failed = 1;
                } else if (rc == 1 && !(rest = fopen("/run/stdpkt/routes.rest", "we"))) {
                    warn_errno("/run/stdpkt/routes.rest");
                    failed = 1;
                    break;
                }
            }
            if (rest)
                fputs(line, rest);
        }
        if (f)
            fclose(f);
        if (rest) {
            const char *argv[] = {"/sbin/ip", "-batch", "/run/stdpkt/routes.rest", NULL};
            fclose(rest);
            pid_t pid = spawn(argv, 0, 0);
            if (pid < 0 || wait_for(pid) != 0)
                failed = 1;
        }
    }
    close(s);
    close(nl);
    if (bl >= sizeof batch)
        bl = sizeof batch - 1;
    batch[bl] = 0;
    write_file("/run/stdpkt/ip.batch", batch, 0644);
    if (failed)
        say("@@STDPKT WARN interface set-up failed (see above)");
}

static void start_agent(void)
{
    const char *agent = env_or("STDPKT_AGENT", NULL);
    if (agent) {
        const char *argv[] = {agent, "/dev/tty1", NULL};
        if ((agent_pid = spawn(argv, 1, 1)) < 0)
            warn_errno(agent);
    }
}

/* A pooled instance: booted ahead with no configuration of its own, it waits for
 * the host to write "CONF <file in the run directory>\n" on its console. */
static void wait_for_config(void)
{
    struct termios t;
    char line[512], path[768];
    size_t n = 0;
    if (tcgetattr(0, &t) == 0) {
        t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        tcsetattr(0, TCSANOW, &t);
    }
    say("@@STDPKT POOLED");
    while (n < sizeof line - 1) {
        ssize_t k = read(0, line + n, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = 0;
    if (strncmp(line, "CONF ", 5) != 0 || strchr(line + 5, '/')) {
        say("@@STDPKT FAIL expected CONF <file> on the console, got %.100s", line);
        poweroff();
    }
    snprintf(path, sizeof path, RUN_HOST "/%s", line + 5);
    unsetenv("STDPKT_POOL");
    if (load_conf(path) < 0) {
        say("@@STDPKT FAIL cannot read %s", path);
        poweroff();
    }
    char *conf = getenv("STDPKT_CONF"), *slash = conf ? strrchr(conf, '/') : NULL;
    if (slash) {
        snprintf(path, sizeof path, "%.*s/%s", (int)(slash - conf), conf, line + 5);
        setenv("STDPKT_CONF", path, 1);
    }
}

/* cd, setup, READY, the script; then power off (oneshot) or reap orphans for ever. */
static void run(void)
{
    int rc;
    const char *cwd = env_or("STDPKT_CWD", "/");
    if (chdir(cwd) < 0) {
        cwd = "/";
        (void)!chdir("/");
    }
    setenv("OLDPWD", "/", 1);
    setenv("PWD", cwd, 1);
    const char *setup = env_or("STDPKT_SETUP", NULL);
    if (setup) {
        rc = run_sh(setup, 0);
        if (rc != 0)
            say("@@STDPKT WARN setup script exited with status %d", rc);
    }
    say("@@STDPKT READY");

    const char *script = env_or("STDPKT_SCRIPT", NULL);
    rc = script ? run_sh(script, 1) : 0;
    say("@@STDPKT SCRIPT-EXIT %d", rc);
    if (!strcmp(env_or("STDPKT_ONESHOT", "0"), "1"))
        poweroff();
    /* a network function keeps forwarding until the host stops this kernel */
    for (;;) {
        int st = 0;
        pid_t got = waitpid(-1, &st, 0);
        if (got < 0 && errno == ECHILD)
            pause();
        reaped(got, st);
    }
}

int main(void)
{
    /* like the shell: PID 1 ignores nothing it need not; a `&` job ignores
     * SIGINT/SIGQUIT, which spawn() arranges per child */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    prepare();
    vhost_ports();
    if (!strcmp(env_or("STDPKT_POOL", "0"), "1")) {
        /* everything that does not depend on the configuration, then wait for it */
        announce();
        rename_all();
        start_agent();
        wait_for_config();
        identity();
        interfaces(1);
    } else {
        identity();
        announce();
        interfaces(0);
        start_agent();
    }
    run();
    return 0;
}
