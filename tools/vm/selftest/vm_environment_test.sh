#!/bin/bash
# Checks the environment that tools/vm/init.sh promises to a test run by
# run-ctest.sh; registered as a CTest test (label "vm") by selftest.sh.
#
#   vm_environment_test.sh HOST_NETNS OUT_FILE
#
# HOST_NETNS: a network namespace that selftest.sh created on the HOST; the
# guest's fresh /run must not show it.  OUT_FILE: written with the value of
# KST_TEST_SELFTEST_TOKEN, so that selftest.sh can check on the host that the
# variable was passed in and that the build folder is writable from the guest.
set -euo pipefail
host_ns=$1 out=$2
fail() { echo "FAIL: $*" >&2; exit 1; }

[ "${KST_IN_VM:-}" = 1 ] || fail "KST_IN_VM is not 1: not running in the VM"
echo "kernel $(uname -r)"

# Fresh /run: none of the host's netns entries, and `ip netns add` works.
listed=$(ip netns list)
[ -z "$listed" ] || fail "ip netns list is not empty in the guest: $listed"
[ ! -e "/run/netns/$host_ns" ] || fail "the host's /run/netns/$host_ns is visible"
ip netns add kst_vmenv
trap 'ip netns del kst_vmenv 2>/dev/null || true' EXIT
[ -e /var/run/netns/kst_vmenv ] || fail "/var/run/netns/kst_vmenv missing after ip netns add"
ip netns exec kst_vmenv ip link set lo up
ip -n kst_vmenv -br addr show lo | grep -q '127.0.0.1/8' || fail "lo in kst_vmenv has no 127.0.0.1"
ip netns del kst_vmenv

# modprobe works inside the job (busybox modprobe + the guest's modules).
modprobe ip6_gre || fail "modprobe ip6_gre failed"
grep -q '^ip6_gre ' /proc/modules || fail "ip6_gre not loaded after modprobe"

# Environment passed in, build folder writable (checked on the host).
printf '%s\n' "${KST_TEST_SELFTEST_TOKEN:-unset}" >"$out"
echo "PASS: fresh /run, ip netns add/exec/del, modprobe, env and rw share"
