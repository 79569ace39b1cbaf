#!/usr/bin/env bash
# The main job, from a fresh clone: install what the host needs, build, then run the demo's steps
# (scripts/demo-steps.sh) on this host's KVM, or, on a host without /dev/kvm, inside an L1 that QEMU
# emulates in software with AMD SVM (scripts/l1/demo.mjs), where kvm_amd gives a real /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
[ -d node_modules ] || npm ci
npm run --silent build
make -s -C guest
bash scripts/guest-linux.sh
if [ ! -e /dev/kvm ]; then
  echo "tsvmm demo: this host has no /dev/kvm, so the demo runs inside an L1 that QEMU emulates in software (its figures measure that emulation, not tsvmm)"
  exec node scripts/l1/demo.mjs
fi
exec bash scripts/demo-steps.sh
