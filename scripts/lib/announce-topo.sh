#!/usr/bin/env bash
# The announce topology (docs/announce.md): a DC router running FRR (bgpd + bfdd + zebra) in
# front of two tunnel nodes, each running bird2 that exports the daemon's announce table over
# BGP with BFD. Built on topo.sh (two routers = the tunnel nodes rt and rt2):
#
#   PREFIX-dcl (client 198.51.100.10, 2001:db8:c::10)
#        │ eth0 ↔ eth1 of PREFIX-dc
#   PREFIX-dc  (DC router 198.51.100.1 / 198.18.0.3, 2001:db8:c::1 / 2001:db8:f::3; FRR AS 64512)
#        │ eth0 on the topo.sh bridge: BGP + BFD to rt (198.18.0.1) and rt2 (198.18.0.2), ECMP
#   PREFIX-rt, PREFIX-rt2 (tunnel nodes, bird2 AS 64513, announce table ANNOUNCE_TABLE)
#   PREFIX-n1, PREFIX-n2 → pods; pods answer through their node and the DC router (DSR: never
#   through a tunnel node).
#
#   announce-topo.sh up PREFIX [BFD_MS]     topology + FRR + bird2 on both nodes (state, config,
#                                           sockets and logs in /tmp/PREFIX/rd)
#   announce-topo.sh bird PREFIX NODE       (re)starts bird2 in PREFIX-NODE
#   announce-topo.sh kill PREFIX NODE       kills bird2 of PREFIX-NODE (SIGKILL)
#   announce-topo.sh down PREFIX            stops every routing daemon, removes the topology
#   announce-topo.sh vtysh PREFIX ARGS...   vtysh of the DC router
#   announce-topo.sh birdc PREFIX NODE ARGS...
# ANNOUNCE_TABLE (default 4242) is the kernel table bird2 learns from.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TABLE=${ANNOUNCE_TABLE:-4242}
FRR=/usr/lib/frr

rd() { echo "/tmp/$1/rd"; }
ns() { ip netns exec "$@"; }

start_bird() {  # prefix node
  local p=$1 n=$2 d
  d=$(rd "$p")/$n
  mkdir -p "$d"
  local bfd=${BFD_MS:-$(cat "$(rd "$p")/bfd_ms")}
  local self4
  case $n in rt) self4=198.18.0.1 ;; rt2) self4=198.18.0.2 ;; esac
  ROUTER_ID=$self4 ANNOUNCE_TABLE=$TABLE LOCAL_AS=64513 PEER_AS=64512 PEER4=198.18.0.3 \
    PEER6=2001:db8:f::3 BFD_MS=$bfd BFD_MULT=3 IFACE=eth0 \
    "$HERE/../../deploy/bird/render.sh" "$HERE/../../deploy/bird/bird.conf.in" >"$d/bird.conf"
  if [ -f "$d/bird.pid" ]; then kill -9 "$(cat "$d/bird.pid")" 2>/dev/null || true; fi
  ns "$p-$n" bird -c "$d/bird.conf" -s "$d/bird.ctl" -P "$d/bird.pid" -f >>"$d/bird.log" 2>&1 &
  for _ in $(seq 100); do [ -S "$d/bird.ctl" ] && [ -f "$d/bird.pid" ] && return 0; sleep 0.05; done
  echo "bird in $p-$n did not start:" >&2
  cat "$d/bird.log" >&2
  return 1
}

kill_bird() {
  local d
  d=$(rd "$1")/$2
  if [ -f "$d/bird.pid" ]; then kill -9 "$(cat "$d/bird.pid")" 2>/dev/null || true; rm -f "$d/bird.pid" "$d/bird.ctl"; fi
}

