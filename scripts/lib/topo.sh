#!/usr/bin/env bash
# Test/demo topology in network namespaces, all named PREFIX-*:
#
#   PREFIX-cl (client 198.18.0.10, 2001:db8:f::10) ─┐
#   PREFIX-rt (router 198.18.0.1, 2001:db8:f::1)  ──┤ bridge in PREFIX-fab (198.18.0.0/24)
#   PREFIX-rt2 (second router .2, ::2; optional)  ──┤
#   PREFIX-rt3 (third router .3, ::3; optional)   ──┤
#   PREFIX-n1 (node1 198.18.0.11) ─ pods 198.19.1.0/24, 2001:db8:1::/64
#   PREFIX-n2 (node2 198.18.0.12) ─ pods 198.19.2.0/24, 2001:db8:2::/64
#
# The client sends VIP traffic (203.0.113.0/24, 2001:db8:ffff::/64) to a router; pods answer
# through their node straight to the client (DSR: replies never pass a router).
# Addresses are from the benchmarking (198.18.0.0/15) and documentation ranges.
#
#   topo.sh up PREFIX PODS_PER_NODE [ROUTERS]   pods: PREFIX-p1a, PREFIX-p1b, … PREFIX-p2a …
#   topo.sh down PREFIX                         removes every PREFIX-* namespace
#
# Each node's pods are also listed in /run/kst-netns/PREFIX/nI/ (symlinks): the agent of node I
# scans only that directory (--netns-dir), as a real node's agent sees only its own pods.
set -euo pipefail

ns() { ip netns exec "$@"; }

down() {
  local p=$1
  for n in $(ip netns list | awk '{print $1}' | grep -E "^${p}-" || true); do
    # Kill anything still running inside (servers, daemons).
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "/run/kst-netns/$p"
}

veth_to_bridge() {  # ns ifname v4 v6
  local p=$1 n=$2 ifn=$3 a4=$4 a6=$5
  ip link add "$ifn" netns "$p-$n" type veth peer name "b-$n" netns "$p-fab"
  ns "$p-fab" ip link set "b-$n" master br0 up
  ns "$p-$n" ip link set "$ifn" up
  ns "$p-$n" ip addr add "$a4/24" dev "$ifn"
  ns "$p-$n" ip addr add "$a6/64" dev "$ifn" nodad
}

up() {
  local p=$1 pods=${2:-2} routers=${3:-1}
  down "$p"
  local all=(fab cl rt n1 n2)
  [ "$routers" -ge 2 ] && all+=(rt2)
  [ "$routers" -ge 3 ] && all+=(rt3)
  for n in "${all[@]}"; do
    ip netns add "$p-$n"
    ns "$p-$n" ip link set lo up
    # No DAD: addresses are final at once, so no late address events disturb tests that watch
    # for kernel changes.
    ns "$p-$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
      net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  ns "$p-fab" ip link add br0 type bridge
  ns "$p-fab" ip link set br0 up
  veth_to_bridge "$p" cl eth0 198.18.0.10 2001:db8:f::10
  veth_to_bridge "$p" rt eth0 198.18.0.1 2001:db8:f::1
  [ "$routers" -ge 2 ] && veth_to_bridge "$p" rt2 eth0 198.18.0.2 2001:db8:f::2
  [ "$routers" -ge 3 ] && veth_to_bridge "$p" rt3 eth0 198.18.0.3 2001:db8:f::3
  veth_to_bridge "$p" n1 eth0 198.18.0.11 2001:db8:f::11
  veth_to_bridge "$p" n2 eth0 198.18.0.12 2001:db8:f::12
  # Client: VIPs via the (first) router.
  ns "$p-cl" ip route add 203.0.113.0/24 via 198.18.0.1
  ns "$p-cl" ip -6 route add 2001:db8:ffff::/64 via 2001:db8:f::1
  for r in rt rt2 rt3; do
    [ "$r" = rt2 ] && [ "$routers" -lt 2 ] && continue
    [ "$r" = rt3 ] && [ "$routers" -lt 3 ] && continue
    ns "$p-$r" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    for i in 1 2; do
      ns "$p-$r" ip route add "198.19.$i.0/24" via "198.18.0.1$i"
      ns "$p-$r" ip -6 route add "2001:db8:$i::/64" via "2001:db8:f::1$i"
    done
  done
  local letters=(a b c d e f g h)
  for i in 1 2; do
    ns "$p-n$i" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    for ((k = 0; k < pods; k++)); do
      local pod="$p-p$i${letters[$k]}" host=$((k + 2))
      ip netns add "$pod"
      ns "$pod" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
      mkdir -p "/run/kst-netns/$p/n$i"
      ln -sf "/run/netns/$pod" "/run/kst-netns/$p/n$i/$pod"
      ns "$pod" ip link set lo up
      ip link add eth0 netns "$pod" type veth peer name "v${letters[$k]}" netns "$p-n$i"
      ns "$p-n$i" ip link set "v${letters[$k]}" up
      ns "$pod" ip link set eth0 up
      ns "$pod" ip addr add "198.19.$i.$host/32" dev eth0
      ns "$pod" ip addr add "2001:db8:$i::$host/128" dev eth0 nodad
      ns "$pod" ip route add 198.19.$i.1/32 dev eth0
      ns "$pod" ip route add default via 198.19.$i.1 dev eth0
      # IPv6 neighbour discovery answers only for addresses on the receiving link: the pod's
      # gateway is the node veth's link-local fe80::1.
      ns "$p-n$i" ip addr add fe80::1/64 dev "v${letters[$k]}" nodad
      ns "$pod" ip -6 route add default via fe80::1 dev eth0
      ns "$p-n$i" ip route add "198.19.$i.$host/32" dev "v${letters[$k]}"
      ns "$p-n$i" ip -6 route add "2001:db8:$i::$host/128" dev "v${letters[$k]}"
    done
    ns "$p-n$i" ip addr add "198.19.$i.1/32" dev lo
    ns "$p-n$i" ip addr add "2001:db8:$i::1/128" dev lo nodad
  done
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) echo "usage: $0 up PREFIX [PODS_PER_NODE] [ROUTERS] | down PREFIX" >&2; exit 2 ;;
esac
