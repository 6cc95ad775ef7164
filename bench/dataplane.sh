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
#   hand0   the hand-made tunnel without the clamp (its own VIP; TCP only): the pod announces
#           MSS 1460, so full-size segments do not fit the router's tunnel device, whose MTU
#           the daemon sets to 1500 − 36 = 1464 (--underlay-mtu): the router answers
#           "fragmentation needed" and the client's path-MTU discovery lowers its segments.
#           (With the kernel's default device MTU of 1500 every segment + 36 bytes left as two
#           IP fragments the pod reassembled: 0.7–1.3 Gbit/s.) Where ICMP is filtered, only
#           the clamp helps.
#   daemon  what kube-service-tunnel programs (router + agent roles, B buckets, one endpoint,
#           default --underlay-mtu 1500: the agent clamps the MSS to 1424):
#           nft classifier (flow map, jhash, b2s map) → fwmark → ip rule → slot table →
#           nexthop with encap ip → the same decap device
# Optional variants (each its own VIP on the same pod, measured in the same interleaved repetitions):
#   bpf     DATAPLANE_BPF=1: the product's BPF path end to end: a second router (PREFIX-rt2,
#           same topology place as rt) runs the daemon with --datapath bpf (tc-BPF classifier
#           on its ingress interface; the default --bpf-encap headers: the program writes the
#           outer headers, bpf_redirect_neigh), to the pod of node 2 (PREFIX-p2a, the same
#           topology place as p1a on the other node) whose agent runs with --pod-decap bpf: the
#           agent's tc program on the pod's eth0 strips the outer headers (the pod's decap
#           device stays the fallback; checked: it receives < 1 % of the run's packets). Its
#           ratios to plain/hand/daemon compare with runs to p1a (same shape of path, other node).
#   bpf-hdr (with DATAPLANE_BPF=1) the same bpf router (rt2) to p1a: the header path, with the
#           pod's decap device (the agent of node 1 runs --pod-decap device).
#   bpf-dev (with DATAPLANE_BPF=1) a third router (PREFIX-rt3) with --bpf-encap device (tunnel
#           key + redirect to the collect-md device) to p1a, its own VIP; its line and
#           bpf-hdr's carry the paired ratio bpf-hdr / bpf-dev (header path over device path).
#   ref-*   DATAPLANE_REF=1: the hand-made tc-BPF references of bench/bpf/tunnel_ref.bpf.c
#           (compiled here with clang; no buckets, no flow table) on rt, the ceiling of a BPF
#           router path and of a BPF decap in the pod:
#     ref-md        tc ingress: set_tunnel_key + redirect to the collect-md vxlan-gpe device
#     ref-hdr       tc ingress: outer headers built in the program + bpf_redirect_neigh
#     ref-hdr-decap ref-hdr, and in the pod a tc ingress program strips the outer headers
#                   (the pod's stack handles the packet once, as the inner IPv4 packet)
#     hand-decap    the hand-made lwtunnel route, with the same tc decap in the pod
#     bpf-decap     (with DATAPLANE_BPF=1 too) the daemon's bpf router, with that tc decap
#           (The clsact hooks on rt's eth0 and the pod's eth0 then also see the other
#           variants' packets: one parse and compare each, "plain" included.)
# Small-packet UDP packets/s (counted at the pod by an nft counter in its input hook over
# SECONDS after a 0.5 s warm-up, sender pinned to one CPU; not for hand0, it would equal hand)
# and single-connection TCP throughput (kb-load). Each repetition measures the variants back to
# back in an order that alternates between repetitions; the daemon/hand ratios are given both
# as a ratio of medians and as the median (and range) of the per-repetition paired ratios.
#
#   bench/dataplane.sh BUILD_DIR [REPS] [SECONDS] [BUCKETS]
# Prints a "RESULT bench=dataplane ..." line, and one "RESULT bench=dataplane-variant
# variant=V ..." line per optional variant (its medians, ratios of medians and paired ratios to
# plain, hand and, for bpf, daemon: median and range). DATAPLANE_REF_TCP=0 skips the TCP runs
# of the ref-* variants. Namespaces: kbd<pid>-*; removed on exit.
# DATAPLANE_CPU=N|none (UDP sender's CPU), DATAPLANE_HOLD=SECONDS (keep the topology up first),
# DATAPLANE_TCP=0 (the small-UDP part only: no TCP runs, tcp_* fields "-").
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
PIN_DIR=/sys/fs/bpf/$P   # the bpf router's pins (under `ip netns exec`: in its own /sys, gone with it)
POD=198.19.1.2
VIP_D=203.0.113.10   # daemon-programmed
VIP_H=203.0.113.20   # hand-made, MSS clamped
VIP_H0=203.0.113.21  # hand-made, not clamped
VIP_B=203.0.113.40   # daemon-programmed, --datapath bpf on rt2 (DATAPLANE_BPF=1)
VIP_BD=203.0.113.41  # the same, decapsulated in the pod by the reference program (+ DATAPLANE_REF=1)
VIP_BP=203.0.113.42  # --datapath bpf on rt2 to p2a, whose agent runs --pod-decap bpf (DATAPLANE_BPF=1)
VIP_BV=203.0.113.43  # daemon-programmed, --datapath bpf --bpf-encap device on rt3 (DATAPLANE_BPF=1)
POD2=198.19.2.2
VIP_MD=203.0.113.30 VIP_HDR=203.0.113.31 VIP_HDR_DECAP=203.0.113.32 VIP_HAND_DECAP=203.0.113.33
BPF=${DATAPLANE_BPF:-0}
REF=${DATAPLANE_REF:-0}
REF_TCP=${DATAPLANE_REF_TCP:-1}
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
ROUTERS=1
[ "$BPF" = 1 ] && ROUTERS=3
"$TOPO" up "$P" 1 "$ROUTERS" >/dev/null
# The client also reaches the pod network through the router (for "plain").
ns cl ip route add 198.19.0.0/16 via 198.18.0.1
[ "$BPF" = 1 ] && ns cl ip route add "$VIP_B/32" via 198.18.0.2
[ "$BPF" = 1 ] && ns cl ip route add "$VIP_BP/32" via 198.18.0.2
[ "$BPF" = 1 ] && ns cl ip route add "$VIP_BV/32" via 198.18.0.3
[ "$BPF$REF" = 11 ] && ns cl ip route add "$VIP_BD/32" via 198.18.0.2

