// A vCPU's state before its first KVM_RUN: what every vCPU gets (CPUID, MSRs, LAPIC, FPU), and what the
// boot processor gets besides (the loader's entry state).
import type { VcpuFd, CpuidEntry } from './kvm.js';
import { vcpuCpuid } from './cpuid.js';
import { setupSregs, bootRegs, setupFpu, setupLapic, BOOT_MSRS, type EntryMode } from '../boot/cpu-state.js';

/** vCPU `index` of `cpus`, from KVM's supported CPUID. */
export function configureVcpu(fd: VcpuFd, supported: CpuidEntry[], index: number, cpus: number): void {
  fd.setCpuid(vcpuCpuid(supported, index, cpus));
  fd.setMsrs(BOOT_MSRS);
  const lapic = fd.getLapic();
  setupLapic(lapic);
  fd.setLapic(lapic);
  const fpu = fd.getFpu();
  setupFpu(fpu);
  fd.setFpu(fpu);
}

/** The boot processor enters the kernel where the loader said (the others wait for INIT/SIPI from it). */
export function enterKernel(fd: VcpuFd, boot: { mode: EntryMode; entry: number; pointer: number }): void {
  const sregs = fd.getSregs();
  setupSregs(sregs, boot.mode);
  fd.setSregs(sregs);
  fd.setRegs(bootRegs(boot.entry, boot.mode, boot.pointer));
}
