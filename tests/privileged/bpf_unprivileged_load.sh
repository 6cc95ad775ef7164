#!/bin/bash
# The BPF programs load with the capabilities their pods have, not only as root: the router
# container has CAP_BPF + CAP_NET_ADMIN (deploy/20-router.yaml), without CAP_PERFMON and
# CAP_SYS_ADMIN the verifier refuses pointer arithmetic whose offset depends on the path (a field
# of a map value chosen by a branch). The agent has CAP_SYS_ADMIN; its pod decapsulation
# program is checked with the router's set too. In a private mount namespace with its own bpffs.
#   bpf_unprivileged_load.sh OBJECT...
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 77; }
dir=$(mktemp -d /tmp/kst-bpfcap.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail=0
for obj in "$@"; do
  name=$(basename "$obj" .o); name=${name//./_}  # bpffs names have no dots
  if unshare -m sh -c "mount -t bpf bpf '$dir' && setpriv --bounding-set -all,+bpf,+net_admin \
        --inh-caps -all -- bpftool prog loadall '$obj' '$dir/$name' type classifier" \
        >"$dir.log" 2>&1; then
    echo "PASS: $name loads with CAP_BPF + CAP_NET_ADMIN only"
  else
    echo "FAIL: $name refused with CAP_BPF + CAP_NET_ADMIN only:"
    grep -E "prohibited|invalid|denied|!root|rror" "$dir.log" | head -5
    grep -B20 -m1 -E "prohibited|!root" "$dir.log" | grep "@ " | tail -3
    fail=1
  fi
  rm -f "$dir.log"
done
exit "$fail"
