#!/usr/bin/env bash
# Turn this machine into a real Kubernetes node of the control plane in DIR (tools/k8s/start.sh,
# started with KST_K8S_SERVICE_ACCOUNT_ADMISSION=1 so pods get ServiceAccount tokens):
# kube-scheduler, containerd (Debian package: own config, root, state dir and socket, never the
# system one), CNI bridge + host-local + loopback (Debian containernetworking-plugins), kubelet.
#
#   tools/k8s/node-start.sh DIR NODE_NAME POD_CIDR BRIDGE [IMAGE_ARCHIVE...]
#
# The node is this machine's own network namespace: pods get POD_CIDR addresses on BRIDGE, and
# hostNetwork pods reach the apiserver through the in-cluster address 10.96.0.1:443 (held on lo,
# DNATed to the loopback apiserver; no kube-proxy). IMAGE_ARCHIVEs (OCI tars, tools/node/images.sh)
# are imported into containerd's k8s.io namespace before the kubelet starts; the sandbox image is
# kst.local/pause:1. Everything lives in DIR/node; DIR/node/env is written for the caller.
# tools/k8s/node-stop.sh DIR undoes all of it (also after a failed start).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -ge 4 ]] || k8s_die "usage: $0 DIR NODE_NAME POD_CIDR BRIDGE [IMAGE_ARCHIVE...]"
DIR="$(k8s_dir "$1")"; NODE="$2"; POD_CIDR="$3"; BRIDGE="$4"; shift 4
[[ -f "$DIR/env" ]] || k8s_die "$DIR/env missing (run tools/k8s/start.sh first)"
# shellcheck disable=SC1091
source "$DIR/env"
N="$DIR/node"
mkdir -p "$N"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs} "$DIR/run" "$DIR/logs"
T0=$SECONDS

for b in kube-scheduler kubelet; do
  [[ -x "$KST_K8S_BIN/$b" ]] || k8s_die "$KST_K8S_BIN/$b missing (run tools/k8s/build.sh)"
done
for b in containerd containerd-shim-runc-v2 runc ctr; do
  command -v "$b" >/dev/null || k8s_die "$b not installed (Debian packages containerd, runc)"
done
for p in bridge host-local loopback; do
  [[ -x /usr/lib/cni/$p ]] || k8s_die "/usr/lib/cni/$p missing (Debian package containernetworking-plugins)"
done

k8s_undo_on_failure "node start" "$K8S_TOOLS_DIR/node-stop.sh" "$DIR"

# ---- host settings the kubelet and the bridge change; node-stop.sh restores them ---------------
# The kubelet sets these kernel defaults (protectKernelDefaults would only refuse to start).
if [[ ! -f "$N/sysctl.saved" ]]; then
  for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
           kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward; do
    echo "$k=$(sysctl -n "$k")"
  done >"$N/sysctl.saved"
fi
sysctl -qw net.ipv4.ip_forward=1

# ---- PKI: kubelet (Node authorizer identity) and scheduler client certificates --------------------
[[ -s "$DIR/pki/kubelet-$NODE.crt" ]] ||
  k8s_leaf "$DIR" "kubelet-$NODE" "/O=system:nodes/CN=system:node:$NODE" clientAuth
[[ -s "$DIR/pki/scheduler.crt" ]] || k8s_leaf "$DIR" scheduler "/CN=system:kube-scheduler" clientAuth
[[ -s "$DIR/pki/scheduler-serving.crt" ]] ||
  k8s_leaf "$DIR" scheduler-serving "/CN=kube-scheduler" serverAuth "IP:127.0.0.1,DNS:localhost"
k8s_kubeconfig "$DIR" "$N/kubelet.kubeconfig" "system:node:$NODE" \
  "$DIR/pki/kubelet-$NODE.crt" "$DIR/pki/kubelet-$NODE.key" "$APISERVER_URL"
k8s_kubeconfig "$DIR" "$N/scheduler.kubeconfig" system:kube-scheduler \
  "$DIR/pki/scheduler.crt" "$DIR/pki/scheduler.key" "$APISERVER_URL"

# ---- in-cluster apiserver address for hostNetwork pods ----------------------------------------------
# Pods get KUBERNETES_SERVICE_HOST=10.96.0.1 (the "kubernetes" Service). Holding the address on lo
# keeps that traffic on this machine even before the DNAT rule exists.
ip addr replace 10.96.0.1/32 dev lo
nft -f - <<NFT
table ip kst_realnode_api
delete table ip kst_realnode_api
table ip kst_realnode_api {
  chain out {
    type nat hook output priority -100; policy accept;
    ip daddr 10.96.0.1 tcp dport 443 dnat to 127.0.0.1:$APISERVER_PORT
  }
}
NFT
echo "$BRIDGE" >"$N/bridge"

