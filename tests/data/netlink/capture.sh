#!/bin/bash
# Regenerates the golden netlink requests in this directory: runs iproute2 under strace inside
# a throwaway network namespace and saves the bytes of the one request of interest (the
# RTM_NEW* message; iproute2's RTM_GETLINK ifindex lookups and its empty RTM_NEWLINK probe are
# skipped) as hex. Needs root. Requests the kernel rejects (missing gre/ipip/mpls modules) are
# still captured: iproute2 sends them before it learns the answer.
#
#   usage: tests/data/netlink/capture.sh [outdir]
set -u
out=$(cd "${1:-$(dirname "$0")}" && pwd)
ns=kstu-golden
ip netns del "$ns" 2>/dev/null
ip netns add "$ns" || exit 1
trap 'ip netns del "$ns" 2>/dev/null' EXIT
tmp=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$tmp"' EXIT

# capture NAME NLMSG_TYPE(decimal) ip-arguments...
capture() {
  local name=$1 type=$2
  shift 2
  strace -f -e trace=sendmsg,sendto -e write=all -o "$tmp/$name.strace" ip -n "$ns" "$@"
  local rc=$?
  python3 "$(dirname "$0")/strace_to_hex.py" "$tmp/$name.strace" "$type" "$out/$name.hex" "ip $*" "$rc"
}

RTM_NEWLINK=16; RTM_NEWADDR=20; RTM_NEWROUTE=24; RTM_NEWRULE=32; RTM_NEWNEXTHOP=104
capture link_vxlan_gpe $RTM_NEWLINK link add kst-vxg type vxlan external gpe dstport 4790
ip -n "$ns" link set kst-vxg up   # a nexthop needs its device up
capture nexthop_encap_ip $RTM_NEWNEXTHOP nexthop add id 1263730688 encap ip id 0 dst 198.19.1.2 ttl 64 dev kst-vxg proto 211
capture route_nhid $RTM_NEWROUTE route add 203.0.113.10/32 nhid 1263730688 table 1000 proto 211
capture rule_fwmark $RTM_NEWRULE rule add fwmark 1000 table 1000 pref 1000 proto 211
# iproute2 6.1 has no "proto" for addresses ("either local is duplicate, or proto is a
# garbage"); the golden is captured without it and the test documents IFA_PROTO as ours.
capture addr $RTM_NEWADDR addr add 203.0.113.10/32 dev kst-vxg
capture link_gre_remote $RTM_NEWLINK link add kstg1 type gre remote 198.19.1.2 ttl 64
capture link_ipip_external $RTM_NEWLINK link add kstipip type ipip external
capture link_gre_external $RTM_NEWLINK link add kstgre type gre external
capture route_mpls_encap $RTM_NEWROUTE route add 203.0.113.10/32 encap mpls 100 via 198.19.1.2 dev lo table 1000 proto 211
ip -n "$ns" -d link show kst-vxg | sed -n 3p
ip -V
