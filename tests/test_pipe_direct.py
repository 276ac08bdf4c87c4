"""The direct paths between a vhost port's queues and a pcap pipe (relay/vhost_pcap.c).

Two `stdpkt run` instances joined by a pipe (a `tee` in the middle) and a FIFO back,
as the paper's pipeline.  With checksum offload a corrupted byte would not be caught
by the guests' TCP (the checksum of a frame on the pipe is completed by the receiving
port), so the test compares SHA-256 digests of what was sent and what arrived, both
ways, for each setting of ``STDPKT_RELAY_DIRECT`` (0: every frame copied
through the relay's buffers; 1: written into the pipe from guest memory; 3: large
records also read straight into guest memory; 7: also spliced, not copied, into a pipe
whose reader is a relay; 4, the default, splices without the copying direct paths);
and tcpdump reads the tee'd stream.  With 7 the server's
frames (on the FIFO, read by the client's relay) must have been spliced and the
client's (read by tee, which could splice them on) must not.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .pipeline import Pipeline, Stage

SIZE = 48 << 20    # bytes each way: hundreds of 64 KiB super-frames, many full pipes

# Both programs run inside the guests (the host's python3).  Data are made and hashed
# in 1 MiB chunks, each different (a shifted or repeated byte shows in the digest).
COMMON = r"""
import hashlib, socket, sys, time
def chunks(seed):
    for i in range(SIZE >> 20):
        yield hashlib.sha256(b"%s %d" % (seed, i)).digest() * 32768
def digest(seed):
    h = hashlib.sha256()
    for c in chunks(seed):
        h.update(c)
    return h.hexdigest()
def drain(c, h):
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            return n
        h.update(b); n += len(b)
""".replace("SIZE", str(SIZE))

SERVER = COMMON + r"""
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(1)
c, _ = s.accept()
h = hashlib.sha256()
n = drain(c, h)
c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
for b in chunks(b"back"):
    c.sendall(b)
c.close()
print("SERVER-DONE", n, flush=True)
"""

CLIENT = COMMON + r"""
for _ in range(300):
    try:
        c = socket.create_connection(("10.0.0.1", 5000), timeout=2); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("server not reachable")
c.settimeout(120)
for b in chunks(b"forth"):
    c.sendall(b)
c.shutdown(socket.SHUT_WR)
line = b""
while not line.endswith(b"\n"):
    b = c.recv(1)
    if not b:
        break
    line += b
h = hashlib.sha256()
n_back = drain(c, h)
n, got = line.split()
ok_fwd = int(n) == SIZE and got.decode() == digest(b"forth")
ok_back = n_back == SIZE and h.hexdigest() == digest(b"back")
print("FORWARD", "ok" if ok_fwd else "BAD %r" % line, "BACK", "ok" if ok_back else "BAD %d" % n_back,
      flush=True)
