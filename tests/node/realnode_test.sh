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
# The web pods carry the VIP readiness gate cmd.nu/vip-ready (docs/readiness-gate.md), so 2-5
# also need the agent's condition; then
#   6. agent stopped (its DaemonSet pinned away from the node): a new pod stays NotReady and
#      gets no flows;
#   7. agent started again: the pod is Ready within 2 s of its VIP appearing (measured, printed);
#   8. the decap device deleted by hand in a pod: its condition goes False and its buckets move
#      (the published bucket table drops it), then back once the agent has repaired it;
#   9. the bpf datapath, switched on through the router's ConfigMap (15-router-datapath.yaml)
#      as an operator would: the init container mount-bpffs succeeds, the router container
#      attaches the program on the client-facing interface (tc, from the node) with its pins in
#      the node's bpffs, no nft table, and the VIP is served with the client's source; the
#      agents' pod-side decapsulation switched on through their ConfigMap
#      (16-agent-datapath.yaml): the program in every web pod, the pods' decap devices receive
#      none of the client's datagrams, and switched back no program is left; a deleted
#      router pod's replacement adopts program and maps (same program and map ids, the flow
#      pins kept, no kernel change); switched back to nft, no filter and no pin remain and the
#      VIP is served again;
#  10. kube-proxy (nftables mode, from the same Kubernetes build) runs on the node: a
#      LoadBalancer Service of another class (example.com/test) with the tunnel annotation and
#      status ingress [{ip: VIP2, ipMode: Proxy}] is left alone — the pods get the VIP as
#      destination on any port, so the Service port 80 reaches the pods' port 80 (nothing listens:
#      refused) and 8080 answers —; written as ipMode: VIP, kube-proxy intercepts the Service
#      port (80 is DNATed to the pods' 8080 and answered).
# Addresses: pods 198.19.64.0/24 on bridge rnbr<pid>, client 198.18.64.10 behind veth
# 198.18.64.1 (benchmarking range), VIPs 203.0.113.60 and .61 (documentation range, the suite's
# VIP range 203.0.113.60-63; blackholed in the main table so that nothing but the router's own
# tables ever routes them). Everything is removed on exit,
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
VIP2=203.0.113.61
CLIENT_IP=198.18.64.10
APP_NS=rn-web
OWN=(TUNNEL_LINK_PREFIX=krn TUNNEL_ROUTE_PROTOCOL=212)
# The bpf datapath's pins (check 9), in the node's bpffs under the suite's own name.
BPF_PIN=/sys/fs/bpf/krn
BPF_OWN=(TUNNEL_BPF_PIN_DIR="$BPF_PIN")
BPFFS_RESTORE=""
passed=0; failed=0
BG_PIDS=(); KUBE_PROXY_PID=""

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
  env "${OWN[@]}" "${BPF_OWN[@]}" "$BUILD/src/kube-service-tunnel" cleanup --role router >/dev/null 2>&1
  ip netns del "$old-cl" 2>/dev/null
  ip link del "${old}c" 2>/dev/null
  ip route del blackhole "$VIP/32" 2>/dev/null
  ip route del blackhole "$VIP2/32" 2>/dev/null
done
# How a killed run found /sys/fs/bpf (see the node's set-up below).
for r in /tmp/rn*-k8s.bpffs; do
  [[ -f "$r" ]] || continue
  case "$(cat "$r")" in
    private) mount --make-private /sys/fs/bpf ;;
    umount) umount /sys/fs/bpf ;;
  esac
  rm -f "$r"
