"""Copy a pcap stream from stdin to stdout, slipping malformed records in.

After the global header and SKIP good records it inserts, in order:
  1. a record whose incl_len (5) is shorter than an Ethernet header;
  2. a record whose orig_len is smaller than its incl_len;
  3. a record header with an absurd incl_len (0x7fffffff) followed by 40 zero
     bytes: the reader cannot trust it and must resynchronise.
Prints "INJECTED 3" on stderr when done. Usage: mangle_pcap.py [SKIP]
"""

import struct
import sys

skip = int(sys.argv[1]) if len(sys.argv) > 1 else 3
src, dst = sys.stdin.buffer, sys.stdout.buffer


def read_exact(n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = src.read(n - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data


dst.write(read_exact(24))
dst.flush()
for _ in range(skip):
    hdr = read_exact(16)
    incl = struct.unpack("<I", hdr[8:12])[0]
    dst.write(hdr + read_exact(incl))
    dst.flush()
bad = [
    struct.pack("<IIII", 1, 0, 5, 5) + b"\x01" * 5,
    struct.pack("<IIII", 1, 0, 60, 20) + b"\x02" * 60,
    struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"\x00" * 40,
]
for record in bad:
    dst.write(record)
dst.flush()
print("INJECTED 3", file=sys.stderr, flush=True)
while True:
    chunk = src.read1(65536) if hasattr(src, "read1") else src.read(65536)
    if not chunk:
        break
    dst.write(chunk)
    dst.flush()
