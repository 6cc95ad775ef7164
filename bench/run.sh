#!/usr/bin/env bash
# Every benchmark in one run (bench/README.md): builds Release in build-bench, runs the
# control-plane benchmarks (each trial in its own private network namespace), the dataplane
# benchmark (namespaces kbd<pid>-*), the hashing benchmark, and prints one results table.
#
#   sudo bench/run.sh            # full run (≈ 6–10 min on 2 cores)
#   KB_QUICK=1 sudo bench/run.sh # smaller repetitions (≈ 3 min)
#
# Needs root (network namespaces), iproute2, nftables, CMake, Ninja, a C++23 compiler and
# Debian's libbenchmark-dev; installs what is missing with apt-get.
# Raw results: build-bench/bench-results.txt ("RESULT key=value ..." lines).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-bench
OUT=$BUILD/bench-results.txt
QUICK=${KB_QUICK:-}
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }

cleanup() {
  # Trials live in unnamed namespaces that vanish with their processes; only the dataplane
  # benchmark names any (kbd<pid>-*), and it removes them itself. Leftovers of a killed run:
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^kbd[0-9]+-' || true); do
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf /tmp/kb-[0-9]* 2>/dev/null || true
}
trap cleanup EXIT INT TERM

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
command -v nft >/dev/null || need+=(nftables)
[ -f /usr/include/benchmark/benchmark.h ] || need+=(libbenchmark-dev)
command -v bird >/dev/null || need+=(bird2)
[ -x /usr/lib/frr/bgpd ] || need+=(frr)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD" kube-service-tunnel kb-control kb-hashing kb-spread kb-load kb-metrics kst-testtool >/dev/null

: >"$OUT"
log() { echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }
run() { "$@" | tee -a "$OUT" | grep RESULT >&2 || true; }
CTL=$BUILD/bench/kb-control
REPS=3 N_INC=500 N_CHANGES=20 DP_REPS=11
if [ -n "$QUICK" ]; then REPS=1 N_INC=100 N_CHANGES=5 DP_REPS=1; fi
log "hashing"
run "$BUILD/bench/kb-hashing" --benchmark_min_time=0.05
log "bucket spread n=2..300"
run "$BUILD/bench/kb-spread"
log "cold convergence V=1k"
run "$CTL" converge 1000 4 64 "$REPS"
log "cold convergence V=10k"
run "$CTL" converge 10000 4 64 "$REPS"
log "incremental reaction V=10k"
run "$CTL" incremental 10000 4 64 "$N_INC"
log "restart V=10k"
run "$CTL" restart 10000 4 64 "$REPS"
log "daemon binary V=10k E=40k"
run "$CTL" daemon 10000 4 64 "$BUILD/src/kube-service-tunnel" "$N_CHANGES"
log "/metrics scrape V=10k E=4"
run "$BUILD/bench/kb-metrics" 10000 4 "$((REPS * 5))"
log "dataplane"
# With the bpf datapath (a second router, --datapath bpf) next to plain, hand-made and nft.
DATAPLANE_BPF=1 run "$ROOT/bench/dataplane.sh" "$BUILD" "$DP_REPS" 3 64
log "tunnel-node failover behind a DC router (BFD 100 ms x 3)"
run "$ROOT/bench/announce_failover.sh" "$BUILD" 5 100

python3 "$ROOT/bench/table.py" "$OUT"
