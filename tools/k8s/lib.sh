# shellcheck shell=bash
# Common helpers for tools/k8s/*.sh (sourced, not executed).
# shellcheck disable=SC2034
K8S_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

k8s_log() { printf '[k8s %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
k8s_die() { k8s_log "ERROR: $*"; exit 1; }

# Absolute path of a control-plane directory (created if missing).
k8s_dir() {
  [[ -n "${1:-}" ]] || k8s_die "usage: $0 DIR ..."
  mkdir -p "$1"
  (cd "$1" && pwd)
}

# Until K8S_STARTED=1, an exit (a failed step under set -e) logs that WHAT failed and runs the
# undo command, keeping the logs. k8s_undo_on_failure WHAT CMD...
K8S_STARTED=0
k8s_undo_on_failure() {
  K8S_UNDO_WHAT="$1"; shift
  K8S_UNDO=("$@")
  trap 'if (( ! K8S_STARTED )); then k8s_log "$K8S_UNDO_WHAT failed; undoing it (logs kept)"; "${K8S_UNDO[@]}" || true; fi' EXIT
}

# Sign a leaf certificate DIR/pki/NAME.{crt,key} with the CA in DIR/pki (openssl errors go to
# DIR/logs/openssl.log). k8s_leaf DIR NAME SUBJECT EKU [SAN]
k8s_leaf() {
  local dir="$1" name="$2" subj="$3" eku="$4" san="${5:-}" pki="$1/pki"
  mkdir -p "$dir/logs"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$pki/$name.key" -out "$pki/$name.csr" \
    2>>"$dir/logs/openssl.log"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>>"$dir/logs/openssl.log"
  rm -f "$pki/$name.csr" "$pki/$name.ext"
  chmod 600 "$pki/$name.key"
}

# A kubeconfig with a client certificate, trusting DIR/pki/ca.crt.
# k8s_kubeconfig DIR OUT USER CERT KEY SERVER
k8s_kubeconfig() {
  cat >"$2" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kst
  cluster:
    server: $6
    certificate-authority-data: $(base64 -w0 "$1/pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(base64 -w0 "$4")
    client-key-data: $(base64 -w0 "$5")
contexts:
- name: kst
  context: {cluster: kst, user: $3}
current-context: kst
KC
  chmod 600 "$2"
}

# A free TCP port on 127.0.0.1, below the ephemeral range (so no outgoing connection can take it
# meanwhile) and not in $K8S_TAKEN_PORTS. Racy by nature, like any port picker; start.sh retries.
K8S_TAKEN_PORTS=""
k8s_free_port() {
  local lo=20000 hi=32000 p i used
  used="$(ss -Htan 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | sort -u)"
  for ((i = 0; i < 500; i++)); do
    p=$(( lo + (RANDOM * 32768 + RANDOM) % (hi - lo) ))
    grep -qx "$p" <<<"$used" && continue
    [[ " $K8S_TAKEN_PORTS " == *" $p "* ]] && continue
    K8S_TAKEN_PORTS+=" $p"
    echo "$p"
    return 0
  done
  k8s_die "no free port found"
}

# Is the process recorded in DIR/run/NAME.pid alive and still ours?
k8s_alive() {
  local dir="$1" name="$2" pid
  [[ -f "$dir/run/$name.pid" ]] || return 1
  pid="$(<"$dir/run/$name.pid")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  # Guard against PID reuse: the command line must mention this control-plane dir. A process in
  # the middle of execve() shows an EMPTY command line (the new memory map exists, its argument
  # pages are not set up yet; loading a 100 MB binary on a busy machine makes that window long):
  # read again for up to 2 s before calling it dead. This, not a crash, was the "died right after
  # launch with an empty log" seen in CI (kube-apiserver, kube-controller-manager, kube-scheduler).
  local cmd i
  for ((i = 0; i < 20; i++)); do
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ -n "$cmd" ]] && break
    k8s_pid_running "$pid" || return 1
    sleep 0.1
  done
  grep -qF -- "$dir/" <<<"$cmd" || return 1
  return 0
}

