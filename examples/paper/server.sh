#!/bin/sh
# Server endpoint: an HTTP server (port 80, with a CGI that prints the
# client's address as seen here), an iperf3 server, and a listener on 8080
# that the firewall should keep unreachable.
mkdir -p /tmp/www/cgi-bin
echo "hello from $(hostname)" > /tmp/www/index.html
cat > /tmp/www/cgi-bin/whoami <<'CGI'
#!/bin/sh
# busybox httpd gives IPv4 peers as [::ffff:a.b.c.d]
addr=${REMOTE_ADDR#\[}; addr=${addr%\]}; addr=${addr#::ffff:}
printf 'Content-Type: text/plain\r\n\r\n%s\n' "$addr"
CGI
chmod +x /tmp/www/cgi-bin/whoami
busybox httpd -p 80 -h /tmp/www
iperf3 -s -D
(while :; do nc -l -p 8080 -q 0 </dev/null; done) >/dev/null 2>&1 &
echo "server: http on 80, iperf3 on 5201, a listener on 8080"
