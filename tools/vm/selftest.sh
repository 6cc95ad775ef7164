#!/bin/bash
# Self-test of the VM harness: proves that run-ctest.sh gives tests a kernel
# with GRE, IPIP, MPLS and nftables, and that failures are loud.
#
#   tools/vm/selftest.sh [--quick]
#
# 1. Builds selftest/kernel_features_test.cc (g++ -std=c++23, GoogleTest)
#    and runs it on the HOST, where it is expected to FAIL (the 6.18 host
#    kernel has no GRE, IPIP, dummy or MPLS).
# 2. Writes a small CTest folder by hand (no cmake run needed): two tests
#    labelled "vm" (kernel_features_test and selftest/vm_environment_test.sh)
#    and one unlabelled test that always fails, which -L vm must skip.
# 3. Runs it with run-ctest.sh: exit 0 expected, ctest's Testing/ log and the
#    file the guest wrote must appear on the host.
# 4. Unless --quick: shows that a failing test (ctest exit 8), a VM timeout
#    (124) and a kernel panic in the guest (125) all make run-ctest.sh fail.
#
# Exit status 0 when every check passed.  Installs g++, libgtest-dev,
# iproute2, nftables and cmake (for ctest) when missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

QUICK=0
case "${1:-}" in
  --quick) QUICK=1 ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

kst_vm_need_pkgs g++ libgtest-dev iproute2 nftables cmake
T=$(mktemp -d /tmp/kst-vm-selftest.XXXXXX)
HOST_NS=kst-vm-selftest-$$
cleanup() {
  ip netns del "$HOST_NS" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

FAILS=0
ok() { echo "selftest: PASS: $*"; }
bad() { echo "selftest: FAIL: $*"; FAILS=$((FAILS + 1)); }

# ---- 1. build; run on the host ---------------------------------------------------
t0=$EPOCHREALTIME
g++ -std=c++23 -O1 -Wall -Wextra -o "$T/kernel_features_test" \
  "$HERE/selftest/kernel_features_test.cc" -lgtest -lgtest_main -pthread
echo "selftest: built kernel_features_test in $(kst_vm_elapsed "$t0" "$EPOCHREALTIME")s"

echo "selftest: running kernel_features_test on the host ($(uname -r)); it should FAIL there:"
if "$T/kernel_features_test" --gtest_brief=1 >"$T/host.out" 2>&1; then
  echo "selftest: note: it passed on the host, so this host kernel has GRE/IPIP/MPLS itself"
else
  grep -E '^\[  (FAILED|PASSED) ' "$T/host.out" | sed 's/^/    host: /'
  ok "kernel_features_test fails on the host, as expected"
fi

# ---- 2. a CTest folder written by hand --------------------------------------------
# A namespace on the host, which the guest's fresh /run must not show.
ip netns add "$HOST_NS"
mkctest() {   # mkctest DIR NAME COMMAND...: one test labelled vm
  local dir=$1 name=$2 q=
  shift 2
  mkdir -p "$dir"
  for a in "$@"; do q+=" \"$a\""; done
  {
    echo "add_test([=[$name]=]$q)"
    echo "set_tests_properties([=[$name]=] PROPERTIES LABELS \"vm\" TIMEOUT 300)"
  } >>"$dir/CTestTestfile.cmake"
}
B=$T/build
mkctest "$B" kernel_features "$T/kernel_features_test"
mkctest "$B" vm_environment /bin/bash "$HERE/selftest/vm_environment_test.sh" "$HOST_NS" "$B/vm_environment.out"
echo 'add_test([=[host_only_must_be_skipped]=] "/bin/false")' >>"$B/CTestTestfile.cmake"

# ---- 3. run it in the VM -------------------------------------------------------------
TOKEN=token-$$-$RANDOM
echo "selftest: tools/vm/run-ctest.sh $B"
set +e
KST_TEST_SELFTEST_TOKEN=$TOKEN "$HERE/run-ctest.sh" "$B" 2>"$T/run.err"
rc=$?
set -e
cat "$T/run.err" >&2
if [ "$rc" = 0 ]; then ok "run-ctest.sh exit 0"; else bad "run-ctest.sh exit $rc (want 0)"; fi
LASTLOG=$B/Testing/Temporary/LastTest.log
if [ -f "$LASTLOG" ] && grep -q 'kernel_features' "$LASTLOG" && grep -q 'vm_environment' "$LASTLOG"; then
  ok "ctest's $LASTLOG was written from the guest"
else
  bad "no ctest log with both tests at $LASTLOG"
fi
if [ -f "$LASTLOG" ] && grep -q host_only_must_be_skipped "$LASTLOG"; then
  bad "-L vm ran the unlabelled test"
else
  ok "-L vm skipped the unlabelled test"
fi
got=$(cat "$B/vm_environment.out" 2>/dev/null || true)
if [ "$got" = "$TOKEN" ]; then ok "KST_TEST_* passed into the guest; guest wrote into the build folder"
else bad "vm_environment.out holds '$got', want '$TOKEN'"; fi
if grep -q 'KSTVM_EXIT=0' "$B/Testing/Temporary/LastVmConsole.log" 2>/dev/null; then
  ok "console kept in Testing/Temporary/LastVmConsole.log"
else
  bad "no console log with KSTVM_EXIT=0"
fi
summary=$(grep -a '^kst-vm\[' "$T/run.err" | tail -1 || true)

# ---- 4. failures must be loud -----------------------------------------------------------
expect_rc() {   # expect_rc WANT LABEL DIR [ENV=VAL...]: run-ctest.sh DIR must exit WANT
  local want=$1 label=$2 dir=$3 got
  shift 3
  set +e
  env "$@" "$HERE/run-ctest.sh" "$dir" >"$T/neg.out" 2>&1
  got=$?
  set -e
  if [ "$got" = "$want" ] && grep -q '===== guest console' "$T/neg.out"; then
    ok "$label: run-ctest.sh exit $got, console printed: $(grep '^run-ctest: FAILED' "$T/neg.out")"
  else
    bad "$label: run-ctest.sh exit $got (want $want); its output:"
    sed 's/^/    /' "$T/neg.out"
  fi
}
if [ "$QUICK" = 0 ]; then
  mkctest "$T/failing" deliberate_failure /bin/sh -c 'echo deliberate failure; exit 1'
  expect_rc 8 "failing test" "$T/failing"
  mkctest "$T/hang" hang /bin/sleep 600
  expect_rc 124 "VM timeout" "$T/hang" KST_VM_TIMEOUT=12
  mkctest "$T/panic" panic /bin/sh -c 'echo c >/proc/sysrq-trigger'
  expect_rc 125 "kernel panic" "$T/panic"
fi

echo "selftest: measured: ${summary:-no summary line}"
if [ "$FAILS" = 0 ]; then echo "selftest: ALL PASSED"; else echo "selftest: $FAILS check(s) FAILED"; fi
[ "$FAILS" = 0 ]
