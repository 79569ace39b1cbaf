#!/bin/busybox sh
# L2: a stock Debian kernel under tsvmm. Checks what Linux found in tsvmm's platform and virtio-net
# device, moves traffic with L1 (10.0.2.1), prints L2-CHECK lines, and powers off (ACPI S5).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
arg() { sed -n "s/.*tsvmm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
scn=$(arg scenario)
check() { if [ "$2" = 0 ]; then echo "L2-CHECK $scn/$1 PASS $3"; else echo "L2-CHECK $scn/$1 FAIL $3"; fi; }
echo "L2-INIT $(cut -d' ' -f1 /proc/uptime)"
# the net device's modules, loaded in this order (after virtio-iommu when behind the vIOMMU)
NET_MODULES="failover net_failover virtio_net"
# (l2_symbols in scenarios.sh: which functions hold these rips. The modules the scenario loaded are
# loaded first, in its order — booted with its arguments — so that with nokaslr they land where they
# did there. kallsyms lists addresses as 16 hex digits, a module's symbols with [module] after the name.)
if [ -n "$(arg symbols)" ]; then
  [ "$(arg iommu)" = 1 ] && insmod /lib/modules/virtio-iommu.ko
  [ "$(arg rng)" = 1 ] && insmod /lib/modules/virtio-rng.ko
  for m in $NET_MODULES; do insmod /lib/modules/$m.ko; done
  for r in $(arg symbols | tr ',' ' '); do
    h=${r#0x}
    while [ ${#h} -lt 16 ]; do h=0$h; done
    set -- $(awk -v r="$h" '($2 == "t" || $2 == "T") && ($1 "") <= r && ($1 "") > best { best = $1; name = $3 $4 } END { print best, name }' /proc/kallsyms)
    if [ -n "$2" ]; then echo "L2-SYMBOL 0x$h is $2+0x$(printf '%x' $((0x$h - 0x$1)))"; else echo "L2-SYMBOL 0x$h is ?"; fi
  done
  poweroff -f
fi
if [ "$(arg wedge)" = 1 ]; then echo "L2-WEDGE"; while :; do :; done; fi
# (booted with reboot=t: Linux restarts by loading an empty IDT and raising int3, a triple fault)
if [ "$(arg triple)" = 1 ]; then echo "L2-TRIPLE"; reboot -f; sleep 60; fi
# (a kernel panic on purpose, both vCPUs online: with panic=-1 Linux stops the other CPU with an NMI
# and resets through ACPI's reset register)
# (the line first reaches the console: a panic leaves what the tty still held unsent)
if [ "$(arg panic)" = 1 ]; then echo "L2-PANIC"; sleep 1; echo c > /proc/sysrq-trigger; sleep 60; fi
# The ACPI power button, pressed by the host (vm.shutdown through link-run.mjs, or the API): Linux's evged runs the
# GED's _EVT on its interrupt, _EVT notifies PWRB, and button.ko reports KEY_POWER on an input device.
# Nothing in the kernel powers off on it (Debian's kernel has no CONFIG_ACPI_TINY_POWER_BUTTON): that is
# userspace's job (systemd-logind, acpid); here this init waits for the key on the device's evdev node.
power_button() {
  insmod /lib/modules/evdev.ko
  insmod /lib/modules/button.ko
  [ -e /sys/bus/platform/drivers/acpi-ged/ACPI0013:00 ]; check ged-bound $? "$(ls /sys/bus/platform/drivers/acpi-ged 2>&1 | tr '\n' ' ')"
  grep -q "ACPI:Ged" /proc/interrupts; check ged-irq $? "$(grep "ACPI:Ged" /proc/interrupts | tr -s ' ')"
  ev=
  for e in /sys/class/input/event*; do [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ] && ev=/dev/input/$(basename $e); done
  [ -n "$ev" ] && [ -e "$ev" ]; check power-button-input $? "$ev"
  # (the first event: struct input_event on 64-bit is a 16-byte timeval, then type, code (u16) and value
  # (s32). The reader has the device open before the host is told to press: evdev queues only for readers.)
  dd if="$ev" of=/tmp/ev bs=24 count=1 2>/dev/null &
  reader=$!
  t=0; until ls -l /proc/$reader/fd 2>/dev/null | grep -q "$ev"; do t=$((t + 1)); [ $t -ge 100 ] && break; sleep 0.1; done
  echo "L2-SHUTDOWN-READY"
  wait $reader
  set -- $(od -An -tu2 -j16 -N4 /tmp/ev)
  [ "$1" = 1 ] && [ "$2" = 116 ]; seen=$?
  check key-power-seen $seen "type=$1 code=$2"
  # (only on the key: an L2 that saw none stays up, and the host's shutdown deadline stops it)
  if [ $seen = 0 ]; then
    echo "L2-POWERING-OFF $(cut -d' ' -f1 /proc/uptime)"
    sync
    poweroff -f
  fi
  sleep 600
}
if [ "$(arg shutdown)" = 1 ]; then power_button; fi
cpus=$(arg cpus)
queues=$(arg queues)

n=$(grep -c ^processor /proc/cpuinfo)
[ "$n" = "$cpus" ]; check cpus $? "online=$n"
dmesg | grep -q "ACPI: Using ACPI (MADT)"; check acpi-madt $?
dmesg | grep -q "IOAPIC\[0\]"; check ioapic $?
dmesg | grep -q "PCI Root Bridge \[PCI0\]"; check acpi-pci-root $?
if [ "$(arg iommu)" = intel ]; then
  # QEMU's intel-iommu in front of a vhost-user net device (the backend's IOTLB path)
  dmesg | grep -q "DMAR: IOMMU enabled\|DMAR-IR\|Intel(R) Virtualization Technology for Directed I/O"; check intel-iommu-enabled $? "$(dmesg | grep -m1 DMAR)"
fi
if [ "$(arg iommu)" = 1 ]; then
  # tsvmm --viommu: the virtio-iommu driver first (its PCI function is in VIOT, with the net function
  # behind it); a net function virtio-pci bound before the IOMMU existed is bound again, behind it
  insmod /lib/modules/virtio-iommu.ko
  sleep 1
  [ -n "$(ls /sys/class/iommu 2>/dev/null)" ]; check viommu-probed $? "$(ls /sys/class/iommu | head -1)"
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1041 ] || continue
    netpci=$(basename $d)
    [ -e $d/iommu_group ] || { [ -e $d/driver ] && echo $netpci > $d/driver/unbind; echo $netpci > /sys/bus/pci/drivers/virtio-pci/bind; }
  done
  grp=/sys/bus/pci/devices/$netpci/iommu_group
  [ -e $grp ]; check net-behind-iommu $? "$(basename "$(readlink $grp)") $(cat $grp/type 2>/dev/null)"
  want=DMA; grep -q "iommu.strict=0" /proc/cmdline && want=DMA-FQ
  [ "$(cat $grp/type 2>/dev/null)" = $want ]; check iommu-domain-type $? "$(cat $grp/type 2>/dev/null)"
fi
# pci=nomsi: what Linux saw of its INTx lines, printed if the traffic checks hang (a lost interrupt)
if [ "$(arg nomsi)" = 1 ]; then
  (sleep 90; echo "L2-NOMSI-DIAG $(grep -E 'IO-APIC|ERR|MIS|Spurious' /proc/interrupts | tr -s ' ' | tr '\n' ';') $(dmesg | grep -iE 'irq|virtio|nobody' | tail -8 | tr '\n' ';')"; for f in /proc/irq/1[78]/spurious; do echo "L2-NOMSI-DIAG $f $(tr '\n' ' ' < $f)"; done) &
  diag=$!
fi
if [ "$(arg rng)" = 1 ]; then
  # tsvmm --rng: Linux's virtio_rng becomes the hardware RNG, and /dev/hwrng reads from tsvmm's queue
  insmod /lib/modules/virtio-rng.ko
  sleep 1
  rngdev=$(dirname "$(grep -l '^0x0004$' /sys/bus/virtio/devices/*/device 2>/dev/null | head -1)")
  [ -e "$rngdev/driver" ] && [ "$(basename "$(readlink "$rngdev/driver")")" = virtio_rng ]; check virtio-rng-bound $? "$rngdev"
  # the ring layout its driver negotiated (features bit 34, RING_PACKED): packed unless tsvmm offered split only
  rngf=$(cat "$rngdev/features" 2>/dev/null)
  [ "$(echo "$rngf" | cut -c35)" = "$(arg rngpacked)" ]; check rng-ring-layout $? "packed=$(echo "$rngf" | cut -c35) features=$rngf"
  cur=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
  case $cur in virtio_rng*) true ;; *) false ;; esac; check rng-current-virtio $? "$cur"
  dd if=/dev/hwrng of=/tmp/rng1 bs=4096 count=16 iflag=fullblock 2>/dev/null
  dd if=/dev/hwrng of=/tmp/rng2 bs=4096 count=16 iflag=fullblock 2>/dev/null
  n1=$(wc -c < /tmp/rng1); n2=$(wc -c < /tmp/rng2)
  [ "$n1" = 65536 ] && [ "$n2" = 65536 ]; check hwrng-64k $? "bytes=$n1,$n2"
  # random bytes: nearly every byte value in 64 KiB, and two reads that differ
  vals=$(od -An -v -tu1 /tmp/rng1 | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)
  [ "$vals" -ge 250 ] && ! cmp -s /tmp/rng1 /tmp/rng2; check hwrng-random $? "distinct-byte-values=$vals"
fi
for m in $NET_MODULES; do insmod /lib/modules/$m.ko; done
sleep 1
[ -e /sys/class/net/eth0 ]; check virtio-net-bound $?
dev=$(basename "$(readlink /sys/class/net/eth0/device)")
feat=$(cat /sys/bus/virtio/devices/$dev/features)
bit() { [ "$(echo "$feat" | cut -c$(($1 + 1)))" = 1 ]; }
bit 32; check feature-version1 $?
bit 29; check feature-event-idx $?
if [ "$(arg mrg)" = 0 ]; then ! bit 15; check feature-no-mrg-rxbuf $? "features=$feat"; else bit 15; check feature-mrg-rxbuf $?; fi
bit 0 && bit 11 && bit 12; check feature-csum-tso $?
bit 17; check feature-ctrl-vq $?
[ -n "$(arg iommu)" ] && { bit 33; check feature-access-platform $?; }
# the ring layout (VIRTIO_F_RING_PACKED, bit 34) the scenario expects: tsvmm.packed=1 when offered,
# 0 when tsvmm ran with packed=off (no argument: not checked, e.g. QEMU's device over vhost-user)
case "$(arg packed)" in
  1) bit 34; check feature-ring-packed $? "features=$feat" ;;
  0) ! bit 34; check feature-ring-split $? "features=$feat" ;;
