# shellcheck shell=bash
# Helpers shared by the tools/vm scripts.  Source it, do not run it.
#
# Everything the VM harness caches lives outside the repository, in
#   KST_VMWORK (default /var/cache/kube-service-tunnel/vm):
#     debs/                 downloaded Debian kernel packages (never installed)
#     images/<key>/         one kernel + initramfs per (kernel package version,
#                           hash of mkinitramfs.sh + init.sh), see mkinitramfs.sh
#     jobs/job.XXXXXX/      one folder per VM run, removed when the run ends
#     .lock                 flock(1) lock taken while an image is built

KST_VMWORK=${KST_VMWORK:-/var/cache/kube-service-tunnel/vm}

kst_vm_log() { echo "kst-vm: $*" >&2; }

# kst_vm_need_pkgs PKG...: apt-get install the Debian packages among PKG that
# are not installed yet.  apt-get update runs only when the first install
# attempt fails (empty or outdated package lists).
kst_vm_need_pkgs() {
  local missing=() p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    kst_vm_log "missing packages: ${missing[*]} (run as root, or apt-get install them)"
    return 1
  fi
  kst_vm_log "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
  if ! "${apt[@]}" "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    "${apt[@]}" "${missing[@]}" >&2 || { kst_vm_log "apt-get install ${missing[*]} failed"; return 1; }
  fi
}

# kst_vm_elapsed T0 T1: seconds between two $EPOCHREALTIME values, 2 decimals.
kst_vm_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
