#!/usr/bin/env bash
# Stop / start / restart only the kube-apiserver of the control plane in DIR, with exactly the same
# flags and port as tools/k8s/start.sh used (DIR/run/kube-apiserver.args). DIR/env is rewritten
# with the new APISERVER_PID. "start" waits for /readyz. Both are idempotent.
#
#   tools/k8s/apiserver.sh DIR stop|start|restart|status
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# -eq 2 ]] || k8s_die "usage: $0 DIR stop|start|restart|status"
[[ -f "$1/run/kube-apiserver.args" ]] || k8s_die "$1 has no control plane (run start.sh first)"
DIR="$(cd "$1" && pwd)"
# shellcheck disable=SC1091
source "$DIR/run/ports"

do_start() {
  if k8s_alive "$DIR" kube-apiserver; then
    k8s_log "kube-apiserver already running"
  else
    k8s_alive "$DIR" etcd || k8s_die "etcd is not running in $DIR"
    local t=$SECONDS
    k8s_launch "$DIR" kube-apiserver
    if ! k8s_wait_ok "$DIR" kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" 120; then
      k8s_kill "$DIR" kube-apiserver
      k8s_write_env "$DIR"
      k8s_die "kube-apiserver did not become ready"
    fi
    k8s_log "kube-apiserver ready on :$APISERVER_PORT in $((SECONDS - t))s"
  fi
  k8s_write_env "$DIR"
}
do_stop() {
  k8s_kill "$DIR" kube-apiserver
  k8s_write_env "$DIR"
}

case "$2" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status) if k8s_alive "$DIR" kube-apiserver; then echo "running pid $(<"$DIR/run/kube-apiserver.pid")"; else echo stopped; exit 3; fi ;;
  *) k8s_die "unknown action $2" ;;
esac
