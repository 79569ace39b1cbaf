#!/usr/bin/env bash
# Demo step: a stock Debian kernel (.cache/linux, from scripts/guest-linux.sh) under tsvmm with a
# virtio-net device on a tap in a throwaway network namespace; the guest pings the host end and runs
# iperf3 against it in both directions (guest/linux-demo/init). Needs /dev/kvm (a real host, or the
# emulated L1 scripts/demo.sh uses without one).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIN=$ROOT/.cache/linux
OUT=$ROOT/.cache/demo
mkdir -p "$OUT"

# the guest's initramfs: busybox, the virtio_net modules, iperf3 with its libraries (cached by input)
key=$( (cat "$LIN/PACKAGE" guest/linux-demo/init /bin/busybox "$(command -v iperf3)") | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/KEY" 2>/dev/null)" != "$key" ]; then
  D=$(mktemp -d)
  mkdir -p "$D"/{bin,dev,proc,sys,tmp,lib/modules}
  cp /bin/busybox "$D/bin/busybox"
  for m in failover net_failover virtio_net; do cp "$LIN/modules/$m.ko" "$D/lib/modules/"; done
  bin=$(command -v iperf3)
  mkdir -p "$D$(dirname "$bin")" && cp -L "$bin" "$D$bin"
  for lib in $(ldd "$bin" | awk '/=>/{print $3} /ld-linux/{print $1}'); do mkdir -p "$D$(dirname "$lib")" && cp -L "$lib" "$D$lib"; done
  cp guest/linux-demo/init "$D/init"
  (cd "$D" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.gz"
  rm -rf "$D"
  echo "$key" > "$OUT/KEY"
fi

NS=tsvmm-demo-$$
ip netns add "$NS"
trap 'ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null; ip netns del "$NS"' EXIT
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
in_ns ip tuntap add tap0 mode tap multi_queue vnet_hdr
in_ns ip addr add 10.77.0.1/24 dev tap0
in_ns ip link set tap0 up
in_ns iperf3 -s -D
SECS=${DEMO_IPERF_SECS:-5}
# (DEMO_IPERF_BYTES: move that many bytes each way instead of running SECS; DEMO_NET_OPTS: more
# --net options, e.g. ",packed=off"; DEMO_TIMEOUT: tsvmm's time limit in seconds)
BYTES=${DEMO_IPERF_BYTES:+ demo.bytes=$DEMO_IPERF_BYTES}
in_ns node bin/tsvmm.js run --kernel "$LIN/vmlinuz" --initrd "$OUT/initrd.gz" --mem 512M --cpus 2 --timeout "${DEMO_TIMEOUT:-600}" \
  --net "tap,ifname=tap0${DEMO_NET_OPTS:-}" --cmdline "console=ttyS0 quiet panic=-1 demo.ip=10.77.0.2 demo.peer=10.77.0.1 demo.secs=$SECS$BYTES" | tee "$OUT/console.log"
for step in PING IPERF-TX IPERF-RX; do
  grep -q "^DEMO-$step 0" "$OUT/console.log" || { echo "demo: the guest's $step step failed (console: $OUT/console.log)" >&2; exit 1; }
done
# the figures again, last: ping's summary and iperf3's receiver lines
rate() { grep receiver "$OUT/console.log" | sed -n "${1}p" | grep -o '[0-9.]* [MG]bits/sec'; }
echo
echo "demo: the Debian guest's virtio-net through tsvmm's dataplane and the tap: ping $(grep -o '[0-9]* packets transmitted, [0-9]* packets received' "$OUT/console.log" | sed 's/ packets transmitted, / sent, /; s/ packets received/ answered/'), $(grep -o 'min/avg/max = [0-9./]* ms' "$OUT/console.log"); iperf3 guest -> host $(rate 1), host -> guest $(rate 2)"
if [ -n "${TSVMM_IN_L1:-}" ]; then
  echo "demo: (measured inside QEMU's software emulation of two nested levels: these figures say nothing of tsvmm's speed)"
fi