service() {  # NAME VIP [POD NODE]: a Service with the VIP and one pod (default p1a) as its endpoint
  cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: $1
  namespace: default
  creationTimestamp: "2026-01-01T00:00:00Z"
  annotations:
    cmd.nu/tunnel: "$2"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $1-a
  namespace: default
  labels:
    kubernetes.io/service-name: $1
addressType: IPv4
endpoints:
- addresses: ["${3:-$POD}"]
  nodeName: ${4:-node1}
  conditions: {ready: true, serving: true, terminating: false}
EOF
}
{
  service bench "$VIP_D"
  [ "$BPF" = 1 ] && service bench-bpf "$VIP_B"
  [ "$BPF" = 1 ] && service bench-bpf-pod "$VIP_BP" "$POD2" node2
  [ "$BPF" = 1 ] && service bench-bpf-dev "$VIP_BV"
  [ "$BPF$REF" = 11 ] && service bench-bpf-decap "$VIP_BD"
} > "$DIR/manifests/svc.yaml"
# Both routers read every Service (each programs both VIPs; the client sends each VIP to one).
ns rt "$BIN" run --role router --manifests "$DIR/manifests" --buckets "$BUCKETS" \
  --vip-pool 203.0.113.0/24 --log-level warn >"$DIR/router.log" 2>&1 &
