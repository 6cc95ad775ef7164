#!/usr/bin/env bash
# Regenerate the recorded apiserver JSON in tests/data/k8s/ (see the README.md there).
#
#   tools/k8s/record-fixtures.sh DIR      # DIR: a control plane from start.sh; started (and stopped
#                                         # again at the end) if it is not running
# Environment: KST_FIXTURES_OUT (default <repo>/tests/data/k8s), KST_WATCH_SECONDS (default 20).
#
# Everything happens in namespace kst-fixtures (deleted and recreated) plus cluster-scoped Nodes
# kst-node-a / kst-node-b. The output is written to a temp dir and moved into place only when
# every capture succeeded.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -n "${1:-}" ]] || k8s_die "usage: $0 DIR"
DIR="$(k8s_dir "$1")"
REPO="$(cd "$K8S_TOOLS_DIR/../.." && pwd)"
OUT="${KST_FIXTURES_OUT:-$REPO/tests/data/k8s}"
WATCH_SECONDS="${KST_WATCH_SECONDS:-20}"
NS=kst-fixtures

started_here=0
if ! k8s_alive "$DIR" kube-apiserver || ! k8s_alive "$DIR" kube-controller-manager; then
  "$K8S_TOOLS_DIR/start.sh" "$DIR"
  started_here=1
fi
TMP="$(mktemp -d)"
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
  if (( started_here )); then "$K8S_TOOLS_DIR/stop.sh" "$DIR" || true; fi
}
trap cleanup EXIT

# shellcheck disable=SC1091
source "$DIR/env"
k() { "$KUBECTL" "$@"; }
api() { k8s_curl_admin "$DIR" -f "$@"; }          # api PATH... -> JSON on stdout
save() { python3 -m json.tool --indent 2 >"$TMP/$1"; }   # pretty-print a single JSON document

wait_for() { # DESCRIPTION TIMEOUT COMMAND...
  local what="$1" timeout="$2" t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < timeout )) || k8s_die "timeout waiting for $what"
    sleep 0.3
  done
}

# ---- clean slate ------------------------------------------------------------------------------
if k get namespace "$NS" >/dev/null 2>&1; then
  k -n "$NS" delete pods --all --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  k delete namespace "$NS" --wait=true --timeout=120s >/dev/null
fi
k delete node kst-node-a kst-node-b --ignore-not-found >/dev/null
k create namespace "$NS" >/dev/null

# ---- objects ------------------------------------------------------------------------------------
# Nodes must exist: the EndpointSlice controller skips Pods whose spec.nodeName names no Node
# (and the pod GC controller deletes such Pods after ~40 s).
for n in a b; do
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: kst-node-$n
  labels: {kubernetes.io/hostname: kst-node-$n, topology.kubernetes.io/zone: zone-$n, cmd.nu/tunnel-router: "true"}
YAML
done

pod() { # NAME NODE
  k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {app: web}}
spec:
  nodeName: $2
  containers:
  - name: web
    image: registry.invalid/kst/web:1
    ports: [{name: http, containerPort: 8080}, {name: tunnel-udp, containerPort: 5000, protocol: UDP}]
