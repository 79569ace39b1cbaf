#!/bin/busybox sh
# L2: a stock Debian kernel under tsvmm. Checks what Linux found in tsvmm's platform and virtio-net
# device, moves traffic with L1 (10.0.2.1), prints L2-CHECK lines, and powers off (ACPI S5).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin:/usr/bin
check() { if [ "$2" = 0 ]; then echo "L2-CHECK $1 PASS $3"; else echo "L2-CHECK $1 FAIL $3"; fi; }
arg() { sed -n "s/.*tsvmm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
echo "L2-INIT $(cut -d' ' -f1 /proc/uptime)"
if [ "$(arg wedge)" = 1 ]; then echo "L2-WEDGE"; while :; do :; done; fi
cpus=$(arg cpus)
queues=$(arg queues)

n=$(grep -c ^processor /proc/cpuinfo)
[ "$n" = "$cpus" ]; check cpus $? "online=$n"
dmesg | grep -q "ACPI: Using ACPI (MADT)"; check acpi-madt $?
dmesg | grep -q "IOAPIC\[0\]"; check ioapic $?
dmesg | grep -q "PCI Root Bridge \[PCI0\]"; check acpi-pci-root $?
for m in failover net_failover virtio_net; do insmod /lib/modules/$m.ko; done
sleep 1
[ -e /sys/class/net/eth0 ]; check virtio-net-bound $?
dev=$(basename "$(readlink /sys/class/net/eth0/device)")
feat=$(cat /sys/bus/virtio/devices/$dev/features)
bit() { [ "$(echo "$feat" | cut -c$(($1 + 1)))" = 1 ]; }
bit 32; check feature-version1 $?
bit 29; check feature-event-idx $?
bit 15; check feature-mrg-rxbuf $?
bit 0 && bit 11 && bit 12; check feature-csum-tso $?
bit 17; check feature-ctrl-vq $?
vecs=$(grep -c "$dev-" /proc/interrupts)
[ "$vecs" -ge 3 ]; check msix-vectors $? "vectors=$vecs"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.2/24 dev eth0
sleep 1
[ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; check link-up $?
for s in 56 1400 8000; do ping -c 3 -W 10 -s $s 10.0.2.1 >/dev/null; check "ping-$s" $?; done
wget -q -O /tmp/dl http://10.0.2.1/blob
[ "$(md5sum < /tmp/dl)" = "$(md5sum < /data/blob)" ]; check file-l1-to-l2 $?
nc 10.0.2.1 5555 < /data/blob; check file-l2-to-l1-sent $?
if [ "$queues" = 2 ]; then
  ethtool -L eth0 combined 2; check ethtool-combined-2 $?
  ethtool -l eth0 | grep -A4 Current | grep -q "Combined:.*2"; check two-pairs-active $?
  iperf3 -c 10.0.2.1 -t 4 -P 8 >/tmp/ip 2>&1; check iperf3-parallel $? "$(grep SUM /tmp/ip | tail -1)"
else
  iperf3 -c 10.0.2.1 -t 3 >/tmp/ip 2>&1; check iperf3-l2-to-l1 $? "$(grep -m1 sender /tmp/ip)"
  iperf3 -c 10.0.2.1 -t 3 -R >/tmp/ip 2>&1; check iperf3-l1-to-l2 $? "$(grep -m1 receiver /tmp/ip)"
fi
echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
