#!/bin/busybox sh
# L1's /init (QEMU software emulation with emulated AMD SVM; see scripts/l1/boot.mjs): loads KVM, mounts
# the system image (the host's /usr and /etc) as the root to run in and the project image at the
# checkout's own path, then runs the job (.l1-job.sh in the checkout) there and powers off.
# Kernel command line: tsvmm.project=PATH (where the checkout is on the host and in L1).
# Console (ttyS0): the job's output; ttyS1: the job's results channel (/dev/ttyS1, the test reporter).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin
say() { echo "L1: $* (uptime $(cut -d' ' -f1 /sysroot/proc/uptime) s)"; }
fail() { echo "L1-FAILED: $*"; poweroff -f; }
for m in irqbypass kvm kvm-amd tun veth virtio_blk; do insmod /lib/modules/$m.ko || fail "insmod $m"; done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd"
project=$(sed -n 's/.*tsvmm\.project=\([^ ]*\).*/\1/p' /proc/cmdline)
R=/sysroot
# (the disks are QEMU snapshots: what L1 writes is thrown away when it ends)
mount -t ext4 /dev/vda $R || fail "mount the system image"
mount --move /dev $R/dev
mount --move /proc $R/proc
mount --move /sys $R/sys
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
# /var is not on the system image: what programs keep there (DPDK's runtime directory, /var/tmp) lives in RAM
mkdir -p $R/var && mount -t tmpfs var $R/var && mkdir -p $R/var/tmp $R/var/lib $R/var/log && ln -s /run $R/var/run
mkdir -p $R/dev/pts $R/dev/shm $R/dev/net
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t tracefs nodev $R/sys/kernel/tracing 2>/dev/null
# a VM ending in a triple fault: AMD's KVM resets the vCPU before it reports the shutdown, so the VMM
# cannot say where the guest was; KVM's trace of that exit keeps the rip, after the exceptions KVM
# injected before it (test/helpers/l1-trace.ts adds it to the failure)
T=$R/sys/kernel/tracing
{ echo 'exit_reason == 127' > $T/events/kvm/kvm_exit/filter && echo 1 > $T/events/kvm/kvm_exit/enable &&
  echo 1 > $T/events/kvm/kvm_inj_exception/enable && echo 1 > $T/options/record-tgid; } 2>/dev/null || echo "L1: KVM's trace could not be enabled"
[ -c $R/dev/net/tun ] || mknod $R/dev/net/tun c 10 200
# the checkout last: it may live under /tmp, /run or /var (a CI clone), which the mounts above replace
mkdir -p "$R$project" && mount -t ext4 $R/dev/vdb "$R$project" || fail "mount the project image"
echo tsvmm-l1 > $R/proc/sys/kernel/hostname
in_root() { chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
  TSVMM_IN_L1=1 LANG=C.UTF-8 "$@"; }
in_root /usr/sbin/ip link set lo up
say "KVM loaded, disks mounted"
# One idle VM for L1's whole life, so that the VMs the job makes and ends flip no kernel static keys;
# made while L1 runs on one CPU (booted with maxcpus=1), the second CPU coming online afterwards. Both
# against QEMU 7.2's multi-threaded TCG running the int3 of a finished code patch (an L1 panic):
# test/nested/pin-kvm-keys.mjs says more.
in_root /bin/sh -c "TSVMM_DIR=$project exec node $project/test/nested/pin-kvm-keys.mjs" > /tmp/pinned 2>&1 &
n=0
until grep -q kvm-keys-pinned /tmp/pinned 2>/dev/null; do
  n=$((n + 1)); [ $n -lt 600 ] || fail "pinning KVM's keys (test/nested/pin-kvm-keys.mjs) did not finish in 120 s: $(cat /tmp/pinned)"
  sleep 0.2
done
for c in $R/sys/devices/system/cpu/cpu[1-9]*/online; do [ -e "$c" ] && echo 1 > "$c"; done
say "KVM keys pinned, CPUs $(cat $R/sys/devices/system/cpu/online) online; running the job"
in_root /bin/bash -c "cd $project && exec bash .l1-job.sh"
echo "L1-JOB-EXIT $?"
sync
poweroff -f
