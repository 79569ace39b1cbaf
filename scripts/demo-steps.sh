#!/usr/bin/env bash
# The demo's steps, on a host with /dev/kvm (scripts/demo.sh has built everything): the test guest
# boots; the test guest moves frames through a virtio-net device and a tap (packets/s, Gbit/s); a stock
# Debian Linux guest pings and runs iperf3 over its virtio-net device (scripts/demo-linux.sh). Every
# interface lives in a network namespace the step creates and deletes.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "== [$SECONDS s] $*"; }
if [ -n "${TSVMM_IN_L1:-}" ]; then
  echo "(inside the emulated L1: every figure below measures QEMU's software emulation of two nested levels, and says nothing of tsvmm's speed; bench/ and BENCHMARKS.md measure that)"
fi
step "1/3 booting the test guest on KVM (PVH entry, then CPL3); its console follows"
node bin/tsvmm.js run --kernel guest/out/testguest.elf --mem 256M --cpus 2 --cmdline "mode=smp"
step "2/3 virtio-net through tsvmm's dataplane thread and a tap in a namespace (test guest's driver at CPL3)"
node bench/net-bench.mjs --quick --only tsvmm
step "3/3 a stock Debian Linux guest ($(cat .cache/linux/KERNEL_VERSION)) under tsvmm: its own virtio_net driver, ping and iperf3 to the tap's host end"
bash scripts/demo-linux.sh

