// A vCPU's and the VM's in-kernel state, read and written through KVM (struct layouts in kvm-abi.ts,
// checked against <linux/kvm.h>). The structs travel as KVM's own bytes: KVM checks what it is given
// (it must: userspace is not trusted by the kernel), the document checks their sizes. The vCPUs must
// not be in KVM_RUN (a vCPU ioctl waits for its KVM_RUN to return).
// Order, as Firecracker's vstate: MP state first on save (reading it makes KVM take pending INIT/SIPI
// into the state); on restore the VM's chips and clock before the vCPUs, and for a vCPU the LAPIC
// before the MSRs (the TSC deadline MSR is the LAPIC timer's) and the events last.
import { native } from '../../native.js';
import { KVM, CAP, SIZEOF } from '../kvm-abi.js';
import { checkExtension } from '../kvm.js';
import { Fields, StateError, type StateValue } from '../../state/fields.js';

export interface VcpuState {
  mpState: number;
  regs: Uint8Array;
  sregs: Uint8Array;
  /** the XSAVE area (KVM_GET_XSAVE2's size, at least 4096 bytes), or the legacy FPU state where KVM has no XSAVE */
  xsave?: Uint8Array;
  fpu?: Uint8Array;
  xcrs?: Uint8Array;
  debugregs: Uint8Array;
  lapic: Uint8Array;
  /** struct kvm_msr_entry[]: index, reserved, value; 16 bytes each */
  msrs: Uint8Array;
  events: Uint8Array;
  /** 0: KVM could not say */
  tscKhz: number;
}

export interface VmState {
  /** KVM_GET_IRQCHIP of the PIC master, the PIC slave and the IOAPIC (the in-kernel irqchip) */
  irqchip: Uint8Array[];
  pit: Uint8Array;
  clock: Uint8Array;
}

const IRQCHIPS = 3;
const MAX_MSRS = 1024;
const MAX_XSAVE = 1 << 20;
const EVENTS_FLAGS = 20;
const VALID_NMI_PENDING = 1;
const VALID_SIPI_VECTOR = 2;
const CLOCK_FLAGS = 8;

function ioctlIn(fd: number, req: number, size: number, name: string, prefill?: (b: DataView) => void): Uint8Array {
  const b = new Uint8Array(size);
  prefill?.(new DataView(b.buffer));
  native.ioctl(fd, req, b, name);
  return b;
}

/** The MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST) and the feature MSRs (KVM_GET_MSR_FEATURE_INDEX_LIST). */
export function msrsToSave(kvmFd: number): number[] {
  const list = (req: number, name: string): number[] => {
    const b = new Uint32Array(1 + MAX_MSRS);
    b[0] = MAX_MSRS;
    native.ioctl(kvmFd, req, b, name);
    return [...b.subarray(1, 1 + b[0])];
  };
  const all = list(KVM.GET_MSR_INDEX_LIST, 'KVM_GET_MSR_INDEX_LIST');
  if (checkExtension(kvmFd, CAP.GET_MSR_FEATURES) > 0) all.push(...list(KVM.GET_MSR_FEATURE_INDEX_LIST, 'KVM_GET_MSR_FEATURE_INDEX_LIST'));
  return [...new Set(all)];
}

/** Read the MSRs of `indices` this vCPU has (KVM stops at the first it cannot read: that one is left out). */
function readMsrs(vcpuFd: number, indices: number[]): Uint8Array {
  const out: Uint8Array[] = [];
  let rest = indices;
  while (rest.length) {
    const b = new DataView(new ArrayBuffer(SIZEOF.kvm_msrs + rest.length * SIZEOF.kvm_msr_entry));
    b.setUint32(0, rest.length, true);
    rest.forEach((index, i) => b.setUint32(SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry, index, true));
    const n = native.ioctl(vcpuFd, KVM.GET_MSRS, b, 'KVM_GET_MSRS');
    out.push(new Uint8Array(b.buffer, SIZEOF.kvm_msrs, n * SIZEOF.kvm_msr_entry).slice());
    rest = rest.slice(n + 1);
  }
  const all = new Uint8Array(out.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of out) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}

