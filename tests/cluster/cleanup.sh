#!/usr/bin/env bash
# Leftovers of aborted cluster test runs (CTest FIXTURES_CLEANUP, and at the start of every run):
# for each control plane /tmp/kk-k8s-<pid> whose owning test process is gone: the control plane,
# the daemons started with its ServiceAccount kubeconfigs (router, agent), and the kk<pid>-*
# network namespaces.
# Runs of other checkouts that are still alive are left alone.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
alive() {  # pid is a running kst_cluster_test
  [[ -r "/proc/$1/comm" && "$(cat "/proc/$1/comm" 2>/dev/null)" == kst_cluster_tes* ]]
}
for d in /tmp/kk-k8s-*; do
  [[ -d "$d" ]] || continue
  owner="$(cat "$d/owner.pid" 2>/dev/null || echo "${d##*-}")"
  alive "$owner" && continue
  "$root/tools/k8s/stop.sh" "$d" --purge >/dev/null 2>&1 || true
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qE -- "--kubeconfig $d/kube-service-tunnel-(router|agent)\.kubeconfig"; then
      kill "${p#/proc/}" 2>/dev/null || true
    fi
  done
  rm -rf "$d"
done
for prefix in $(ip netns list | awk '{print $1}' | grep -oE '^kk[0-9]+' | sort -u); do
  alive "${prefix#kk}" && continue
  "$root/scripts/lib/topo.sh" down "$prefix"
  rm -rf "/tmp/$prefix"
done
exit 0
