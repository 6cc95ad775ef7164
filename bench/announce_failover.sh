#!/usr/bin/env bash
# Tunnel-node failover behind a DC router (docs/announce.md), measured: time from a tunnel
# node's death (its link down, its daemon and bird2 SIGKILLed) to the last of 100 held TCP
# connections answering again through the surviving node, with BFD at BFD_MS x 3.
#
#   bench/announce_failover.sh BUILD [RUNS] [BFD_MS]      (root; needs bird2 and frr)
#
# Topology: scripts/lib/announce-topo.sh (FRR DC router, two tunnel nodes running the daemon +
# bird2, pods behind two nodes), rebuilt for each run. Per run it prints
#   RESULT announce_failover run=I bfd_ms=B withdraw_ms=W recovery_ms=R longest_stall_ms=S ok=0|1
# withdraw_ms: death → the DC router's route has only the survivor (polled every 10 ms);
# recovery_ms: death → the end of the longest exchange (kst-testtool hold exchanges with its
# connections one after the other, so while the first connection through the dead node waits
# for its retransmission, no other is sent to: when it answers, the path is back for all; TCP
# retransmission backoff comes on top of BFD); last_stall_end_ms: death → the end of the last
# exchange over 100 ms, if any came later. Then the median and max over the runs.
set -euo pipefail
shopt -s inherit_errexit
BUILD=$(cd "${1:?usage: $0 BUILD [RUNS] [BFD_MS]}" && pwd)
RUNS=${2:-5}
BFD_MS=${3:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOPO=$ROOT/scripts/lib/announce-topo.sh
BIN=$BUILD/src/kube-service-tunnel
TOOL=$BUILD/tests/kst-testtool
VIP=203.0.113.10
BASE=kbf$$
P=$BASE
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  PIDS=()
  "$TOPO" down "$P" >/dev/null 2>&1 || true
  rm -rf "/tmp/$P"
}
trap cleanup EXIT INT TERM

now_ms() { date +%s%3N; }
paths() { ip netns exec "$P-dc" ip -4 route show "$VIP" | grep -o 'via [0-9.]*' | sort | tr '\n' ' '; }
wait_for() {  # seconds command...
  local end=$(($(date +%s) + $1)); shift
  until "$@"; do [ "$(date +%s)" -ge "$end" ] && return 1; sleep 0.05; done
}

one_run() {
  local run=$1
  P=$BASE-$run  # a fresh prefix per run: namespaces of the previous run may still be going
  local d=/tmp/$P
  "$TOPO" up "$P" "$BFD_MS" >/dev/null
  mkdir -p "$d/manifests"
  for pod in p1a p1b p2a p2b; do
    ip netns exec "$P-$pod" "$TOOL" serve "$pod" 8080 >/dev/null 2>&1 & PIDS+=($!)
  done
  cat >"$d/manifests/web.yaml" <<Y
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z", annotations: {cmd.nu/tunnel: "$VIP"}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: ["198.19.1.2"], nodeName: node1, conditions: {ready: true, serving: true, terminating: false}}
- {addresses: ["198.19.1.3"], nodeName: node1, conditions: {ready: true, serving: true, terminating: false}}
- {addresses: ["198.19.2.2"], nodeName: node2, conditions: {ready: true, serving: true, terminating: false}}
- {addresses: ["198.19.2.3"], nodeName: node2, conditions: {ready: true, serving: true, terminating: false}}
Y
  local rtpid=
  for n in rt rt2; do
    ip netns exec "$P-$n" "$BIN" run --role router --manifests "$d/manifests" --vip-pool "$VIP/32" \
      --announce-table 4242 --state-dir "$d/state-$n" >"$d/$n.log" 2>&1 & PIDS+=($!)
    [ "$n" = rt ] && rtpid=$!
  done
  for i in 1 2; do
    ip netns exec "$P-n$i" "$BIN" run --role agent --node-name "node$i" --scan-proc=false \
      --netns-dir "/run/kst-netns/$P/n$i" --manifests "$d/manifests" --vip-pool "$VIP/32" >"$d/n$i.log" 2>&1 & PIDS+=($!)
  done
  wait_for 30 bash -c "[ \"\$(ip netns exec $P-dc ip -4 route show $VIP | grep -c 'via')\" = 2 ]" || {
    echo "run $run: the DC router did not learn $VIP from both nodes" >&2; return 1; }
  wait_for 20 bash -c "ip netns exec $P-dcl $TOOL tcp $VIP 8080 4 | grep -vq FAIL" || {
    echo "run $run: $VIP not reachable" >&2; return 1; }
  ip netns exec "$P-dcl" "$TOOL" hold "$VIP" 8080 10 100 >"$d/hold.log" 2>&1 & local hold=$!
  PIDS+=($hold)
  wait_for 20 grep -q 'established 100' "$d/hold.log" || { cat "$d/hold.log" >&2; return 1; }
  sleep 1
  # Both BFD sessions of the IPv4 peers up (else the BGP hold timer, 9 s, would be measured).
  wait_for 20 bash -c "[ \"\$($TOPO vtysh $P -c 'show bfd peers brief' | grep -cE '198.18.0.[12] +up')\" = 2 ]" || {
    echo "run $run: BFD sessions not up" >&2; return 1; }
  local t0 t1
  t0=$(now_ms)
  ip netns exec "$P-rt" ip link set eth0 down
  kill -9 "$rtpid"
  "$TOPO" kill "$P" rt
  until [ "$(paths)" = "via 198.18.0.2 " ]; do
    [ $(($(now_ms) - t0)) -gt 10000 ] && break
    sleep 0.01
  done
  t1=$(now_ms)
  local ok=1
  wait "$hold" || ok=0
  local stall end
  read -r _ stall end last < <(grep '^stall ' "$d/hold.log" || echo "stall 0 $t0 $t0")
  grep -q '^ok 100' "$d/hold.log" || ok=0
  echo "RESULT announce_failover run=$run load1=$(cut -d' ' -f1 /proc/loadavg) bfd_ms=$BFD_MS withdraw_ms=$((t1 - t0)) recovery_ms=$((end - t0)) longest_stall_ms=$stall last_stall_end_ms=$((last - t0)) ok=$ok"
  cleanup
}

results=()
for ((r = 1; r <= RUNS; r++)); do
  line=$(one_run "$r")
  echo "$line"
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c '
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in sys.stdin if l.startswith("RESULT")]
for k in ("withdraw_ms", "recovery_ms"):
    v = sorted(int(r[k]) for r in rows)
    print(f"RESULT announce_failover_summary metric={k} runs={len(v)} median={statistics.median(v):g} max={max(v)}")
ok = int(all(r["ok"] == "1" for r in rows))
print(f"RESULT announce_failover_summary metric=ok runs={len(rows)} all_ok={ok}")
'
