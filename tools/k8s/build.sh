#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kubectl, and for the real node (tools/k8s/node-start.sh)
# kube-scheduler, kubelet and kube-proxy (from module k8s.io/kubernetes at a pinned release) and etcd
# (from go.etcd.io/etcd/server/v3) into a version-keyed cache outside the repo. Only the binaries
# missing from the cache are built (an older cache with the first four gets the other three added).
#
#   tools/k8s/build.sh            # builds (or reuses) the binaries, prints the bin dir on the last line
#   tools/k8s/build.sh --print-bin  # only prints the bin dir (no build; exit 1 if not built)
#
# Environment:
#   KST_CACHE     cache root (default /var/cache/kube-service-tunnel)
#   K8S_VERSION   Kubernetes release (default v1.36.3)
#   ETCD_VERSION  etcd release (default: the one the Kubernetes release pins in hack/lib/etcd.sh)
#
# Nothing is written inside the repository. Builds run one binary at a time (2-core machines).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CACHE="${KST_CACHE:-/var/cache/kube-service-tunnel}"

log() { printf '[k8s-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ETCD_VERSION="${ETCD_VERSION:-}"
K8S_CMDS=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)
have_all() {
  local c
  for c in "${K8S_CMDS[@]}" etcd; do [[ -x "$1/$c" ]] || return 1; done
}

print_bin_only=0
[[ "${1:-}" == "--print-bin" ]] && print_bin_only=1

# Fast path (no network, no go): a complete bin dir for this version already exists. Without an
# explicit ETCD_VERSION, any etcd built for this Kubernetes version (normally exactly one: the one
# its hack/lib/etcd.sh pins) is taken.
# shellcheck disable=SC2231
for BIN in "$CACHE"/k8s-"$K8S_VERSION"-etcd-${ETCD_VERSION:-*}/bin; do
  if have_all "$BIN"; then
    log "cached: $BIN"
    echo "$BIN"
    exit 0
  fi
done
if (( print_bin_only )); then
  die "binaries for $K8S_VERSION not built yet (run tools/k8s/build.sh)"
fi

command -v go >/dev/null || die "go not found in PATH"
mkdir -p "$CACHE"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local       # never download a toolchain
export CGO_ENABLED=0           # static binaries, no C toolchain needed
export GOWORK=off
GO="$(command -v go)"

# One build at a time per cache.
exec 9>"$CACHE/.build.lock"
flock 9

WORK="$(mktemp -d "$CACHE/.build-XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

T0=$SECONDS
secs() { echo "$(( SECONDS - $1 ))s"; }

# ---- 1. fetch k8s.io/kubernetes and derive the staging replaces + etcd version ----------------
t=$SECONDS
log "go mod download k8s.io/kubernetes@$K8S_VERSION"
K8S_DIR="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$K8S_DIR" ]] || die "module download failed"
log "  $K8S_DIR ($(secs $t))"

# shellcheck disable=SC2016
expected_etcd="$(sed -n 's/^ETCD_VERSION=\${ETCD_VERSION:-\([0-9.]*\)}.*/v\1/p' "$K8S_DIR/hack/lib/etcd.sh" || true)"
if [[ -z "$ETCD_VERSION" ]]; then
  [[ -n "$expected_etcd" ]] || die "cannot determine etcd version from hack/lib/etcd.sh; set ETCD_VERSION"
  ETCD_VERSION="$expected_etcd"
elif [[ -n "$expected_etcd" && "$expected_etcd" != "$ETCD_VERSION" ]]; then
  log "WARNING: $K8S_VERSION expects etcd $expected_etcd, building $ETCD_VERSION"
fi
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION/bin"
if have_all "$BIN"; then
  log "cached: $BIN"; echo "$BIN"; exit 0
fi

staging_ver="v0.${K8S_VERSION#v1.}"        # v1.36.3 -> v0.36.3
# Staging modules = required as v0.0.0 AND replaced to ./staging/src/...
mapfile -t required < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$K8S_DIR/go.mod" | sort -u)
mapfile -t replaced < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$K8S_DIR/go.mod" | sort -u)
mapfile -t staging < <(comm -12 <(printf '%s\n' "${required[@]}") <(printf '%s\n' "${replaced[@]}"))
(( ${#staging[@]} > 10 )) || die "could not parse staging modules from go.mod"
log "  ${#staging[@]} staging modules -> $staging_ver; etcd $ETCD_VERSION"

go_directive="$(awk '$1=="go"{print $2; exit}' "$K8S_DIR/go.mod")"

# ---- 2. throwaway module for Kubernetes ---------------------------------------------------------
mkdir -p "$WORK/k8s" "$WORK/bin"
{
  echo "module kst.local/k8sbuild"
  echo
  echo "go $go_directive"
  echo
  grep '^godebug' "$K8S_DIR/go.mod" || true
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $staging_ver"; done
  echo ")"
} > "$WORK/k8s/go.mod"
cat > "$WORK/k8s/tools.go" <<'GO'
//go:build tools

package tools
GO

build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
ver_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ver_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  ver_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done

# Each binary is checked and moved into place (atomically: same file system) as soon as it is
# built; have_all above decides by the complete set, so an interrupted build resumes with what
# is missing.
mkdir -p "$BIN"
install_bin() {
  local c="$WORK/bin/$1"
  case "$1" in
    kubectl) "$c" version --client >/dev/null || die "kubectl binary does not run" ;;
    *) "$c" --version >/dev/null || die "$1 binary does not run" ;;
  esac
  mv "$c" "$BIN/$1"
}
declare -A took
for cmd in "${K8S_CMDS[@]}"; do
  [[ -x "$BIN/$cmd" ]] && continue
  t=$SECONDS
  log "go build $cmd (k8s $K8S_VERSION)"
  ( cd "$WORK/k8s" && "$GO" build -trimpath -ldflags="-s -w$ver_ldflags" -o "$WORK/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd" )
  install_bin "$cmd"
  took[$cmd]=$(( SECONDS - t ))
  log "  $cmd built in ${took[$cmd]}s"
done

# ---- 3. throwaway module for etcd ---------------------------------------------------------------
mkdir -p "$WORK/etcd"
cat > "$WORK/etcd/go.mod" <<GO
module kst.local/etcdbuild

go $go_directive

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GO
cat > "$WORK/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
if [[ ! -x "$BIN/etcd" ]]; then
  t=$SECONDS
  log "go build etcd $ETCD_VERSION"
  ( cd "$WORK/etcd" && "$GO" build -trimpath -ldflags="-s -w" -o "$WORK/bin/etcd" . )
  install_bin etcd
  took[etcd]=$(( SECONDS - t ))
  log "  etcd built in ${took[etcd]}s"
fi

# ---- 4. record how it was built ------------------------------------------------------------------
dest="$(dirname "$BIN")"
cp "$WORK/k8s/go.mod" "$dest/k8s-go.mod"
cp "$WORK/etcd/go.mod" "$dest/etcd-go.mod"
{
  echo "k8s_version=$K8S_VERSION"
  echo "etcd_version=$ETCD_VERSION"
  echo "go=$("$GO" env GOVERSION)"
  echo "built=$build_date"
  for k in "${!took[@]}"; do echo "seconds_$k=${took[$k]}"; done
  echo "seconds_total=$(( SECONDS - T0 ))"
} >> "$dest/build-info"
log "done in $(secs $T0): $BIN"
cat "$dest/build-info" >&2
echo "$BIN"
