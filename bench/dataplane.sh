#!/usr/bin/env bash
# Dataplane benchmark: client → router → pod, three ways in one topology, interleaved
# repetitions, medians:
#   plain   plain routing to the pod's own address (no tunnel)
#   hand    the same vxlan-gpe tunnel configured by hand with the fewest objects: one route
#           with inline `encap ip` in the main table (no nft, no rule, no nexthop object), the
#           VIP on the pod's decap device, and the TCP MSS clamp the daemon's agent installs,
#           as one nft rule in the pod (SYNs from the VIP: MSS ≤ 1500 − 36 − 40 = 1424).
#           `advmss` on the pod's route back to the client would be one object too, but that
#           route also carries the pod's ordinary traffic (here: "plain"), so the rule it is.
#   hand0   the hand-made tunnel without the clamp (its own VIP): the pod announces MSS 1460,
#           every full-size segment + 36 bytes of vxlan-gpe exceeds the 1500-byte MTU and
#           travels as two IP fragments that the pod reassembles (TCP only)
#   daemon  what kube-service-tunnel programs (router + agent roles, B buckets, one endpoint,
#           default --underlay-mtu 1500: the agent clamps the MSS to 1424):
#           nft classifier (flow map, jhash, b2s map) → fwmark → ip rule → slot table →
#           nexthop with encap ip → the same decap device
# Small-packet UDP packets/s (counted at the pod by an nft counter in its input hook; not for
# hand0, it would equal hand) and single-connection TCP throughput (kb-load).
#
#   bench/dataplane.sh BUILD_DIR [REPS] [SECONDS] [BUCKETS]
# Prints "RESULT bench=dataplane ..." lines. Namespaces: kbd<pid>-*; removed on exit.
set -euo pipefail
BUILD=${1:?build dir}
REPS=${2:-3}
SECS=${3:-3}
BUCKETS=${4:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOPO=$ROOT/scripts/lib/topo.sh
BIN=$BUILD/src/kube-service-tunnel
LOAD=$BUILD/bench/kb-load
P=kbd$$
DIR=/tmp/$P
POD=198.19.1.2
VIP_D=203.0.113.10   # daemon-programmed
VIP_H=203.0.113.20   # hand-made, MSS clamped
VIP_H0=203.0.113.21  # hand-made, not clamped
MSS=1424             # 1500 − 36 (outer IPv4 20 + UDP 8 + GPE 8) − 40 (inner IPv4 + TCP)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  "$TOPO" down "$P" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

ns() { ip netns exec "$P-$1" "${@:2}"; }

mkdir -p "$DIR/manifests"
"$TOPO" up "$P" 1 >/dev/null
# The client also reaches the pod network through the router (for "plain").
ns cl ip route add 198.19.0.0/16 via 198.18.0.1

cat > "$DIR/manifests/svc.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: bench
  namespace: default
  creationTimestamp: "2026-01-01T00:00:00Z"
  annotations:
    cmd.nu/tunnel: "$VIP_D"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bench-a
  namespace: default
  labels:
    kubernetes.io/service-name: bench
addressType: IPv4
endpoints:
- addresses: ["$POD"]
  nodeName: node1
  conditions: {ready: true, serving: true, terminating: false}
EOF
ns rt "$BIN" run --role router --manifests "$DIR/manifests" --buckets "$BUCKETS" \
  --log-level warn >"$DIR/router.log" 2>&1 &
PIDS+=($!)
ns n1 "$BIN" run --role agent --node-name node1 --scan-proc=false \
  --netns-dir "/run/kst-netns/$P/n1" --manifests "$DIR/manifests" --buckets "$BUCKETS" \
  --log-level warn >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
programmed() {  # (no `cmd | grep -q` under pipefail: grep's early exit fails the writer)
  local a m
  a=$(ns p1a ip -o addr show 2>/dev/null || true)
  m=$(ns rt nft list map inet kube_service_tunnel b2s4 2>/dev/null || true)
  [[ $a == *"$VIP_D"* && $m == *"$VIP_D"* ]]
}
for _ in $(seq 300); do programmed && break; sleep 0.1; done
programmed || { echo "daemon did not program $VIP_D" >&2; cat "$DIR"/*.log >&2; exit 1; }

# Hand-made: the fewest objects on the same devices.
for vip in "$VIP_H" "$VIP_H0"; do
  ns rt ip route add "$vip/32" encap ip id 0 dst "$POD" ttl 64 dev kst-vxg
  ns p1a ip addr add "$vip/32" dev kst-vxg
done
ns p1a nft -f - <<EOF
table inet kbmss {
  chain out {
    type filter hook postrouting priority mangle; policy accept;
    ip saddr $VIP_H tcp flags & (syn | rst) == syn tcp option maxseg size > $MSS tcp option maxseg size set $MSS
  }
}
EOF
# Count UDP at the pod (inner packets only: the outer datagrams go to port 4790).
ns p1a nft -f - <<'EOF'
table inet kbcount {
  counter udp9 {}
  chain in { type filter hook input priority 0; policy accept; udp dport 9 counter name udp9 drop; }
}
EOF
ns p1a "$LOAD" tcp-sink 5201 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.3

count() { ns p1a nft list counter inet kbcount udp9 | awk '/packets/ {print $2}'; }
declare -A PPS GBPS
RATIO_PPS="" RATIO_TCP="" hand_pps=1 hand_gbps=1
for rep in $(seq "$REPS"); do
  for v in plain hand0 hand daemon; do
    case $v in plain) dst=$POD ;; hand0) dst=$VIP_H0 ;; hand) dst=$VIP_H ;; daemon) dst=$VIP_D ;; esac
    pps=-
    if [ $v != hand0 ]; then
      c0=$(count)
      t0=$(date +%s.%N)
      ns cl "$LOAD" udp "$dst" 9 "$SECS" 16 >/dev/null
      t1=$(date +%s.%N)
      c1=$(count)
      pps=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b - a) / (e - s)}')
      PPS[$v]="${PPS[$v]:-} $pps"
    fi
    gbps=$(ns cl "$LOAD" tcp "$dst" 5201 "$SECS" | sed -n 's/.*gbps=//p')
    [ $v = hand ] && hand_pps=$pps hand_gbps=$gbps
    if [ $v = daemon ]; then  # paired with the hand-made run just before it
      RATIO_PPS="${RATIO_PPS:-} $(awk -v a="$pps" -v b="$hand_pps" 'BEGIN {printf "%.4f", a / b}')"
      RATIO_TCP="${RATIO_TCP:-} $(awk -v a="$gbps" -v b="$hand_gbps" 'BEGIN {printf "%.4f", a / b}')"
    fi
    GBPS[$v]="${GBPS[$v]:-} $gbps"
    echo "  dataplane rep $rep $v: pps=$pps gbps=$gbps" >&2
  done
done
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
pp=$(echo "${PPS[plain]}" | med); ph=$(echo "${PPS[hand]}" | med); pd=$(echo "${PPS[daemon]}" | med)
gp=$(echo "${GBPS[plain]}" | med); gh=$(echo "${GBPS[hand]}" | med); gd=$(echo "${GBPS[daemon]}" | med)
gh0=$(echo "${GBPS[hand0]}" | med)
echo "RESULT bench=dataplane B=$BUCKETS reps=$REPS seconds=$SECS udp_pps_plain=$pp udp_pps_hand=$ph udp_pps_daemon=$pd" \
  "daemon_over_hand_pps=$(awk -v a="$pd" -v b="$ph" 'BEGIN {printf "%.2f", a / b}')" \
  "daemon_over_plain_pps=$(awk -v a="$pd" -v b="$pp" 'BEGIN {printf "%.2f", a / b}')" \
  "hand_over_plain_pps=$(awk -v a="$ph" -v b="$pp" 'BEGIN {printf "%.2f", a / b}')" \
  "tcp_gbps_plain=$gp tcp_gbps_hand_unclamped=$gh0 tcp_gbps_hand=$gh tcp_gbps_daemon=$gd" \
  "hand_clamped_over_unclamped_tcp=$(awk -v a="$gh" -v b="$gh0" 'BEGIN {printf "%.2f", a / b}')" \
  "daemon_over_hand_tcp=$(awk -v a="$gd" -v b="$gh" 'BEGIN {printf "%.2f", a / b}')" \
  "daemon_over_plain_tcp=$(awk -v a="$gd" -v b="$gp" 'BEGIN {printf "%.2f", a / b}')" \
  "paired_daemon_over_hand_pps=$(echo "$RATIO_PPS" | med)" \
  "paired_daemon_over_hand_tcp=$(echo "$RATIO_TCP" | med)" \
  "load=$(cut -d' ' -f1 /proc/loadavg)"