PIDS+=($!)
if [ "$BPF" = 1 ]; then
  ns rt2 "$BIN" run --role router --datapath bpf --bpf-ingress eth0 --bpf-pin-dir "$PIN_DIR" \
    --manifests "$DIR/manifests" --buckets "$BUCKETS" \
    --vip-pool 203.0.113.0/24 --log-level warn >"$DIR/router-bpf.log" 2>&1 &
  PIDS+=($!)
  ns rt3 "$BIN" run --role router --datapath bpf --bpf-encap device --bpf-ingress eth0 \
    --bpf-pin-dir "$PIN_DIR-dev" --manifests "$DIR/manifests" --buckets "$BUCKETS" \
    --vip-pool 203.0.113.0/24 --log-level warn >"$DIR/router-bpf-dev.log" 2>&1 &
  PIDS+=($!)
fi
ns n1 "$BIN" run --role agent --node-name node1 --scan-proc=false \
  --netns-dir "/run/kst-netns/$P/n1" --manifests "$DIR/manifests" --buckets "$BUCKETS" \
  --vip-pool 203.0.113.0/24 --log-level warn >"$DIR/agent.log" 2>&1 &
PIDS+=($!)
if [ "$BPF" = 1 ]; then
  ns n2 "$BIN" run --role agent --node-name node2 --scan-proc=false --pod-decap bpf \
    --netns-dir "/run/kst-netns/$P/n2" --manifests "$DIR/manifests" --buckets "$BUCKETS" \
    --vip-pool 203.0.113.0/24 --log-level warn >"$DIR/agent-pod-decap.log" 2>&1 &
  PIDS+=($!)
