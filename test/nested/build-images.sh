#!/usr/bin/env bash
# Builds the nested-virtualization images into .cache/nested/ (cached by input hash):
#   l1.cpio.gz  L1: busybox, KVM modules (kvm-amd), tun, node with its libraries, the built project, the
#               L2 kernel and initramfs, and an /init that runs tsvmm against L2 once per scenario
#   l2.cpio.gz  L2: busybox, virtio-net, virtio-rng, power-button and 802.1Q modules, iperf3 and ethtool with their libraries, a test blob,
#               a UDP_SEGMENT sender (udpgso-send.c),
#               and an /init that checks what Linux found and moves traffic, printing L2-CHECK lines
# L1 runs under QEMU software emulation with emulated AMD SVM (see test/nested.test.ts).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# Tests that need the images build them in their set-up, possibly at the same moment (vitest runs test
# files in parallel): one build at a time, the others then find it up to date. (Two writers of the same
# cpio once left a corrupt initramfs: "junk within compressed archive".)
mkdir -p .cache
exec 9>.cache/nested.lock
flock 9
bash scripts/guest-linux.sh >/dev/null
[ -f dist/cli.js ] || npm run --silent build
[ -f build/Release/tsvmm_native.node ] || npm run --silent build:native
LIN=$ROOT/.cache/linux
OUT=$ROOT/.cache/nested
mkdir -p "$OUT"

key=$( (cat "$LIN/PACKAGE" test/nested/build-images.sh test/nested/l1-init.sh test/nested/scenarios.sh test/nested/l2-init.sh test/nested/mktap.mjs test/nested/link-run.mjs test/nested/ratelimit-run.mjs test/nested/pin-kvm-keys.mjs test/nested/garp-watch.mjs test/nested/pingas.cgi test/nested/udpgso-send.c test/nested/udp-recv.mjs build/Release/tsvmm_native.node "$(command -v node)"; find dist -type f -name '*.js' | sort | xargs cat) | sha256sum | cut -c1-16)
if [ -f "$OUT/KEY" ] && [ "$(cat "$OUT/KEY")" = "$key" ] && [ -f "$OUT/l1.cpio.gz" ]; then
  echo "nested: images up to date ($key)"
  exit 0
fi

copy_with_libs() { # binary destination-root
  local bin=$1 dst=$2
  mkdir -p "$dst$(dirname "$bin")"
  cp -L "$bin" "$dst$bin"
  for lib in $(ldd "$bin" | awk '/=>/{print $3} /ld-linux/{print $1}'); do
    mkdir -p "$dst$(dirname "$lib")" && cp -L "$lib" "$dst$lib"
  done
}

# a deterministic 4 MiB blob both sides know
head -c $((4 << 20)) /dev/urandom > "$OUT/blob"

# ---- L2
L2=$(mktemp -d)
mkdir -p "$L2"/{bin,dev,proc,sys,tmp,lib/modules,data,etc}
cp /bin/busybox "$L2/bin/busybox"
for m in failover net_failover virtio_net virtio-iommu virtio-rng button evdev llc stp garp mrp 8021q; do cp "$LIN/modules/$m.ko" "$L2/lib/modules/"; done
# (the netctl scenario's UDP segmentation sender: busybox has none)
gcc -static -O2 -o "$L2/bin/udpgso-send" test/nested/udpgso-send.c
copy_with_libs "$(command -v iperf3)" "$L2"
copy_with_libs "$(command -v ethtool)" "$L2"
cp "$OUT/blob" "$L2/data/blob"
cp test/nested/l2-init.sh "$L2/init"
chmod +x "$L2/init"
(cd "$L2" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/l2.cpio.gz"
rm -rf "$L2"

# ---- L1
L1=$(mktemp -d)
mkdir -p "$L1"/{bin,dev,proc,sys,tmp,lib/modules,data,l2,tsvmm/build/Release,etc}
cp /bin/busybox "$L1/bin/busybox"
for m in irqbypass kvm kvm-amd tun llc stp garp mrp 8021q bridge; do cp "$LIN/modules/$m.ko" "$L1/lib/modules/"; done
copy_with_libs "$(command -v node)" "$L1"
copy_with_libs "$(command -v iperf3)" "$L1"
cp -r package.json bin dist "$L1/tsvmm/"
# (the runtime dependency: device state and snapshots are msgpack documents)
mkdir -p "$L1/tsvmm/node_modules/@msgpack"
cp -r node_modules/@msgpack/msgpack "$L1/tsvmm/node_modules/@msgpack/"
cp test/nested/mktap.mjs "$L1/tsvmm/mktap.mjs"
cp test/nested/link-run.mjs "$L1/tsvmm/link-run.mjs"
cp test/nested/ratelimit-run.mjs "$L1/tsvmm/ratelimit-run.mjs"
cp test/nested/pin-kvm-keys.mjs "$L1/tsvmm/pin-kvm-keys.mjs"
cp test/nested/garp-watch.mjs "$L1/tsvmm/garp-watch.mjs"
cp test/nested/udp-recv.mjs "$L1/tsvmm/udp-recv.mjs"
cp build/Release/tsvmm_native.node "$L1/tsvmm/build/Release/"
cp "$LIN/vmlinuz" "$L1/l2/vmlinuz"
cp "$OUT/l2.cpio.gz" "$L1/l2/initrd.gz"
cp "$OUT/blob" "$L1/data/blob"
mkdir -p "$L1/data/cgi-bin" && cp test/nested/pingas.cgi "$L1/data/cgi-bin/pingas"
cp test/nested/l1-init.sh "$L1/init"
cp test/nested/scenarios.sh "$L1/scenarios.sh"
chmod +x "$L1/init"
(cd "$L1" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/l1.cpio.gz"
rm -rf "$L1"
cp "$LIN/vmlinuz" "$OUT/vmlinuz"
echo "$key" > "$OUT/KEY"
echo "nested: built $(du -h "$OUT/l1.cpio.gz" | cut -f1) L1 image ($key)"