# Start DIR/run/NAME.args (one argument per line, first is the binary) in its own session.
k8s_launch() {
  local dir="$1" name="$2" pid
  local -a argv
  mapfile -t argv <"$dir/run/$name.args"
  mkdir -p "$dir/logs"
  printf '\n===== %s start %(%F %T)T =====\n' "$name" -1 >>"$dir/logs/$name.log"
  setsid "${argv[@]}" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/run/$name.pid"
  # Until the child has exec'd, /proc/PID/cmdline is this shell's and k8s_alive would call it
  # dead (seen in CI under load, twice: "kube-apiserver died" / "kube-controller-manager died"
  # with an empty log — the exec of a 100 MB binary on a busy 2-core machine took longer than
  # the 2 s this loop used to wait). Wait for the exec as long as the child lives (≤ 60 s).
  local i
  for ((i = 0; i < 3000; i++)); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" && break
    k8s_pid_running "$pid" || break
    sleep 0.02
  done
  k8s_log "started $name pid $pid (exec seen after $((i * 20)) ms)"
}

# Running = exists and is not a zombie (exited daemons are reparented to a subreaper that may
# reap them late).
k8s_pid_running() {
  [[ -r "/proc/$1/stat" ]] || return 1
  [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# Stop NAME: TERM, then KILL after $KST_K8S_STOP_GRACE seconds (default 5; kube-apiserver with open
# watch connections usually sits in graceful shutdown far longer than that). Idempotent.
k8s_kill() {
  local dir="$1" name="$2" pid i grace="${KST_K8S_STOP_GRACE:-5}"
  if k8s_alive "$dir" "$name"; then
    pid="$(<"$dir/run/$name.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      k8s_pid_running "$pid" || break
      sleep 0.1
    done
    if k8s_pid_running "$pid"; then
      k8s_log "$name pid $pid did not exit ${grace}s after TERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do k8s_pid_running "$pid" || break; sleep 0.1; done
    fi
    k8s_log "stopped $name pid $pid"
  fi
  rm -f "$dir/run/$name.pid"
}

# curl against the apiserver as admin (client certificate).
k8s_curl_admin() {
  local dir="$1"; shift
  curl -sS --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$@"
}

# Wait until URL (admin curl) answers 200 "ok", or the named process dies, or timeout (s).
k8s_wait_ok() {
  local dir="$1" name="$2" url="$3" timeout="$4" t0=$SECONDS body
  while :; do
    body="$(k8s_curl_admin "$dir" -m 2 "$url" 2>/dev/null || true)"
    [[ "$body" == ok ]] && return 0
    k8s_alive "$dir" "$name" || { k8s_log "$name died; last log lines:"; tail -n 30 "$dir/logs/$name.log" >&2; return 1; }
    (( SECONDS - t0 < timeout )) || { k8s_log "timeout waiting for $url: $body"; tail -n 30 "$dir/logs/$name.log" >&2; return 1; }
    sleep 0.2
  done
}

# Rewrite DIR/env from DIR/run/ports and the pid files.
k8s_write_env() {
  local dir="$1"
  # shellcheck disable=SC1091
  source "$dir/run/ports"
  {
    echo "# generated by tools/k8s — source me"
    echo "export KST_K8S_DIR='$dir'"
    echo "export KST_K8S_BIN='$K8S_BIN'"
    echo "export KUBECONFIG='$dir/admin.kubeconfig'"
    echo "export KUBECTL='$K8S_BIN/kubectl'"
    echo "export APISERVER_URL='https://127.0.0.1:$APISERVER_PORT'"
    echo "export APISERVER_PORT=$APISERVER_PORT"
    echo "export APISERVER_CA='$dir/pki/ca.crt'"
    echo "export ADMIN_CERT='$dir/pki/admin.crt'"
    echo "export ADMIN_KEY='$dir/pki/admin.key'"
    echo "export ETCD_URL='http://127.0.0.1:$ETCD_PORT'"
    echo "export ETCD_PORT=$ETCD_PORT"
    echo "export ETCD_PEER_PORT=$ETCD_PEER_PORT"
    echo "export KCM_PORT=$KCM_PORT"
    for n in etcd kube-apiserver kube-controller-manager; do
      local v="${n//-/_}"; v="${v^^}_PID"
      [[ "$v" == KUBE_APISERVER_PID ]] && v=APISERVER_PID
      [[ "$v" == KUBE_CONTROLLER_MANAGER_PID ]] && v=KCM_PID
      echo "export $v=$(cat "$dir/run/$n.pid" 2>/dev/null || echo)"
    done
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}
