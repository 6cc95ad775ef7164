#!/usr/bin/env bash
# Time-boxed libFuzzer run of every fuzz target (tests/fuzz/README.md). Builds the targets with
# clang (AddressSanitizer + UndefinedBehaviorSanitizer) in $FUZZ_BUILD_DIR (default
# <repo>/build-fuzz), runs each for $1 seconds (default 20) from its committed regression
# corpus, and prints executions and findings per target. New interesting inputs go to a scratch
# corpus in the build directory, never into the repository. Exit 1 when a target crashed, hung
# or ran out of memory: the reproducer is in $FUZZ_BUILD_DIR/findings/<target>/ (add it to
# tests/fuzz/corpus/<target>/ with the fix).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECS=${1:-20}
DIR=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
CXX=${FUZZ_CXX:-clang++-16}
TARGETS=(published watch bodies manifest kubeconfig nftnotify)

command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (scripts/lib/deps.sh installs it)"; exit 1; }
cmake -S "$ROOT" -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$CXX" \
  -DKST_FUZZ=ON >/dev/null || { echo "fuzz: configure failed"; exit 1; }
ninja -C "$DIR" -j "${KST_JOBS:-$(nproc)}" "${TARGETS[@]/#/kst_fuzz_}" >"$DIR/build.log" 2>&1 ||
  { tail -30 "$DIR/build.log"; echo "fuzz: build failed"; exit 1; }

rc=0
for t in "${TARGETS[@]}"; do
  work=$DIR/work/$t findings=$DIR/findings/$t log=$DIR/$t.log
  mkdir -p "$work" "$findings"
  # -timeout: one input slower than 10 s is a hang; -rss_limit_mb: a blow-up is a finding.
  "$DIR/tests/fuzz/kst_fuzz_$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" \
    "$work" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1
  r=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1)
  if [ $r -eq 0 ]; then
    echo "fuzz $t: ${execs:-?} executions in ${SECS} s, ${cov:-cov: ?}, no findings"
  else
    rc=1
    echo "fuzz $t: FINDING after ${execs:-?} executions (exit $r); reproducer in $findings/"
    grep -aE "^==[0-9]+==ERROR|SUMMARY|ALARM|Test unit written" "$log" | head -5
  fi
done
exit $rc
