#!/usr/bin/env bash
# Start a loopback Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) in DIR.
#
#   tools/k8s/start.sh DIR     then:  source DIR/env; $KUBECTL get ns
#
# Writes DIR/admin.kubeconfig, DIR/env (KUBECONFIG, APISERVER_URL, ports, PIDs), DIR/pki, DIR/logs,
# DIR/run (argument files used by apiserver.sh to restart with identical flags). Idempotent: if the
# control plane in DIR is already up it just re-checks readiness. On failure it stops what it started.
# Binaries come from tools/k8s/build.sh (built on first use; cached afterwards).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(k8s_dir "${1:-}")"
T0=$SECONDS
K8S_BIN="$("$K8S_TOOLS_DIR/build.sh")"
mkdir -p "$DIR/run" "$DIR/logs" "$DIR/pki"

if k8s_alive "$DIR" etcd && k8s_alive "$DIR" kube-apiserver && k8s_alive "$DIR" kube-controller-manager \
   && [[ -f "$DIR/env" ]]; then
  # shellcheck disable=SC1091
  source "$DIR/run/ports"
  k8s_wait_ok "$DIR" kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" 30
  k8s_log "already running in $DIR"
  exit 0
fi
# Partially running / stale: start from a clean process state (data and certs are kept).
"$K8S_TOOLS_DIR/stop.sh" "$DIR" >/dev/null 2>&1 || true

k8s_undo_on_failure "start" "$K8S_TOOLS_DIR/stop.sh" "$DIR"

