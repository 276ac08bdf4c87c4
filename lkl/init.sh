#!/bin/sh
# stdpkt guest init: PID 1 of every network-function instance.
#
# The host (stdpkt_lab.engine) boots linux.uml with init=<this file> and one
# kernel argument STDPKT_CONF=<file in the instance's run directory>, which
# the guest sees at /run/stdpkt/host (files the host refers to are there); that
# file is a shell fragment exporting the paper's variables (IFn is host-side
# only; the guest sees IPn, NETMASKn, MTUn, GATEWAY) and ours:
#   STDPKT_NAME    hostname            STDPKT_NIF     number of interfaces
#   STDPKT_SCRIPT  script to run       STDPKT_ONESHOT 1: power off when it ends
#   STDPKT_AGENT   exec agent binary   STDPKT_HOSTS   file bind-mounted on /etc/hosts
#   STDPKT_CWD     directory the script runs in
#   STDPKT_SETUP   optional extra setup script (NF kinds), run before STDPKT_SCRIPT
# Lines starting with "@@STDPKT " on the console are markers the host reads.
#
# Everything the guest writes lives in tmpfs; the root filesystem is the
# host's, read-only, and the kernel process is confined by stdpkt-launch.
# Every exec costs tens of ms under UML (ptrace), so this script keeps
# external commands few: one `ip -batch`, builtins wherever possible.
# lkl/init.c (stdpkt-init) does the same with system calls and is what the
# engine boots when it is built; keep the two in step (tests/test_perf_init.py).

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/root TERM=dumb

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 run /run
# The host's run directory (this instance's files) may live under /dev/shm,
# which the guest's own /dev (devtmpfs) hides: mount that host directory by its host path.
mkdir -p /run/stdpkt/host
mount -t hostfs -o "${STDPKT_CONF%/*}" hostfs /run/stdpkt/host
# The kernel mounts devtmpfs on /dev itself (CONFIG_DEVTMPFS_MOUNT); only if not:
[ -c /dev/null ] || mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=700 root /root
mount -t tmpfs -o mode=755 varlib /var/lib
mount -t tmpfs -o mode=755 varlog /var/log

. /run/stdpkt/host/"${STDPKT_CONF##*/}" || { echo "@@STDPKT FAIL cannot read $STDPKT_CONF"; exec busybox poweroff -f; }

# Modules load on demand from the UML package's tree; modprobe looks only
# under <dir>/lib/modules/<release>, so give it such a tree in tmpfs.
rel=$(uname -r)
mkdir -p /run/stdpkt/bin /run/stdpkt/mod/lib/modules
ln -s "/usr/lib/uml/modules/$rel" "/run/stdpkt/mod/lib/modules/$rel"
# (with the launcher's GLIBC_TUNABLES: the kernel gives modprobe its own environment)
printf '#!/bin/sh\nexport GLIBC_TUNABLES=%s\nexec /sbin/modprobe -d /run/stdpkt/mod "$@"\n' "'${GLIBC_TUNABLES:-}'" > /run/stdpkt/bin/modprobe
chmod 755 /run/stdpkt/bin/modprobe
echo /run/stdpkt/bin/modprobe > /proc/sys/kernel/modprobe

# Debian's UML kernel has no nf_tables for IPv4: `iptables` means the legacy backend here.
for t in iptables ip6tables; do
    ln -s "/usr/sbin/$t-legacy" "/run/stdpkt/bin/$t"
    ln -s "/usr/sbin/$t-legacy-save" "/run/stdpkt/bin/$t-save"
    ln -s "/usr/sbin/$t-legacy-restore" "/run/stdpkt/bin/$t-restore"
done
PATH=/run/stdpkt/bin:$PATH

