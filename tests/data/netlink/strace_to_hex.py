#!/usr/bin/env python3
"""Extracts one rtnetlink request from an `strace -e write=all` log as golden hex.

Shared by capture.sh and modes/capture.sh.
usage: strace_to_hex.py STRACE_LOG NLMSG_TYPE DEST_HEX "COMMAND" IP_EXIT_STATUS [ETH0_IFINDEX]
"""
import re
import struct
import sys

path, want, dest, cmd, rc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
eth0 = sys.argv[6] if len(sys.argv) > 6 else None
bufs, cur = [], None
for line in open(path):
    if re.match(r"\s*\* \d+ bytes in buffer", line):
        cur = bytearray()
        bufs.append(cur)
        continue
    # " | 00010  xx xx xx xx xx xx xx xx  xx xx xx xx xx xx xx xx  ascii |": the hex area is
    # a fixed 49 columns; the ASCII column must not be read (it may look like hex digits).
    m = re.match(r"\s*\| [0-9a-f]{5}  (.{49})", line)
    if m and cur is not None:
        cur.extend(bytes.fromhex(m.group(1).replace(" ", "")))
    elif not line.lstrip().startswith("|"):
        cur = None
# A buffer may hold several messages; take the last one of the wanted type (the probe
# RTM_NEWLINK that iproute2 sends first carries no attributes and is 32 bytes long).
msgs = []
for b in bufs:
    off = 0
    while off + 16 <= len(b):
        ln, ty = struct.unpack_from("<IH", b, off)
        if ln < 16:
            break
        if ty == want and ln > 32:
            msgs.append(bytes(b[off:off + ln]))
        off += (ln + 3) & ~3
if not msgs:
    sys.exit(f"{dest}: no message of type {want} captured")
m = msgs[-1]
with open(dest, "w") as f:
    if eth0 is None:
        f.write(f"# {cmd}\n# kernel answer: exit status {rc} of ip\n")
    else:
        f.write(f"# {cmd}\n# ip exit status {rc} on the capturing kernel; eth0 is ifindex {eth0}, lo 1\n")
    for i in range(0, len(m), 16):
        f.write(" ".join(f"{x:02x}" for x in m[i:i + 16]) + "\n")
print(f"{dest}: {len(m)} bytes (ip exit {rc})")
