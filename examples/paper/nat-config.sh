#!/bin/sh
# NAT: masquerade everything leaving eth1 (toward the firewall).
iptables -t nat -A POSTROUTING -o eth1 -j MASQUERADE
ip route add 192.168.1.0/24 via 192.168.0.2
echo "nat: masquerading out of eth1 ($IP1)"
