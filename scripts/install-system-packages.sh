#!/bin/sh
# Install the Debian packages stdpkt-lab needs (idempotent). As root: apt-get.
# Not root: check, and name what is missing.
PKGS="user-mode-linux uml-utilities iproute2 iptables nftables conntrack ipvsadm iperf3 ethtool tcpdump tshark curl wget netcat-openbsd busybox iputils-ping kmod procps gcc libc6-dev python3-venv chromium nodejs frr apache2 bind9 dnsmasq net-tools clang libclang-rt-14-dev libpcap0.8"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# the hub's proxy (deploy/jupyterhub) comes from npm: Debian packages it apart, nodesource's nodejs bundles it
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # frr, apache2, bind9, dnsmasq are for the guests (Kathará labs): keep their services
    # from starting on the host while they are installed
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing
else
    echo "stdpkt-lab needs these Debian packages, which are missing:$missing" >&2
    echo "ask an administrator to run: apt-get install$missing" >&2
    exit 1
fi