# vhost-user ports (STDPKT_VHOST: their indices) are virtio-uml.<index>: load
# virtio_net and name them vec<index>, as vector ports are.
if [ -n "${STDPKT_VHOST:-}" ]; then
    /run/stdpkt/bin/modprobe virtio_net || echo "stdpkt-init: modprobe virtio_net failed"
    for d in /sys/class/net/*; do
        l=$(readlink "$d") || continue
        case $l in
        */virtio-uml.*) k=${l#*/virtio-uml.}; ip link set "${d##*/}" name "vec${k%%/*}" ;;
        esac
    done
fi

[ -n "$STDPKT_HOSTS" ] && mount --bind "$STDPKT_HOSTS" /etc/hosts
[ -n "$STDPKT_NAME" ] && echo "$STDPKT_NAME" > /proc/sys/kernel/hostname
echo 0 > /proc/sys/kernel/ctrl-alt-del
echo 1 > /proc/sys/net/ipv4/ip_forward
# TCP's buffer maxima of a host with 1 GiB or more (init.c says why)
case "${STDPKT_TCP_BUFFERS:-host}" in
    kernel) ;;
    host) echo "4096 131072 6291456" > /proc/sys/net/ipv4/tcp_rmem
          echo "4096 16384 4194304" > /proc/sys/net/ipv4/tcp_wmem ;;
    *,*) echo "4096 131072 ${STDPKT_TCP_BUFFERS%,*}" > /proc/sys/net/ipv4/tcp_rmem
         echo "4096 16384 ${STDPKT_TCP_BUFFERS#*,}" > /proc/sys/net/ipv4/tcp_wmem ;;
esac
# ... and the guest's TCP total with them: low 1/8 of RAM, pressure 1/4, limit 1/2 (pages)
if [ "${STDPKT_TCP_BUFFERS:-host}" != kernel ]; then
    pages=$(awk '/^MemTotal:/ {print int($2 / 4)}' /proc/meminfo)
    [ -n "$pages" ] && echo "$((pages / 8)) $((pages / 4)) $((pages / 2))" > /proc/sys/net/ipv4/tcp_mem
fi
# A gratuitous ARP as each socket port comes up (STDPKT_ANNOUNCE: not taps, which
# fail for good if written before the host brings them up): neighbours learn us,
# and the host sees the instance's first packet (bench/boot.py times it).
for i in ${STDPKT_ANNOUNCE:-}; do
    echo 1 > "/proc/sys/net/ipv4/conf/vec$i/arp_notify"
done

# Interfaces: vecN becomes ethN with IPn/NETMASKn; one `ip` process for all.
batch=/run/stdpkt/ip.batch
echo "link set lo up" > "$batch"
i=0
while [ "$i" -lt "${STDPKT_NIF:-0}" ]; do
    eval "ip_=\${IP$i:-} mask_=\${NETMASK$i:-24}"
    echo "link set vec$i name eth$i" >> "$batch"
    [ -n "$ip_" ] && echo "addr add $ip_/$mask_ dev eth$i" >> "$batch"
    echo "link set eth$i up" >> "$batch"
    i=$((i + 1))
done
[ -n "${GATEWAY:-}" ] && echo "route add default via $GATEWAY" >> "$batch"
[ -n "${STDPKT_ROUTES:-}" ] && cat "$STDPKT_ROUTES" >> "$batch"
ip -batch "$batch" || echo "@@STDPKT WARN interface set-up failed (see above)"

if [ -n "${STDPKT_AGENT:-}" ]; then
    "$STDPKT_AGENT" /dev/tty1 &
fi

cd "${STDPKT_CWD:-/}" 2>/dev/null || cd /
if [ -n "${STDPKT_SETUP:-}" ]; then
    /bin/sh "$STDPKT_SETUP" || echo "@@STDPKT WARN setup script exited with status $?"
fi
echo "@@STDPKT READY"

if [ -n "${STDPKT_SCRIPT:-}" ]; then
    /bin/sh "$STDPKT_SCRIPT" </dev/null
    rc=$?
else
    rc=0
fi
echo "@@STDPKT SCRIPT-EXIT $rc"
if [ "${STDPKT_ONESHOT:-0}" = 1 ]; then
    exec busybox poweroff -f
fi
# A network function keeps forwarding until the host stops this kernel.
while :; do sleep 86400; done
