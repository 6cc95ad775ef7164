#!/usr/bin/env bash
# Write a kubeconfig for ServiceAccount NAMESPACE/SA of the control plane in DIR, authenticating
# with a bound token from the TokenRequest API (kubectl create token). Creates the namespace and the
# ServiceAccount if missing. Token lifetime: $KST_TOKEN_DURATION (default 24h).
#
#   tools/k8s/sa-kubeconfig.sh DIR NAMESPACE SA OUT
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -eq 4 ]] || k8s_die "usage: $0 DIR NAMESPACE SA OUT"
[[ -f "$1/env" ]] || k8s_die "$1/env missing (run start.sh first)"
DIR="$(cd "$1" && pwd)"; NS="$2"; SA="$3"; OUT="$4"
# shellcheck disable=SC1091
source "$DIR/env"
k() { "$KUBECTL" --kubeconfig="$DIR/admin.kubeconfig" "$@"; }
k get namespace "$NS" >/dev/null 2>&1 || k create namespace "$NS" >/dev/null
k -n "$NS" get serviceaccount "$SA" >/dev/null 2>&1 || k -n "$NS" create serviceaccount "$SA" >/dev/null
token="$(k -n "$NS" create token "$SA" --duration="${KST_TOKEN_DURATION:-24h}")"
[[ -n "$token" ]] || k8s_die "empty token"
tmp="$(mktemp "$(dirname "$OUT")/.sa-kubeconfig-XXXXXX")"
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kst
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$DIR/pki/ca.crt")
users:
- name: system:serviceaccount:$NS:$SA
  user:
    token: $token
contexts:
- name: kst
  context: {cluster: kst, user: "system:serviceaccount:$NS:$SA", namespace: $NS}
current-context: kst
KC
chmod 600 "$tmp"
mv "$tmp" "$OUT"
trap - EXIT
k8s_log "wrote $OUT for system:serviceaccount:$NS:$SA"
