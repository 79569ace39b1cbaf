#!/usr/bin/env bash
# Builds the stock-Linux guest from Debian packages into .cache/linux/:
#   vmlinuz          Debian's cloud kernel (bzImage), for the 64-bit boot protocol
#   vmlinux          the same kernel uncompressed (ELF with a PVH note), for PVH entry
#   initramfs.cpio.gz  busybox, the virtio-net modules, iperf3 and an /init that reports and powers off
#   modules/         the decompressed modules other images need (KVM for the nested harness and the L1 suite,
#                    tun, veth, virtio-net, virtio-iommu, virtio-blk, virtio-rng, the ACPI power
#                    button's: button (PNP0C0C → KEY_POWER) and evdev (its /dev/input node), 802.1Q
#                    and the bridge (nested scenarios that move L2 between two taps of one network))
# Cached by kernel package version; TSVMM_LINUX_PKG overrides the package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
[ -f dist/boot/bzimage.js ] || npm run build >/dev/null

meta=linux-image-6.12-cloud-amd64
pkg=${TSVMM_LINUX_PKG:-$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-6\.12/{print $2; exit}')}
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-6\.12/{print $2; exit}')
fi
[ -n "$pkg" ] || { echo "guest-linux: cannot resolve $meta from apt" >&2; exit 1; }

out=.cache/linux
LAYOUT=8
if [ -f "$out/PACKAGE" ] && [ "$(cat "$out/PACKAGE")" = "$pkg" ] && [ "$(cat "$out/LAYOUT" 2>/dev/null)" = "$LAYOUT" ] && [ -f "$out/initramfs.cpio.gz" ]; then
  echo "guest-linux: $pkg already built in $out"
  exit 0
fi
say() { echo "guest-linux [$SECONDS s]: $*"; }
say "downloading $pkg (apt)"
rm -rf "$out" && mkdir -p "$out/deb"
(cd "$out/deb" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
deb=$(ls "$out"/deb/*.deb)
say "unpacking $(basename "$deb") ($(du -h "$deb" | cut -f1))"
dpkg-deb -x "$deb" "$out/root"
kver=$(ls "$out/root/lib/modules")
cp "$out/root/boot/vmlinuz-$kver" "$out/vmlinuz"
# (symbols for the rips tsvmm prints when it stops a hung guest)
cp "$out/root/boot/System.map-$kver" "$out/System.map"
node scripts/extract-vmlinux.mjs "$out/vmlinuz" "$out/vmlinux"

say "building the initramfs and the module set"
ir="$out/initramfs"
mkdir -p "$ir"/{bin,sbin,dev,proc,sys,tmp,lib/modules,etc,usr/bin}
cp /bin/busybox "$ir/bin/busybox"
for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
  f="$out/root/lib/modules/$kver/kernel/$m.ko.xz"
  xz -dc "$f" > "$ir/lib/modules/$(basename "$m").ko"
done
cp "$(command -v iperf3)" "$ir/usr/bin/iperf3"
for lib in $(ldd "$(command -v iperf3)" | awk '/=>/{print $3} /ld-linux/{print $1}'); do
  mkdir -p "$ir$(dirname "$lib")" && cp -L "$lib" "$ir$lib"
done
cat > "$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in failover net_failover virtio_net; do insmod /lib/modules/$m.ko; done
echo "TSVMM-LINUX-INIT cpus=$(grep -c ^processor /proc/cpuinfo) kernel=$(uname -r)"
case "$(cat /proc/cmdline)" in *tsvmm.poweroff*) poweroff -f ;; esac
exec setsid cttyhack sh
INIT
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initramfs.cpio.gz"
rm -rf "$out/deb" "$ir"
# keep only what the tests use from the package tree
mkdir -p "$out/modules"
for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/net/tun virt/lib/irqbypass \
         arch/x86/kvm/kvm arch/x86/kvm/kvm-amd drivers/iommu/virtio-iommu drivers/block/virtio_blk drivers/net/veth \
         drivers/char/hw_random/virtio-rng drivers/acpi/button drivers/input/evdev \
         net/llc/llc net/802/stp net/802/garp net/802/mrp net/8021q/8021q net/bridge/bridge; do
  xz -dc "$out/root/lib/modules/$kver/kernel/$m.ko.xz" > "$out/modules/$(basename "$m").ko"
done
rm -rf "$out/root"
echo "$pkg" > "$out/PACKAGE"
echo "$LAYOUT" > "$out/LAYOUT"
echo "$kver" > "$out/KERNEL_VERSION"
say "built $pkg ($kver) in $out"
