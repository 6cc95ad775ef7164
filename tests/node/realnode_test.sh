#!/usr/bin/env bash
# The real-node suite (CTest label "node"): this machine becomes a Kubernetes node — kubelet
# (built from the same module as the control plane), containerd + runc + CNI bridge from Debian
# packages, images built without a registry — and runs the project's DaemonSets from deploy/.
#
#   tests/node/realnode_test.sh BUILD_DIR
#
# Checks, in order:
#   1. kubectl apply of deploy/ brings the router and agent DaemonSets to Ready on the node
#      (labelled node=tunnel, so the router runs there too); the DaemonSets get one knob, their
#      own link prefix and route protocol (see deploy_manifests below);
#   2. a Deployment of real pods behind an annotated Service receives VIP traffic from a client
#      network namespace and sees the client's own source address;
#   3. the agent found containerd's pod namespaces by itself (its arguments carry no --netns-dir):
#      the VIP sits in every endpoint pod's network namespace;
#   4. a pod sandbox restart (the pause process killed: the kubelet makes a new sandbox, hence a
#      new network namespace and address, for the same pod) gets the VIP again and traffic;
#   5. a deleted pod's replacement gets the VIP and traffic.
# Addresses: pods 198.19.64.0/24 on bridge rnbr<pid>, client 198.18.64.10 behind veth
# 198.18.64.1 (benchmarking range), VIP 203.0.113.60 (documentation range, blackholed in the main
# table so that nothing but the router's own tables ever routes it). Everything is removed on exit,
# also when a check fails. Prints "N passed, N failed" and the suite's time.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)"
T0=$SECONDS
P="rn$$"
DIR="/tmp/$P-k8s"
NODE="kst-node-$$"
BRIDGE="rnbr$$"
CLIENT_NS="$P-cl"
VETH="${P}c"
POD_CIDR=198.19.64.0/24
VIP=203.0.113.60
CLIENT_IP=198.18.64.10
APP_NS=rn-web
OWN=(TUNNEL_LINK_PREFIX=krn TUNNEL_ROUTE_PROTOCOL=212)
passed=0; failed=0