done
# kube-proxy runs only inside this suite (check 10): a table of it is a killed run's.
nft delete table ip kube-proxy 2>/dev/null
nft delete table ip6 kube-proxy 2>/dev/null

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "cleanup"
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  if [[ -n "$KUBE_PROXY_PID" ]]; then
    kill "$KUBE_PROXY_PID" 2>/dev/null; wait "$KUBE_PROXY_PID" 2>/dev/null
  fi
  # kube-proxy's own tables (nftables mode; it rejects 10.96.0.1, whose only endpoint is the
  # loopback apiserver, which the DaemonSets reach through it).
  nft delete table ip kube-proxy 2>/dev/null
  nft delete table ip6 kube-proxy 2>/dev/null
  if [[ -f "$DIR/env" ]]; then
    # Pods first, through the kubelet (CNI DEL, unmounts); node-stop.sh forces what is left.
    k delete namespace "$APP_NS" --wait=false >/dev/null 2>&1
    k delete -f "$ROOT/deploy/" --wait=false >/dev/null 2>&1
    wait_for 60 bash -c "[[ -z \"\$('$KUBECTL' --kubeconfig='$DIR/admin.kubeconfig' get pods -A --field-selector spec.nodeName=$NODE -o name 2>/dev/null)\" ]]" ||
      log "pods still present after 60 s; forcing"
  fi
  "$ROOT/tools/k8s/node-stop.sh" "$DIR" >/dev/null 2>&1
  # The DaemonSets leave their kernel state in place on purpose (a restart must not drop packets).
  env "${OWN[@]}" "${BPF_OWN[@]}" "$BUILD/src/kube-service-tunnel" cleanup --role router >/dev/null 2>&1 ||
    log "kube-service-tunnel cleanup failed"
  case "$BPFFS_RESTORE" in
    private) mount --make-private /sys/fs/bpf ;;
    umount) umount /sys/fs/bpf ;;
  esac
  rm -f "$DIR.bpffs"
  "$ROOT/tools/k8s/stop.sh" "$DIR" --purge >/dev/null 2>&1
  ip netns del "$CLIENT_NS" 2>/dev/null
  ip link del "$VETH" 2>/dev/null
  ip route del blackhole "$VIP/32" 2>/dev/null
  ip route del blackhole "$VIP2/32" 2>/dev/null
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
ip route add blackhole "$VIP2/32"
# The router pod's /sys/fs/bpf volumes (Bidirectional in its init container, HostToContainer in
# the router) need a shared mount there, as systemd makes every mount; this machine has no
# systemd. Put back as found at the end.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf && BPFFS_RESTORE=umount
elif [[ "$(findmnt -no PROPAGATION /sys/fs/bpf)" == private ]]; then
  BPFFS_RESTORE=private
fi
mount --make-shared /sys/fs/bpf
echo "$BPFFS_RESTORE" >"$DIR.bpffs"

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
    elif grep -q '^kind: ConfigMap' "$f" && grep -q '^  name: kube-service-tunnel-router$' "$f"; then
      # The router's datapath stays nft until check 9; the bpf knobs an operator would set:
      # the pins under the suite's own name, the program on the client-facing interface only
      # (by default it goes on every interface of the host namespace: other suites' too).
      k patch --local -f "$f" --type=merge -o yaml \
        -p "{\"data\":{\"TUNNEL_BPF_PIN_DIR\":\"$BPF_PIN\",\"TUNNEL_BPF_INGRESS\":\"$VETH\"}}"
    elif grep -q '^  name: kube-service-tunnel-vip-pools' "$f"; then
      # The policy is default-deny: the test's two VIPs are the pools (applied as an operator
      # would fill in 05-vip-pools.yaml): $VIP the annotated web Service, $VIP2 the
      # LoadBalancer Service of the kube-proxy check.
      k patch --local -f "$f" --type=merge -o yaml \
        -p "{\"data\":{\"TUNNEL_VIP_POOLS\":\"$VIP/32 $VIP2/32\"}}"
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
      readinessGates: [{conditionType: cmd.nu/vip-ready}]
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

# ---- 6. VIP readiness gate: agent stopped → a new pod stays NotReady, no flows ----------------------
ANS=kube-service-tunnel
AGENT_SEL=app.kubernetes.io/component=agent
agent_pods() { k -n "$ANS" get pods -l "$AGENT_SEL" --field-selector "spec.nodeName=$NODE" -o name 2>/dev/null; }
gate_of() { k -n "$APP_NS" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="cmd.nu/vip-ready")].status}' 2>/dev/null; }
ready_of() { k -n "$APP_NS" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null; }
# The agent DaemonSet pinned to no node: its pod goes, its kernel state stays (by design).
k -n "$ANS" patch ds kube-service-tunnel-agent --type=merge \
  -p '{"spec":{"template":{"spec":{"nodeSelector":{"kst.test/agent-paused":"true"}}}}}' >/dev/null
