#!/usr/bin/env python3
"""Keeps the nfnetlink traffic of one `nft` run (an `strace -e write=all -e read=all` log) as
golden hex for tests/unit/nft_codec_test.cpp.

usage: strace_to_hex.py STRACE_LOG DEST_HEX DIRECTION NLMSG_TYPE "COMMAND" NFT_EXIT_STATUS
  DIRECTION  send: the last sendmsg/sendto buffer holding a message of NLMSG_TYPE (a batch is
                   one buffer: BATCH_BEGIN, the messages, BATCH_END)
             recv: every message received after the last send holding a message of NLMSG_TYPE
                   (the request) up to the next send: the kernel's answer to it
             notify: every message received from a multicast group (`nft monitor`: the
                   announcements of the commits made meanwhile); NLMSG_TYPE is not used
Messages are written one after the other, each preceded by a '#' line naming it.
"""
import re
import struct
import sys

path, dest, direction, want, cmd, rc = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                        sys.argv[5], sys.argv[6])
bufs, cur = [], None  # (kind, bytes)
for line in open(path):
    call = re.match(r"\d+\s+(sendmsg|sendto|recvmsg)\(", line)
    if call:
        # The call's data follows as hex lines (recvmsg: after "* N bytes in buffer 0").
        cur = bytearray()
        kind = "recv" if call.group(1) == "recvmsg" else "send"
        if kind == "recv" and re.search(r"nl_groups=0x0*[1-9a-f]", line):
            kind = "notify"
        bufs.append((kind, cur))
        continue
    if re.match(r"\s*\* \d+ bytes in buffer", line):
        continue
    # " | 00010  xx xx … ascii |": the hex area is a fixed 49 columns (never read the ASCII).
    m = re.match(r"\s*\| [0-9a-f]{5}  (.{49})", line)
    if m and cur is not None:
        cur.extend(bytes.fromhex(m.group(1).replace(" ", "")))
    elif not line.lstrip().startswith("|"):
        cur = None  # another line of strace output (a resumed call, a signal)


def messages(b):
    out, off = [], 0
    while off + 16 <= len(b):
        ln, ty = struct.unpack_from("<IH", b, off)
        if ln < 16 or off + ln > len(b):
            break
        out.append((ty, bytes(b[off:off + ln])))
        off += (ln + 3) & ~3
    return out


NAMES = {2: "NLMSG_ERROR", 3: "NLMSG_DONE", 0x10: "NFNL_MSG_BATCH_BEGIN", 0x11: "NFNL_MSG_BATCH_END"}
NFT = ["NEWTABLE", "GETTABLE", "DELTABLE", "NEWCHAIN", "GETCHAIN", "DELCHAIN", "NEWRULE",
       "GETRULE", "DELRULE", "NEWSET", "GETSET", "DELSET", "NEWSETELEM", "GETSETELEM",
       "DELSETELEM", "NEWGEN", "GETGEN", "TRACE", "NEWOBJ", "GETOBJ"]


def name(ty):
    if ty in NAMES:
        return NAMES[ty]
    if ty >> 8 == 10 and (ty & 0xff) < len(NFT):
        return "NFT_MSG_" + NFT[ty & 0xff]
    return hex(ty)


last_send = max((i for i, (k, b) in enumerate(bufs)
                 if k == "send" and any(t == want for t, _ in messages(b))), default=None)
if direction == "notify":
    msgs = [m for k, b in bufs if k == "notify" for m in messages(b)]
    if not msgs:
        sys.exit(f"{dest}: no announcement received")
elif last_send is None:
    sys.exit(f"{dest}: no message of type {want:#x} sent")
elif direction == "send":
    msgs = messages(bufs[last_send][1])
else:
    msgs = []
    for k, b in bufs[last_send + 1:]:
        if k == "send":
            break
        msgs += messages(b)
    if not msgs:
        sys.exit(f"{dest}: no answer of type {want:#x}")
with open(dest, "w") as f:
    f.write(f"# {cmd}\n# nft exit status {rc}; {direction}: {len(msgs)} message(s)\n")
    for t, m in msgs:
        f.write(f"# {name(t)} ({len(m)} bytes)\n")
        for i in range(0, len(m), 16):
            f.write(" ".join(f"{x:02x}" for x in m[i:i + 16]) + "\n")
print(f"{dest}: {len(msgs)} message(s) ({direction}, nft exit {rc})")
