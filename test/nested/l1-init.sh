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
mkdir -p /dev/net
[ -c /dev/net/tun ] || mknod /dev/net/tun c 10 200
ip link set lo up
stage kvm-loaded
httpd -p 80 -h /data
iperf3 -s -D >/dev/null 2>&1
runs=$(sed -n 's/.*tsvmm\.run=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')

# the tap L2's traffic arrives on (busybox's ip cannot make a multi-queue vnet_hdr tap)
node /tsvmm/mktap.mjs tap0
ip addr add 10.0.2.1/24 dev tap0
ip link set tap0 up
[ -e /sys/class/net/tap0 ]; check tap-created $?

scenario() { # name cpus queues extra-l2-args tsvmm-timeout
  name=$1
  rm -f /tmp/recv
  # the L2 → L1 direction: fetch L2's blob as soon as its web server answers
  (for i in $(seq 300); do wget -q -O /tmp/recv.part http://10.0.2.2:8080/blob 2>/dev/null && mv /tmp/recv.part /tmp/recv && break; sleep 1; done) &
  fetcher=$!
  stage "tsvmm-start-$name"
  node /tsvmm/bin/tsvmm.js run --kernel /l2/vmlinuz --initrd /l2/initrd.gz --mem 512M --cpus $2 --stats --timeout $5 \
    --net tap,ifname=tap0,queues=$3 --cmdline "console=ttyS0 loglevel=4 panic=-1 tsvmm.scenario=$name tsvmm.cpus=$2 tsvmm.queues=$3 $4"
  rc=$?
  stage "tsvmm-end-$name"
  echo "L1-RESULT $name exit=$rc"
  left=$(ps | grep -c '[n]ode /tsvmm')
  [ "$left" = 0 ]; check "$name/no-tsvmm-left" $? "processes=$left"
  if [ "$name" != wedge ]; then
    [ "$(md5sum < /tmp/recv)" = "$(md5sum < /data/blob)" ]; check "$name/file-l2-to-l1" $? "bytes=$(wc -c < /tmp/recv 2>/dev/null)"
  fi
  kill $fetcher 2>/dev/null
}

for r in $runs; do
  case $r in
    basic) scenario basic 1 1 "" 900 ;;
    mq) scenario mq 2 2 "" 900 ;;
    wedge) scenario wedge 1 1 "tsvmm.wedge=1" 60 ;;
  esac
done
stage l1-done
poweroff -f