if ! wait_for 60 bash -c "[[ -z \"\$('$KUBECTL' --kubeconfig='$DIR/admin.kubeconfig' -n $ANS get pods -l $AGENT_SEL -o name 2>/dev/null)\" ]]"; then
  fail "agent pod still present 60 s after pinning it away"; diagnose
fi
before="$(pods)"
k -n "$APP_NS" scale deploy/web --replicas=3 >/dev/null
new_pod() { local now; now="$(pods)"; gated="$(comm -13 <(echo "$before") <(echo "$now") | head -1)"; [[ -n "$gated" ]]; }
gated=""
if wait_for 60 new_pod && k -n "$APP_NS" wait pod "$gated" --for=condition=ContainersReady --timeout=60s >/dev/null; then
  sleep 3  # time enough to turn Ready if the gate were not honoured
  gpid="$(sandbox_pid "$gated")"
  got="$(tcp_answers 40)"
  if [[ "$(ready_of "$gated")" == False && "$(gate_of "$gated")" != True ]] &&
     ! nsenter -t "$gpid" -n ip -o addr show 2>/dev/null | grep -q " $VIP/" &&
     ! grep -q "^$gated " <<<"$got" && [[ -n "$got" ]] && ! grep -q FAIL <<<"$got"; then
    pass "agent stopped: new pod $gated has ready containers but stays NotReady (gate '$(gate_of "$gated")'), no VIP, 0 of 40 connections ($(awk '{print $1}' <<<"$got" | sort | uniq -c | tr '\n' ' '))"
  else
    fail "agent stopped: pod $gated Ready=$(ready_of "$gated") gate=$(gate_of "$gated"); answers: $(awk '{print $1}' <<<"$got" | sort | uniq -c | tr '\n' ';')"
  fi
else
  fail "no third web pod with ready containers"; diagnose
fi

# ---- 7. agent started: Ready within 2 s of the VIP being in place -------------------------------------
k -n "$ANS" patch ds kube-service-tunnel-agent --type=merge \
  -p '{"spec":{"template":{"spec":{"nodeSelector":null}}}}' >/dev/null
if [[ -n "$gated" && -n "$gpid" ]]; then
  t_vip=""; t_ready=""
  end=$((SECONDS + 90))
  while (( SECONDS < end )); do
    if nsenter -t "$gpid" -n ip -o addr show 2>/dev/null | grep -q " $VIP/"; then t_vip="$(date +%s%N)"; break; fi
    sleep 0.05
  done
  if [[ -n "$t_vip" ]]; then
    end=$((SECONDS + 30))
    while (( SECONDS < end )); do
      if [[ "$(ready_of "$gated")" == True ]]; then t_ready="$(date +%s%N)"; break; fi
      sleep 0.05
    done
  fi
  if [[ -n "$t_ready" ]]; then
    ms=$(( (t_ready - t_vip) / 1000000 ))
    log "gate: VIP in $gated's namespace -> pod Ready: $ms ms (polled: VIP every 50 ms, kubectl every 50 ms + its own time)"
    if (( ms <= 2000 )) && wait_for 60 served_by "$(pods)"; then
      pass "agent started: $gated Ready $ms ms after its VIP appeared (<= 2000), now served with the others"
    else
      fail "agent started: Ready after $ms ms; answers: $(tcp_answers 20 | awk '{print $1}' | sort | uniq -c | tr '\n' ';')"
    fi
  else
    fail "agent started: VIP at ${t_vip:-never}, Ready at never (gate '$(gate_of "$gated")')"; diagnose
  fi
else
  fail "agent started: no gated pod to watch"
fi
wait_for 60 bash -c "[[ -n \"\$('$KUBECTL' --kubeconfig='$DIR/admin.kubeconfig' -n $ANS get pods -l $AGENT_SEL -o name 2>/dev/null)\" ]]" &&
  k -n "$ANS" rollout status ds/kube-service-tunnel-agent --timeout=90s >/dev/null

