#!/bin/bash
# Regenerates the classifier fixtures tests/data/nft/classify{4,6}.json (tests/unit/inspect_test.cpp,
# the chains `explain` parses): starts a real router daemon (--buckets 64, --hash-seed 0x2a, one
# IPv4 and one IPv6 Service from manifests) in a throwaway network namespace and keeps
# `nft -j list chain` of its two family chains. Needs root and nft; run it after a change of
# the classifier's rules (desired/nft_render.cpp), then the unit tests.
#
#   usage: tools/nft/capture-classifier.sh BUILD_DIR [outdir]      (default tests/data/nft)
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:?usage: capture-classifier.sh BUILD_DIR [outdir]}" && pwd)/src/kube-service-tunnel
out=$(cd "${2:-$here/../../tests/data/nft}" && pwd)
[ -x "$bin" ] || { echo "no $bin" >&2; exit 1; }
ns=kst-nftclassify-$$
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ip netns exec "$ns" "$bin" cleanup >/dev/null 2>&1
  ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns" || exit 1
ip -n "$ns" link set lo up
mkdir -p "$tmp/manifests"
# One Service per family with one endpoint: the chains do not depend on the elements.
for f in 4 6; do
  if [ $f = 4 ]; then vip=203.0.113.10 ep=198.19.1.2 at=IPv4; else vip=2001:db8:ffff::10 ep=2001:db8:1::2 at=IPv6; fi
  cat >"$tmp/manifests/svc$f.yaml" <<EOF
apiVersion: v1
kind: Service
metadata:
  name: web$f
  namespace: default
  creationTimestamp: "2026-01-01T00:00:00Z"
  annotations:
    cmd.nu/tunnel: "$vip"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web$f-a
  namespace: default
  labels:
    kubernetes.io/service-name: web$f
addressType: $at
endpoints:
- addresses: ["$ep"]
  nodeName: node1
  conditions: {ready: true, serving: true, terminating: false}
EOF
done
ip netns exec "$ns" "$bin" run --role router --manifests "$tmp/manifests" --buckets 64 \
  --hash-seed 0x2a --vip-pool 203.0.113.0/24 --vip-pool 2001:db8:ffff::/64 --log-level warn \
  >"$tmp/router.log" 2>&1 &
pid=$!
ready() { ip netns exec "$ns" nft list set inet kube_service_tunnel vip6 2>/dev/null | grep -q 2001:db8:ffff::10; }
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "the router did not program its table:" >&2; cat "$tmp/router.log" >&2; exit 1; }
for f in 4 6; do
  ip netns exec "$ns" nft -j list chain inet kube_service_tunnel classify$f >"$out/classify$f.json" || exit 1
done
nft --version
