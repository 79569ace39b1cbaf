#!/usr/bin/env bash
# Builds what an L1 (QEMU software emulation with emulated AMD SVM, where kvm_amd gives a real /dev/kvm)
# needs to run this project's KVM work on a host without /dev/kvm, into .cache/l1/:
#   init.cpio.gz  busybox, the kernel modules (KVM, tun, veth, virtio-blk) and scripts/l1/init.sh
#   system.img    ext4: this host's /usr and /etc (node, python3, ip, qemu, gcc, testpmd, ...), so that
#                 the tests find in L1 the same tools at the same paths; cached by the installed
#                 packages' list and node's binary
#   project.img   ext4: this checkout (built: dist/, build/, guest/out/, node_modules/, .cache/linux/),
#                 mounted in L1 at the same path; made anew each time (seconds), so it is never stale
# usage: build-images.sh JOB   (JOB: a shell script run in L1 from the checkout, see scripts/l1/boot.mjs)
# The kernel is Debian's 6.12 cloud kernel from scripts/guest-linux.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
job=$1
OUT=$ROOT/.cache/l1
LIN=$ROOT/.cache/linux
mkdir -p "$OUT"
# hard links where the staging tree shares the source's file system (no copy), a copy elsewhere
lcp() { cp -al "$@" 2>/dev/null || cp -a "$@"; }
exec 9>"$OUT/build.lock"
flock 9
bash scripts/guest-linux.sh >/dev/null

# ---- L1's initramfs: mounts the two disks and runs the job in the system image
key=$( (cat "$LIN/PACKAGE" scripts/l1/init.sh /bin/busybox) | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/INIT_KEY" 2>/dev/null)" != "$key" ] || [ ! -f "$OUT/init.cpio.gz" ]; then
  ir=$(mktemp -d)
  mkdir -p "$ir"/{bin,dev,proc,sys,tmp,sysroot,lib/modules}
  cp /bin/busybox "$ir/bin/busybox"
  for m in irqbypass kvm kvm-amd tun veth virtio_blk; do cp "$LIN/modules/$m.ko" "$ir/lib/modules/"; done
  cp scripts/l1/init.sh "$ir/init"
  chmod +x "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/init.cpio.gz"
  rm -rf "$ir"
  echo "$key" > "$OUT/INIT_KEY"
fi

# ---- the system image: the host's own tools (hard links into a staging tree, then mke2fs -d copies)
key=$( (dpkg-query -W; sha256sum "$(command -v node)"; cat scripts/l1/build-images.sh) | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/SYSTEM_KEY" 2>/dev/null)" != "$key" ] || [ ! -f "$OUT/system.img" ]; then
  st=$OUT/stage-system
  rm -rf "$st" && mkdir -p "$st/usr/lib" "$st/usr/share" "$st/root"
  for d in bin sbin libexec include lib64; do [ -d /usr/$d ] && lcp /usr/$d "$st/usr/"; done
  for d in x86_64-linux-gnu gcc python3 python3.11 ipxe dpdk qemu bfd-plugins; do [ -d /usr/lib/$d ] && lcp /usr/lib/$d "$st/usr/lib/"; done
  # (the dynamic loader and other top-level files of /usr/lib)
  find /usr/lib -maxdepth 1 -type f -exec cp -a {} "$st/usr/lib/" \;
  for d in qemu seabios ipxe misc zoneinfo; do [ -d /usr/share/$d ] && lcp /usr/share/$d "$st/usr/share/"; done
  cp -a /etc "$st/etc"
  for l in bin sbin lib lib64; do ln -s usr/$l "$st/$l"; done
  mkdir -p "$st"/{dev,proc,sys,tmp,run,var/tmp,mnt}
  rm -f "$OUT/system.img"
  mke2fs -q -t ext4 -L tsvmm-system -d "$st" "$OUT/system.img" 4G
  rm -rf "$st"
  echo "$key" > "$OUT/SYSTEM_KEY"
fi

# ---- the project image: this checkout as it is now
st=$OUT/stage-project
rm -rf "$st" && mkdir -p "$st"
for f in * .ci; do
  [ -e "$f" ] && lcp "$f" "$st/"
done
mkdir -p "$st/.cache" && lcp "$LIN" "$st/.cache/linux"
[ -d .cache/acpica ] && lcp .cache/acpica "$st/.cache/acpica"
cp "$job" "$st/.l1-job.sh"
rm -f "$OUT/project.img"
size=$(( $(du -sm "$st" | cut -f1) * 3 / 2 + 512 ))
mke2fs -q -t ext4 -L tsvmm-project -d "$st" "$OUT/project.img" "${size}M"
rm -rf "$st"