# ---- 8. decap device deleted by hand: condition False, buckets move, then back -------------------------
# One of the pods that were Ready before check 6 (their place in the table is settled).
victim="$(pods | grep -vx "$gated" | head -1)"
vpid="$(sandbox_pid "$victim")"
vip_ip="$(k -n "$APP_NS" get pod "$victim" -o jsonpath='{.status.podIP}')"
dev="$(nsenter -t "$vpid" -n ip -o link show 2>/dev/null | grep -o 'krn[^:@ ]*' | head -1)"
# Watch both sides while it happens: the pod's condition and the published bucket tables.
k -n "$APP_NS" get pod "$victim" -w -o jsonpath='{.status.conditions[?(@.type=="cmd.nu/vip-ready")].status}{"\n"}' \
  >"$DIR/gate.log" 2>/dev/null &
BG_PIDS+=($!)
k -n "$ANS" get cm -l app.kubernetes.io/managed-by=kube-service-tunnel -w -o jsonpath='{.data.table}{"\n"}' \
  >"$DIR/tables.log" 2>/dev/null &
BG_PIDS+=($!)
sleep 2
# The web Service is the only tunnelled one so far: every table line is its table.
web_table_lines() { grep '"endpoints"' "$DIR/tables.log"; }
in_table() { [[ "$(web_table_lines | tail -1)" == *"\"ip\":\"$vip_ip\""* ]] && [[ "$(tail -1 "$DIR/gate.log")" == True ]]; }
wait_for 30 in_table || log "before the deletion: $victim ($vip_ip) not in the last published table or not True"
# Only what the watches print after the deletion counts.
n_gate=$(wc -l <"$DIR/gate.log"); n_tab=$(web_table_lines | wc -l)
after_gate() { tail -n +$((n_gate + 1)) "$DIR/gate.log"; }
after_tab() { web_table_lines | tail -n +$((n_tab + 1)); }
t_del=$SECONDS
if [[ -n "$dev" ]] && in_table && nsenter -t "$vpid" -n ip link del "$dev"; then
  log "deleted $dev in $victim ($vip_ip)"
  went_false() { after_gate | grep -q '^False$'; }
  came_back() { after_gate | awk '/^False$/{f=1} f && /^True$/{t=1} END{exit !t}'; }
  moved() { after_tab | grep -vq "\"ip\":\"$vip_ip\""; }
  back_in() { after_tab | awk -v ip="\"ip\":\"$vip_ip\"" '!index($0, ip){g=1} g && index($0, ip){b=1} END{exit !b}'; }
  if wait_for 30 went_false && wait_for 30 moved; then
    pass "device $dev deleted: $victim's condition False and its buckets moved (a published table without $vip_ip) within $((SECONDS - t_del)) s"
  else
    fail "device deleted: gate log $(tr '\n' ' ' <"$DIR/gate.log"); tables without $vip_ip: $(web_table_lines | grep -vc "$vip_ip")"
    diagnose
  fi
  if wait_for 60 came_back && wait_for 60 back_in && wait_for 60 served_by "$(pods)" &&
     nsenter -t "$vpid" -n ip -o link show "$dev" >/dev/null 2>&1; then
    pass "repaired: $dev back, condition True, $victim back in the table and served at +$((SECONDS - t_del)) s after the deletion"
  else
    fail "after the repair: gate log $(tr '\n' ' ' <"$DIR/gate.log"); answers $(tcp_answers 20 | awk '{print $1}' | sort | uniq -c | tr '\n' ';')"
  fi
else
  fail "no decap device (krn*) found in $victim's namespace, or $victim not in the table before"
fi
for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
BG_PIDS=()

