#!/bin/bash
# Build (or find in the cache) the kernel + initramfs that vmrun.sh boots.
#
#   tools/vm/mkinitramfs.sh [--force]
#
# Prints the image folder on stdout (progress goes to stderr).  The folder
# holds:
#   vmlinux            the kernel as an uncompressed ELF, booted through PVH
#                      (skips BIOS, real mode and the in-guest xz
#                      decompression: ~2.2 s instead of ~4.6 s to userspace
#                      under TCG).  Missing if it could not be unpacked.
#   vmlinuz            the same kernel as Debian ships it (bzImage fallback)
#   initramfs.cpio     static busybox + init.sh as /init + kernel modules,
#                      uncompressed (15 MB; gunzip in the guest cost ~0.5 s)
#   kernel-version     uname -r of the guest
#   modules.txt        the modules in the initramfs
#
# The kernel is Debian's own generic kernel, found through the meta package
# linux-image-amd64 and only DOWNLOADED (apt-get download) and unpacked with
# dpkg-deb: the host's /boot and /lib/modules are never touched.  The generic
# flavour is required: the -cloud-amd64 flavour has no 9p, which the VM uses
# to see the host's root file system.
#
# Cache: $KST_VMWORK/images/<package>_<version>-<hash>/, where <hash> covers
# this script, init.sh and KST_VM_EXTRA_MODULES.  A new kernel package version
# or an edit of either script makes a new image; the last KST_VM_KEEP_IMAGES
# (default 3) images are kept.  Builds are serialised with flock.
#
# Environment:
#   KST_VMWORK            cache folder (default /var/cache/kube-service-tunnel/vm)
#   KST_VM_KMETA          kernel meta package (default linux-image-amd64)
#   KST_VM_KPKG           exact kernel package, e.g. linux-image-6.1.0-56-amd64
#   KST_VM_EXTRA_MODULES  more modules to put into the initramfs (with deps)
#   KST_VM_KEEP_IMAGES    images to keep in the cache (default 3)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

KMETA=${KST_VM_KMETA:-linux-image-amd64}
KEEP=${KST_VM_KEEP_IMAGES:-3}
BUSYBOX=/bin/busybox

# Modules that must be in the initramfs (the build fails when one is neither a
# module nor built in).  First line: what init.sh needs to boot.  The rest:
# what the project's dataplane tests need that the 6.18 host kernel lacks
# (GRE, IPIP, MPLS) plus what they use anyway (veth, dummy, vxlan, nftables).
# crc32c_generic is only a SOFT dependency of libcrc32c (nf_tables needs it),
# which modules.dep does not list: without it nft fails with "Operation not
# supported".
REQUIRED_MODULES="virtio_pci 9pnet_virtio 9p overlay
  veth dummy ip_gre gre ipip ip_tunnel tunnel4
  mpls_router mpls_iptunnel mpls_gso vxlan udp_tunnel ip6_udp_tunnel
  nf_tables nft_hash nft_numgen nft_ct nf_conntrack crc32c_generic"
# Nice to have; skipped with a note when the kernel package lacks them.
OPTIONAL_MODULES="ip6_tunnel ip6_gre sit fou fou6 geneve macvlan ipvlan bridge
  8021q tun crc32c_intel ${KST_VM_EXTRA_MODULES:-}"