/** `vmFd` tells the XSAVE area's size: KVM writes that many bytes (a VM may have larger state permitted than the default). */
export function saveVcpu(kvmFd: number, vmFd: number, vcpuFd: number, msrIndices: number[]): VcpuState {
  const mpState = ioctlIn(vcpuFd, KVM.GET_MP_STATE, SIZEOF.kvm_mp_state, 'KVM_GET_MP_STATE');
  const s: VcpuState = {
    mpState: new DataView(mpState.buffer).getUint32(0, true),
    regs: ioctlIn(vcpuFd, KVM.GET_REGS, SIZEOF.kvm_regs, 'KVM_GET_REGS'),
    sregs: ioctlIn(vcpuFd, KVM.GET_SREGS, SIZEOF.kvm_sregs, 'KVM_GET_SREGS'),
    debugregs: ioctlIn(vcpuFd, KVM.GET_DEBUGREGS, SIZEOF.kvm_debugregs, 'KVM_GET_DEBUGREGS'),
    lapic: ioctlIn(vcpuFd, KVM.GET_LAPIC, SIZEOF.kvm_lapic_state, 'KVM_GET_LAPIC'),
    msrs: readMsrs(vcpuFd, msrIndices),
    events: ioctlIn(vcpuFd, KVM.GET_VCPU_EVENTS, SIZEOF.kvm_vcpu_events, 'KVM_GET_VCPU_EVENTS'),
    tscKhz: checkExtension(kvmFd, CAP.GET_TSC_KHZ) > 0 ? native.ioctl(vcpuFd, KVM.GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ') : 0,
  };
  const xsave2 = checkExtension(vmFd, CAP.XSAVE2);
  if (xsave2 > 0) s.xsave = ioctlIn(vcpuFd, KVM.GET_XSAVE2, Math.max(xsave2, SIZEOF.kvm_xsave), 'KVM_GET_XSAVE2');
  else if (checkExtension(kvmFd, CAP.XSAVE) > 0) s.xsave = ioctlIn(vcpuFd, KVM.GET_XSAVE, SIZEOF.kvm_xsave, 'KVM_GET_XSAVE');
  else s.fpu = ioctlIn(vcpuFd, KVM.GET_FPU, SIZEOF.kvm_fpu, 'KVM_GET_FPU');
  if (checkExtension(kvmFd, CAP.XCRS) > 0) s.xcrs = ioctlIn(vcpuFd, KVM.GET_XCRS, SIZEOF.kvm_xcrs, 'KVM_GET_XCRS');
  return s;
}

/** Write a saved vCPU state into a vCPU of a VM built like the saved one (CPUID already set). */
export function restoreVcpu(kvmFd: number, vcpuFd: number, s: VcpuState): void {
  if (s.tscKhz && checkExtension(kvmFd, CAP.GET_TSC_KHZ) > 0 && native.ioctl(vcpuFd, KVM.GET_TSC_KHZ, 0, 'KVM_GET_TSC_KHZ') !== s.tscKhz) {
    if (checkExtension(kvmFd, CAP.TSC_CONTROL) <= 0) throw new StateError(`the saved vCPU's TSC ran at ${s.tscKhz} kHz, and this KVM cannot set the TSC frequency`);
    native.ioctl(vcpuFd, KVM.SET_TSC_KHZ, s.tscKhz, 'KVM_SET_TSC_KHZ');
  }
  native.ioctl(vcpuFd, KVM.SET_MP_STATE, new Uint32Array([s.mpState]), 'KVM_SET_MP_STATE');
  native.ioctl(vcpuFd, KVM.SET_REGS, s.regs.slice(), 'KVM_SET_REGS');
  native.ioctl(vcpuFd, KVM.SET_SREGS, s.sregs.slice(), 'KVM_SET_SREGS');
  if (s.xsave) native.ioctl(vcpuFd, KVM.SET_XSAVE, s.xsave.slice(), 'KVM_SET_XSAVE');
  if (s.fpu) native.ioctl(vcpuFd, KVM.SET_FPU, s.fpu.slice(), 'KVM_SET_FPU');
  if (s.xcrs) native.ioctl(vcpuFd, KVM.SET_XCRS, s.xcrs.slice(), 'KVM_SET_XCRS');
  native.ioctl(vcpuFd, KVM.SET_DEBUGREGS, s.debugregs.slice(), 'KVM_SET_DEBUGREGS');
  native.ioctl(vcpuFd, KVM.SET_LAPIC, s.lapic.slice(), 'KVM_SET_LAPIC');
  const n = s.msrs.length / SIZEOF.kvm_msr_entry;
  const msrs = new Uint8Array(SIZEOF.kvm_msrs + s.msrs.length);
  new DataView(msrs.buffer).setUint32(0, n, true);
  msrs.set(s.msrs, SIZEOF.kvm_msrs);
  const set = native.ioctl(vcpuFd, KVM.SET_MSRS, msrs, 'KVM_SET_MSRS');
  if (set !== n) throw new StateError(`this KVM refused MSR 0x${new DataView(s.msrs.buffer, s.msrs.byteOffset).getUint32(set * SIZEOF.kvm_msr_entry, true).toString(16)} of the saved vCPU`);
  // the pending NMI and the SIPI vector are taken only when flagged (GET leaves them out of the flags)
  const events = s.events.slice();
  const ev = new DataView(events.buffer);
  ev.setUint32(EVENTS_FLAGS, ev.getUint32(EVENTS_FLAGS, true) | VALID_NMI_PENDING | VALID_SIPI_VECTOR, true);
  native.ioctl(vcpuFd, KVM.SET_VCPU_EVENTS, events, 'KVM_SET_VCPU_EVENTS');
}

export function saveVm(vmFd: number): VmState {
  const irqchip = Array.from({ length: IRQCHIPS }, (_, chip) => ioctlIn(vmFd, KVM.GET_IRQCHIP, SIZEOF.kvm_irqchip, 'KVM_GET_IRQCHIP', (b) => b.setUint32(0, chip, true)));
  return {
    irqchip,
    pit: ioctlIn(vmFd, KVM.GET_PIT2, SIZEOF.kvm_pit_state2, 'KVM_GET_PIT2'),
    clock: ioctlIn(vmFd, KVM.GET_CLOCK, SIZEOF.kvm_clock_data, 'KVM_GET_CLOCK'),
  };
}

/** The chips and the clock; the guest's clock goes on from the saved value (the time it spent saved is not seen). */
export function restoreVm(vmFd: number, s: VmState): void {
  s.irqchip.forEach((c, chip) => {
    const b = c.slice();
    new DataView(b.buffer).setUint32(0, chip, true);
    native.ioctl(vmFd, KVM.SET_IRQCHIP, b, 'KVM_SET_IRQCHIP');
  });
  native.ioctl(vmFd, KVM.SET_PIT2, s.pit.slice(), 'KVM_SET_PIT2');
  const clock = s.clock.slice();
  new DataView(clock.buffer).setUint32(CLOCK_FLAGS, 0, true);
  native.ioctl(vmFd, KVM.SET_CLOCK, clock, 'KVM_SET_CLOCK');
}

// ---- in the document

export function encodeVcpu(s: VcpuState): StateValue {
  return { mpState: s.mpState, regs: s.regs, sregs: s.sregs, xsave: s.xsave ?? null, fpu: s.fpu ?? null, xcrs: s.xcrs ?? null, debugregs: s.debugregs, lapic: s.lapic, msrs: s.msrs, events: s.events, tscKhz: s.tscKhz };
}

export function readVcpu(f: Fields): VcpuState {
  const opt = (key: string, len: number | { min: number; max: number }) => (f.any(key) === null ? undefined : f.bytes(key, len));
  const s: VcpuState = {
    mpState: f.uint('mpState', 10),
    regs: f.bytes('regs', SIZEOF.kvm_regs),
    sregs: f.bytes('sregs', SIZEOF.kvm_sregs),
    xsave: opt('xsave', { min: SIZEOF.kvm_xsave, max: MAX_XSAVE }),
    fpu: opt('fpu', SIZEOF.kvm_fpu),
    xcrs: opt('xcrs', SIZEOF.kvm_xcrs),
    debugregs: f.bytes('debugregs', SIZEOF.kvm_debugregs),
    lapic: f.bytes('lapic', SIZEOF.kvm_lapic_state),
    msrs: f.bytes('msrs', { min: 0, max: MAX_MSRS * SIZEOF.kvm_msr_entry, multiple: SIZEOF.kvm_msr_entry }),
    events: f.bytes('events', SIZEOF.kvm_vcpu_events),
    tscKhz: f.uint('tscKhz', 0xffffffff),
  };
  f.done();
  if (!s.xsave === !s.fpu) throw new StateError(`${f.path}: exactly one of xsave and fpu must be there`);
  return s;
}

export function encodeVm(s: VmState): StateValue {
  return { irqchip: s.irqchip, pit: s.pit, clock: s.clock };
}

export function readVm(f: Fields): VmState {
  const s: VmState = {
    irqchip: f.list('irqchip', IRQCHIPS, (v, path) => {
      if (!(v instanceof Uint8Array) || v.length !== SIZEOF.kvm_irqchip) throw new StateError(`${path}: not ${SIZEOF.kvm_irqchip} bytes`);
      return v;
    }),
    pit: f.bytes('pit', SIZEOF.kvm_pit_state2),
    clock: f.bytes('clock', SIZEOF.kvm_clock_data),
  };
  f.done();
  if (s.irqchip.length !== IRQCHIPS) throw new StateError(`${f.path}.irqchip: ${s.irqchip.length} chips, expected ${IRQCHIPS}`);
  return s;
}
