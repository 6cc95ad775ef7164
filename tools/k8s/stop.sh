#!/usr/bin/env bash
# Stop the control plane started by tools/k8s/start.sh DIR. Safe to call repeatedly.
# Keeps DIR (data, certs, logs); pass --purge as second argument to delete DIR as well.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -n "${1:-}" ]] || k8s_die "usage: $0 DIR [--purge]"
if [[ ! -d "$1" ]]; then exit 0; fi
DIR="$(cd "$1" && pwd)"
# A real node on this control plane (node-start.sh) goes first: its kubelet needs the apiserver.
if [[ -d "$DIR/node" ]]; then
  "$K8S_TOOLS_DIR/node-stop.sh" "$DIR" || true
fi
for n in kube-controller-manager kube-apiserver etcd; do
  k8s_kill "$DIR" "$n"
done
if [[ "${2:-}" == --purge ]]; then
  rm -rf "$DIR"
fi
