#!/usr/bin/env bash
# Undo tools/k8s/node-start.sh DIR: kubelet, kube-scheduler, every container and sandbox of the
# harness's containerd (their network namespaces, CNI veths and mounts), containerd and its shims,
# the CNI bridge, the in-cluster apiserver address and DNAT, the kubelet's cgroups, and the kernel
# settings it changed. Safe to call repeatedly and after a half-done start. The control plane is
# left running (tools/k8s/stop.sh DIR).
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -n "${1:-}" ]] || k8s_die "usage: $0 DIR"
[[ -d "$1/node" ]] || exit 0
DIR="$(cd "$1" && pwd)"
N="$DIR/node"
SOCK="$N/containerd/containerd.sock"

k8s_kill "$DIR" kubelet
k8s_kill "$DIR" kube-scheduler

# Containers: with containerd still up, kill every task and note the sandboxes' network namespaces
# (pinned files under /run/netns) before the records go away.
CTR=(ctr --address "$SOCK" -n k8s.io)
netns_pins=()
if k8s_alive "$DIR" containerd && "${CTR[@]}" version >/dev/null 2>&1; then
  mapfile -t ids < <("${CTR[@]}" containers list -q 2>/dev/null)
  for id in "${ids[@]}"; do
    p="$("${CTR[@]}" containers info "$id" 2>/dev/null |
         sed -n 's#.*"path": "\(/[a-z/]*netns/[^"]*\)".*#\1#p' | head -1)"
    [[ -n "$p" ]] && netns_pins+=("$p")
    "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in "${ids[@]}"; do
    "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    "${CTR[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
fi
k8s_kill "$DIR" containerd
# Shims outlive containerd; their containers are their children.
for p in /proc/[0-9]*; do
  tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "-address $SOCK " || continue
  pid="${p#/proc/}"
  pkill -KILL -P "$pid" 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
done
for p in "${netns_pins[@]}"; do
  umount "$p" 2>/dev/null; rm -f "$p"
done

# Mounts under DIR/node (overlay rootfs, shm, secrets/projected volumes), deepest first.
awk -v n="$N/" 'index($5, n) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null || true
done

# Network: the CNI bridge (the pods' veths went with their namespaces), the apiserver DNAT.
if [[ -s "$N/bridge" ]]; then
  br="$(<"$N/bridge")"
  for v in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$br" 2>/dev/null || true
fi
nft delete table ip kst_realnode_api 2>/dev/null || true
# The kubelet's iptables chains in the host namespace: KUBE-FIREWALL (drops non-DNATed traffic
# from other addresses to 127.0.0.0/8; jumped to from INPUT and OUTPUT), the canary and hint
# chains; then the iptables-nft tables left without any chain.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for c in INPUT OUTPUT; do
    while "$ipt" -w -t filter -D "$c" -j KUBE-FIREWALL 2>/dev/null; do :; done
  done
  for t in filter nat mangle; do
    for c in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      "$ipt" -w -t "$t" -F "$c" 2>/dev/null && "$ipt" -w -t "$t" -X "$c" 2>/dev/null
    done
  done
done
for fam in ip ip6; do
  for t in mangle nat filter; do
    if nft list table "$fam" "$t" >/dev/null 2>&1 && ! nft list table "$fam" "$t" | grep -q 'chain.*{' ; then
      nft delete table "$fam" "$t" 2>/dev/null
    fi
  done
done
ip addr del 10.96.0.1/32 dev lo 2>/dev/null || true

# The kubelet's cgroups (cgroupfs driver, v1 hierarchies and the v2 one), deepest first.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [[ -d "$h" ]] || continue
  find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

if [[ -f "$N/sysctl.saved" ]]; then
  while IFS='=' read -r k v; do sysctl -qw "$k=$v" 2>/dev/null || true; done <"$N/sysctl.saved"
  rm -f "$N/sysctl.saved"
fi
k8s_log "node in $DIR stopped"
exit 0
