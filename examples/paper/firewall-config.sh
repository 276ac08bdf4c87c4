#!/bin/sh
# Stateful firewall: replies of established flows pass; new flows only to
# TCP 80 (HTTP), TCP 5201 (iperf3) and ICMP echo; everything else is dropped.
iptables -P FORWARD DROP
iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
iptables -A FORWARD -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT
iptables -A FORWARD -p tcp --dport 5201 -m conntrack --ctstate NEW -j ACCEPT
iptables -A FORWARD -p icmp --icmp-type echo-request -j ACCEPT
echo "firewall: allowing tcp/80, tcp/5201, icmp; dropping the rest"