fi
programmed() {  # (no `cmd | grep -q` under pipefail: grep's early exit fails the writer)
  local a m
  a=$(ns p1a ip -o addr show 2>/dev/null || true)
  m=$(ns rt nft list map inet kube_service_tunnel b2s4 2>/dev/null || true)
  [[ $a == *"$VIP_D"* && $m == *"$VIP_D"* ]] || return 1
  [ "$BPF" = 1 ] || return 0
  # The bpf router: its classifier is attached and the pod holds the VIP.
  [[ $a == *"$VIP_B"* && $(ns rt2 tc filter show dev eth0 ingress 2>/dev/null || true) == *kst_router* ]] || return 1
  # The pod of node 2: the VIP and the agent's decapsulation program.
  [[ $(ns p2a ip -o addr show 2>/dev/null || true) == *"$VIP_BP"* &&
     $(ns p2a tc filter show dev eth0 ingress 2>/dev/null || true) == *kst_pod_decap* ]] || return 1
  [[ $a == *"$VIP_BV"* && $(ns rt3 tc filter show dev eth0 ingress 2>/dev/null || true) == *kst_router* ]] || return 1
  [ "$REF" = 1 ] || return 0
  [[ $a == *"$VIP_BD"* ]]
}
for _ in $(seq 300); do programmed && break; sleep 0.1; done
programmed || { echo "the daemons did not program $VIP_D (and $VIP_B with DATAPLANE_BPF=1)" >&2; cat "$DIR"/*.log >&2; exit 1; }

# Hand-made: the fewest objects on the same devices.
HAND_VIPS=("$VIP_H" "$VIP_H0")
[ "$REF" = 1 ] && HAND_VIPS+=("$VIP_HAND_DECAP")
for vip in "${HAND_VIPS[@]}"; do
  ns rt ip route add "$vip/32" encap ip id 0 dst "$POD" ttl 64 dev kst-vxg
  ns p1a ip addr add "$vip/32" dev kst-vxg
done
# The clamp the agent installs, for every VIP whose TCP runs through the pod's clamp-less
# hand-made setup except the unclamped one.
CLAMPED="$VIP_H"
if [ "$REF" = 1 ]; then
  for vip in "$VIP_MD" "$VIP_HDR" "$VIP_HDR_DECAP"; do ns p1a ip addr add "$vip/32" dev kst-vxg; done
  CLAMPED="$VIP_H, $VIP_HAND_DECAP, $VIP_MD, $VIP_HDR, $VIP_HDR_DECAP"
  hexip() { local IFS=.; set -- $1; printf '0x%02x%02x%02x%02x' "$1" "$2" "$3" "$4"; }
  ifindex() { ns "$1" cat "/sys/class/net/$2/ifindex"; }
  clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)" \
    -DREF_POD="$(hexip "$POD")" -DREF_ROUTER="$(hexip 198.18.0.1)" \
    -DREF_VIP_MD="$(hexip "$VIP_MD")" -DREF_VIP_HDR="$(hexip "$VIP_HDR")" \
    -DREF_VIP_HDR_DECAP="$(hexip "$VIP_HDR_DECAP")" -DREF_VIP_HAND_DECAP="$(hexip "$VIP_HAND_DECAP")" \
    -DREF_VIP_BPF_DECAP="$(hexip "$VIP_BD")" \
    -DREF_VXG_IFINDEX="$(ifindex rt kst-vxg)" -DREF_UL_IFINDEX="$(ifindex rt eth0)" \
    -c "$ROOT/bench/bpf/tunnel_ref.bpf.c" -o "$DIR/tunnel_ref.o"
  ns rt tc qdisc add dev eth0 clsact
  ns rt tc filter add dev eth0 ingress bpf direct-action obj "$DIR/tunnel_ref.o" sec tc/encap
  ns p1a tc qdisc add dev eth0 clsact
  ns p1a tc filter add dev eth0 ingress bpf direct-action obj "$DIR/tunnel_ref.o" sec tc/decap
fi
ns p1a nft -f - <<EOF
table inet kbmss {
  chain out {
    type filter hook postrouting priority mangle; policy accept;
    ip saddr { $CLAMPED } tcp flags & (syn | rst) == syn tcp option maxseg size > $MSS tcp option maxseg size set $MSS
  }
}
EOF
# Count UDP at the pod (inner packets only: the outer datagrams go to port 4790).
COUNTED=(p1a)
[ "$BPF" = 1 ] && COUNTED+=(p2a)
for pod in "${COUNTED[@]}"; do
  ns "$pod" nft -f - <<'EOF'
table inet kbcount {
  counter udp9 {}
  chain in { type filter hook input priority 0; policy accept; udp dport 9 counter name udp9 drop; }
}
EOF
done
# The UDP load generator runs on one CPU (DATAPLANE_CPU, default the last; "none": unpinned).
# The veth chain client → router → node → pod is processed in softirq on the sending CPU, so
# the whole measured path shares that CPU and the other one takes the daemons, this shell and
# whatever else runs. Unpinned, the scheduler moving the sender spread paired ratios over
# 0.91–1.11 (10 pairs), pinned over 0.95–1.04. TCP stays unpinned: sender and sink both need a
# CPU, and pinning them apart made its paired ratios no tighter (0.83–1.21 in one 11-rep run).
CPU=${DATAPLANE_CPU:-$(($(nproc) - 1))}
PIN=()
[ "$CPU" != none ] && PIN=(taskset -c "$CPU")
for pod in "${COUNTED[@]}"; do
  ns "$pod" "$LOAD" tcp-sink 5201 >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 0.3

# DATAPLANE_HOLD=SECONDS keeps the topology up that long before measuring (for perf; see
# bench/README.md "Profiling").
if [ -n "${DATAPLANE_HOLD:-}" ]; then
  echo "topology up: namespaces $P-{cl,rt,n1,p1a}; daemon VIP $VIP_D, hand-made VIP $VIP_H" >&2
  sleep "$DATAPLANE_HOLD"
fi
# One variant runs at a time: the sum over the counting pods is that variant's.
count() {
  local pod n=0
  for pod in "${COUNTED[@]}"; do
    n=$((n + $(ns "$pod" nft list counter inet kbcount udp9 | awk '/packets/ {print $2}')))
  done
  echo "$n"
}
WARM=0.5    # seconds of load before counting (sockets, ARP, flow-table entries)
SETTLE=0.5  # pause between runs: deferred work (RCU frees of the last run's dsts) drains
udp_pps() {  # DST → packets/s counted at the pod after the warm-up
  local dst=$1 pid c0 c1 t0 t1
  ns cl "${PIN[@]}" "$LOAD" udp "$dst" 9 "$(awk -v a="$WARM" -v b="$SECS" 'BEGIN {print a + b + 0.3}')" 16 \
    >/dev/null &
  pid=$!
  sleep "$WARM"
  c0=$(count) t0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(count) t1=$(date +%s.%N)
  wait "$pid" || echo "  UDP load to $dst exited with an error" >&2
  awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b - a) / (e - s)}'
}
vxg_rx() { ns "${1:-p1a}" cat /sys/class/net/kst-vxg/statistics/rx_packets; }
ratio() {  # A/B; nothing when either is missing or B is 0 (a failed run)
  [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.4f", a / b}'
  true
}
dst_of() {
  case $1 in
    plain) echo "$POD" ;; hand) echo "$VIP_H" ;; hand0) echo "$VIP_H0" ;; daemon) echo "$VIP_D" ;;
    bpf-hdr) echo "$VIP_B" ;; bpf) echo "$VIP_BP" ;; ref-md) echo "$VIP_MD" ;; ref-hdr) echo "$VIP_HDR" ;;
    ref-hdr-decap) echo "$VIP_HDR_DECAP" ;; hand-decap) echo "$VIP_HAND_DECAP" ;;
    bpf-decap) echo "$VIP_BD" ;; bpf-dev) echo "$VIP_BV" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}
# Variants after "plain" (which always runs first); UDP_EXTRA/TCP_EXTRA: the optional ones.
UDP_EXTRA=() TCP_EXTRA=()
[ "$BPF" = 1 ] && UDP_EXTRA+=(bpf bpf-hdr bpf-dev) TCP_EXTRA+=(bpf bpf-hdr bpf-dev)
if [ "$REF" = 1 ]; then
  UDP_EXTRA+=(ref-md ref-hdr ref-hdr-decap hand-decap)
  [ "$REF_TCP" = 1 ] && TCP_EXTRA+=(ref-md ref-hdr ref-hdr-decap hand-decap)
  if [ "$BPF" = 1 ]; then
    UDP_EXTRA+=(bpf-decap)
    [ "$REF_TCP" = 1 ] && TCP_EXTRA+=(bpf-decap)
  fi
fi
reverse() { local out=() i; for ((i = $#; i >= 1; i--)); do out+=("${!i}"); done; echo "${out[@]}"; }
declare -A PPS GBPS PR_PLAIN PR_HAND PR_DAEMON TR_PLAIN TR_HAND TR_DAEMON
RATIO_HDR_PPS="" RATIO_HDR_TCP=""  # paired bpf-hdr / bpf-dev (DATAPLANE_BPF=1)
RATIO_PPS="" RATIO_TCP=""
# Per repetition: the UDP runs, then the TCP runs, each in the repetition's order, which
# alternates (plain hand daemon …, then plain … daemon hand): the daemon's and the hand-made
# tunnel's runs are adjacent (paired ratios), and no variant always comes first or last, so a
# drift or an after-effect of the previous run cancels over the repetitions.
for rep in $(seq "$REPS"); do
  udp_order="hand daemon ${UDP_EXTRA[*]}" tcp_order="hand daemon ${TCP_EXTRA[*]} hand0"
  if [ $((rep % 2)) = 0 ]; then
    udp_order=$(reverse $udp_order) tcp_order=$(reverse $tcp_order)
  fi
  declare -A pps=() gbps=()
  for v in plain $udp_order; do
    pod=p1a
    [ "$v" = bpf ] && pod=p2a
    rx0=$(vxg_rx $pod)
    pps[$v]=$(udp_pps "$(dst_of "$v")")
    # The *-decap variants and bpf must bypass the pod's decap device: at most what else arrived.
    if [[ $v == *-decap || $v == bpf ]] && (($(vxg_rx $pod) - rx0 > pps[$v] * SECS / 100)); then
      echo "  dataplane rep $rep $v: $pod's kst-vxg received $(($(vxg_rx $pod) - rx0)) packets: not decapsulated by the tc program" >&2
      exit 1
    fi
    PPS[$v]="${PPS[$v]:-} ${pps[$v]}"
    sleep "$SETTLE"
  done
  for v in plain $tcp_order; do
    [ "${DATAPLANE_TCP:-1}" = 0 ] && break
    # A failed connection is reported with the routes the packets took, not fatal: that
    # repetition has no figure (and no paired ratio) for the variant.
    gbps[$v]=$(ns cl "$LOAD" tcp "$(dst_of "$v")" 5201 "$SECS" 2>"$DIR/tcp.err" | sed -n 's/.*gbps=//p' || true)
    if [ -z "${gbps[$v]}" ]; then
      echo "  dataplane rep $rep $v: TCP run failed: $(tr '\n' ' ' <"$DIR/tcp.err")" \
        "client: $(ns cl ip route get "$(dst_of "$v")" 2>&1 | head -1)" >&2
      sleep "$SETTLE"
      continue
    fi
    GBPS[$v]="${GBPS[$v]:-} ${gbps[$v]}"
    sleep "$SETTLE"
  done
  RATIO_PPS="$RATIO_PPS $(ratio "${pps[daemon]}" "${pps[hand]}")"
  if [ "$BPF" = 1 ]; then
    RATIO_HDR_PPS="$RATIO_HDR_PPS $(ratio "${pps[bpf-hdr]}" "${pps[bpf-dev]}")"
    [ "${DATAPLANE_TCP:-1}" = 0 ] || RATIO_HDR_TCP="$RATIO_HDR_TCP $(ratio "${gbps[bpf-hdr]:-}" "${gbps[bpf-dev]:-}")"
  fi
  [ "${DATAPLANE_TCP:-1}" = 0 ] || RATIO_TCP="$RATIO_TCP $(ratio "${gbps[daemon]}" "${gbps[hand]}")"
  for v in "${UDP_EXTRA[@]}"; do
    PR_PLAIN[$v]="${PR_PLAIN[$v]:-} $(ratio "${pps[$v]}" "${pps[plain]}")"
    PR_HAND[$v]="${PR_HAND[$v]:-} $(ratio "${pps[$v]}" "${pps[hand]}")"
    PR_DAEMON[$v]="${PR_DAEMON[$v]:-} $(ratio "${pps[$v]}" "${pps[daemon]}")"
  done
  for v in "${TCP_EXTRA[@]}"; do
    TR_PLAIN[$v]="${TR_PLAIN[$v]:-} $(ratio "${gbps[$v]}" "${gbps[plain]}")"
    TR_HAND[$v]="${TR_HAND[$v]:-} $(ratio "${gbps[$v]}" "${gbps[hand]}")"
    TR_DAEMON[$v]="${TR_DAEMON[$v]:-} $(ratio "${gbps[$v]}" "${gbps[daemon]}")"
  done
  for v in plain hand0 hand daemon "${UDP_EXTRA[@]}"; do
    echo "  dataplane rep $rep $v: pps=${pps[$v]:--} gbps=${gbps[$v]:--} load=$(cut -d' ' -f1 /proc/loadavg)" >&2
  done
done
# (No values, as the TCP ones with DATAPLANE_TCP=0: "-".)
range() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print NR ? lo "-" hi : "-"}'; }
med() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END {print !NR ? "-" : (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
pp=$(echo "${PPS[plain]}" | med); ph=$(echo "${PPS[hand]}" | med); pd=$(echo "${PPS[daemon]}" | med)
gp=$(echo "${GBPS[plain]:-}" | med); gh=$(echo "${GBPS[hand]:-}" | med); gd=$(echo "${GBPS[daemon]:-}" | med)
gh0=$(echo "${GBPS[hand0]:-}" | med)
div() { if [ "$2" = - ] || [ "$1" = - ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi; }
echo "RESULT bench=dataplane B=$BUCKETS reps=$REPS seconds=$SECS udp_pps_plain=$pp udp_pps_hand=$ph udp_pps_daemon=$pd" \
  "daemon_over_hand_pps=$(div "$pd" "$ph")" \
  "daemon_over_plain_pps=$(div "$pd" "$pp")" \
  "hand_over_plain_pps=$(div "$ph" "$pp")" \
  "tcp_gbps_plain=$gp tcp_gbps_hand_unclamped=$gh0 tcp_gbps_hand=$gh tcp_gbps_daemon=$gd" \
  "hand_clamped_over_unclamped_tcp=$(div "$gh" "$gh0")" \
  "daemon_over_hand_tcp=$(div "$gd" "$gh")" \
  "daemon_over_plain_tcp=$(div "$gd" "$gp")" \
  "paired_daemon_over_hand_pps=$(echo "$RATIO_PPS" | med)" \
  "paired_daemon_over_hand_tcp=$(echo "$RATIO_TCP" | med)" \
  "paired_pps_range=$(echo "$RATIO_PPS" | range) paired_tcp_range=$(echo "$RATIO_TCP" | range)" \
  "load=$(cut -d' ' -f1 /proc/loadavg)"
# One variant's figures of one kind: FIELD (udp_pps|tcp_gbps) KEY (pps|tcp) VALUES RATIOS
# PLAIN HAND DAEMON: the median and range of VALUES[v], ratios of medians to the three given
# medians, and the median and range of the paired ratios RATIOS_{PLAIN,HAND,DAEMON}[v].
variant_figures() {
  local v=$1 field=$2 key=$3 pre=$5 m b
  declare -n vals=$4
  m=$(echo "${vals[$v]}" | med)
  printf ' %s=%s %s_range=%s' "$field" "$m" "$field" "$(echo "${vals[$v]}" | range)"
  printf ' over_plain_%s=%s over_hand_%s=%s over_daemon_%s=%s' \
    "$key" "$(div "$m" "$6")" "$key" "$(div "$m" "$7")" "$key" "$(div "$m" "$8")"
  for b in PLAIN HAND DAEMON; do
    declare -n ratios=${pre}_$b
    printf ' paired_over_%s_%s=%s paired_over_%s_%s_range=%s' "${b,,}" "$key" \
      "$(echo "${ratios[$v]}" | med)" "${b,,}" "$key" "$(echo "${ratios[$v]}" | range)"
  done
}
for v in "${UDP_EXTRA[@]}"; do
  line="RESULT bench=dataplane-variant variant=$v B=$BUCKETS reps=$REPS seconds=$SECS"
  line+=$(variant_figures "$v" udp_pps pps PPS PR "$pp" "$ph" "$pd")
  [ -n "${GBPS[$v]:-}" ] && line+=$(variant_figures "$v" tcp_gbps tcp GBPS TR "$gp" "$gh" "$gd")
  if [ "$v" = bpf-hdr ] || [ "$v" = bpf-dev ]; then
    line+=" paired_bpf_headers_over_device_pps=$(echo "$RATIO_HDR_PPS" | med)"
    line+=" paired_bpf_headers_over_device_pps_range=$(echo "$RATIO_HDR_PPS" | range)"
    line+=" paired_bpf_headers_over_device_tcp=$(echo "$RATIO_HDR_TCP" | med)"
    line+=" paired_bpf_headers_over_device_tcp_range=$(echo "$RATIO_HDR_TCP" | range)"
  fi
  echo "$line load=$(cut -d' ' -f1 /proc/loadavg)"
done
