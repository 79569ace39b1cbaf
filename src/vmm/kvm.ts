// Thin typed wrappers over the KVM ioctls: struct packing here, decisions in vm.ts.
import { existsSync } from 'node:fs';
import { native, O_RDWR, isNativeError } from '../native.js';
import { KVM, CAP, SIZEOF, IOEVENTFD_FLAG, IRQFD_FLAG, IRQ_ROUTING } from './kvm-abi.js';
import { UserError } from '../errors.js';

export function openKvm(path = '/dev/kvm'): number {
  if (!existsSync(path)) throw new UserError(`${path} does not exist: load the kvm module or run on a host with KVM`);
  let fd: number;
  try {
    fd = native.open(path, O_RDWR);
  } catch (e) {
    if (isNativeError(e) && (e.code === 'EACCES' || e.code === 'EPERM'))
      throw new UserError(`no permission to open ${path}: add yourself to the kvm group or run as root`);
    throw e;
  }
  const api = native.ioctl(fd, KVM.GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
  if (api !== 12) {
    native.close(fd);
    throw new UserError(`${path}: unsupported KVM API version ${api} (need 12)`);
  }
  return fd;
}

export function checkExtension(fd: number, cap: number): number {
  return native.ioctl(fd, KVM.CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
}

export function requireCaps(kvmFd: number): void {
  for (const [name, cap] of Object.entries({ IRQCHIP: CAP.IRQCHIP, IOEVENTFD: CAP.IOEVENTFD, IRQFD: CAP.IRQFD, IMMEDIATE_EXIT: CAP.IMMEDIATE_EXIT })) {
    if (checkExtension(kvmFd, cap) <= 0) throw new UserError(`this KVM lacks KVM_CAP_${name}, which tsvmm needs`);
  }
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export function supportedCpuid(kvmFd: number): CpuidEntry[] {
  const max = 256;
  const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_cpuid2 + max * SIZEOF.kvm_cpuid_entry2));
  buf.setUint32(0, max, true);
  native.ioctl(kvmFd, KVM.GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
  const n = buf.getUint32(0, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
    out.push({
      function: buf.getUint32(o, true),
      index: buf.getUint32(o + 4, true),
      flags: buf.getUint32(o + 8, true),
      eax: buf.getUint32(o + 12, true),
      ebx: buf.getUint32(o + 16, true),
      ecx: buf.getUint32(o + 20, true),
      edx: buf.getUint32(o + 24, true),
    });
  }
  return out;
}

export function packCpuid(entries: CpuidEntry[]): DataView {
  const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_cpuid2 + entries.length * SIZEOF.kvm_cpuid_entry2));
  buf.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
    buf.setUint32(o, e.function, true);
    buf.setUint32(o + 4, e.index, true);
    buf.setUint32(o + 8, e.flags, true);
    buf.setUint32(o + 12, e.eax >>> 0, true);
    buf.setUint32(o + 16, e.ebx >>> 0, true);
    buf.setUint32(o + 20, e.ecx >>> 0, true);
    buf.setUint32(o + 24, e.edx >>> 0, true);
  });
  return buf;
}

/** VM-level ioctls. */
export class VmFd {
  constructor(readonly fd: number) {}