YAML
}
pod_status() { # NAME IPV4 IPV6 READY(True|False)
  local now; now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  k -n "$NS" patch pod "$1" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",
    \"podIP\":\"$2\",\"podIPs\":[{\"ip\":\"$2\"},{\"ip\":\"$3\"}],
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"$4\",\"lastTransitionTime\":\"$now\"},
                    {\"type\":\"ContainersReady\",\"status\":\"$4\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
}
pod web-1 kst-node-a; pod_status web-1 10.244.1.5 fd00:10:244:1::5 True
pod web-2 kst-node-b; pod_status web-2 10.244.2.7 fd00:10:244:2::7 True
pod web-3 kst-node-b; pod_status web-3 10.244.2.9 fd00:10:244:2::9 True
pod web-4 kst-node-a; pod_status web-4 10.244.1.8 fd00:10:244:1::8 False

svc() { # NAME ANNOTATION(or -) IP-FAMILY-POLICY [IP-FAMILIES e.g. "[IPv6]"]
  local ann="" fam=""
  [[ "$2" != - ]] && ann="annotations: {cmd.nu/tunnel: \"$2\"}"
  [[ -n "${4:-}" ]] && fam="ipFamilies: $4"
  k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $1
  labels: {app: web}
  $ann
spec:
  selector: {app: web}
  ipFamilyPolicy: $3
  $fam
  ports:
  - {name: http, port: 80, targetPort: http, protocol: TCP}
  - {name: tunnel-udp, port: 5000, targetPort: tunnel-udp, protocol: UDP}
YAML
}
svc web 198.51.100.10 PreferDualStack
svc web6 2001:db8::10 SingleStack "[IPv6]"
svc bad not-an-ip SingleStack
svc plain - SingleStack
k -n "$NS" get svc web6 -o jsonpath='{.spec.ipFamilies}' | grep -q IPv6 || k8s_die "web6 is not IPv6"

# Graceful delete of a Pod bound to a Node: with no kubelet to finish it, it stays Terminating
# (deletionTimestamp set) forever, keeps Ready=True -> endpoint serving=true, terminating=true, ready=false.
k -n "$NS" delete pod web-3 --wait=false >/dev/null

slices_ready() {
  # web: IPv4 + IPv6 slices with 4 endpoints each, web-3 terminating
  local j; j="$(api "$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices?labelSelector=kubernetes.io/service-name=web")"
  python3 - "$j" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
fam = {s["addressType"]: s for s in d["items"]}
assert set(fam) == {"IPv4", "IPv6"}, fam.keys()
for s in fam.values():
    eps = {e["targetRef"]["name"]: e for e in s.get("endpoints") or []}
    assert set(eps) == {"web-1", "web-2", "web-3", "web-4"}, eps.keys()
    assert eps["web-3"]["conditions"].get("terminating") is True
PY
}
wait_for "EndpointSlices of service web" 60 slices_ready
wait_for "EndpointSlice of service web6" 60 bash -c "$(declare -f k8s_curl_admin); k8s_curl_admin '$DIR' -f '$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices?labelSelector=kubernetes.io/service-name=web6' | grep -q web-4"

# ---- lists ---------------------------------------------------------------------------------------
api "$APISERVER_URL/api/v1/namespaces/$NS/services" | save services-list.json
api "$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices" | save endpointslices-list.json
api "$APISERVER_URL/api/v1/namespaces/$NS/pods" | save pods-list.json
api "$APISERVER_URL/api/v1/nodes/kst-node-a" | save node.json
api "$APISERVER_URL/api/v1/namespaces/$NS/services?limit=1" | save services-list-limit1-page1.json
cont="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["continue"])' "$TMP/services-list-limit1-page1.json")"
# second (last) page: no metadata.continue, no remainingItemCount
api -G "$APISERVER_URL/api/v1/namespaces/$NS/services" --data-urlencode limit=10 --data-urlencode "continue=$cont" \
  | save services-list-limit1-page2-last.json
api "$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices?limit=1" | save endpointslices-list-limit1-page1.json

RV0="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["resourceVersion"])' "$TMP/services-list.json")"
ERV0="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["resourceVersion"])' "$TMP/endpointslices-list.json")"

# ---- watch streams -------------------------------------------------------------------------------
# Raw bytes as the apiserver sends them: one JSON event per line. The apiserver sends a BOOKMARK
# about 2 s before timeoutSeconds ends (and about once a minute on long watches).
k8s_curl_admin "$DIR" -N -m $((WATCH_SECONDS + 10)) \
  "$APISERVER_URL/api/v1/namespaces/$NS/services?watch=1&allowWatchBookmarks=true&resourceVersion=$RV0&timeoutSeconds=$WATCH_SECONDS" \
  >"$TMP/watch-services.jsonl" &
bg_pids+=($!); wsvc=$!
k8s_curl_admin "$DIR" -N -m $((WATCH_SECONDS + 10)) \
  "$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices?watch=1&allowWatchBookmarks=true&resourceVersion=$ERV0&timeoutSeconds=$WATCH_SECONDS" \
  >"$TMP/watch-endpointslices.jsonl" &
bg_pids+=($!); weps=$!
sleep 1
svc tmp 198.51.100.20 SingleStack                      # ADDED (+ slice ADDED)
sleep 1
k -n "$NS" annotate service tmp cmd.nu/tunnel=198.51.100.21 --overwrite >/dev/null   # MODIFIED
pod_status web-4 10.244.1.8 fd00:10:244:1::8 True                          # slices MODIFIED (ready)
sleep 1
k -n "$NS" delete service tmp --wait=false >/dev/null                      # DELETED (+ slice DELETED)
sleep 1
k -n "$NS" delete pod web-3 --grace-period=0 --force --wait=false >/dev/null 2>&1  # slices MODIFIED (gone)
wait "$wsvc" || true
wait "$weps" || true
bg_pids=()
for f in watch-services.jsonl watch-endpointslices.jsonl; do
  for t in ADDED MODIFIED DELETED BOOKMARK; do
    grep -q "^{\"type\":\"$t\"" "$TMP/$f" || k8s_die "$f has no $t event"
  done
done

# Streaming list ("watch-list"): the current objects as ADDED events, then a BOOKMARK annotated
# k8s.io/initial-events-end=true, then live events (none here) until timeoutSeconds.
k8s_curl_admin "$DIR" -N -m 20 \
  "$APISERVER_URL/apis/discovery.k8s.io/v1/namespaces/$NS/endpointslices?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3" \
  >"$TMP/watchlist-endpointslices.jsonl"
grep -q 'k8s.io/initial-events-end' "$TMP/watchlist-endpointslices.jsonl" || k8s_die "watch-list stream without initial-events-end bookmark"

# ---- 410 Gone ------------------------------------------------------------------------------------
# Compact etcd past RV0 and restart the apiserver so its watch cache starts after RV0: a watch from
# RV0 then gets a single ERROR event (HTTP 200), a list with resourceVersionMatch=Exact a 410 reply.
"$K8S_TOOLS_DIR/compact.sh" "$DIR" >/dev/null
"$K8S_TOOLS_DIR/apiserver.sh" "$DIR" restart
k8s_curl_admin "$DIR" -N -m 20 \
  "$APISERVER_URL/api/v1/namespaces/$NS/services?watch=1&allowWatchBookmarks=true&resourceVersion=$RV0&timeoutSeconds=5" \
  >"$TMP/watch-services-410-gone.jsonl"
grep -q '"type":"ERROR".*"code":410' "$TMP/watch-services-410-gone.jsonl" || k8s_die "no 410 ERROR event: $(cat "$TMP/watch-services-410-gone.jsonl")"
code="$(k8s_curl_admin "$DIR" -o "$TMP/list-410.raw" -w '%{http_code}' \
  "$APISERVER_URL/api/v1/namespaces/$NS/services?resourceVersion=$RV0&resourceVersionMatch=Exact")"
[[ "$code" == 410 ]] || k8s_die "expected HTTP 410 for an Exact list at a compacted RV, got $code"
save services-list-410-gone.json <"$TMP/list-410.raw"; rm -f "$TMP/list-410.raw"

# ---- Events --------------------------------------------------------------------------------------
now_micro="$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)"
api -X POST -H 'Content-Type: application/json' "$APISERVER_URL/apis/events.k8s.io/v1/namespaces/$NS/events" -d @- >/dev/null <<JSON
{"apiVersion":"events.k8s.io/v1","kind":"Event",
 "metadata":{"name":"web.kst-fixture-1"},
 "eventTime":"$now_micro","reportingController":"cmd.nu/kube-service-tunnel","reportingInstance":"kube-service-tunnel-kst-node-a",
 "action":"Configure","reason":"InvalidTunnelAddress","type":"Warning",
 "regarding":{"apiVersion":"v1","kind":"Service","namespace":"$NS","name":"bad","uid":"$(k -n "$NS" get svc bad -o jsonpath='{.metadata.uid}')"},
 "note":"annotation cmd.nu/tunnel=\"not-an-ip\" is not an IP address"}
JSON
api "$APISERVER_URL/apis/events.k8s.io/v1/namespaces/$NS/events/web.kst-fixture-1" | save event-events.k8s.io-v1.json
api "$APISERVER_URL/api/v1/namespaces/$NS/events/web.kst-fixture-1" | save event-core-v1.json

# ---- install -------------------------------------------------------------------------------------
k8s_curl_admin "$DIR" -f "$APISERVER_URL/version" | save version.json
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.jsonl          # README.md stays
for f in "$TMP"/*; do mv "$f" "$OUT/"; done
k8s_log "fixtures written to $OUT"