OPTIONAL_MODULES=${OPTIONAL_MODULES//,/ }
# Whole folders (below lib/modules/VER/kernel) copied as well, so that
# nft/tc/conntrack/tunnel modules are there for the kernel to autoload.
MODDIRS="net/netfilter net/ipv4 net/ipv6 net/mpls net/sched"

kst_vm_need_pkgs busybox-static xz-utils
# busybox and busybox-static both provide /bin/busybox; the initramfs needs
# the static one (no libc in there).
if ! [ -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
  kst_vm_log "$BUSYBOX is missing or dynamically linked: apt-get install busybox-static"
  exit 1
fi

# ---- which kernel? -----------------------------------------------------------
# KPKG: versioned package (linux-image-6.1.0-56-amd64), KVERSION: its Debian
# version (6.1.192-2).  The ABI number in the name does not change on every
# update, so the cache key uses both.
# apt-cache takes ~0.6 s per call, so the answer is remembered in
# $KST_VMWORK/resolved until the package lists change (apt-get update).
lists_stamp() {
  { echo "$KMETA ${KST_VM_KPKG:-}"; stat -c '%Y %s %n' /var/lib/apt/lists/*_Packages* 2>/dev/null; } |
    sha256sum | cut -c1-16
}
resolve_kernel() {
  local stamp s
  stamp=$(lists_stamp)
  if read -r s KPKG KVERSION 2>/dev/null <"$KST_VMWORK/resolved" &&
     [ "$s" = "$stamp" ] && [ -n "$KVERSION" ]; then
    return 0
  fi
  KPKG=${KST_VM_KPKG:-$(apt-cache depends "$KMETA" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')}
  KVERSION=
  [ -n "$KPKG" ] && KVERSION=$(apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  [ -n "$KVERSION" ] && [ "$KVERSION" != "(none)" ] || return 1
  echo "$stamp $KPKG $KVERSION" >"$KST_VMWORK/resolved.$$"
  mv "$KST_VMWORK/resolved.$$" "$KST_VMWORK/resolved"
}

mkdir -p "$KST_VMWORK/debs" "$KST_VMWORK/images"
IMAGES=$KST_VMWORK/images
if ! resolve_kernel; then
  kst_vm_log "apt-get update (cannot resolve $KMETA)"
  apt-get update -q >/dev/null 2>&1 || true
  if ! resolve_kernel; then
    # Offline and no package lists: use the last image built, if any.
    if [ -e "$IMAGES/current/initramfs.cpio" ] && [ "$FORCE" = 0 ]; then
      kst_vm_log "warning: cannot resolve $KMETA; using the cached $(readlink "$IMAGES/current")"
      echo "$IMAGES/$(readlink "$IMAGES/current")"
      exit 0
    fi
    kst_vm_log "cannot resolve $KMETA to a kernel package (apt-get update failed?)"
    exit 1
  fi
fi

HASH=$(cat "$HERE/mkinitramfs.sh" "$HERE/init.sh" <(echo "${KST_VM_EXTRA_MODULES:-}") |
  sha256sum | cut -c1-12)
KEY="${KPKG}_${KVERSION//:/%3a}-$HASH"
OUT=$IMAGES/$KEY

use_image() {
  ln -sfn "$KEY" "$IMAGES/current"
  touch "$OUT"   # mtime = last use, for pruning
  echo "$OUT"
}
if [ "$FORCE" = 0 ] && [ -f "$OUT/initramfs.cpio" ]; then use_image; exit 0; fi

# ---- build (one at a time) -----------------------------------------------------
exec 9>"$KST_VMWORK/.lock"
flock -w 900 9 || { kst_vm_log "timed out waiting for $KST_VMWORK/.lock"; exit 1; }
if [ "$FORCE" = 0 ] && [ -f "$OUT/initramfs.cpio" ]; then use_image; exit 0; fi

t0=$EPOCHREALTIME
kst_vm_log "building VM image $KEY"
BUILD=$(mktemp -d "$IMAGES/.build.XXXXXX")
chmod 755 "$BUILD"
trap 'rm -rf "$BUILD"' EXIT

# apt-get download names the file PKG_VERSION_ARCH.deb, with ':' as %3a.
find_deb() { compgen -G "$KST_VMWORK/debs/${KPKG}_${KVERSION//:/%3a}_*.deb" | head -1 || true; }
DEB=$(find_deb)
if [ -z "$DEB" ]; then
  # APT::Sandbox::User=root: the _apt user may not be able to write here.
  if ! (cd "$KST_VMWORK/debs" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVERSION" >&2); then
    # Outdated package lists name a version the mirror no longer has:
    # update them and start over once (the version, hence the key, may change).
    if [ -z "${KST_VM_RETRIED:-}" ]; then
      kst_vm_log "download of $KPKG=$KVERSION failed; apt-get update and retry"
      apt-get update -q >/dev/null 2>&1 || true
      rm -rf "$BUILD" "$KST_VMWORK/resolved"
      KST_VM_RETRIED=1 exec "$0" "$@"
    fi
    kst_vm_log "download of $KPKG=$KVERSION failed"
    exit 1
  fi
  DEB=$(find_deb)
  [ -n "$DEB" ] || { kst_vm_log "apt-get download left no ${KPKG}_${KVERSION}_*.deb"; exit 1; }
fi
kst_vm_log "kernel package: $(basename "$DEB")"

# Unpack only what is needed (the whole package is ~400 MB of modules).
# bookworm ships ./lib/modules, trixie and later ./usr/lib/modules.
KX=$BUILD/kernel
mkdir -p "$KX"
parts=(boot/vmlinuz-'*')
for d in kernel/net kernel/drivers/net kernel/drivers/virtio kernel/fs kernel/lib \
         kernel/crypto kernel/arch 'modules.*'; do
  parts+=("lib/modules/*/$d" "usr/lib/modules/*/$d")
done
dpkg-deb --fsys-tarfile "$DEB" |
  tar -x -C "$KX" --wildcards --no-wildcards-match-slash "${parts[@]/#/./}" 2>/dev/null || true
MODBASE=$KX/lib/modules
[ -d "$MODBASE" ] || MODBASE=$KX/usr/lib/modules
KVER=$(find "$MODBASE" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | head -1)
if [ -z "$KVER" ] || ! compgen -G "$KX/boot/vmlinuz-*" >/dev/null; then
  kst_vm_log "unexpected layout of $(basename "$DEB")"
  exit 1
fi
KM=$MODBASE/$KVER
kst_vm_log "kernel version: $KVER"

# busybox modprobe/depmod cannot read compressed modules (trixie ships .ko.xz).
find "$KM" -name '*.ko.xz' -exec xz -d {} + 2>/dev/null || true
find "$KM" -name '*.ko.gz' -exec gzip -d {} + 2>/dev/null || true
if compgen -G "$KM/kernel/net/*/*.ko.zst" >/dev/null; then
  kst_vm_need_pkgs zstd
  find "$KM" -name '*.ko.zst' -exec zstd -q -d --rm {} +
fi
# Debian's .deb has no modules.dep (depmod runs in postinst) and the host
# has no kmod: busybox depmod writes a modules.dep busybox modprobe can read.
"$BUSYBOX" depmod -b "${MODBASE%/lib/modules}" "$KVER"

# ---- module closure --------------------------------------------------------------
want=()
find_module() {   # file names use '-' or '_' (crc32c-intel.ko is crc32c_intel)
  find "$KM/kernel" \( -name "$1.ko" -o -name "${1//_/-}.ko" \) -print -quit
}
builtin_module() {
  grep -qE "/(${1}|${1//_/-})\.ko\$" "$KM/modules.builtin" 2>/dev/null
}
for m in $REQUIRED_MODULES; do
  p=$(find_module "$m")
  if [ -n "$p" ]; then want+=("${p#"$KM"/}")
  elif ! builtin_module "$m"; then kst_vm_log "required module $m is not in $(basename "$DEB")"; exit 1; fi
done
for m in $OPTIONAL_MODULES; do
  p=$(find_module "$m")
  if [ -n "$p" ]; then want+=("${p#"$KM"/}")
  elif ! builtin_module "$m"; then kst_vm_log "note: optional module $m not in the kernel package"; fi
done
for d in $MODDIRS; do
  [ -d "$KM/kernel/$d" ] || continue
  while IFS= read -r p; do want+=("${p#"$KM"/}"); done < <(find "$KM/kernel/$d" -name '*.ko')
done
# modules.dep lines read "path: dep1 dep2 ..."; take the transitive closure.
closure=$(printf '%s\n' "${want[@]}" | awk -v dep="$KM/modules.dep" '
  BEGIN { while ((getline l < dep) > 0) { split(l, a, ":"); d[a[1]] = a[2] } }
  { q[++n] = $1 }
  END { for (i = 1; i <= n; i++) { m = q[i]; if (m in seen) continue; seen[m] = 1; print m
          k = split(d[m], x, " "); for (j = 1; j <= k; j++) q[++n] = x[j] } }')

# ---- initramfs tree ----------------------------------------------------------------
R=$BUILD/root
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,run,mnt/host,mnt/rw,newroot,"lib/modules/$KVER"}
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
ln -s ../bin/busybox "$R/sbin/modprobe"   # the kernel's module autoload helper
ln -s ../bin/busybox "$R/sbin/poweroff"
while IFS= read -r p; do
  mkdir -p "$R/lib/modules/$KVER/${p%/*}"
  cp "$KM/$p" "$R/lib/modules/$KVER/$p"
done <<<"$closure"
cp "$KM"/modules.builtin* "$KM"/modules.order "$R/lib/modules/$KVER/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$R" "$KVER"
install -m 0755 "$HERE/init.sh" "$R/init"
echo "$KVER" >"$R/kernel-version"

# Left uncompressed: under TCG the guest unpacks a gzip'ed one ~0.5 s slower.
(cd "$R" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null >"$BUILD/initramfs.cpio")
cp "$KX"/boot/vmlinuz-* "$BUILD/vmlinuz"
echo "$KVER" >"$BUILD/kernel-version"
sed 's|.*/||; s|\.ko$||' <<<"$closure" | sort >"$BUILD/modules.txt"
basename "$DEB" >"$BUILD/source-deb"

# Uncompressed ELF vmlinux for PVH boot: the bzImage payload is an xz stream
# (Debian builds with CONFIG_KERNEL_XZ); find its magic and unpack it.
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$BUILD/vmlinuz" | head -1 | cut -d: -f1 || true)
if [ -n "$off" ]; then
  tail -c +$((off + 1)) "$BUILD/vmlinuz" | xz -dc --single-stream >"$BUILD/vmlinux" 2>/dev/null || true
fi
if [ "$(head -c 4 "$BUILD/vmlinux" 2>/dev/null | od -An -c | tr -d ' ')" != '177ELF' ]; then
  rm -f "$BUILD/vmlinux"
  kst_vm_log "note: could not unpack vmlinux; vmrun.sh will boot the slower vmlinuz"
fi
rm -rf "$R" "$KX"

rm -rf "$OUT"
mv "$BUILD" "$OUT"
trap - EXIT
kst_vm_log "built $OUT in $(kst_vm_elapsed "$t0" "$EPOCHREALTIME")s:" \
  "$(wc -l <"$OUT/modules.txt") modules, initramfs $(du -k "$OUT/initramfs.cpio" | cut -f1) KiB"

# ---- prune: keep the newest $KEEP images and the .debs they were built from ----
# shellcheck disable=SC2012  # ls -t: newest first; keys have no blanks
for d in $(ls -1td "$IMAGES"/*_*/ 2>/dev/null | tail -n +$((KEEP + 1))); do
  d=${d%/}
  [ -L "$d" ] || [ "$d" = "$OUT" ] || rm -rf "$d"
done
for deb in "$KST_VMWORK"/debs/*.deb; do
  [ -e "$deb" ] || continue
  grep -qxF "$(basename "$deb")" "$IMAGES"/*/source-deb 2>/dev/null || rm -f "$deb"
done
use_image