  static create(kvmFd: number): VmFd {
    return new VmFd(native.ioctl(kvmFd, KVM.CREATE_VM, 0, 'KVM_CREATE_VM'));
  }

  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint, flags = 0): void {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_userspace_memory_region));
    b.setUint32(0, slot, true);
    b.setUint32(4, flags, true);
    b.setBigUint64(8, BigInt(gpa), true);
    b.setBigUint64(16, BigInt(size), true);
    b.setBigUint64(24, hostAddr, true);
    native.ioctl(this.fd, KVM.SET_USER_MEMORY_REGION, b, 'KVM_SET_USER_MEMORY_REGION');
  }

  setTssAddr(addr: number): void {
    native.ioctl(this.fd, KVM.SET_TSS_ADDR, addr, 'KVM_SET_TSS_ADDR');
  }

  setIdentityMapAddr(addr: number): void {
    const b = new BigUint64Array([BigInt(addr)]);
    native.ioctl(this.fd, KVM.SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
  }

  createIrqchip(): void {
    native.ioctl(this.fd, KVM.CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  createPit2(): void {
    native.ioctl(this.fd, KVM.CREATE_PIT2, new Uint8Array(SIZEOF.kvm_pit_config), 'KVM_CREATE_PIT2');
  }

  irqLine(irq: number, level: boolean): void {
    native.ioctl(this.fd, KVM.IRQ_LINE, new Uint32Array([irq, level ? 1 : 0]), 'KVM_IRQ_LINE');
  }

  /** Register (or with deassign, remove) an eventfd signalled by a guest write to addr. */
  ioeventfd(opts: { fd: number; addr: number; len: number; pio?: boolean; datamatch?: number; deassign?: boolean }): void {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_ioeventfd));
    let flags = 0;
    if (opts.pio) flags |= IOEVENTFD_FLAG.PIO;
    if (opts.datamatch !== undefined) flags |= IOEVENTFD_FLAG.DATAMATCH;
    if (opts.deassign) flags |= IOEVENTFD_FLAG.DEASSIGN;
    b.setBigUint64(0, BigInt(opts.datamatch ?? 0), true);
    b.setBigUint64(8, BigInt(opts.addr), true);
    b.setUint32(16, opts.len, true);
    b.setInt32(20, opts.fd, true);
    b.setUint32(24, flags, true);
    native.ioctl(this.fd, KVM.IOEVENTFD, b, 'KVM_IOEVENTFD');
  }

  /**
   * Signal `gsi` whenever eventfd `fd` is written. With `resampleFd` the GSI is a level-triggered line:
   * a write asserts it, the guest's EOI deasserts it and writes `resampleFd` (KVM_IRQFD_FLAG_RESAMPLE);
   * the device asserts again if it still needs service. `deassign` removes the irqfd.
   */
  irqfd(fd: number, gsi: number, deassign = false, resampleFd?: number): void {
    const b = new Uint32Array(SIZEOF.kvm_irqfd / 4);
    b[0] = fd;
    b[1] = gsi;
    b[2] = deassign ? IRQFD_FLAG.DEASSIGN : resampleFd !== undefined ? IRQFD_FLAG.RESAMPLE : 0;
    b[3] = !deassign && resampleFd !== undefined ? resampleFd : 0;
    native.ioctl(this.fd, KVM.IRQFD, b, 'KVM_IRQFD');
  }

  /** Replace the whole GSI routing table. */
  setGsiRouting(entries: Array<{ gsi: number; irqchip?: { chip: number; pin: number }; msi?: { addressLo: number; addressHi: number; data: number } }>): void {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_irq_routing + entries.length * SIZEOF.kvm_irq_routing_entry));
    b.setUint32(0, entries.length, true);
    entries.forEach((e, i) => {
      const o = SIZEOF.kvm_irq_routing + i * SIZEOF.kvm_irq_routing_entry;
      b.setUint32(o, e.gsi, true);
      if (e.msi) {
        b.setUint32(o + 4, IRQ_ROUTING.MSI, true);
        b.setUint32(o + 16, e.msi.addressLo >>> 0, true);
        b.setUint32(o + 20, e.msi.addressHi >>> 0, true);
        b.setUint32(o + 24, e.msi.data >>> 0, true);
      } else if (e.irqchip) {
        b.setUint32(o + 4, IRQ_ROUTING.IRQCHIP, true);
        b.setUint32(o + 16, e.irqchip.chip, true);
        b.setUint32(o + 20, e.irqchip.pin, true);
      }
    });
    native.ioctl(this.fd, KVM.SET_GSI_ROUTING, b, 'KVM_SET_GSI_ROUTING');
  }

  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const b = new Uint32Array(SIZEOF.kvm_msi / 4);
    b[0] = addressLo >>> 0;
    b[1] = addressHi >>> 0;
    b[2] = data >>> 0;
    return native.ioctl(this.fd, KVM.SIGNAL_MSI, b, 'KVM_SIGNAL_MSI');
  }

  /** Fetch and clear the dirty bitmap of a slot (one bit per 4 KiB page). */
  getDirtyLog(slot: number, pages: number): Uint8Array {
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_dirty_log));
    b.setUint32(0, slot, true);
    b.setBigUint64(8, native.addressOf(bitmap), true);
    native.ioctl(this.fd, KVM.GET_DIRTY_LOG, b, 'KVM_GET_DIRTY_LOG');
    return bitmap;
  }

  createVcpu(id: number): number {
    return native.ioctl(this.fd, KVM.CREATE_VCPU, id, 'KVM_CREATE_VCPU');
  }

  close(): void {
    native.close(this.fd);
  }
}

/** vCPU-level ioctls used for set-up (the run loop itself lives in vcpu-worker.ts). */
export class VcpuFd {
  constructor(readonly fd: number) {}

  getRegs(): BigUint64Array {
    const b = new BigUint64Array(SIZEOF.kvm_regs / 8);
    native.ioctl(this.fd, KVM.GET_REGS, b, 'KVM_GET_REGS');
    return b;
  }
  setRegs(b: BigUint64Array): void {
    native.ioctl(this.fd, KVM.SET_REGS, b, 'KVM_SET_REGS');
  }
  getSregs(): DataView {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_sregs));
    native.ioctl(this.fd, KVM.GET_SREGS, b, 'KVM_GET_SREGS');
    return b;
  }
  setSregs(b: DataView): void {
    native.ioctl(this.fd, KVM.SET_SREGS, b, 'KVM_SET_SREGS');
  }
  setCpuid(entries: CpuidEntry[]): void {
    native.ioctl(this.fd, KVM.SET_CPUID2, packCpuid(entries), 'KVM_SET_CPUID2');
  }
  setMsrs(msrs: Array<[number, bigint]>): void {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_msrs + msrs.length * SIZEOF.kvm_msr_entry));
    b.setUint32(0, msrs.length, true);
    msrs.forEach(([index, value], i) => {
      const o = SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry;
      b.setUint32(o, index, true);
      b.setBigUint64(o + 8, value, true);
    });
    const n = native.ioctl(this.fd, KVM.SET_MSRS, b, 'KVM_SET_MSRS');
    if (n !== msrs.length) throw new Error(`KVM_SET_MSRS: only ${n} of ${msrs.length} MSRs accepted (MSR 0x${msrs[n][0].toString(16)} refused)`);
  }
  getFpu(): DataView {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_fpu));
    native.ioctl(this.fd, KVM.GET_FPU, b, 'KVM_GET_FPU');
    return b;
  }
  setFpu(b: DataView): void {
    native.ioctl(this.fd, KVM.SET_FPU, b, 'KVM_SET_FPU');
  }
  getLapic(): DataView {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_lapic_state));
    native.ioctl(this.fd, KVM.GET_LAPIC, b, 'KVM_GET_LAPIC');
    return b;
  }
  setLapic(b: DataView): void {
    native.ioctl(this.fd, KVM.SET_LAPIC, b, 'KVM_SET_LAPIC');
  }
  close(): void {
    native.close(this.fd);
  }
}