start_frr() {  # prefix
  local p=$1 d
  d=$(rd "$p")/dc
  mkdir -p "$d"
  local bfd
  bfd=$(cat "$(rd "$p")/bfd_ms")
  cat >"$d/bfdd.conf" <<EOF
bfd
 profile fast
  receive-interval $bfd
  transmit-interval $bfd
  detect-multiplier 3
 exit
exit
EOF
  cat >"$d/bgpd.conf" <<EOF
router bgp 64512
 bgp router-id 198.18.0.3
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor tunnel peer-group
 neighbor tunnel remote-as 64513
 neighbor tunnel bfd profile fast
 neighbor tunnel timers 3 9
 neighbor tunnel timers connect 1
 neighbor 198.18.0.1 peer-group tunnel
 neighbor 198.18.0.2 peer-group tunnel
 neighbor 2001:db8:f::1 peer-group tunnel
 neighbor 2001:db8:f::2 peer-group tunnel
 address-family ipv4 unicast
  neighbor 198.18.0.1 activate
  neighbor 198.18.0.2 activate
  maximum-paths 8
 exit-address-family
 address-family ipv6 unicast
  neighbor 2001:db8:f::1 activate
  neighbor 2001:db8:f::2 activate
  maximum-paths 8
 exit-address-family
exit
EOF
  : >"$d/zebra.conf"
  chown -R frr:frr "$d"  # the daemons drop to user frr (its group frrvty may use the vty)
  local common=(-u frr -g frr --vty_socket "$d" -z "$d/zserv.api" -A 127.0.0.1 -P 0)
  ns "$p-dc" "$FRR/zebra" "${common[@]}" -f "$d/zebra.conf" -i "$d/zebra.pid" \
    --log "file:$d/zebra.log" >>"$d/out.log" 2>&1 &
  for _ in $(seq 100); do [ -S "$d/zserv.api" ] && break; sleep 0.05; done
  ns "$p-dc" "$FRR/bfdd" "${common[@]}" -f "$d/bfdd.conf" -i "$d/bfdd.pid" \
    --bfdctl "$d/bfdd.sock" --log "file:$d/bfdd.log" >>"$d/out.log" 2>&1 &
  ns "$p-dc" "$FRR/bgpd" "${common[@]}" -f "$d/bgpd.conf" -i "$d/bgpd.pid" \
    --log "file:$d/bgpd.log" >>"$d/out.log" 2>&1 &
  for _ in $(seq 200); do
    [ -S "$d/bgpd.vty" ] && [ -S "$d/bfdd.vty" ] && [ -S "$d/zebra.vty" ] && return 0
    sleep 0.05
  done
  echo "FRR in $p-dc did not start:" >&2
  cat "$d/out.log" >&2
  return 1
}

up() {
  local p=$1 bfd=${2:-100}
  down "$p"
  "$HERE/topo.sh" up "$p" 2 2
  mkdir -p "$(rd "$p")"
  echo "$bfd" >"$(rd "$p")/bfd_ms"
  for n in dc dcl; do
    ip netns add "$p-$n"
    ns "$p-$n" ip link set lo up
    ns "$p-$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
      net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  # DC router on the fabric bridge; L4 multipath hashing (the default hashes addresses only:
  # one client would use one path).
  ip link add eth0 netns "$p-dc" type veth peer name b-dc netns "$p-fab"
  ns "$p-fab" ip link set b-dc master br0 up
  ns "$p-dc" ip link set eth0 up
  ns "$p-dc" ip addr add 198.18.0.3/24 dev eth0
  ns "$p-dc" ip addr add 2001:db8:f::3/64 dev eth0 nodad
  ip link add eth1 netns "$p-dc" type veth peer name eth0 netns "$p-dcl"
  ns "$p-dc" ip link set eth1 up
  ns "$p-dc" ip addr add 198.51.100.1/24 dev eth1
  ns "$p-dc" ip addr add 2001:db8:c::1/64 dev eth1 nodad
  ns "$p-dc" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
  ns "$p-dcl" ip link set eth0 up
  ns "$p-dcl" ip addr add 198.51.100.10/24 dev eth0
  ns "$p-dcl" ip addr add 2001:db8:c::10/64 dev eth0 nodad
  ns "$p-dcl" ip route add default via 198.51.100.1
  ns "$p-dcl" ip -6 route add default via 2001:db8:c::1
  # Replies from the pods' nodes go to the client through the DC router, not a tunnel node.
  for n in n1 n2; do
    ns "$p-$n" ip route add 198.51.100.0/24 via 198.18.0.3
    ns "$p-$n" ip -6 route add 2001:db8:c::/64 via 2001:db8:f::3
  done
  start_frr "$p"
  start_bird "$p" rt
  start_bird "$p" rt2
}

down() {
  local p=$1 d
  d=$(rd "$p")
  if [ -d "$d" ]; then
    for f in "$d"/*/*.pid; do
      [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
  fi
  "$HERE/topo.sh" down "$p"
  rm -rf "$d"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  bird) shift; start_bird "$@" ;;
  kill) shift; kill_bird "$@" ;;
  vtysh) p=$2; shift 2; vtysh --vty_socket "$(rd "$p")/dc" "$@" ;;
  birdc) p=$2; n=$3; shift 3; birdc -s "$(rd "$p")/$n/bird.ctl" "$@" ;;
  *) echo "usage: $0 up PREFIX [BFD_MS] | down PREFIX | bird|kill PREFIX NODE | vtysh PREFIX ... | birdc PREFIX NODE ..." >&2; exit 2 ;;
esac