# ---- 9. the bpf datapath through the ConfigMap: attach, serve, restart adoption, back to nft -----
# Before kube-proxy (10): with it running, a restarted router could not reach the API.
RSEL=app.kubernetes.io/component=router
router_pod() {
  k -n "$ANS" get pods -l "$RSEL" --field-selector "spec.nodeName=$NODE,status.phase=Running" \
    -o jsonpath='{.items[0].metadata.name}' 2>/dev/null
}
pod_log() {  # POD CONTAINER: the container's log from the kubelet's podLogsDir
  cat "$DIR"/node/pod-logs/"${ANS}_$1"_*/"$2"/*.log 2>/dev/null
}
# The operator's way: the ConfigMap, then a rolling restart (the pods read it when they start).
set_datapath() {
  k -n "$ANS" patch cm kube-service-tunnel-router --type=merge \
    -p "{\"data\":{\"TUNNEL_DATAPATH\":\"$1\"}}" >/dev/null &&
    k -n "$ANS" rollout restart ds/kube-service-tunnel-router >/dev/null &&
    k -n "$ANS" rollout status ds/kube-service-tunnel-router --timeout=120s >/dev/null
}
# The program id of our filter (kst_router) on the client-facing interface's ingress ("": none).
filter_id() {
  tc filter show dev "$VETH" ingress 2>/dev/null |
    awk '/kst_router/ { for (i = 1; i < NF; i++) if ($i == "id") { print $(i + 1); exit } }'
}
# Ids of the pinned program and flow map; the number of flow pins.
pinned_id() { bpftool -j "$1" show pinned "$BPF_PIN/$2" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null; }
flow_pins() { bpftool -j map dump pinned "$BPF_PIN/flows" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null; }
nft_table() { nft list table inet kube_service_tunnel >/dev/null 2>&1; }
# Our filter on any interface of the node's namespace.
any_filter() {
  local l
  for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
    tc filter show dev "$l" ingress 2>/dev/null | grep -q kst_router && { echo "$l"; return 0; }
  done
  return 1
}
udp_from_client() {
  local udp
  udp="$(ip netns exec "$CLIENT_NS" "$BUILD/tests/kst-testtool" udp "$VIP" 8080 6 2>/dev/null)"
  [[ -n "$udp" && "$(awk '{print $2}' <<<"$udp" | sort -u)" == "$CLIENT_IP" ]]
}
t_bpf=$SECONDS
if set_datapath bpf; then
  rpod="$(router_pod)"
  init_rc="$(k -n "$ANS" get pod "$rpod" -o jsonpath='{.status.initContainerStatuses[0].state.terminated.exitCode}')"
  fid="$(filter_id)"
  if [[ "$init_rc" == 0 ]] && pod_log "$rpod" mount-bpffs | grep -q "bpffs ready" &&
     [[ -n "$fid" && "$fid" == "$(pinned_id prog prog)" ]] &&
     pod_log "$rpod" router | grep -q "bpf: attached on $VETH ingress" && ! nft_table; then
    pass "datapath bpf (ConfigMap + rollout restart, $((SECONDS - t_bpf)) s): init container mount-bpffs exited 0, router pod $rpod attached program $fid on $VETH ingress (tc on the node), pinned in the node's $BPF_PIN, no nft table"
  else
    fail "datapath bpf: init exit '$init_rc', filter '$fid', pinned '$(pinned_id prog prog)', nft table $(nft_table && echo present || echo absent)"
    diagnose
  fi
  if wait_for 60 served_by "$(pods)" && udp_from_client && (( $(flow_pins) > 0 )); then
    pass "bpf datapath: VIP $VIP answered by all pods over TCP and UDP with source $CLIENT_IP; $(flow_pins) flow pins"
  else
    fail "bpf datapath traffic: $(tcp_answers 10 | sort | uniq -c | tr '\n' ';') flow pins '$(flow_pins)'"; diagnose
  fi
  # The agents' pod side in BPF too (16-agent-datapath.yaml), the whole BPF path: each web pod
  # gets the decapsulation program on its interface, and the pods' decap devices (krn*) see
  # none of the client's datagrams.
  set_pod_decap() {
    k -n "$ANS" patch cm kube-service-tunnel-agent --type=merge \
      -p "{\"data\":{\"TUNNEL_POD_DECAP\":\"$1\"}}" >/dev/null &&
      k -n "$ANS" rollout restart ds/kube-service-tunnel-agent >/dev/null &&
      k -n "$ANS" rollout status ds/kube-service-tunnel-agent --timeout=120s >/dev/null
  }
  decap_pods() {  # how many web pods have our decapsulation program on one of their interfaces
    local n=0 p
    for p in $(pods); do
      # (The pod's links from ip, not /sys/class/net: nsenter -n keeps the node's sysfs.)
      nsenter -t "$(sandbox_pid "$p")" -n sh -c \
        'for l in $(ip -o link show | awk -F": " "{print \$2}" | cut -d@ -f1); do tc filter show dev "$l" ingress; done' \
        2>/dev/null | grep -q kst_pod_decap && n=$((n + 1))
    done
    echo "$n"
  }
  all_decap() { [[ "$(decap_pods)" == "$(pods | wc -l)" ]]; }
  no_decap() { [[ "$(decap_pods)" == 0 ]]; }
  dev_rx() {  # packets the web pods' decap devices received, summed
    local n=0 p v
    for p in $(pods); do
      # /proc/net/dev is the reading process's namespace's: "krn-vxg: bytes packets ...".
      v="$(nsenter -t "$(sandbox_pid "$p")" -n cat /proc/net/dev 2>/dev/null |
           awk -F'[: ]+' '$2 ~ /^krn/ {s += $4} END {print s + 0}')"
      n=$((n + v))
    done
    echo "$n"
  }
  if set_pod_decap bpf && wait_for 60 all_decap && wait_for 60 served_by "$(pods)"; then
    rx0="$(dev_rx)"
    if udp_from_client && udp_from_client && (( $(dev_rx) - rx0 == 0 )); then
      pass "pod decap bpf (agent ConfigMap + rollout restart): the program on all $(pods | wc -l) web pods, TCP and UDP answered with source $CLIENT_IP, the decap devices received 0 of 12 datagrams"
    else
      fail "pod decap bpf: decap devices received $(( $(dev_rx) - rx0 )) datagrams, or UDP failed"; diagnose
    fi
  else
    fail "pod decap bpf: programs on $(decap_pods) of $(pods | wc -l) web pods; $(tcp_answers 10 | sort | uniq -c | tr '\n' ';')"; diagnose
  fi
  if set_pod_decap device && wait_for 60 no_decap && wait_for 60 served_by "$(pods)"; then
    pass "pod decap device again: no program left in any web pod, VIP served"
  else
    fail "pod decap device again: programs left on $(decap_pods) web pods"; diagnose
  fi
  # Restart: the replacement pod adopts what the old one pinned.
  map_before="$(pinned_id map flows)"; pins_before="$(flow_pins)"
  k -n "$ANS" delete pod "$rpod" --wait=true --timeout=60s >/dev/null
  new_router() { local p; p="$(router_pod)"; [[ -n "$p" && "$p" != "$rpod" ]]; }
  if wait_for 90 new_router && k -n "$ANS" rollout status ds/kube-service-tunnel-router --timeout=90s >/dev/null; then
    rpod2="$(router_pod)"
    sleep 2  # a pass after Ready: nothing may change
    log2="$(pod_log "$rpod2" router)"
    if [[ "$(filter_id)" == "$fid" && "$(pinned_id prog prog)" == "$fid" && "$(pinned_id map flows)" == "$map_before" ]] &&
       (( $(flow_pins) >= pins_before )) && ! grep -q "kernel changes\|bpf: attached\|bpf: replaced" <<<"$log2" &&
       wait_for 30 served_by "$(pods)"; then
      pass "router pod restarted ($rpod -> $rpod2): program $fid and flow map $map_before adopted, $pins_before flow pins kept ($(flow_pins) now), no kernel change, VIP served"
    else
      fail "restart adoption: program $fid -> '$(filter_id)' (pinned '$(pinned_id prog prog)'), flow map $map_before -> '$(pinned_id map flows)', pins $pins_before -> '$(flow_pins)'; log: $(grep -m3 'kernel changes\|bpf:' <<<"$log2" | tr '\n' ';')"
      diagnose
    fi
  else
    fail "no replacement router pod"; diagnose
  fi
else
  fail "datapath bpf: the router DaemonSet did not roll out"; diagnose
fi
if set_datapath nft; then
  if left="$(any_filter)"; then fail "datapath nft again: a kst_router filter is left on $left"
  elif [[ -e "$BPF_PIN" ]]; then fail "datapath nft again: $BPF_PIN left: $(ls "$BPF_PIN" | tr '\n' ' ')"
  elif nft_table && wait_for 60 served_by "$(pods)"; then
    pass "datapath nft again: no bpf filter on any interface, no pin, the nft table back and the VIP served ($((SECONDS - t_bpf)) s for check 9)"
  else
    fail "datapath nft again: nft table $(nft_table && echo present || echo absent); $(tcp_answers 10 | sort | uniq -c | tr '\n' ';')"
  fi
else
  fail "datapath nft: the router DaemonSet did not roll out"; diagnose
fi

# ---- 10. kube-proxy present: ipMode Proxy leaves the VIP alone, ipMode VIP is intercepted ----------------
# The Service first: kube-proxy rejects 10.96.0.1 (its only endpoint, the loopback apiserver, is
# not one it uses), through which the DaemonSets reach the API — they must have seen the Service
# before kube-proxy starts. What happens next is between kube-proxy and the kernel state.
k apply -f - >/dev/null <<YAML || fail "LoadBalancer Service"
apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: $APP_NS
  annotations: {cmd.nu/tunnel: "$VIP2"}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/test
  allocateLoadBalancerNodePorts: false
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
YAML
set_ipmode() {
  k -n "$APP_NS" patch svc lb --subresource=status --type=merge \
    -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$VIP2\",\"ipMode\":\"$1\"}]}}}" >/dev/null
}
# kube-proxy's view: the VIP's Service port in one of its verdict maps (ipMode VIP) or nowhere.
kp_has_vip() { nft list table ip kube-proxy 2>/dev/null | grep -q "$VIP2 . tcp . 80"; }
kp_running() { nft list map ip kube-proxy service-ips >/dev/null 2>&1; }
answers2() { ip netns exec "$CLIENT_NS" "$BUILD/tests/kst-testtool" tcp "$VIP2" "$1" "$2" 2>/dev/null; }
served2() { local got; got="$(answers2 8080 10)"; ! grep -q FAIL <<<"$got" && [[ "$(awk '{print $2}' <<<"$got" | sort -u)" == "$CLIENT_IP" ]]; }
refused80() { local got; got="$(answers2 80 5)"; [[ "$(grep -c FAIL <<<"$got")" == 5 ]]; }
answered80() { local got; got="$(answers2 80 5)"; ! grep -q FAIL <<<"$got"; }
set_ipmode Proxy
if ! wait_for 60 served2; then
  fail "LoadBalancer Service $VIP2 not served before kube-proxy: $(answers2 8080 5 | tr '\n' ';')"; diagnose
fi
"$K8S_BIN/kube-proxy" --kubeconfig="$DIR/admin.kubeconfig" --hostname-override="$NODE" \
  --proxy-mode=nftables --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 \
  --healthz-bind-address=127.0.0.1:10356 --metrics-bind-address="" \
  >"$DIR/logs/kube-proxy.log" 2>&1 8>&- &
KUBE_PROXY_PID=$!
if wait_for 60 kp_running; then
  sleep 2  # a sync or two with the Service and its status
  if served2 && refused80 && ! kp_has_vip; then
    pass "kube-proxy running, ipMode Proxy: $VIP2:8080 (no Service port) answered with source $CLIENT_IP, the Service port $VIP2:80 reaches the pods' port 80 unchanged (refused: nothing listens), $VIP2 in none of kube-proxy's maps"
  else
    fail "ipMode Proxy: 8080 $(answers2 8080 5 | tr '\n' ';') 80 $(answers2 80 3 | tr '\n' ';') kube-proxy has VIP: $(kp_has_vip && echo yes || echo no)"
  fi
  set_ipmode VIP
  if wait_for 30 kp_has_vip && wait_for 30 answered80; then
    pass "negative control, ipMode VIP: kube-proxy took $VIP2:80 into its maps and DNATs it to the pods' 8080 (answered: $(answers2 80 3 | awk '{print $1" from "$2}' | sort -u | tr '\n' ' '))"
  else
    fail "ipMode VIP: kube-proxy has VIP: $(kp_has_vip && echo yes || echo no); 80: $(answers2 80 3 | tr '\n' ';')"
  fi
else
  fail "kube-proxy did not program its nftables table"; tail -n 20 "$DIR/logs/kube-proxy.log"
fi
