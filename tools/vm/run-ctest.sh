#!/bin/bash
# Run the project's VM-only tests (CTest label "vm") in ONE throw-away VM.
#
#   tools/vm/run-ctest.sh BUILD_DIR [CTEST_ARGS...]
#
# Boots the VM once (vmrun.sh) and runs, inside it, as root:
#   ctest --test-dir BUILD_DIR CTEST_ARGS
# where CTEST_ARGS defaults to "-L vm --output-on-failure".  BUILD_DIR is
# shared read-write, so ctest's Testing/ logs and anything the tests write
# there come back to the host; the rest of the host is read-only in the VM.
# The guest starts with a fresh, empty /run (and /var/run/netns), so
# `ip netns add` works and the host's namespaces are not visible.
#
# ctest's output is shown as it runs.  Unless ctest exits 0, the whole guest
# console follows on stderr.  The console is also kept in
# BUILD_DIR/Testing/Temporary/LastVmConsole.log.
#
# Exit status:
#   0..123  ctest's own (0: all selected tests passed; 8: some failed)
#   124     TIMEOUT: the VM ran longer than KST_VM_TIMEOUT and was killed
#   125     the VM died or ctest never ran (image build, qemu start, boot,
#           kernel panic)
#   2       usage error (no BUILD_DIR, or no CTestTestfile.cmake in it)
#
# Environment:
#   KST_VM_TIMEOUT   seconds before the VM is killed (default 1800)
#   KST_VM_MODULES   modules loaded before ctest starts (comma list; default
#                    mpls_router,mpls_iptunnel: net.mpls.* sysctls exist only
#                    once mpls_router is loaded.  Most other modules load
#                    on demand, and tests can run `modprobe X` themselves)
#   KST_VM_MEM, KST_VM_SMP, KST_VMWORK, KST_VM_ACCEL, ...   see vmrun.sh
#   CI and every GTEST_*, CTEST_* and KST_TEST_* variable set on the host are
#   passed into the VM; nothing else from the host's environment is.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0" >&2
  exit 2
fi
BUILD_DIR=$1
shift
if ! [ -f "$BUILD_DIR/CTestTestfile.cmake" ]; then
  echo "run-ctest: $BUILD_DIR has no CTestTestfile.cmake (configure and build it first)" >&2
  exit 2
fi
BUILD_DIR=$(cd -- "$BUILD_DIR" && pwd -P)
CTEST_ARGS=("$@")
[ $# -gt 0 ] || CTEST_ARGS=(-L vm --output-on-failure)

command -v ctest >/dev/null || kst_vm_need_pkgs cmake || exit 125
CTEST=$(command -v ctest)

LOG=$BUILD_DIR/Testing/Temporary/LastVmConsole.log
mkdir -p "${LOG%/*}"

ENVS=()
while IFS= read -r name; do
  ENVS+=(--env "$name=${!name}")
done < <(compgen -e | grep -E '^(GTEST_|CTEST_|KST_TEST_)' || true)

echo "run-ctest: ctest --test-dir $BUILD_DIR ${CTEST_ARGS[*]}  (in a VM)" >&2
t0=$EPOCHREALTIME
set +e
"$HERE/vmrun.sh" --quiet --timeout "${KST_VM_TIMEOUT:-1800}" \
  --modules "${KST_VM_MODULES-mpls_router,mpls_iptunnel}" \
  --rw "$BUILD_DIR" --cwd "$BUILD_DIR" --log "$LOG" "${ENVS[@]}" \
  -- "$CTEST" --test-dir "$BUILD_DIR" "${CTEST_ARGS[@]}"
rc=$?
set -e
took=$(kst_vm_elapsed "$t0" "$EPOCHREALTIME")

case "$rc" in
  0) echo "run-ctest: PASSED, total VM time ${took}s" >&2 ;;
  124) echo "run-ctest: FAILED: TIMEOUT, the VM was killed after ${KST_VM_TIMEOUT:-1800}s" \
         "(exit 124; console above and in $LOG)" >&2 ;;
  125) echo "run-ctest: FAILED: the VM died or ctest never ran (exit 125;" \
         "console above and in $LOG)" >&2 ;;
  *) echo "run-ctest: FAILED: ctest exited $rc, total VM time ${took}s (console in $LOG)" >&2 ;;
esac
exit "$rc"