log() { printf '[realnode %(%H:%M:%S)T +%ss] %s\n' -1 "$((SECONDS - T0))" "$*"; }
pass() { passed=$((passed + 1)); log "PASS: $*"; }
fail() { failed=$((failed + 1)); log "FAIL: $*"; }
k() { "$KUBECTL" --kubeconfig="$DIR/admin.kubeconfig" "$@"; }
# wait_for SECONDS CMD...: until CMD succeeds
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    (( SECONDS < end )) || return 1
    sleep 0.2
  done
}
diagnose() {
  log "---- diagnostics"
  k get nodes,pods -A -o wide 2>&1 | head -40
  # (kubectl logs would need the apiserver to reach the kubelet, which listens on 127.0.0.1 only.)
  local f
  for f in "$DIR"/node/pod-logs/kube-service-tunnel_*/*/*.log; do
    [[ -f "$f" ]] && { echo "== $f"; tail -n 20 "$f"; }
  done
  tail -n 20 "$DIR/logs/kubelet.log" 2>/dev/null
}

# One real node per machine: it owns the host namespace's router state, 10.96.0.1 and the DNAT.
exec 8>/run/lock/kst-realnode.lock
flock -w 900 8 || { echo "another real-node run holds /run/lock/kst-realnode.lock"; echo "0 passed, 1 failed"; exit 1; }
# With the lock held, any other run's directory is a leftover of a run that was killed.
for d in /tmp/rn*-k8s; do
  [[ -d "$d" && "$d" != "$DIR" ]] || continue
  old="$(basename "$d" -k8s)"
  log "removing the leftovers of $old"
  "$ROOT/tools/k8s/stop.sh" "$d" --purge >/dev/null 2>&1
  env "${OWN[@]}" "$BUILD/src/kube-service-tunnel" cleanup --role router >/dev/null 2>&1
  ip netns del "$old-cl" 2>/dev/null
  ip link del "${old}c" 2>/dev/null
  ip route del blackhole "$VIP/32" 2>/dev/null
done

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "cleanup"
  if [[ -f "$DIR/env" ]]; then
    # Pods first, through the kubelet (CNI DEL, unmounts); node-stop.sh forces what is left.
    k delete namespace "$APP_NS" --wait=false >/dev/null 2>&1
    k delete -f "$ROOT/deploy/" --wait=false >/dev/null 2>&1
    wait_for 60 bash -c "[[ -z \"\$('$KUBECTL' --kubeconfig='$DIR/admin.kubeconfig' get pods -A --field-selector spec.nodeName=$NODE -o name 2>/dev/null)\" ]]" ||
      log "pods still present after 60 s; forcing"
  fi
  "$ROOT/tools/k8s/node-stop.sh" "$DIR" >/dev/null 2>&1
  # The DaemonSets leave their kernel state in place on purpose (a restart must not drop packets).
  env "${OWN[@]}" "$BUILD/src/kube-service-tunnel" cleanup --role router >/dev/null 2>&1 ||
    log "kube-service-tunnel cleanup failed"
  "$ROOT/tools/k8s/stop.sh" "$DIR" --purge >/dev/null 2>&1
  ip netns del "$CLIENT_NS" 2>/dev/null
  ip link del "$VETH" 2>/dev/null
  ip route del blackhole "$VIP/32" 2>/dev/null
  log "suite time $((SECONDS - T0)) s"
  echo "$passed passed, $failed failed"
  (( rc == 0 && failed == 0 )) || exit 1
  exit 0
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- the node ----------------------------------------------------------------------------------
K8S_BIN="$("$ROOT/tools/k8s/build.sh" | tail -1)" || { fail "tools/k8s/build.sh"; exit 1; }
KUBECTL="$K8S_BIN/kubectl"
"$ROOT/tools/node/images.sh" "$BUILD" "$DIR/images" || { fail "images"; exit 1; }
log "images built"
# The client namespace first: it makes /run/netns a shared mount, which the agent's
# HostToContainer volume needs.
ip netns add "$CLIENT_NS"
ip link add "$VETH" type veth peer name eth0 netns "$CLIENT_NS"
ip addr add 198.18.64.1/24 dev "$VETH"
ip link set "$VETH" up
ip -n "$CLIENT_NS" addr add "$CLIENT_IP/24" dev eth0
ip -n "$CLIENT_NS" link set eth0 up
ip -n "$CLIENT_NS" link set lo up
ip -n "$CLIENT_NS" route add 203.0.113.0/24 via 198.18.64.1
ip route add blackhole "$VIP/32"

# (8>&-: the daemons must not inherit the lock.)
# One more try when a component dies at once (seen in CI; start.sh undoes a failed start).
KST_K8S_SERVICE_ACCOUNT_ADMISSION=1 "$ROOT/tools/k8s/start.sh" "$DIR" 8>&- ||
  { log "control plane start failed, trying once more";
    KST_K8S_SERVICE_ACCOUNT_ADMISSION=1 "$ROOT/tools/k8s/start.sh" "$DIR" 8>&-; } ||
  { fail "control plane"; exit 1; }
"$ROOT/tools/k8s/node-start.sh" "$DIR" "$NODE" "$POD_CIDR" "$BRIDGE" \
  "$DIR/images/pause.oci.tar" "$DIR/images/product.oci.tar" "$DIR/images/testtool.oci.tar" 8>&- ||
  { fail "node start"; exit 1; }
pass "node $NODE registered and Ready (kubelet + containerd + CNI) at +$((SECONDS - T0))s"
# shellcheck disable=SC1091
source "$DIR/node/env"
CTR=(ctr --address "$CONTAINERD_ADDRESS" -n k8s.io)

# ---- 1. deploy/ ---------------------------------------------------------------------------------
k label node "$NODE" node=tunnel >/dev/null
# deploy/ as it is (with the test's VIP as the pool), plus one knob: the DaemonSets run in this machine's own namespace, where the
# agent (hostPID) sees every network namespace of the machine — also those of other test suites
# running at the same time, whose kst* devices and protocol-211 addresses it would adopt and
# remove. Its own link prefix and route protocol keep the real node's state apart.
deploy_manifests() {
  local f
  for f in "$ROOT"/deploy/*.yaml; do
    echo "---"
    if grep -q '^kind: DaemonSet' "$f"; then
      # The bird2 sidecar (announcement, tested with a real FRR DC router by the privileged
      # kst_announce_test) has no image here and no BGP peer: the router runs without it and
      # without an announce table.
      k set env --local -o yaml -f "$f" "${OWN[@]}" TUNNEL_ANNOUNCE_TABLE=0 |
        k patch --local -f - --type=strategic -o yaml \
          -p '{"spec":{"template":{"spec":{"containers":[{"name":"bird","$patch":"delete"}]}}}}'
    elif grep -q '^  name: kube-service-tunnel-vip-pools' "$f"; then
      # The policy is default-deny: the test's VIP is the one pool (applied as an operator would
      # fill in 05-vip-pools.yaml).
      k patch --local -f "$f" --type=merge -o yaml \
        -p "{\"data\":{\"TUNNEL_VIP_POOLS\":\"$VIP/32\"}}"
    else
      cat "$f"
    fi
  done
}
if deploy_manifests | k apply -f - >/dev/null &&
   k -n kube-service-tunnel rollout status ds/kube-service-tunnel-router --timeout=180s >/dev/null &&
   k -n kube-service-tunnel rollout status ds/kube-service-tunnel-agent --timeout=180s >/dev/null; then
  pass "kubectl apply -f deploy/: router and agent DaemonSets Ready at +$((SECONDS - T0))s"
else
  fail "DaemonSets not Ready"; diagnose; exit 1
fi
agent_args="$(k -n kube-service-tunnel get ds kube-service-tunnel-agent -o jsonpath='{.spec.template.spec.containers[0].args}')"
if [[ "$agent_args" != *netns-dir* ]]; then pass "agent runs without --netns-dir hints ($agent_args)"
else fail "agent has a --netns-dir hint: $agent_args"; fi

# ---- 2. a Deployment behind an annotated Service ---------------------------------------------------
k apply -f - >/dev/null <<YAML || { fail "workload"; exit 1; }
apiVersion: v1
kind: Namespace
metadata: {name: $APP_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $APP_NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: kst.local/kst-testtool:1
          imagePullPolicy: Never
          args: ["serve", "\$(POD_NAME)", "8080"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: $APP_NS
  annotations: {cmd.nu/tunnel: "$VIP"}
spec:
  selector: {app: web}
  ports: [{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]
YAML
k -n "$APP_NS" rollout status deploy/web --timeout=120s >/dev/null || { fail "web pods not Ready"; diagnose; exit 1; }

pods() { k -n "$APP_NS" get pods -l app=web --field-selector=status.phase=Running \
           -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort; }
# Answers of N TCP connections from the client: "POD SOURCE" lines.
tcp_answers() { ip netns exec "$CLIENT_NS" "$BUILD/tests/kst-testtool" tcp "$VIP" 8080 "$1" 2>/dev/null; }
# All of the given pods answer (over 40 connections), and every answer carries the client address.
served_by() {
  local want="$1" got
  got="$(tcp_answers 40)" || return 1
  grep -q FAIL <<<"$got" && return 1
  [[ "$(awk '{print $2}' <<<"$got" | sort -u)" == "$CLIENT_IP" ]] || return 1
  [[ "$(awk '{print $1}' <<<"$got" | sort -u)" == "$want" ]]
}
want="$(pods)"
if wait_for 60 served_by "$want"; then
  pass "VIP $VIP answered by both pods ($(tr '\n' ' ' <<<"$want")) with source $CLIENT_IP at +$((SECONDS - T0))s"
else
  fail "VIP traffic: $(tcp_answers 10 | sort | uniq -c | tr '\n' ';')"; diagnose
fi
udp="$(ip netns exec "$CLIENT_NS" "$BUILD/tests/kst-testtool" udp "$VIP" 8080 6 2>/dev/null)"
if [[ "$(awk '{print $2}' <<<"$udp" | sort -u)" == "$CLIENT_IP" ]]; then pass "UDP to the VIP answered; the pods saw source $CLIENT_IP"
else fail "UDP: $(tr '\n' ';' <<<"$udp")"; fi

# ---- 3. the VIP is in containerd's pod namespaces ----------------------------------------------------
# The PID of the pod's running sandbox task (pause), from containerd; its network namespace is the
# pod's. (After a sandbox restart the exited sandbox stays listed until the kubelet removes it.)
sandbox_pid() {
  local ids
  ids="$("${CTR[@]}" containers list -q \
           "labels.\"io.kubernetes.pod.name\"==$1,labels.\"io.cri-containerd.kind\"==sandbox" 2>/dev/null)"
  [[ -n "$ids" ]] || return 1
  "${CTR[@]}" tasks ls 2>/dev/null |
    awk 'NR == FNR {want[$1] = 1; next} ($1 in want) && $3 == "RUNNING" {print $2; exit}' <(echo "$ids") -
}
vip_in_pod() {
  local pid
  pid="$(sandbox_pid "$1")"; [[ -n "$pid" ]] || return 1
  nsenter -t "$pid" -n ip -o addr show 2>/dev/null | grep -q " $VIP/"
}
all_have_vip=1
for p in $want; do
  if wait_for 20 vip_in_pod "$p"; then :; else all_have_vip=0; log "no VIP in $p's namespace"; fi
done
if (( all_have_vip )); then pass "the agent put $VIP into each pod's containerd namespace"
else fail "VIP missing in a pod namespace"; fi

# ---- 4. sandbox restart: same pod, new network namespace ---------------------------------------------
victim="$(head -1 <<<"$want")"
old_pid="$(sandbox_pid "$victim")"
old_ns="$(readlink "/proc/$old_pid/ns/net" 2>/dev/null)"
old_ip="$(k -n "$APP_NS" get pod "$victim" -o jsonpath='{.status.podIP}')"
kill -KILL "$old_pid"
new_sandbox() {
  local pid ns
  pid="$(sandbox_pid "$victim")"; [[ -n "$pid" && "$pid" != "$old_pid" ]] || return 1
  ns="$(readlink "/proc/$pid/ns/net" 2>/dev/null)"; [[ -n "$ns" && "$ns" != "$old_ns" ]]
}
if wait_for 90 new_sandbox && k -n "$APP_NS" wait pod "$victim" --for=condition=Ready --timeout=90s >/dev/null &&
   wait_for 30 vip_in_pod "$victim" && wait_for 60 served_by "$want"; then
  pass "sandbox of $victim restarted (netns $old_ns -> $(readlink "/proc/$(sandbox_pid "$victim")/ns/net"), IP $old_ip -> $(k -n "$APP_NS" get pod "$victim" -o jsonpath='{.status.podIP}')): VIP and traffic again at +$((SECONDS - T0))s"
else
  fail "after the sandbox restart of $victim: $(tcp_answers 10 | sort | uniq -c | tr '\n' ';')"; diagnose
fi

# ---- 5. a deleted pod's replacement -------------------------------------------------------------------
k -n "$APP_NS" delete pod "$victim" --wait=false >/dev/null
replaced() { local now; now="$(pods)"; [[ "$now" != *"$victim"* && $(wc -l <<<"$now") -eq 2 ]]; }
if wait_for 90 replaced && k -n "$APP_NS" rollout status deploy/web --timeout=90s >/dev/null; then
  old_want="$want"; want="$(pods)"
  new="$(comm -13 <(echo "$old_want") <(echo "$want") | head -1)"
  if wait_for 60 served_by "$want" && wait_for 20 vip_in_pod "$new"; then
    pass "replacement pod answers on the VIP ($(tr '\n' ' ' <<<"$want")) at +$((SECONDS - T0))s"
  else
    fail "replacement pod: $(tcp_answers 10 | sort | uniq -c | tr '\n' ';')"; diagnose
  fi
else
  fail "no replacement pod"; diagnose
fi
