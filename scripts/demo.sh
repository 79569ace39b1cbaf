#!/usr/bin/env bash
# The main job, from a fresh clone: install what the host needs, build, boot the test guest on KVM, then
# boot it with a virtio-net device on a tap (in a network namespace this script creates and deletes) and
# print packets/s and Gbit/s in both directions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
[ -d node_modules ] || npm ci
npm run --silent build
make -s -C guest
echo "== booting the test guest on KVM (PVH entry, then CPL3); its console follows"
node bin/tsvmm.js run --kernel guest/out/testguest.elf --mem 256M --cpus 2 --cmdline "mode=smp"
echo
echo "== virtio-net through tsvmm's dataplane thread and a tap in a namespace (guest driver at CPL3)"
node bench/net-bench.mjs --quick --only tsvmm
