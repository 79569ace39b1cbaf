#!/bin/busybox sh
# L1 (QEMU software emulation with emulated AMD SVM): load KVM, then run tsvmm against the L2 Linux
# once per scenario named on the kernel command line (tsvmm.run=basic,mq,wedge), reporting STAGE and
# L1-CHECK lines on the console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin:/usr/bin
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

scenario() { # name cpus queues extra-l2-args tsvmm-timeout
  name=$1
  ip tuntap add tap0 mode tap multi_queue vnet_hdr
  ip addr add 10.0.2.1/24 dev tap0
  ip link set tap0 up
  rm -f /tmp/recv
  nc -l -p 5555 > /tmp/recv &
  ncpid=$!
  stage "tsvmm-start-$name"
  node /tsvmm/bin/tsvmm.js run --kernel /l2/vmlinuz --initrd /l2/initrd.gz --mem 512M --cpus $2 --stats --timeout $5 \
    --net tap,ifname=tap0,queues=$3 --cmdline "console=ttyS0 earlyprintk=ttyS0 loglevel=6 panic=-1 tsvmm.scenario=$name tsvmm.cpus=$2 tsvmm.queues=$3 $4"
  rc=$?
  stage "tsvmm-end-$name"
  echo "L1-RESULT $name exit=$rc"
  left=$(ps | grep -c '[n]ode /tsvmm')
  [ "$left" = 0 ]; check "no-tsvmm-left-$name" $? "processes=$left"
  if [ "$name" != wedge ]; then
    [ "$(md5sum < /tmp/recv)" = "$(md5sum < /data/blob)" ]; check "file-l2-to-l1-$name" $? "bytes=$(wc -c < /tmp/recv)"
  fi
  kill $ncpid 2>/dev/null
  ip link del tap0
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