# ---- kube-scheduler ------------------------------------------------------------------------------------
SCHED_PORT="$(k8s_free_port)"
printf '%s\n' "$KST_K8S_BIN/kube-scheduler" \
  --kubeconfig="$N/scheduler.kubeconfig" \
  --authentication-kubeconfig="$N/scheduler.kubeconfig" --authorization-kubeconfig="$N/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
  --tls-cert-file="$DIR/pki/scheduler-serving.crt" --tls-private-key-file="$DIR/pki/scheduler-serving.key" \
  --leader-elect=false --profiling=false --v=1 >"$DIR/run/kube-scheduler.args"
k8s_launch "$DIR" kube-scheduler
k8s_wait_ok "$DIR" kube-scheduler "https://127.0.0.1:$SCHED_PORT/healthz" 60

# ---- containerd ---------------------------------------------------------------------------------------
SOCK="$N/containerd/containerd.sock"
cat >"$N/containerd/config.toml" <<TOML
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kst.local/pause:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  # No process here may lower its oom_score_adj (CAP_SYS_RESOURCE is not in the bounding set), and
  # the CRI gives sandboxes -998: runc fails with "can't get final child's PID from pipe: EOF"
  # ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied"). Clamp instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$N/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
    max_conf_num = 1
TOML
gw="$(sed -E 's#^([0-9]+\.[0-9]+\.[0-9]+)\.[0-9]+/.*#\1.1#' <<<"$POD_CIDR")"
cat >"$N/cni/net.d/10-kst-realnode.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kst-realnode",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam",
               "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$gw"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
JSON
printf '%s\n' "$(command -v containerd)" --config="$N/containerd/config.toml" --log-level=info \
  >"$DIR/run/containerd.args"
k8s_launch "$DIR" containerd
CTR=(ctr --address "$SOCK" -n k8s.io)
for ((i = 0; ; i++)); do
  "${CTR[@]}" version >/dev/null 2>&1 && break
  k8s_alive "$DIR" containerd || { tail -n 30 "$DIR/logs/containerd.log" >&2; k8s_die "containerd died"; }
  (( i < 150 )) || k8s_die "containerd not answering on $SOCK after 30 s"
  sleep 0.2
done
k8s_log "containerd up ($SOCK)"
for a in "$@"; do
  t=$SECONDS
  "${CTR[@]}" images import --snapshotter overlayfs "$a" >>"$DIR/logs/ctr-import.log" 2>&1 ||
    { tail -n 20 "$DIR/logs/ctr-import.log" >&2; k8s_die "ctr images import $a failed"; }
  k8s_log "imported $(basename "$a") in $((SECONDS - t))s"
done

# ---- kubelet -------------------------------------------------------------------------------------------
# cgroup v1 here: failCgroupV1 false, cgroupfs driver (containerd 1.6 cannot report its driver to
# the kubelet through the CRI, which falls back to this setting). No swap check. Its own root dir.
KUBELET_PORT="$(k8s_free_port)"; KUBELET_HEALTHZ_PORT="$(k8s_free_port)"
cat >"$N/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization:
  mode: AlwaysAllow
podLogsDir: $N/pod-logs
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
enableServer: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
YAML
printf '%s\n' "$KST_K8S_BIN/kubelet" \
  --config="$N/kubelet-config.yaml" --kubeconfig="$N/kubelet.kubeconfig" \
  --root-dir="$N/kubelet" --cert-dir="$N/kubelet/pki" \
  --hostname-override="$NODE" --v="${KST_K8S_KUBELET_V:-1}" >"$DIR/run/kubelet.args"
k8s_launch "$DIR" kubelet
KC=("$KUBECTL" --kubeconfig="$DIR/admin.kubeconfig")
t=$SECONDS
for ((i = 0; ; i++)); do
  ready="$("${KC[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  [[ "$ready" == True ]] && break
  k8s_alive "$DIR" kubelet || { tail -n 40 "$DIR/logs/kubelet.log" >&2; k8s_die "kubelet died"; }
  (( i < 600 )) || { tail -n 40 "$DIR/logs/kubelet.log" >&2; k8s_die "node $NODE not Ready after 120 s"; }
  sleep 0.2
done
k8s_log "node $NODE Ready $((SECONDS - t))s after the kubelet started"
# The apiserver taints a new Node not-ready:NoSchedule; the node-lifecycle controller, which would
# lift it once the kubelet reports Ready, is off in this control plane (start.sh).
"${KC[@]}" taint node "$NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true

cat >"$N/env" <<ENV
# generated by tools/k8s/node-start.sh — source me
export KST_NODE_NAME='$NODE'
export KST_NODE_DIR='$N'
export CONTAINERD_ADDRESS='$SOCK'
export KUBELET_PORT=$KUBELET_PORT
export KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
export SCHEDULER_PORT=$SCHED_PORT
ENV
K8S_STARTED=1
k8s_log "real node up in $((SECONDS - T0))s: source $N/env"
