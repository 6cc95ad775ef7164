#!/bin/bash
# Run one command inside a throw-away qemu VM that boots Debian's own kernel
# (which has ip_gre, ipip, mpls_router, mpls_iptunnel, ...) and sees the host's
# root file system: host-built binaries and scripts run unchanged, as root.
#
#   tools/vm/vmrun.sh [options] [--] COMMAND [ARGS...]
#
# Options (each can also be set through the environment variable shown):
#   --mem MB        guest RAM (KST_VM_MEM, default 512)
#   --smp N         guest CPUs (KST_VM_SMP, default 1; under TCG on a 2-core
#                   host 2 vCPUs were slower and erratic)
#   --timeout SEC   kill the VM after SEC seconds (KST_VM_TIMEOUT, default 600)
#   --cwd DIR       working directory of COMMAND in the guest (default: $PWD)
#   --modules a,b   modules to load before COMMAND (repeatable)
#   --rw DIR        share host DIR read-write at the same path (repeatable);
#                   everything else the guest writes is lost at power-off
#   --env K=V       set K=V in COMMAND's environment (repeatable); the guest
#                   starts from an empty environment plus PATH, HOME, TERM,
#                   LANG, KST_IN_VM=1 and the host's CI if set
#   --log FILE      write the raw guest console to FILE
#   --quiet         print only COMMAND's output (the console between
#                   KSTVM_BEGIN and KSTVM_END) while it runs; the whole
#                   console goes to stderr afterwards unless COMMAND exits 0
#
# Other environment: KST_VMWORK (cache, default
# /var/cache/kube-service-tunnel/vm), KST_VM_ACCEL (auto|kvm|tcg),
# KST_VM_TB_MB (TCG translation cache MiB, default 256), KST_VM_KERNEL (boot
# this kernel file instead), KST_VM_APPEND (more kernel command line, e.g.
# loglevel=7), KST_VM_QEMU_EXTRA (more qemu arguments, split on blanks).
#
# Exit status: COMMAND's status in the guest; 124 when the VM timed out; 125
# when the VM died or never ran COMMAND (image build failed, qemu failed, boot
# failure, kernel panic); 2 on a usage error.
# A summary line on stderr gives the total time, boot-to-job time, job time,
# guest memory use and qemu's max RSS.
#
# The kernel + initramfs come from mkinitramfs.sh (built on first use and
# cached); qemu-system-x86 and busybox-static are apt-get installed if missing.
set -euo pipefail
shopt -s lastpipe

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0" >&2; exit 2; }
MEM=${KST_VM_MEM:-512} SMP=${KST_VM_SMP:-1} TIMEOUT=${KST_VM_TIMEOUT:-600}
CWD=$PWD LOG='' QUIET=0
MODS=() RWS=() ENVS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) MEM=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --cwd) CWD=$2; shift 2 ;;
    --modules) IFS=', ' read -r -a m <<<"$2"; MODS+=("${m[@]}"); shift 2 ;;
    --rw)
      mkdir -p -- "$2"
      RWS+=("$(cd -- "$2" && pwd -P)"); shift 2 ;;
    --env)
      [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "vmrun: --env wants NAME=VALUE, got '$2'" >&2; exit 2; }
      ENVS+=("$2"); shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    --quiet) QUIET=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "vmrun: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage
case "$KST_VMWORK$CWD${RWS[*]}" in
  *$'\n'*) echo "vmrun: paths must not contain newlines" >&2; exit 2 ;;
esac
case "$KST_VMWORK" in
  *[[:space:]]*) echo "vmrun: KST_VMWORK must not contain blanks (it goes on the kernel command line)" >&2; exit 2 ;;
esac

kst_vm_need_pkgs qemu-system-x86 time || exit 125
if ! IMG=$("$HERE/mkinitramfs.sh" | tail -1) || ! [ -f "$IMG/initramfs.cpio" ]; then
  echo "kst-vm: ERROR: could not build the VM image (see above)" >&2
  exit 125
fi

# ---- the job: a folder on the host that the guest reads through 9p ------------
mkdir -p "$KST_VMWORK/jobs"
# Job folders of runs that were SIGKILLed are swept after a day.
find "$KST_VMWORK/jobs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
JOBDIR=$(mktemp -d "$KST_VMWORK/jobs/job.XXXXXX")
chmod 755 "$JOBDIR"
# On any exit (also Ctrl-C or SIGTERM, which do not reach qemu: timeout(1)
# runs it in a process group of its own) stop qemu and remove the job folder.
# shellcheck disable=SC2317  # called through trap
cleanup() {
  local pid
  pid=$(cat "$JOBDIR/qemu.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu* ]]; then
    kill "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -rf "$JOBDIR"
}
trap cleanup EXIT
trap 'echo "kst-vm: interrupted" >&2; exit 130' INT
trap 'echo "kst-vm: terminated" >&2; exit 143' TERM
{
  echo '#!/bin/bash'
  [ -n "${CI:-}" ] && printf 'export CI=%q\n' "$CI"
  for kv in "${ENVS[@]}"; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"; done
  printf 'cd -- %q || { echo "kst-vm: cannot cd to %q in the guest"; exit 125; }\n' "$CWD" "$CWD"
  printf 'exec'; printf ' %q' "$@"; echo
} >"$JOBDIR/job.sh"
printf '%s\n' "${MODS[@]}" >"$JOBDIR/modules"
printf '%s\n' "${RWS[@]}" >"$JOBDIR/rw"
LOGARG=$LOG
[ -n "$LOG" ] || LOG=$JOBDIR/console.log
: >"$LOG"

# ---- qemu ----------------------------------------------------------------------
# KVM only where /dev/kvm is hardware virtualisation (kvm_intel/kvm_amd).  On
# this project's machines /dev/kvm is "kvm_pvm" (paravirtual nested KVM): a
# stock kernel crawls there and dies with "KVM internal error ... emulation
# failure", so TCG (software emulation) is the default.
ACCEL_MODE=${KST_VM_ACCEL:-auto}
if [ "$ACCEL_MODE" = auto ]; then
  ACCEL_MODE=tcg
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    ACCEL_MODE=kvm
  fi
fi
case "$ACCEL_MODE" in
  kvm) ACCEL=(-accel kvm -cpu host) ;;
  tcg) ACCEL=(-accel "tcg,thread=multi,tb-size=${KST_VM_TB_MB:-256}" -cpu max) ;;
  *) echo "vmrun: KST_VM_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
