#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the demo need (only what is missing),
# then configures and builds into $BUILD_DIR. Sourced by scripts/demo and scripts/test.
set -euo pipefail

KST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$KST_ROOT/build}

KST_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libmnl-dev libnftables-dev nftables libbpf-dev bpftool clang libcurl4-openssl-dev libssl-dev openssl
  nlohmann-json3-dev libyaml-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev
  prometheus-cpp-dev prometheus
  libgtest-dev libgmock-dev libbenchmark-dev
  iproute2 iputils-ping procps curl ca-certificates bird2 frr
  qemu-system-x86 busybox-static xz-utils
  clang-16 libfuzzer-16-dev libclang-rt-16-dev
  containerd runc containernetworking-plugins mmdebstrap
)

kst_install_deps() {
  local missing=()
  for p in "${KST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then echo "need root to install packages" >&2; return 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

kst_build() {
  echo "== building in $BUILD_DIR"
  cmake -S "$KST_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  # 2 cores: two compile jobs, and the linker of big test binaries is the memory peak.
  ninja -C "$BUILD_DIR" -j "${KST_JOBS:-$(nproc)}"
}