# ---- PKI (kept across restarts of the same DIR) --------------------------------------------------
PKI="$DIR/pki"
if [[ ! -s "$PKI/done" ]]; then
  t=$SECONDS
  rm -f "$PKI"/*
  ossl() { openssl "$@" 2>>"$DIR/logs/openssl.log"; }
  ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kst-test-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  leaf() { k8s_leaf "$DIR" "$@"; }
  leaf apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:::1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  leaf kcm-serving "/CN=kube-controller-manager" serverAuth "IP:127.0.0.1,DNS:localhost"
  leaf admin "/O=system:masters/CN=kst-admin" clientAuth
  leaf kcm "/CN=system:kube-controller-manager" clientAuth
  ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
  ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  chmod 600 "$PKI"/*.key
  echo ok >"$PKI/done"
  k8s_log "PKI generated in $((SECONDS - t))s"
fi

kubeconfig() { k8s_kubeconfig "$DIR" "$@"; }

# ---- ports (new ones every start; apiserver.sh restarts keep the apiserver's) ---------------------
ETCD_PORT="$(k8s_free_port)"; ETCD_PEER_PORT="$(k8s_free_port)"
APISERVER_PORT="$(k8s_free_port)"; KCM_PORT="$(k8s_free_port)"
cat >"$DIR/run/ports" <<P
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
K8S_BIN='$K8S_BIN'
P
SERVER="https://127.0.0.1:$APISERVER_PORT"
kubeconfig "$DIR/admin.kubeconfig" kst-admin "$PKI/admin.crt" "$PKI/admin.key" "$SERVER"
kubeconfig "$DIR/run/kcm.kubeconfig" system:kube-controller-manager "$PKI/kcm.crt" "$PKI/kcm.key" "$SERVER"

# ---- etcd ------------------------------------------------------------------------------------------
# A fresh start gets a fresh store (set KST_K8S_KEEP_DATA=1 to keep the previous one).
[[ "${KST_K8S_KEEP_DATA:-0}" == 1 ]] || rm -rf "$DIR/etcd"
# --unsafe-no-fsync: test data only, makes every write much cheaper. The v3 JSON gateway
# (/v3/kv/range, /v3/kv/compaction) is on the client port (used by compact.sh).
printf '%s\n' "$K8S_BIN/etcd" \
  --name=kst --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="kst=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state=new \
  --unsafe-no-fsync --snapshot-count=10000 --log-level=warn --enable-grpc-gateway \
  >"$DIR/run/etcd.args"
t=$SECONDS
k8s_launch "$DIR" etcd
for ((i = 0; ; i++)); do
  [[ "$(curl -s -m 1 "http://127.0.0.1:$ETCD_PORT/health" || true)" == *'"health":"true"'* ]] && break
  k8s_alive "$DIR" etcd || { tail -n 30 "$DIR/logs/etcd.log" >&2; k8s_die "etcd died"; }
  (( i < 300 )) || k8s_die "etcd not healthy after 60 s"
  sleep 0.2
done
k8s_log "etcd healthy on :$ETCD_PORT in $((SECONDS - t))s"

# ---- kube-apiserver ----------------------------------------------------------------------------------
# ServiceAccount admission is disabled: nothing mounts tokens without a kubelet, and it would reject
# Pods until the serviceaccount controller has created "default" in the namespace. A real node
# (tools/k8s/node-start.sh) needs it: KST_K8S_SERVICE_ACCOUNT_ADMISSION=1 keeps it enabled.
sa_admission=(--disable-admission-plugins=ServiceAccount)
[[ "${KST_K8S_SERVICE_ACCOUNT_ADMISSION:-0}" == 1 ]] && sa_admission=()
printf '%s\n' "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" --etcd-prefix=/registry \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --requestheader-client-ca-file="$PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112 \
  --authorization-mode=Node,RBAC \
  "${sa_admission[@]}" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --allow-privileged=true --profiling=false \
  --cert-dir="$DIR/run/apiserver-certs" \
  --v="${KST_K8S_APISERVER_V:-1}" \
  >"$DIR/run/kube-apiserver.args"
t=$SECONDS
k8s_launch "$DIR" kube-apiserver
k8s_wait_ok "$DIR" kube-apiserver "$SERVER/readyz" 120
k8s_log "kube-apiserver ready on :$APISERVER_PORT in $((SECONDS - t))s"

# ---- kube-controller-manager --------------------------------------------------------------------------
# node-lifecycle-controller is off: without a kubelet every Node goes NotReady/Unknown after the
# grace period, and that controller would then mark all its Pods Ready=False (and taint/evict them).
printf '%s\n' "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$DIR/run/kcm.kubeconfig" \
  --authentication-kubeconfig="$DIR/run/kcm.kubeconfig" --authorization-kubeconfig="$DIR/run/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
  --tls-cert-file="$PKI/kcm-serving.crt" --tls-private-key-file="$PKI/kcm-serving.key" \
  --client-ca-file="$PKI/ca.crt" \
  --controllers='*,-node-lifecycle-controller' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --leader-elect=false --allocate-node-cidrs=false \
  --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112 \
  --profiling=false --v="${KST_K8S_KCM_V:-1}" \
  >"$DIR/run/kube-controller-manager.args"
t=$SECONDS
k8s_launch "$DIR" kube-controller-manager
k8s_wait_ok "$DIR" kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" 120
# Functional probe: a Service with a selector and no Pods gets an (empty) EndpointSlice from the
# EndpointSlice controller as soon as that controller runs.
KC=("$K8S_BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig")
"${KC[@]}" -n default delete service kst-startup-probe --ignore-not-found --wait=false >/dev/null
"${KC[@]}" -n default create service clusterip kst-startup-probe --tcp=1:1 >/dev/null
for ((i = 0; ; i++)); do
  [[ -n "$("${KC[@]}" -n default get endpointslices -l kubernetes.io/service-name=kst-startup-probe \
      -o jsonpath='{.items[*].metadata.name}' 2>/dev/null)" ]] && break
  k8s_alive "$DIR" kube-controller-manager || k8s_die "kube-controller-manager died"
  (( i < 600 )) || { tail -n 30 "$DIR/logs/kube-controller-manager.log" >&2; k8s_die "no EndpointSlice from the endpointslice controller after 120 s"; }
  sleep 0.2
done
"${KC[@]}" -n default delete service kst-startup-probe --wait=false >/dev/null
k8s_log "kube-controller-manager (endpointslice controller running) in $((SECONDS - t))s"

k8s_write_env "$DIR"
K8S_STARTED=1
k8s_log "control plane up in $((SECONDS - T0))s: source $DIR/env"
