#!/usr/bin/env bash
# Leftovers of an aborted cluster test run (CTest FIXTURES_CLEANUP; normally a no-op): the
# control plane in /tmp/kk-k8s, daemons started with its ServiceAccount kubeconfig, and the
# kk<pid>-* network namespaces of tests/cluster.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
"$root/tools/k8s/stop.sh" /tmp/kk-k8s --purge >/dev/null 2>&1 || true
for p in /proc/[0-9]*; do
  if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "--kubeconfig /tmp/kk-k8s/sa.kubeconfig"; then
    kill "${p#/proc/}" 2>/dev/null || true
  fi
done
for prefix in $(ip netns list | awk '{print $1}' | grep -oE '^kk[0-9]+' | sort -u); do
  "$root/scripts/lib/topo.sh" down "$prefix"
done
exit 0
