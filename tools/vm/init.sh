#!/bin/sh
# PID 1 of the kube-service-tunnel test VM (busybox sh; mkinitramfs.sh copies
# this file to /init in the initramfs).  vmrun.sh starts the VM.
#
# 1. Mounts the host's root file system (9p tag "hostroot", read-only) with a
#    tmpfs overlay on top at /newroot: the job sees the host's files at the
#    same paths and may write anywhere; those writes vanish at power-off.
# 2. Gives the guest fresh /proc, /sys, /dev, /dev/pts, /dev/shm, bpffs and a
#    fresh, empty /run (so `ip netns` does not see the host's /run/netns).
# 3. Mounts the writable host folders (9p tags kstrw0, kstrw1, ...) at their
#    host paths, listed one per line in JOB/rw.
# 4. Loads the modules listed one per line in JOB/modules, bind-mounts the
#    initramfs's /lib/modules/VER into the new root and puts a busybox
#    modprobe first in PATH, so jobs can run `modprobe X` themselves.
# 5. Runs `bash JOB/job.sh` chrooted into /newroot with a clean environment,
#    prints KSTVM_EXIT=<rc> and powers off.
#
# JOB is the host folder named by kstvm_job= on the kernel command line.
# PID 1 itself stays in the initramfs root: the kernel's module autoload
# helper (/sbin/modprobe = busybox) runs in PID 1's root, and only the
# initramfs has /lib/modules/<guest kernel>.
# Console protocol read by vmrun.sh: KSTVM_BEGIN, KSTVM_END, KSTVM_EXIT=<rc>.
# Under TCG every fork+exec costs 10-50 ms, so this script prefers shell
# builtins (read, echo, [) over external commands where it can.
export PATH=/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

up() { read -r UP _ </proc/uptime; }   # sets UP (seconds since boot)
log() { up; echo "kstvm-init[$UP]: $*"; }
die() {
  echo "kstvm-init: FATAL: $*"
  echo "KSTVM_EXIT=125"
  sync
  poweroff -f
  sleep 10
}

job=
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case "$arg" in kstvm_job=*) job=${arg#*=} ;; esac
done
[ -n "$job" ] || die "no kstvm_job= on the kernel command line"
read -r KVER </proc/sys/kernel/osrelease
log "kernel $KVER up"

# ---- root file system: host root (9p, ro) + tmpfs overlay ----------------------
modprobe -a virtio_pci 9pnet_virtio 9p overlay || die "modprobe virtio_pci/9p/overlay"
# (/mnt/host, /mnt/rw and /newroot are made by mkinitramfs.sh)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /mnt/host \
  || die "mount 9p hostroot"
[ -f "/mnt/host$job/job.sh" ] || die "job $job/job.sh not visible through 9p"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
overlay=1
if ! mount -t overlay overlay \
     -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot; then
  log "overlayfs on 9p failed: read-only root with tmpfs on /tmp /var/tmp /root"
  overlay=0
  mount --bind /mnt/host /newroot
  for d in tmp var/tmp root; do mount -t tmpfs tmpfs "/newroot/$d"; done
fi

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
# Fresh /run: the host's /run/netns entries would be visible otherwise.
# On Debian /var/run is a symlink to /run; give it its own tmpfs if not.
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/netns /newroot/run/lock /newroot/run/kstvm/bin
if [ -d /newroot/var/run ] && [ ! -L /newroot/var/run ]; then
  mount -t tmpfs -o mode=0755 tmpfs /newroot/var/run
  mkdir -p /newroot/var/run/netns
fi

# ---- writable host folders -------------------------------------------------------
i=0
if [ -f "/mnt/host$job/rw" ]; then
  while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    mkdir -p "/newroot$dir" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "kstrw$i" "/newroot$dir" \
      || die "mount 9p kstrw$i at $dir"
    i=$((i + 1))
  done <"/mnt/host$job/rw"
fi

# ---- modules ----------------------------------------------------------------------
ip link set lo up
# modprobe inside the job: busybox modprobe + the guest's modules.
if [ "$overlay" = 1 ] && mkdir -p "/newroot/lib/modules/$KVER"; then
  mount --bind "/lib/modules/$KVER" "/newroot/lib/modules/$KVER"
  cp /bin/busybox /newroot/run/kstvm/bin/busybox
  ln -s busybox /newroot/run/kstvm/bin/modprobe
fi
mods=
while read -r m; do mods="$mods $m"; done <"/mnt/host$job/modules"
mods=${mods# }
# shellcheck disable=SC2086  # $mods is a blank-separated list
if [ -n "$mods" ] && ! modprobe -a $mods 2>/dev/null; then
  for m in $mods; do modprobe "$m" || log "warning: modprobe $m failed"; done
fi

# ---- the job ------------------------------------------------------------------------
echo kst-vm >/proc/sys/kernel/hostname
log "running $job/job.sh"
up
echo "KSTVM_BEGIN uptime=$UP"
chroot /newroot /usr/bin/env -i \
  PATH=/run/kstvm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb LANG=C.UTF-8 KST_IN_VM=1 \
  /bin/bash "$job/job.sh" </dev/null 2>&1
rc=$?
up
while read -r k v _; do
  case "$k" in MemTotal:) mt=$v ;; MemAvailable:) ma=$v ;; esac
done </proc/meminfo
echo "KSTVM_END uptime=$UP mem_used_kb=$((mt - ma))"
echo "KSTVM_EXIT=$rc"
sync
poweroff -f
sleep 10
