// Holds one idle KVM VM (an in-kernel irqchip and one vCPU that never runs) open for L1's whole life.
//
// Why: creating and destroying a VM flips kernel static keys in L1 (preempt_notifier_key in the
// scheduler; KVM's apic_sw_disabled for a vCPU whose local APIC is still software-disabled), and each
// flip rewrites kernel code on the running CPUs (int3-based text patching). Under QEMU 7.2's
// multi-threaded TCG a CPU sometimes executes the stale int3 after the patch is done: seen here as
// "Oops: int3" at apic_has_pending_timer+0x11 [kvm] and at __schedule+0x428 (both static-branch
// sites), then "Kernel panic - not syncing: Fatal exception in interrupt" in L1, twice in ~20 runs of
// the strict vIOMMU scenario (and once in CI). With this VM held, the keys' counts never return to
// zero, so tsvmm's VMs coming and going flip nothing. Usage: TSVMM_DIR=/path node pin-kvm-keys.mjs
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const dist = pathToFileURL(`${process.env.TSVMM_DIR ?? '/tsvmm'}/dist/`).href;
const { native, O_RDWR } = await import(new URL('native.js', dist).href);
const { KVM } = await import(new URL('vmm/kvm-abi.js', dist).href);

const kvm = native.open('/dev/kvm', O_RDWR);
const vm = native.ioctl(kvm, KVM.CREATE_VM, 0, 'KVM_CREATE_VM');
native.ioctl(vm, KVM.CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
native.ioctl(vm, KVM.CREATE_VCPU, 0, 'KVM_CREATE_VCPU');
console.log(`STAGE kvm-keys-pinned ${readFileSync('/proc/uptime', 'utf8').split(' ')[0]}`);
// (a pending timer keeps the event loop, and so the process and its fds, alive)
setInterval(() => {}, 1 << 30);
