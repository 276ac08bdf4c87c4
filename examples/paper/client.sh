#!/bin/sh
# Client endpoint (run with --oneshot): measures through the chain, then ends it.
SERVER=${SERVER:-192.168.1.2}
# The other instances boot in parallel with this one: wait until the server answers.
i=0
until ping -c 1 -W 1 "$SERVER" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 60 ] && { echo "client: $SERVER unreachable after 60 tries"; exit 1; }
done
until wget -qO /dev/null -T 2 "http://$SERVER/" 2>/dev/null; do
    i=$((i + 1)); [ $i -ge 90 ] && { echo "client: no HTTP server at $SERVER"; exit 1; }
    sleep 0.5
done
echo "client: ping $SERVER"
ping -c 3 -W 2 "$SERVER" | tail -2
echo "client: HTTP GET http://$SERVER/cgi-bin/whoami (the server prints the source address it saw)"
seen=$(wget -qO- -T 5 "http://$SERVER/cgi-bin/whoami") || { echo "client: HTTP failed"; exit 1; }
echo "client: server saw the connection coming from $seen"
echo "client: iperf3 TCP for 2 s"
iperf3 -c "$SERVER" -t 2 -f m | grep -E "sender|receiver"
echo "client: TCP port 8080 is not allowed by the firewall:"
if nc -z -w 2 "$SERVER" 8080; then echo "client: port 8080 OPEN (firewall failed)"; exit 1; else echo "client: port 8080 blocked, as configured"; fi
