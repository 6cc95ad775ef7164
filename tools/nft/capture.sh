#!/bin/bash
# Regenerates the golden nfnetlink captures in tests/data/nft/ (tests/unit/nft_codec_test.cpp;
# the classifier chains, classify{4,6}.json, are tools/nft/capture-classifier.sh's):
# runs the real `nft` under strace inside a throwaway network namespace and keeps, as hex, what
# it sent (a batch: BATCH_BEGIN, the messages, BATCH_END; or a request) and what the kernel
# answered (dumps, lookups, errors). Needs root, nft and strace. This kernel has no nlmon
# device ("Unknown device type"), hence strace (`-e write=all -e read=all`: the buffers in hex).
#
#   usage: tools/nft/capture.sh [outdir]      (default tests/data/nft)
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "${1:-$here/../../tests/data/nft}" && pwd)
ns=kst-nftgolden-$$
ip netns add "$ns" || exit 1
tmp=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$tmp"' EXIT
T="inet kube_service_tunnel"

# The daemon's sets and maps as desired/nft_render.cpp declares them (the chains do not matter
# to element messages), and its table comment "kst:<skeleton id>".
ip netns exec "$ns" nft -f - <<NFT || exit 1
table $T {
  comment "kst:0123456789abcdef"
  counter refused_no_bucket { }
  counter refused_source_range { }
  counter new_flows { }
  set vip4 { type ipv4_addr; counter; }
  set vip6 { type ipv6_addr; counter; }
  set refused4 { type ipv4_addr; counter; }
  set refused6 { type ipv6_addr; counter; }
  set ep4 { typeof ip daddr . meta mark; counter; }
  set ep6 { typeof ip6 daddr . meta mark; counter; }
  set ranged4 { type ipv4_addr; }
  set ranged6 { type ipv6_addr; }
  set src4 { typeof ip daddr . ip saddr; flags interval; }
  set src6 { typeof ip6 daddr . ip6 saddr; flags interval; }
  set live4 { typeof ip daddr . meta mark; }
  set live6 { typeof ip6 daddr . meta mark; }
  map b2s4 { typeof ip daddr . meta mark : meta mark; }
  map b2s6 { typeof ip6 daddr . meta mark : meta mark; }
  map flow4 { typeof ip saddr . th sport . ip daddr . th dport : meta mark; flags dynamic,timeout; timeout 120s; size 65536; }
  map flow6 { typeof numgen inc mod 2 . numgen inc mod 2 : meta mark; flags dynamic,timeout; timeout 120s; size 65536; }
}
NFT

NLMSG_ERROR=2; NEWTABLE=$((0xa00)); GETTABLE=$((0xa01)); NEWSETELEM=$((0xa0c))
GETSETELEM=$((0xa0d)); DELSETELEM=$((0xa0e)); GETOBJ=$((0xa13))

# capture NAME DIRECTION NLMSG_TYPE nft-arguments...   (or "-f FILE")
capture() {
  local name=$1 dir=$2 type=$3
  shift 3
  ip netns exec "$ns" strace -f -e trace=sendmsg,sendto,recvmsg -e write=all -e read=all \
    -o "$tmp/$name.strace" nft "$@" >"$tmp/$name.out" 2>&1
  local rc=$?
  local cmd="nft $*"
  [ "$1" = "-f" ] && cmd="nft -f: $(tr '\n' ';' <"$2")"
  python3 "$here/strace_to_hex.py" "$tmp/$name.strace" "$out/$name.hex" "$dir" "$type" "$cmd" "$rc"
}

# Batches (what applyElements sends; the flow-table keys are the benchmark's).
capture add_b2s4 send $NEWSETELEM add element $T b2s4 '{ 203.0.113.10 . 0x40000000 : 1000, 203.0.113.10 . 0x4000003f : 1001 }'
capture add_b2s6 send $NEWSETELEM add element $T b2s6 '{ 2001:db8::10 . 0x40000001 : 1002 }'
capture add_vip4 send $NEWSETELEM add element $T vip4 '{ 203.0.113.10, 198.51.100.1 }'
capture add_vip6 send $NEWSETELEM add element $T vip6 '{ 2001:db8::10 }'
capture del_b2s4 send $DELSETELEM delete element $T b2s4 '{ 203.0.113.10 . 0x4000003f }'
capture del_vip4 send $DELSETELEM delete element $T vip4 '{ 198.51.100.1 }'
# One transaction in the daemon's order (nft_render.cpp): VIP deletions (VIP set, then refused
# set), bucket deletions, bucket additions, VIP additions (refused set, then VIP set).
ip netns exec "$ns" nft add element $T refused6 '{ 2001:db8::10 }'
cat >"$tmp/mixed.nft" <<NFT
delete element $T vip6 { 2001:db8::10 }
delete element $T refused6 { 2001:db8::10 }
delete element $T b2s4 { 203.0.113.10 . 0x40000000 }
delete element $T b2s6 { 2001:db8::10 . 0x40000001 }
add element $T b2s4 { 203.0.113.10 . 0x40000000 : 1003, 192.0.2.7 . 0x40000002 : 1004 }
add element $T b2s6 { 2001:db8::20 . 0x40000000 : 1005 }
add element $T refused4 { 192.0.2.7 }
add element $T refused6 { 2001:db8::20 }
add element $T vip4 { 192.0.2.7 }
add element $T vip6 { 2001:db8::20 }
NFT
capture batch_mixed send $NEWSETELEM -f "$tmp/mixed.nft"
# Flow-table elements: flow4 key ip saddr . th sport . ip daddr . th dport, flow6 key two hashes.
ip netns exec "$ns" nft add element $T flow4 '{ 198.51.100.7 . 40000 . 203.0.113.10 . 80 : 1000 }'
capture del_flow4 send $DELSETELEM delete element $T flow4 '{ 198.51.100.7 . 40000 . 203.0.113.10 . 80 }'
ip netns exec "$ns" nft add element $T flow6 '{ 0x11223344 . 0x55667788 : 1001 }'
capture del_flow6 send $DELSETELEM delete element $T flow6 '{ 0x11223344 . 0x55667788 }'