sys.exit(0 if ok_fwd and ok_back else 1)
""".replace("SIZE", str(SIZE))


@pytest.mark.uml
@pytest.mark.parametrize("direct", ["0", "1", "3", "4", "7"])
def test_bytes_arrive_intact_both_ways_through_a_pipe(stdpkt_bin: str, tmp_path: Path, direct: str) -> None:
    for name, program in (("server.sh", SERVER), ("client.sh", CLIENT)):
        script = tmp_path / name   # the program inside the script: the guest does not see /tmp
        script.write_text(f"#!/bin/sh\nexec python3 - <<'EOF'\n{program}\nEOF\n")
        script.chmod(0o755)
    os.mkfifo(tmp_path / "back")
    env = {"STDPKT_RELAY_DIRECT": direct}
    stages = [
        Stage("client", [stdpkt_bin, "run", "--verbose", "--oneshot", "--name", "client",
                         str(tmp_path / "client.sh")],
              {**env, "IF0": f"{tmp_path / 'back'}|/dev/stdout", "IP0": "10.0.0.2", "NETMASK0": "24",
               "MTU0": "65500"}),
        Stage("tee", ["tee", str(tmp_path / "forward.pcap")]),
        Stage("server", [stdpkt_bin, "run", "--verbose", "--name", "server", str(tmp_path / "server.sh")],
              {**env, "IF0": f"/dev/stdin|{tmp_path / 'back'}", "IP0": "10.0.0.1", "NETMASK0": "24",
               "MTU0": "65500"}),
    ]
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(240)
        log = pipe.all_stderr()
    assert codes[0] == 0, log[-4000:]
    assert "FORWARD ok BACK ok" in log, log[-4000:]
    spliced = dict(re.findall(r"stdpkt: (\w+) eth0 port: VhostStats\(.*tx_spliced=(\d+)\)", log))
    assert set(spliced) == {"client", "server"}, log[-4000:]
    if direct in ("4", "7"):
        assert int(spliced["server"]) > 100, spliced   # into the FIFO the client's relay reads
        assert int(spliced["client"]) == 0, spliced    # into tee: copied
    else:
        assert spliced == {"client": "0", "server": "0"}, spliced
    r = subprocess.run(["tcpdump", "-nn", "-r", str(tmp_path / "forward.pcap")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lengths = [int(line.rsplit("length ", 1)[1].split()[0]) for line in r.stdout.splitlines()
               if "length " in line and "Flags" in line]
    assert sum(lengths) >= SIZE, "the capture lacks frames the server got"
    assert max(lengths) > 1500, "no TCP super-frame on the pipe"


# UDP datagrams, each carrying its own digest: a UDP sender's buffers go back to its
# kernel's allocator as soon as the port hands them back, so a buffer given back while
# the pipe still referred to it (a splice released too early) shows as a datagram whose
# digest is wrong.  TCP would hide that: its data stay queued until acknowledged.
UDP_SENDER = r"""
import hashlib, socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
end = time.monotonic() + 4
seq = 0
while time.monotonic() < end:
    for _ in range(64):
        body = struct.pack("!Q", seq) * 1000
        try:
            s.sendto(body[:8] + hashlib.sha256(body).digest() + body[8:], ("10.0.0.2", 6000))
        except OSError:
            pass
        seq += 1
for _ in range(50):
    s.sendto(b"END", ("10.0.0.2", 6000)); time.sleep(0.02)
print("SENT", seq, flush=True)
time.sleep(60)
"""

UDP_RECEIVER = r"""
import hashlib, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", 6000))
s.settimeout(60)
good = bad = 0
while True:
    d = s.recv(65536)
    if d == b"END":
        break
    body = d[:8] + d[40:]
    if len(d) == 8032 and hashlib.sha256(body).digest() == d[8:40]:
        good += 1
    else:
        bad += 1
print("UDP good %d bad %d" % (good, bad), flush=True)
"""


@pytest.mark.uml
def test_spliced_frames_are_not_overwritten_before_they_are_read(stdpkt_bin: str, tmp_path: Path) -> None:
    """The server sends UDP into the FIFO its frames are spliced into (the reader is the
    receiving relay); every datagram that arrives must be whole."""
    for name, program in (("sender.sh", UDP_SENDER), ("receiver.sh", UDP_RECEIVER)):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\nexec python3 - <<'EOF'\n{program}\nEOF\n")
        script.chmod(0o755)
    os.mkfifo(tmp_path / "back")
    env = {"STDPKT_RELAY_DIRECT": "7"}
    stages = [
        Stage("receiver", [stdpkt_bin, "run", "--verbose", "--oneshot", "--name", "receiver",
                           str(tmp_path / "receiver.sh")],
              {**env, "IF0": f"{tmp_path / 'back'}|/dev/stdout", "IP0": "10.0.0.2", "NETMASK0": "24",
               "MTU0": "65500"}),
        Stage("sender", [stdpkt_bin, "run", "--verbose", "--name", "sender", str(tmp_path / "sender.sh")],
              {**env, "IF0": f"/dev/stdin|{tmp_path / 'back'}", "IP0": "10.0.0.1", "NETMASK0": "24",
               "MTU0": "65500"}),
    ]
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(120)
        pipe.kill()
        log = pipe.all_stderr()
    assert codes[0] == 0, log[-4000:]
    found = re.search(r"UDP good (\d+) bad (\d+)", log)
    assert found, log[-4000:]
    good, bad = int(found[1]), int(found[2])
    spliced = dict(re.findall(r"stdpkt: (\w+) eth0 port: VhostStats\(.*tx_spliced=(\d+)\)", log))
    assert int(spliced.get("sender", 0)) > 1000, log[-4000:]
    assert good > 1000 and bad == 0, (good, bad)