esac
if [ "$(arg iommu)" = intel ]; then
  netpci=$(basename "$(dirname "$(readlink -f /sys/class/net/eth0/device)")")
  grp=/sys/bus/pci/devices/$netpci/iommu_group
  want=DMA; grep -q "iommu.strict=0" /proc/cmdline && want=DMA-FQ
  [ -e $grp ] && [ "$(cat $grp/type)" = $want ]; check net-behind-iommu $? "$(cat $grp/type 2>/dev/null)"
fi
vecs=$(grep -c "$dev-" /proc/interrupts)
# (over vhost-user, QEMU 7.2 under TCG needs INTx: vectors=0, see MACHINE.md)
# (booted with pci=nomsi, the functions' INTA instead: checked below)
case $scn in vhostuser* | nomsi) ;; *) [ "$vecs" -ge 3 ]; check msix-vectors $? "vectors=$vecs" ;; esac
# pci=nomsi: no MSI(-X) anywhere; virtio-pci requests its function's INTx, which Linux finds through the
# host bridge's _PRT and a PCI link: one IO-APIC line, level-triggered (fasteoi), named after the device
intx_count() { awk -v d="$1" '$NF == d && /IO-APIC/ && /fasteoi/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n }' /proc/interrupts; }
if [ "$(arg nomsi)" = 1 ]; then
  ! grep -q "MSI" /proc/interrupts; check no-pci-msi $? "$(grep -m1 MSI /proc/interrupts | tr -s ' ')"
  [ -n "$(intx_count "$dev")" ]; check net-on-intx $? "$(grep "$dev" /proc/interrupts | tr -s ' ')"
  [ "$(arg rng)" = 1 ] && { [ -n "$(intx_count "$(basename "$rngdev")")" ]; check rng-on-intx $? "$(grep "$(basename "$rngdev")" /proc/interrupts | tr -s ' ')"; }
  intx0=$(intx_count "$dev")
fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.2/24 dev eth0
sleep 1
[ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; check link-up $?
if [ "$(arg api)" = 1 ]; then
  # the host drives tsvmm through its API socket (tsvmm ctl, scenarios.sh): it pauses and resumes the VM
  # while it pings L2, takes the link down and up, and presses the power button
  carrier_becomes() { t=0; until [ "$(cat /sys/class/net/eth0/carrier)" = "$1" ]; do t=$((t + 1)); [ $t -ge 600 ] && return 1; sleep 0.1; done; }
  echo "L2-API-READY"
  carrier_becomes 0; check carrier-down-seen $? "carrier=$(cat /sys/class/net/eth0/carrier)"
  echo "L2-API-LINK-DOWN-SEEN"
  carrier_becomes 1; check carrier-up-seen $? "carrier=$(cat /sys/class/net/eth0/carrier)"
  ping -c 3 -W 10 10.0.2.1 >/dev/null; check ping-after-link-up $?
  power_button
fi
if [ -n "$(arg move)" ]; then
  # the host moves this VM midway through this download to a new tsvmm on another tap (scenarios.sh:
  # tsvmm.move=snapshot, a snapshot restored there; migration, a live migration); progress lines tell
  # it when, with the uptime. After the move the driver is asked to announce itself
  # (VIRTIO_NET_F_GUEST_ANNOUNCE, bit 21). A live migration's guest also pings L1 meanwhile: its pings
  # wait while it is held, so at most the few on the wire at the hand-over are lost.
  moved=restore; [ "$(arg move)" = migration ] && moved=migration
  bit 21; check feature-guest-announce $? "features=$feat"
  # (a small TCP receive window: the download waits in tsvmm's rate limiter, not in a second of
  # frames queued in front of it, where a ping reply would wait too and be lost at the hand-over)
  pinger=
  if [ $moved = migration ]; then
    echo "4096 16384 16384" > /proc/sys/net/ipv4/tcp_rmem
    ping -i 0.2 10.0.2.1 > /tmp/ping 2>&1 &
    pinger=$!
  fi
  wget -q -O /tmp/dls http://10.0.2.1/blob &
  dl=$!
  while kill -0 $dl 2>/dev/null; do echo "L2-DL $(wc -c < /tmp/dls 2>/dev/null || echo 0) $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done
  wait $dl; check download-across-$moved $?
  echo "L2-DL $(wc -c < /tmp/dls) $(cut -d' ' -f1 /proc/uptime)"
  [ "$(md5sum < /tmp/dls)" = "$(md5sum < /data/blob)" ]; check md5-across-$moved $? "bytes=$(wc -c < /tmp/dls)"
  echo "L2-MOVE-DONE $(cut -d' ' -f1 /proc/uptime)"
  if [ -n "$pinger" ]; then
    kill -INT $pinger; wait $pinger
    sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping); got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)
    [ -n "$sent" ] && [ -n "$got" ] && [ "$sent" -ge 20 ] && [ $((sent - got)) -le 3 ]; check ping-during-migration $? "sent=$sent received=$got"
  fi
  if [ "$queues" = 2 ]; then
    cur=$(ethtool -l eth0 2>&1 | sed -n '/Current/,$p' | sed -n 's/^Combined:[[:space:]]*//p')
    [ "$cur" = 2 ]; check two-pairs-after-$moved $? "combined=$cur"
  fi
  ping -c 3 -W 10 10.0.2.1 >/dev/null; check ping-after-$moved $?
  poweroff -f