# Requests and the kernel's answers (observe).
GETGEN=$((0xa10))
capture getgen send $GETGEN list table $T
capture getgen_reply recv $GETGEN list table $T
capture list_table send $GETTABLE list table $T
capture list_table_reply recv $GETTABLE list table $T
capture dump_b2s4 send $GETSETELEM list map $T b2s4
capture dump_b2s4_reply recv $GETSETELEM list map $T b2s4
capture dump_b2s6_reply recv $GETSETELEM list map $T b2s6
capture dump_vip4_reply recv $GETSETELEM list set $T vip4
capture dump_vip6_reply recv $GETSETELEM list set $T vip6
capture get_b2s4 send $GETSETELEM get element $T b2s4 '{ 192.0.2.7 . 0x40000002 }'
capture get_b2s4_reply recv $GETSETELEM get element $T b2s4 '{ 192.0.2.7 . 0x40000002 }'
capture get_b2s4_missing_reply recv $GETSETELEM get element $T b2s4 '{ 192.0.2.99 . 0x40000002 }'
# Counters and source ranges: per-endpoint counter elements (comment: the endpoint), source
# interval elements (key VIP . first, key end VIP . last), filtered VIPs; their dumps with the
# element counters; the named counters (GETOBJ dump).
capture add_ep4 send $NEWSETELEM add element $T ep4 '{ 203.0.113.10 . 0x3e8 comment "10.1.0.5", 203.0.113.10 . 0x3e9 comment "10.1.0.6" }'
capture add_ep6 send $NEWSETELEM add element $T ep6 '{ 2001:db8::10 . 0x3e8 comment "2001:db8:1::5" }'
capture del_ep4 send $DELSETELEM delete element $T ep4 '{ 203.0.113.10 . 0x3e9 }'
capture add_src4 send $NEWSETELEM add element $T src4 '{ 203.0.113.10 . 192.0.2.0-192.0.2.255, 203.0.113.10 . 198.51.100.7-198.51.100.7 }'
capture add_src6 send $NEWSETELEM add element $T src6 '{ 2001:db8::10 . 2001:db8:c::-2001:db8:c:ffff:ffff:ffff:ffff:ffff }'
capture del_src4 send $DELSETELEM delete element $T src4 '{ 203.0.113.10 . 198.51.100.7-198.51.100.7 }'
capture add_ranged4 send $NEWSETELEM add element $T ranged4 '{ 203.0.113.10 }'
capture add_refused4 send $NEWSETELEM add element $T refused4 '{ 203.0.113.10 }'
capture dump_ep4_reply recv $GETSETELEM list set $T ep4
capture dump_ep6_reply recv $GETSETELEM list set $T ep6
capture dump_src4_reply recv $GETSETELEM list set $T src4
capture dump_src6_reply recv $GETSETELEM list set $T src6
capture dump_refused4_reply recv $GETSETELEM list set $T refused4
capture dump_counters send $GETOBJ list counters table $T
capture dump_counters_reply recv $GETOBJ list counters table $T
capture del_missing_reply recv $DELSETELEM delete element $T vip4 '{ 192.0.2.99 }'

# Announcements (NFNLGRP_NFTABLES, what `nft monitor` receives): the commits made while it
# listens, in order, each ending with NEWGEN (linux/nft_codec.h CommitFollower).
ip netns exec "$ns" strace -f -e trace=recvmsg -e read=all -o "$tmp/monitor.strace" \
  timeout 3 nft monitor >"$tmp/monitor.out" 2>&1 &
mon=$!
sleep 1
ip netns exec "$ns" nft add table inet kst_golden_other
ip netns exec "$ns" nft add element $T b2s4 '{ 198.51.100.20 . 0x40000000 : 1000, 198.51.100.20 . 0x4000003f : 1001 }'
ip netns exec "$ns" nft delete element $T b2s4 '{ 198.51.100.20 . 0x4000003f }'
ip netns exec "$ns" nft add element $T live6 '{ 2001:db8::10 . 0x3e8 }'
ip netns exec "$ns" nft add element $T vip4 '{ 198.51.100.20 }'
ip netns exec "$ns" nft add chain $T kst_golden_chain
wait "$mon"
python3 "$here/strace_to_hex.py" "$tmp/monitor.strace" "$out/monitor.hex" notify 0 \
  "nft monitor: add table inet kst_golden_other; add element b2s4 {198.51.100.20 . 0x40000000 : 1000, 198.51.100.20 . 0x4000003f : 1001}; delete element b2s4 {198.51.100.20 . 0x4000003f}; add element live6 {2001:db8::10 . 0x3e8}; add element vip4 {198.51.100.20}; add chain kst_golden_chain" 0
nft --version
uname -r
