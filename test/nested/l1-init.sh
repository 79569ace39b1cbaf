#!/bin/busybox sh
# L1 (QEMU software emulation with emulated AMD SVM): load KVM, then run tsvmm against the L2 Linux
# once per scenario named on the kernel command line (tsvmm.run=basic,mq,wedge), reporting STAGE and
# L1-CHECK lines on the console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
stage() { echo "STAGE $1 $(cut -d' ' -f1 /proc/uptime)"; }
check() { if [ "$2" = 0 ]; then echo "L1-CHECK $1 PASS $3"; else echo "L1-CHECK $1 FAIL $3"; fi; }
stage l1-init
for m in irqbypass kvm kvm-amd tun; do insmod /lib/modules/$m.ko || echo "STAGE-FAIL insmod-$m"; done
[ -c /dev/kvm ]; check kvm-device $?
# L2 ending in a triple fault: AMD's KVM resets the vCPU before it reports the shutdown, so tsvmm cannot
# say where L2 was; KVM's own trace of that exit keeps the rip (and the exceptions KVM injected before)
T=/sys/kernel/tracing
if mount -t tracefs nodev $T 2>/dev/null && echo 'exit_reason == 127' > $T/events/kvm/kvm_exit/filter &&
   echo 1 > $T/events/kvm/kvm_exit/enable && echo 1 > $T/events/kvm/kvm_inj_exception/enable; then
  export KVM_TRACE=$T
else
  echo "STAGE-FAIL kvm-trace"
fi
mkdir -p /dev/net
[ -c /dev/net/tun ] || mknod /dev/net/tun c 10 200
ip link set lo up
# one idle VM for L1's whole life, so tsvmm's VMs flip no kernel static keys (see pin-kvm-keys.mjs);
# made while L1 runs on one CPU (booted with maxcpus=1): its own flips then patch code no other CPU
# runs (the first VM's flip panicked L1 once too), and the second CPU comes online afterwards
TSVMM_DIR=/tsvmm node /tsvmm/pin-kvm-keys.mjs > /tmp/pinned &
until grep -q kvm-keys-pinned /tmp/pinned 2>/dev/null; do sleep 0.2; done
cat /tmp/pinned
for c in /sys/devices/system/cpu/cpu[1-9]*/online; do [ -e "$c" ] && echo 1 > "$c"; done
echo "STAGE cpus-online-$(cat /sys/devices/system/cpu/online) $(cut -d' ' -f1 /proc/uptime)"
stage kvm-loaded
# the rest is shared with hardware-KVM hosts
export RUNS="$(sed -n 's/.*tsvmm\.run=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')"
export TSVMM_DIR=/tsvmm MKTAP=/tsvmm/mktap.mjs L2_KERNEL=/l2/vmlinuz L2_INITRD=/l2/initrd.gz DATA_DIR=/data WORK=/tmp
sh /scenarios.sh
stage l1-done
poweroff -f
