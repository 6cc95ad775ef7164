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
  python3 "$(dirname "$0")/../strace_to_hex.py" "$tmp/$name.strace" "$type" "$out/$name.hex" "ip $*" "$rc" \
    "$(ip -n "$ns" -o link show eth0 | cut -d: -f1)"
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
