#!/usr/bin/env bash
# Force an etcd compaction at the current revision of the control plane in DIR (through etcd's v3
# JSON gateway, no etcdctl). Prints the compacted revision. Afterwards, a watch or list from an
# older resourceVersion that the apiserver cannot serve from its watch cache answers 410 Gone.
#
#   tools/k8s/compact.sh DIR
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -f "${1:-}/run/ports" ]] || k8s_die "usage: $0 DIR   (DIR from start.sh)"
DIR="$(cd "$1" && pwd)"
# shellcheck disable=SC1091
source "$DIR/run/ports"
ETCD="http://127.0.0.1:$ETCD_PORT"
# key "\0" with range_end "\0" = every key; count_only keeps the answer small.
rev="$(curl -sS -f -m 10 -X POST "$ETCD/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}' \
  | sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')"
[[ -n "$rev" ]] || k8s_die "could not read the etcd revision from $ETCD"
out="$(curl -sS -m 60 -X POST "$ETCD/v3/kv/compaction" -d "{\"revision\":\"$rev\",\"physical\":true}")"
if [[ "$out" == *'"error"'* || "$out" == *'"code"'* ]]; then
  # "required revision has been compacted" = already compacted at this revision: fine.
  [[ "$out" == *"compacted"* ]] || k8s_die "compaction failed: $out"
fi
k8s_log "etcd compacted at revision $rev"
echo "$rev"
