#!/usr/bin/env bash
# Build the real node's container images without any registry, as OCI archives for
# `ctr -n k8s.io images import`:
#
#   tools/node/images.sh BUILD_DIR OUT_DIR
#
#   OUT_DIR/product.oci.tar   docker.io/library/kube-service-tunnel:0.1.0 (the name deploy/ uses):
#                             the Dockerfile's runtime stage — its base suite and its apt-get install
#                             list, read from the Dockerfile itself — plus BUILD_DIR's binary
#   OUT_DIR/testtool.oci.tar  kst.local/kst-testtool:1: the same base plus tests/tools/testtool
#   OUT_DIR/pause.oci.tar     kst.local/pause:1: tools/node/pause.c, static
#
# The base root file system comes from Debian packages (mmdebstrap with this machine's apt
# sources) and is cached outside the repository, keyed by everything that goes into it:
#   ${KST_CACHE:-/var/cache/kube-service-tunnel}/node/rootfs-<sha256>.tar
# Layers are uncompressed tars with fixed owners and mtimes (reproducible digests); the binaries
# are the ones the host built (the Dockerfile's build stage is the same Debian release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
log() { printf '[node-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ $# -eq 2 ]] || die "usage: $0 BUILD_DIR OUT_DIR"
BUILD="$(cd "$1" && pwd)"
OUT="$2"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
CACHE="${KST_CACHE:-/var/cache/kube-service-tunnel}/node"
mkdir -p "$CACHE"

PRODUCT_NAME="${KST_PRODUCT_IMAGE:-docker.io/library/kube-service-tunnel:0.1.0}"
TESTTOOL_NAME="kst.local/kst-testtool:1"
PAUSE_NAME="kst.local/pause:1"

# ---- the Dockerfile's runtime stage: suite and packages -------------------------------------
# The last FROM is the runtime stage ("FROM debian:bookworm-slim"); its RUN ... apt-get install
# line lists the packages (continuation lines joined, options and shell words dropped).
df="$ROOT/Dockerfile"
suite="$(awk '/^FROM /{img=$2} END{print img}' "$df" | sed -E 's/^debian:([a-z]+)(-slim)?$/\1/')"
[[ "$suite" =~ ^[a-z]+$ ]] || die "cannot read the runtime stage's Debian suite from $df"
mapfile -t packages < <(
  awk '/^FROM /{stage++; buf=""} {print stage "\t" $0}' "$df" |
    awk -F'\t' -v last="$(grep -c '^FROM ' "$df")" '$1 == last {print $2}' |
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta' |
    grep 'apt-get install' | sed -E 's/.*apt-get install//; s/&&.*//' |
    tr ' ' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' | sort -u)
(( ${#packages[@]} > 3 )) || die "cannot read the runtime stage's packages from $df"

sources=/etc/apt/sources.list.d/debian.sources
[[ -f "$sources" ]] || sources=/etc/apt/sources.list
[[ -f "$sources" ]] || die "no apt sources on this machine"

# Same as debian:*-slim: no documentation, manual pages or translations.
mm_opts=(--variant=essential --format=tar
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*')
key="$( { echo "v1 $suite"; printf '%s\n' "${packages[@]}" "${mm_opts[@]}"; cat "$sources";
          mmdebstrap --version; } | sha256sum | cut -c1-16)"
rootfs="$CACHE/rootfs-$suite-$key.tar"
if [[ -s "$rootfs" ]]; then
  log "base rootfs cached: $rootfs"
else
  command -v mmdebstrap >/dev/null || die "mmdebstrap not installed"
  t=$SECONDS
  log "mmdebstrap $suite + ${packages[*]}"
  tmp="$(mktemp "$CACHE/.rootfs-XXXXXX.tar")"
  if ! mmdebstrap "${mm_opts[@]}" --include="$(IFS=,; echo "${packages[*]}")" \
      "$suite" "$tmp" "$sources" >"$CACHE/mmdebstrap.log" 2>&1; then
    tail -20 "$CACHE/mmdebstrap.log" >&2; rm -f "$tmp"; die "mmdebstrap failed"
  fi
  mv "$tmp" "$rootfs"
  log "base rootfs built in $((SECONDS - t))s: $rootfs ($(du -h "$rootfs" | cut -f1))"
fi

for b in src/kube-service-tunnel tests/kst-testtool; do
  [[ -x "$BUILD/$b" ]] || die "$BUILD/$b not built"
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A reproducible layer tar from a staging directory.
layer_from_dir() { # DIR OUT
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$1" -cf "$2" .
}

# oci_image OUT NAME CONFIG_JSON LAYER...  (config: the image's "config" object)
oci_image() {
  local out="$1" name="$2" config="$3"; shift 3
  local d="$WORK/oci" l dg sz layers="" diffids=""
  rm -rf "$d"; mkdir -p "$d/blobs/sha256"
  for l in "$@"; do
    dg="$(sha256sum "$l" | cut -d' ' -f1)"; sz="$(stat -c %s "$l")"
    ln "$l" "$d/blobs/sha256/$dg" 2>/dev/null || cp "$l" "$d/blobs/sha256/$dg"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$dg\",\"size\":$sz}"
    diffids+="${diffids:+,}\"sha256:$dg\""
  done
  blob() { # CONTENT -> writes the blob, echoes "digest size"
    local dg
    dg="$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"
    printf '%s' "$1" >"$d/blobs/sha256/$dg"
    echo "$dg $(printf '%s' "$1" | wc -c)"
  }
  local cfg man cd cs md ms
  cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":$config,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffids]}}"
  read -r cd cs < <(blob "$cfg")
  man="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd\",\"size\":$cs},\"layers\":[$layers]}"
  read -r md ms < <(blob "$man")
  printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$ms" "$name" "${name##*:}" >"$d/index.json"
  tar --numeric-owner --owner=0 --group=0 -C "$d" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  log "$name -> $out ($(du -h "$out" | cut -f1), manifest sha256:${md:0:12})"
}

path_env='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'

# ---- product: base + /usr/bin/kube-service-tunnel (ENTRYPOINT/CMD as in the Dockerfile) -------
mkdir -p "$WORK/product/usr/bin"
strip -o "$WORK/product/usr/bin/kube-service-tunnel" "$BUILD/src/kube-service-tunnel"
layer_from_dir "$WORK/product" "$WORK/product.tar"
oci_image "$OUT/product.oci.tar" "$PRODUCT_NAME" \
  "{$path_env,\"Entrypoint\":[\"/usr/bin/kube-service-tunnel\"],\"Cmd\":[\"run\"]}" \
  "$rootfs" "$WORK/product.tar"

# ---- test workload: base + /usr/bin/kst-testtool -------------------------------------------------
mkdir -p "$WORK/testtool/usr/bin"
strip -o "$WORK/testtool/usr/bin/kst-testtool" "$BUILD/tests/kst-testtool"
layer_from_dir "$WORK/testtool" "$WORK/testtool.tar"
oci_image "$OUT/testtool.oci.tar" "$TESTTOOL_NAME" \
  "{$path_env,\"Entrypoint\":[\"/usr/bin/kst-testtool\"]}" "$rootfs" "$WORK/testtool.tar"

# ---- pause: one static binary -----------------------------------------------------------------------
mkdir -p "$WORK/pause"
cc -static -Os -Wall -Wextra -Werror -o "$WORK/pause/pause" "$ROOT/tools/node/pause.c"
strip "$WORK/pause/pause"
layer_from_dir "$WORK/pause" "$WORK/pause.tar"
oci_image "$OUT/pause.oci.tar" "$PAUSE_NAME" '{"Entrypoint":["/pause"]}' "$WORK/pause.tar"

printf '%s\n' "$PRODUCT_NAME" "$TESTTOOL_NAME" "$PAUSE_NAME" >"$OUT/names"