fi
if [ "$(arg link)" = 1 ]; then
  # the host takes the link down once asked (L2-LINK-READY), and up once told L2 saw it (link-run.mjs)
  carrier_becomes() { t=0; until [ "$(cat /sys/class/net/eth0/carrier)" = "$1" ]; do t=$((t + 1)); [ $t -ge 300 ] && return 1; sleep 0.1; done; }
  echo "L2-LINK-READY"
  carrier_becomes 0; check carrier-down-seen $? "carrier=$(cat /sys/class/net/eth0/carrier)"
  echo "L2-LINK-DOWN-SEEN"
  carrier_becomes 1; check carrier-up-seen $? "carrier=$(cat /sys/class/net/eth0/carrier)"
  ping -c 3 -W 10 10.0.2.1 >/dev/null; check ping-after-link-up $?
  echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
  poweroff -f
fi
if [ "$(arg rss)" = 1 ]; then
  # RSS with hash reports (VIRTIO_NET_F_RSS, bit 60; VIRTIO_NET_F_HASH_REPORT, bit 57) over 2 pairs:
  # ethtool shows and changes the indirection table and the key, and L1's iperf3 flows land on the
  # queues the table names (ethtool -S: the bytes each RX queue took while one flow ran)
  bit 60 && bit 57; check feature-rss-hash-report $? "features=$feat"
  # (the hash in the header becomes the skb's hash once receive hashing is on)
  ethtool -K eth0 rxhash on; ethtool -k eth0 | grep -q "receive-hashing: on"; check receive-hashing-on $? "$(ethtool -k eth0 | grep receive-hashing)"
  x=$(ethtool -x eth0 2>&1)
  echo "$x" | grep -q "indirection table for eth0 with 2 RX ring" && [ "$(echo "$x" | grep -cE '^ +[0-9]+: ')" = 16 ]; check rss-table-shown $? "$(echo "$x" | head -4 | tr '\n' ' ')"
  # Microsoft's RSS verification key
  key=6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa
  ethtool -X eth0 hkey $key; check rss-hkey-accepted $?
  ethtool -x eth0 | grep -q "$key"; check rss-hkey-shown $? "$(ethtool -x eth0 | grep -A1 'hash key' | tr '\n' ' ')"
  ethtool -X eth0 equal 2; check rss-equal-2-accepted $?
  ethtool -x eth0 | grep -qE '^ +0: +0 +1 +0 +1 +0 +1 +0 +1'; check rss-table-equal-2 $? "$(ethtool -x eth0 | grep -m1 -E '^ +0: ')"
  # per RX queue, the interrupts of its MSI-X vector (virtioN-input.Q, summed over the CPUs): Linux
  # 6.12's ethtool -S has no per-queue packet or byte counters any more (netlink queue stats have them)
  rxi() { awk -v q="-input.$1" 'substr($NF, length($NF) - length(q) + 1) == q { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts; }
  # one flow, L1's iperf3 server at port $1 sending 16 MiB to client port $2: "iperf3's status, the
  # interrupts of RX queues 0 and 1 meanwhile"
  flow() { a0=$(rxi 0); a1=$(rxi 1); iperf3 -c 10.0.2.1 -p $1 --cport $2 -R -n 16M >/tmp/ip 2>&1; echo "$? $(($(rxi 0) - a0)) $(($(rxi 1) - a1))"; }
  # the flow went to queue $1: at least 10 interrupts there, at most 3 on the other (ARP)
  on_queue() { if [ $1 = 0 ]; then m=$3 o=$4; else m=$4 o=$3; fi; [ $2 = 0 ] && [ $m -ge 10 ] && [ $o -le 3 ]; }
  # With that key and the table 0 1 0 1 ... the data of 10.0.2.1:S → 10.0.2.2:P (TCPv4) goes to queue
  # (hash & 1), from tsvmm's Toeplitz: S=5201: P=40000, 40001, 40002 → 1; 40008, 40009, 40010 → 0.
  # iperf3's control connection (from an ephemeral port) is put on the same queue: the ephemeral range
  # is two ports whose queue is the flow's: 41016-41017 or 41018-41019 (→ 1), 41000-41001 or 41002-41003 (→ 0)
  for fqc in 40000:1:41016 40001:1:41018 40008:0:41000 40009:0:41002; do
    p=${fqc%%:*}; qc=${fqc#*:}; q=${qc%:*}; c=${qc#*:}
    echo "$c $((c + 1))" > /proc/sys/net/ipv4/ip_local_port_range
    set -- $(flow 5201 $p)
    on_queue $q "$@"; check rss-flow-$p-on-queue-$q $? "iperf3=$1 rx0-irqs+=$2 rx1-irqs+=$3"
  done
  echo "32768 60999" > /proc/sys/net/ipv4/ip_local_port_range
  # four flows at once, two for each queue (5202:40002 → 0, 5203:40003 → 1, 5204:40004 → 0, 5205:40005 → 1)
  a0=$(rxi 0); a1=$(rxi 1)
  for sp in 5202:40002 5203:40003 5204:40004 5205:40005; do iperf3 -c 10.0.2.1 -p ${sp%:*} --cport ${sp#*:} -R -n 8M >/tmp/ip${sp%:*} 2>&1 & done
  wait
  d0=$(($(rxi 0) - a0)); d1=$(($(rxi 1) - a1))
  [ $d0 -ge 20 ] && [ $d1 -ge 20 ]; check rss-4-parallel-flows-both-queues $? "rx0-irqs+=$d0 rx1-irqs+=$d1"
  # every entry to one queue, then to the other: flows the equal table sent elsewhere follow
  ethtool -X eth0 weight 1 0; check rss-weight-1-0-accepted $?
  set -- $(flow 5201 40002)
  on_queue 0 "$@"; check rss-weight-1-0-flow-on-queue-0 $? "iperf3=$1 rx0-irqs+=$2 rx1-irqs+=$3"
  ethtool -X eth0 weight 0 1; check rss-weight-0-1-accepted $?
  set -- $(flow 5201 40010)
  on_queue 1 "$@"; check rss-weight-0-1-flow-on-queue-1 $? "iperf3=$1 rx0-irqs+=$2 rx1-irqs+=$3"
  ethtool -X eth0 equal 2
  echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
  poweroff -f
fi
if [ -n "$(arg ratelimit)" ]; then
  # tsvmm lets BYTES per 100 ms through each way (tx-bytes, rx-bytes on its --net): iperf3's receiver
  # (the side that saw what got through) within 10 % of that, both ways. Goodput is the frames' bytes
  # less their headers: 96-100 % of them with TSO frames
  want=$(( $(arg ratelimit) * 80 ))
  rate() { sed -n 's/.* \([0-9.]*\) \([KMG]\)bits\/sec.*receiver.*/\1 \2/p' /tmp/ip | awk '{ m = $2 == "K" ? 1e3 : $2 == "M" ? 1e6 : 1e9; printf "%d\n", $1 * m }'; }
  within() { [ -n "$1" ] && [ "$1" -ge $((want * 9 / 10)) ] && [ "$1" -le $((want * 11 / 10)) ]; }
  iperf3 -c 10.0.2.1 -t 5 >/tmp/ip 2>&1; r=$(rate)
  within "$r"; check iperf3-tx-limited $? "bits/s=$r want=$want $(grep -m1 receiver /tmp/ip)"
  iperf3 -c 10.0.2.1 -t 5 -R >/tmp/ip 2>&1; r=$(rate)
  within "$r"; check iperf3-rx-limited $? "bits/s=$r want=$want $(grep -m1 receiver /tmp/ip)"
  # the host halves the limits while L2 runs (vm.net[0].setRateLimit) and publishes /limit-changed
  echo "L2-RATELIMIT-CHANGE"
  t=0; until timeout 5 wget -q -O /dev/null http://10.0.2.1/limit-changed 2>/dev/null; do t=$((t + 1)); [ $t -ge 60 ] && break; sleep 1; done
  want=$((want / 2))
  iperf3 -c 10.0.2.1 -t 5 >/tmp/ip 2>&1; r=$(rate)
  within "$r"; check iperf3-tx-limit-halved $? "bits/s=$r want=$want $(grep -m1 receiver /tmp/ip)"
  echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
  poweroff -f
fi
if [ "$(arg netctl)" = 1 ]; then
  # the control queue's newer commands, as Linux's virtio_net uses them: VLAN filtering
  # (VIRTIO_NET_F_CTRL_VLAN, bit 19), notification coalescing (NOTF_COAL 53, VQ_NOTF_COAL 52) and UDP
  # segmentation (HOST_USO 56, GUEST_USO4/6 54/55)
  bit 19; check feature-ctrl-vlan $? "features=$feat"
  bit 53 && bit 52; check feature-notf-coal $?
  bit 56 && bit 54 && bit 55; check feature-uso $?
  rx() { cat /sys/class/net/eth0/statistics/rx_packets; }
  mac=$(cat /sys/class/net/eth0/address)
  # VLANs: L1 has tap0.5 (10.0.5.1) and tap0.7 (10.0.7.1). Linux adds a VLAN interface's id to the
  # device's table (VLAN_ADD); frames of an id it did not add are not delivered: L1 pings L2 on VLAN 7
  # with L2's MAC pinned (pingas), and eth0 counts what arrived
  for m in llc stp garp mrp 8021q; do insmod /lib/modules/$m.ko; done
  [ -d /proc/net/vlan ]; check vlan-module $?
  vconfig add eth0 5 >/dev/null && ip addr add 10.0.5.2/24 dev eth0.5 && ip link set eth0.5 up; check vlan-5-added $?
  sleep 1
  ping -c 3 -W 10 10.0.5.1 >/dev/null; check vlan-added-receives $?
  r0=$(rx); wget -q -O /dev/null "http://10.0.2.1/cgi-bin/pingas?mac=$mac&n=20&ip=10.0.7.2"; r1=$(rx)
  [ $((r1 - r0)) -lt 15 ]; check vlan-not-added-filtered $? "rx+=$((r1 - r0))"
  vconfig add eth0 7 >/dev/null && ip link set eth0.7 up
  r0=$(rx); wget -q -O /dev/null "http://10.0.2.1/cgi-bin/pingas?mac=$mac&n=20&ip=10.0.7.2"; r1=$(rx)
  [ $((r1 - r0)) -ge 20 ]; check vlan-added-later-receives $? "rx+=$((r1 - r0))"
  # Coalescing: ethtool -C sets RX's parameters (RX_SET), ethtool -c reads them back; interrupts per
  # received frame over the same UDP stream from L1, without and with (L2's own count of eth0's RX
  # interrupts, /proc/interrupts, and its rx_packets). Here L2's NAPI already takes several frames per
  # interrupt (its polls are slow under emulation): a delay of 100 µs is below that and changes little
  # (reported); one of 10 ms, past it, must lower the interrupts per frame.
  irqs() { grep "$dev-input.0" /proc/interrupts | awk '{ s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s }'; }
  per_frame() { # prints "interrupts frames"
    i0=$(irqs); p0=$(rx)
    iperf3 -c 10.0.2.1 -u -b 20M -l 1400 -t 3 -R >/dev/null 2>&1
    i1=$(irqs); p1=$(rx)
    echo "$((i1 - i0)) $((p1 - p0))"
  }
  set -- $(per_frame); off_i=$1; off_p=$2
  ethtool -C eth0 rx-frames 32 rx-usecs 100; check coal-set $?
  c=$(ethtool -c eth0 2>&1)
  echo "$c" | grep -q "^rx-usecs:[[:space:]]*100" && echo "$c" | grep -q "^rx-frames:[[:space:]]*32"; check coal-read-back $? "$(echo "$c" | grep -E '^rx-(usecs|frames):' | tr -s ' \t\n' ' ')"
  set -- $(per_frame); short_i=$1; short_p=$2
  ethtool -C eth0 rx-frames 32 rx-usecs 10000
  set -- $(per_frame); on_i=$1; on_p=$2
  # (fewer interrupts per frame: on_i / on_p < off_i / off_p)
  [ "$off_p" -gt 100 ] && [ "$on_p" -gt 100 ] && [ $((on_i * off_p)) -lt $((off_i * on_p)) ]
  check coal-fewer-interrupts-per-frame $? "off: irqs=$off_i frames=$off_p; 32 frames/100 us: irqs=$short_i frames=$short_p; 32 frames/10 ms: irqs=$on_i frames=$on_p"
  ethtool -C eth0 rx-frames 0 rx-usecs 0
  # USO: Linux offers tx-udp-segmentation with HOST_USO (off until asked); UDP_SEGMENT sends of 16
  # datagrams each then leave as one GSO packet, which tsvmm passes to the tap whole (L1 counts tap0's
  # frames beside the datagrams it received, each checked: udp-recv.mjs)
  ethtool -K eth0 tx-udp-segmentation on; ethtool -k eth0 | grep -q "^tx-udp-segmentation: on"; check uso-tx-udp-segmentation-on $? "$(ethtool -k eth0 | grep tx-udp-segmentation)"
  udpgso-send 10.0.2.1 5005 64 16 >/tmp/uso 2>&1; check uso-send $? "$(cat /tmp/uso)"
  t=0; until timeout 5 wget -q -O /tmp/udp-result http://10.0.2.1/udp-result 2>/dev/null; do t=$((t + 1)); [ $t -ge 60 ] && break; sleep 1; done
  res=$(cat /tmp/udp-result 2>/dev/null)
  d=$(echo "$res" | sed -n 's/.*distinct=\([0-9]*\).*/\1/p'); b=$(echo "$res" | sed -n 's/.*bad=\([0-9]*\).*/\1/p'); f=$(echo "$res" | sed -n 's/.*tap-frames=\([0-9]*\).*/\1/p')
  [ "$d" = 1024 ] && [ "$b" = 0 ]; check uso-transfer-intact $? "$res"
  [ -n "$f" ] && [ "$f" -lt 256 ]; check uso-frames-whole $? "$res"
  echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
  poweroff -f
fi
# /proc/net/snmp's Ip counter named $1
ipstat() { awk -v k="$1" '/^Ip:/ { if (!n) { for (i = 2; i <= NF; i++) if ($i == k) c = i; n = 1 } else print $c }' /proc/net/snmp; }
mtu=$(arg mtu)
if [ -n "$mtu" ]; then
  # VIRTIO_NET_F_MTU (bit 3) with the MTU tsvmm was given (and raised tap0 to): Linux's ceiling for eth0
  bit 3; check feature-mtu $?
  ip link set eth0 mtu $((mtu + 1)) 2>/dev/null; [ $? != 0 ]; check mtu-above-offer-refused $?
  ip link set eth0 mtu 1500 && ip link set eth0 mtu "$mtu"; check mtu-set $? "mtu=$(cat /sys/class/net/eth0/mtu)"
  # a full-size ping both ways unfragmented (busybox ping has no -M do: neither side fragmented nor
  # reassembled anything, by L2's IP counters)
  f0=$(ipstat FragCreates); r0=$(ipstat ReasmReqds)
  ping -c 3 -W 10 -s $((mtu - 28)) 10.0.2.1 >/dev/null; p=$?
  f1=$(ipstat FragCreates); r1=$(ipstat ReasmReqds)
  [ $p = 0 ] && [ "$f1" = "$f0" ] && [ "$r1" = "$r0" ]; check ping-jumbo-unfragmented $? "ping=$p frags+=$((f1 - f0)) reasm+=$((r1 - r0))"
fi
speed=$(arg speed)
if [ -n "$speed" ]; then
  # VIRTIO_NET_F_SPEED_DUPLEX (bit 63) with the speed and duplex given to tsvmm
  et=$(ethtool eth0 2>&1)
  echo "$et" | grep -q "Speed: ${speed}Mb/s" && echo "$et" | grep -q "Duplex: Full"; check ethtool-speed $? "$(echo "$et" | grep -E 'Speed|Duplex' | tr -s ' \t\n' ' ')"
fi
# L1 fetches /data/blob from here while the other checks run (the L2 → L1 direction)
httpd -p 8080 -h /data
# before powering off: L1 publishes /l2-blob-received once it has the whole blob. (Waiting a fixed 3 s
# was not enough in strict vIOMMU mode on a loaded host: 0.6 Mbit/s there, and L2 went before L1 had it.)
wait_for_l1_download() {
  w=0
  until timeout 5 wget -q -O /dev/null http://10.0.2.1/l2-blob-received 2>/dev/null; do w=$((w + 1)); [ $w -ge 180 ] && break; sleep 1; done
}
for s in 56 1400 8000; do ping -c 3 -W 10 -s $s 10.0.2.1 >/dev/null; check "ping-$s" $?; done
wget -q -O /tmp/dl http://10.0.2.1/blob
[ "$(md5sum < /tmp/dl)" = "$(md5sum < /data/blob)" ]; check file-l1-to-l2 $?
if [ "$queues" = 2 ]; then
  # the driver starts with both pairs; go down to one and back (MQ VQ_PAIRS_SET through the control
  # queue, the dataplane restarting with the rings where they stood)
  ethtool -L eth0 combined 1; check ethtool-combined-1 $?
  ping -c 2 -W 10 10.0.2.1 >/dev/null; check ping-one-pair $?
  ethtool -L eth0 combined 2; check ethtool-combined-2 $?
  cur=$(ethtool -l eth0 2>&1 | sed -n '/Current/,$p' | sed -n 's/^Combined:[[:space:]]*//p')
  [ "$cur" = 2 ]; check two-pairs-active $? "combined=$cur"
  iperf3 -c 10.0.2.1 -t 4 -P 8 >/tmp/ip 2>&1; check iperf3-parallel $? "$(grep SUM /tmp/ip | tail -1)"
  # guest offload control (CTRL_GUEST_OFFLOADS): no TSO frames received while rx-gro-hw is off, a
  # download intact either way
  ethtool -K eth0 rx-gro-hw off && ethtool -k eth0 | grep -q "rx-gro-hw: off"; check gro-hw-off $? "$(ethtool -k eth0 | grep rx-gro-hw)"
  wget -q -O /tmp/dl5 http://10.0.2.1/blob
  [ "$(md5sum < /tmp/dl5)" = "$(md5sum < /data/blob)" ]; check file-gro-hw-off $?
  ethtool -K eth0 rx-gro-hw on; check gro-hw-on $?
else
  iperf3 -c 10.0.2.1 -t 3 >/tmp/ip 2>&1; check iperf3-l2-to-l1 $? "$(grep -m1 sender /tmp/ip)"
  iperf3 -c 10.0.2.1 -t 3 -R >/tmp/ip 2>&1; check iperf3-l1-to-l2 $? "$(grep -m1 receiver /tmp/ip)"
  # control queue: a new MAC address (CTRL_MAC_ADDR), frames to the old one filtered unless promiscuous
  # (tsvmm's own device only: over vhost-user the frontend owns the control queue)
  [ "$scn" = vhostuser-iommu ] && { echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"; sleep 3; poweroff -f; }
  if [ "$scn" = vhostuser ]; then
    # the host now kills the backend as a crash would and starts a new one; QEMU reconnects and the
    # new backend resumes the rings. The host publishes /restarted only once the new one runs, so
    # fetching it proves traffic through the new backend, with the driver never reset.
    echo "L2-KILL-BACKEND $(cut -d' ' -f1 /proc/uptime)"
    t=0; seen=""
    # (busybox wget -T crashes here: bound it with timeout instead)
    until timeout 5 wget -q -O /tmp/r http://10.0.2.1/restarted 2>/tmp/werr; do
      seen="$seen$(cat /sys/class/net/eth0/carrier)"; t=$((t + 1)); [ $t -ge 120 ] && break; sleep 1
    done
    [ $t -lt 120 ]; check traffic-after-backend-restart $? "waited=${t}s carrier=$seen $(head -c 200 /tmp/werr)"
    [ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; check link-after-backend-restart $?
    ping -c 3 -W 10 -s 1400 10.0.2.1 >/dev/null; check ping-after-backend-restart $?
    wget -q -O /tmp/dl2 http://10.0.2.1/blob
    [ "$(md5sum < /tmp/dl2)" = "$(md5sum < /data/blob)" ]; check file-after-backend-restart $?
    # live migration: the host moves this VM to another QEMU (and tsvmm backend) while it downloads
    # in a loop; it publishes /migrated once the destination runs
    echo "L2-MIGRATE-READY $(cut -d' ' -f1 /proc/uptime)"
    n=0; bad=0; t=0; sum=$(md5sum < /data/blob)
    until timeout 5 wget -q -O /tmp/r http://10.0.2.1/migrated 2>/dev/null; do
      if timeout 20 wget -q -O /tmp/dl3 http://10.0.2.1/blob 2>/dev/null; then
        n=$((n + 1)); [ "$(md5sum < /tmp/dl3)" = "$sum" ] || bad=$((bad + 1))
      fi
      t=$((t + 1)); [ $t -ge 300 ] && break
    done
    [ $n -ge 2 ]; check downloads-during-migration $? "downloads=$n"
    [ $bad = 0 ] && [ $n -ge 1 ]; check downloads-intact-across-migration $? "downloads=$n bad=$bad"
    ping -c 3 -W 10 -s 1400 10.0.2.1 >/dev/null; check ping-after-migration $?
    wget -q -O /tmp/dl4 http://10.0.2.1/blob
    [ "$(md5sum < /tmp/dl4)" = "$sum" ]; check file-after-migration $?
    echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"; sleep 3; poweroff -f
  fi
  # behind the IOMMU: the DMA traffic above is what was to be shown (the control queue is tested without)
  [ "$(arg iommu)" = 1 ] && { wait_for_l1_download; echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"; poweroff -f; }
  old=$(cat /sys/class/net/eth0/address)
  ip link set eth0 address 02:aa:bb:cc:dd:ee; check mac-change $?
  sleep 1
  ping -c 3 -W 10 10.0.2.1 >/dev/null; check new-mac-reaches $?
  rx() { cat /sys/class/net/eth0/statistics/rx_packets; }
  r0=$(rx); wget -q -O /dev/null "http://10.0.2.1/cgi-bin/pingas?mac=$old&n=20"; r1=$(rx)
  [ $((r1 - r0)) -lt 15 ]; check old-mac-filtered $? "rx+=$((r1 - r0))"
  ip link set eth0 promisc on
  r0=$(rx); wget -q -O /dev/null "http://10.0.2.1/cgi-bin/pingas?mac=$old&n=20"; r1=$(rx)
  [ $((r1 - r0)) -ge 20 ]; check promisc-on-receives-old-mac $? "rx+=$((r1 - r0))"
  ip link set eth0 promisc off
  r0=$(rx); wget -q -O /dev/null "http://10.0.2.1/cgi-bin/pingas?mac=$old&n=20"; r1=$(rx)
  [ $((r1 - r0)) -lt 15 ]; check promisc-off-filters-again $? "rx+=$((r1 - r0))"
fi
if [ "$(arg nomsi)" = 1 ]; then
  # the traffic above came with interrupts on that line (counted by L2's kernel)
  intx1=$(intx_count "$dev")
  [ -n "$intx1" ] && [ "$intx1" -gt $((intx0 + 100)) ]; check intx-interrupts-counted $? "before=$intx0 after=$intx1"
fi
wait_for_l1_download
echo "L2-DONE $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
