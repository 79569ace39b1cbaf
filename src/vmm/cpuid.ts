// Per-vCPU CPUID: KVM's supported set, with the topology and hypervisor bits a guest reads to find itself.
import type { CpuidEntry } from './kvm.js';

export function vcpuCpuid(supported: CpuidEntry[], id: number, cpus: number): CpuidEntry[] {
  return supported.map((src) => {
    const e = { ...src };
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package
        e.ebx = ((e.ebx & 0x0000ffff) | (Math.min(cpus, 255) << 16) | (id << 24)) >>> 0;
        e.ecx = (e.ecx | (1 << 31)) >>> 0; // running under a hypervisor
        if (cpus > 1) e.edx = (e.edx | (1 << 28)) >>> 0; // HTT: the EBX count above is valid
        break;
      case 0xb:
      case 0x1f:
        e.edx = id; // x2APIC id
        break;
      case 4:
        // EAX[31:26] cores per package - 1
        e.eax = ((e.eax & 0x03ffffff) | ((Math.min(cpus, 64) - 1) << 26)) >>> 0;
        break;
    }
    return e;
  });
}
