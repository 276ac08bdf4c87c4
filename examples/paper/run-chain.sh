#!/bin/bash
# The paper's section 2.3 chain: client | NAT | firewall | server, each a
# Linux kernel in its own process, joined by pcap-framed pipes.
# stdin/stdout carry the client→server direction; named pipes the other.
set -u
here=$(cd "$(dirname "$0")" && pwd)
STDPKT=${STDPKT:-stdpkt}
# virtio-net ports with checksum offload and TSO, as the paper's measurements had
# (STDPKT_PORTS=vector: UML's vector driver, no offload)
export STDPKT_PORTS=${STDPKT_PORTS:-vhost}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkfifo p1 p2 p3
IF0="p1|/dev/stdout" IP0=10.0.0.2 NETMASK0=24 GATEWAY=10.0.0.1 \
    $STDPKT run --oneshot --name client --prefix "$here/client.sh" \
| IF0="/dev/stdin|p1" IP0=10.0.0.1 NETMASK0=24 IF1="p2|/dev/stdout" IP1=192.168.0.1 NETMASK1=24 \
    $STDPKT run --name nat --prefix "$here/nat-config.sh" \
| IF0="/dev/stdin|p2" IP0=192.168.0.2 NETMASK0=24 IF1="p3|/dev/stdout" IP1=192.168.1.1 NETMASK1=24 \
    $STDPKT run --name firewall --prefix "$here/firewall-config.sh" \
| IF0="/dev/stdin|p3" IP0=192.168.1.2 NETMASK0=24 GATEWAY=192.168.1.1 \
    $STDPKT run --name server --prefix "$here/server.sh"
status=("${PIPESTATUS[@]}")
echo "pipeline exit statuses (client nat firewall server): ${status[*]}" >&2
exit "${status[0]}"
