#!/bin/bash
# Regenerates the golden rtnetlink requests of the tunnel modes (tests/unit/
# netlink_modes_golden_test.cpp): runs iproute2 under strace in a throwaway network namespace
# and keeps the bytes of the one request of interest as hex. Needs root. The host kernel has no
# gre/ipip/mpls modules and rejects most of these requests, but iproute2 sends the complete
# request before it reads the answer, so the bytes are what a kernel with the modules receives
# (the same bytes were also checked inside the VM, where every request succeeds).
#
#   usage: tests/data/netlink/modes/capture.sh [outdir]
set -u
out=$(cd "${1:-$(dirname "$0")}" && pwd)
ns=kv-golden-$$
ip netns add "$ns" || exit 1
tmp=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$tmp"' EXIT
# A device for nexthops (veth: the host has no dummy); lo is ifindex 1, eth0 ifindex 2 or 3.
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name eth1
ip -n "$ns" link set eth0 up
ip -n "$ns" link set eth1 up
ip -n "$ns" addr add 198.19.1.1/24 dev eth0

# capture NAME NLMSG_TYPE(decimal) ip-arguments...
capture() {
  local name=$1 type=$2
  shift 2
  strace -f -e trace=sendmsg,sendto -e write=all -o "$tmp/$name.strace" ip -n "$ns" "$@" \
    >"$tmp/$name.out" 2>&1
  local rc=$?
  python3 - "$tmp/$name.strace" "$type" "$out/$name.hex" "ip $*" "$rc" \
    "$(ip -n "$ns" -o link show eth0 | cut -d: -f1)" <<'PY'
import re, struct, sys
path, want, dest, cmd, rc, eth0 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
bufs, cur = [], None
for line in open(path):
    if re.match(r"\s*\* \d+ bytes in buffer", line):
        cur = bytearray(); bufs.append(cur); continue
    # " | 00010  xx xx xx xx xx xx xx xx  xx xx xx xx xx xx xx xx  ascii |": the hex area is
    # a fixed 49 columns; the ASCII column must not be read (it may look like hex digits).
    m = re.match(r"\s*\| [0-9a-f]{5}  (.{49})", line)
    if m and cur is not None:
        cur.extend(bytes.fromhex(m.group(1).replace(" ", "")))
    elif not line.lstrip().startswith("|"):
        cur = None
msgs = []
for b in bufs:
    off = 0
    while off + 16 <= len(b):
        ln, ty = struct.unpack_from("<IH", b, off)
        if ln < 16: break
        if ty == want and ln > 32: msgs.append(bytes(b[off:off+ln]))
        off += (ln + 3) & ~3
if not msgs:
    sys.exit(f"{dest}: no message of type {want} captured")
m = msgs[-1]
with open(dest, "w") as f:
    f.write(f"# {cmd}\n# ip exit status {rc} on the capturing kernel; eth0 is ifindex {eth0}, lo 1\n")
    for i in range(0, len(m), 16):
        f.write(" ".join(f"{x:02x}" for x in m[i:i+16]) + "\n")
print(f"{dest}: {len(m)} bytes (ip exit {rc})")
PY
}

RTM_NEWLINK=16; RTM_NEWROUTE=24; RTM_DELROUTE=25; RTM_NEWNEXTHOP=104
# --mode gre: router side, one link per endpoint (no local: the source follows the route).
capture gre_endpoint_link $RTM_NEWLINK link add kstc6130102 up type gre remote 198.19.1.2 ttl 64 pmtudisc
# --mode gre: pod side, bound to the pod address, any remote (every router).
capture gre_pod_link $RTM_NEWLINK link add kst-gre up type gre local 198.19.1.2 ttl 64 pmtudisc
# --mode gre: the nexthop that routes into an endpoint's link (device only, no gateway).
capture gre_nexthop $RTM_NEWNEXTHOP nexthop add id 1263730688 dev eth0 proto 211
# flow-based collect-metadata devices (router and pod): ipip, gre-flow and their IPv6 kinds.
capture ipip_external $RTM_NEWLINK link add kst-ipip up type ipip external
capture gre_external $RTM_NEWLINK link add kst-gre up type gre external
capture ip6tnl_external $RTM_NEWLINK link add kst-ipip up type ip6tnl mode any external
capture ip6gre_external $RTM_NEWLINK link add kst-gre up type ip6gre external
# gre-flow, IPv6 endpoint: the nexthop into the router's ip6gre external device, WITHOUT
# `csum` (a collect-md ip6gre receiver drops GRE-checksummed packets; vxlan needs csum).
capture gre_flow_nexthop6 $RTM_NEWNEXTHOP -6 nexthop add id 1263730688 encap ip6 id 0 dst 2001:db8:1::2 hoplimit 64 dev eth0 proto 211
# --mode mpls: router nexthop `encap mpls 100 via POD dev eth0`, routes refer to it by id.
capture mpls_encap_nexthop $RTM_NEWNEXTHOP nexthop add id 1263730688 encap mpls 100 via 198.19.1.2 dev eth0 proto 211
# --mode mpls: pod label route, pop label 100 and deliver locally; and its removal.
capture mpls_pop_route $RTM_NEWROUTE -f mpls route add 100 dev lo proto 211
capture mpls_pop_route_del $RTM_DELROUTE -f mpls route del 100 dev lo proto 211
ip -V