esac
# The uncompressed vmlinux boots through PVH (about twice as fast under TCG).
KERNEL=${KST_VM_KERNEL:-$IMG/vmlinux}
[ -f "$KERNEL" ] || KERNEL=$IMG/vmlinuz
qopt() { printf '%s' "${1//,/,,}"; }   # qemu option values escape ',' as ',,'
read -r -a EXTRA <<<"${KST_VM_QEMU_EXTRA:-}"
# panic=-1 + -no-reboot: a kernel panic ends qemu at once.
APPEND="console=ttyS0 loglevel=4 panic=-1 ${KST_VM_APPEND:-} kstvm_job=$JOBDIR"
# shellcheck disable=SC2054  # the commas belong to qemu's option syntax
QEMU=(qemu-system-x86_64 "${ACCEL[@]}" -m "$MEM" -smp "$SMP"
  -nodefaults -no-user-config -display none -serial stdio -no-reboot -pidfile "$JOBDIR/qemu.pid"
  -kernel "$KERNEL" -initrd "$IMG/initramfs.cpio" -append "$APPEND"
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap)
for i in "${!RWS[@]}"; do
  QEMU+=(-virtfs "local,path=$(qopt "${RWS[$i]}"),mount_tag=kstrw$i,security_model=none,multidevs=remap")
done
QEMU+=("${EXTRA[@]}")
TIMECMD=()
[ -x /usr/bin/time ] && TIMECMD=(/usr/bin/time -f '%M' -o "$JOBDIR/maxrss")

# ---- run, following the console ---------------------------------------------------
# The serial console ends lines with \r\n; strip the \r in the loop (a `tr` in
# the pipe would block-buffer and spoil the timings).
t0=$EPOCHREALTIME tbegin='' tend='' exitrc='' guest_up='' guest_mem='' injob=0
set +e
timeout -k 5 "$TIMEOUT" "${TIMECMD[@]}" "${QEMU[@]}" </dev/null 2>&1 |
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >>"$LOG"
    case "$line" in
      KSTVM_BEGIN*) tbegin=$EPOCHREALTIME guest_up=${line#*uptime=} injob=1
                    [ "$QUIET" = 1 ] && continue ;;
      KSTVM_END*) tend=$EPOCHREALTIME guest_mem=${line##*mem_used_kb=} injob=0
                  [ "$QUIET" = 1 ] && continue ;;
      KSTVM_EXIT=*) exitrc=${line#KSTVM_EXIT=} ;;
    esac
    if [ "$QUIET" = 0 ] || [ "$injob" = 1 ]; then printf '%s\n' "$line"; fi
  done
qrc=${PIPESTATUS[0]}
set -e
t1=$EPOCHREALTIME

summary="kst-vm[$ACCEL_MODE]: total $(kst_vm_elapsed "$t0" "$t1")s"
[ -n "$tbegin" ] && summary+=", boot-to-job $(kst_vm_elapsed "$t0" "$tbegin")s (guest uptime ${guest_up}s)"
[ -n "$tend" ] && summary+=", job $(kst_vm_elapsed "$tbegin" "$tend")s, guest mem used $((guest_mem / 1024)) MiB"
[ -s "$JOBDIR/maxrss" ] && summary+=", qemu max RSS $(( $(tail -1 "$JOBDIR/maxrss") / 1024 )) MiB"

rc=$exitrc
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  rc=124 msg="TIMEOUT: the VM was killed after ${TIMEOUT}s (exit 124)"
elif [ -z "$exitrc" ]; then
  rc=125 msg="VM DIED: the guest reported no exit status (qemu exit $qrc; boot failure or kernel panic) (exit 125)"
elif ! [[ $exitrc =~ ^[0-9]+$ ]]; then
  rc=125 msg="VM DIED: garbled exit status '$exitrc' (exit 125)"
fi
if [ "$rc" != 0 ] && [ "$QUIET" = 1 ]; then
  {
    echo "===== guest console${LOGARG:+ ($LOGARG)} ====="
    cat "$LOG"
    echo "===== end of guest console ====="
  } >&2
fi
echo "$summary" >&2
[ -n "${msg:-}" ] && echo "kst-vm: ERROR: $msg" >&2
exit "$rc"
