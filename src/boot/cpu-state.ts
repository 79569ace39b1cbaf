// Initial CPU state for the two entry protocols: GDT and page tables in guest memory, and the
// register/segment values (struct kvm_regs / kvm_sregs) the first instruction expects.
import { GDT_ADDR, IDT_ADDR, PML4_ADDR, PDPT_ADDR, PD_ADDR, BOOT_STACK_TOP } from './layout.js';

export type EntryMode = 'pvh32' | 'long64';

/** GDT descriptors. Index 1 is the 32-bit code segment for PVH; the Linux 64-bit protocol wants
 * __BOOT_CS = 0x10 and __BOOT_DS = 0x18. */
export const GDT = [
  0x0000000000000000n, // 0x00 null
  0x00cf9b000000ffffn, // 0x08 code32: base 0, limit 4G, execute/read, DPL0
  0x00af9b000000ffffn, // 0x10 code64: L=1
  0x00cf93000000ffffn, // 0x18 data: base 0, limit 4G, read/write
  0x00008b0000000067n, // 0x20 TSS (busy), base 0, limit 0x67
];
export const SEL = { code32: 0x08, code64: 0x10, data: 0x18, tss: 0x20 } as const;

export function writeGdt(mem: DataView, gdtOffset: number, idtOffset: number): void {
  GDT.forEach((d, i) => mem.setBigUint64(gdtOffset + i * 8, d, true));
  mem.setBigUint64(idtOffset, 0n, true);
}

/** Identity map of the first 4 GiB with 2 MiB pages (PML4 → 1 PDPT → 4 PDs). */
export function writePageTables(mem: DataView, off: (gpa: number) => number): void {
  mem.setBigUint64(off(PML4_ADDR), BigInt(PDPT_ADDR) | 0x3n, true);
  for (let i = 0; i < 4; i++) {
    mem.setBigUint64(off(PDPT_ADDR) + i * 8, BigInt(PD_ADDR + i * 0x1000) | 0x3n, true);
    for (let j = 0; j < 512; j++) {
      const addr = (BigInt(i) << 30n) | (BigInt(j) << 21n);
      mem.setBigUint64(off(PD_ADDR + i * 0x1000) + j * 8, addr | 0x83n, true); // present, rw, 2 MiB
    }
  }
}

interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
}

function segmentFromDescriptor(selector: number): Segment {
  const d = GDT[selector >> 3];
  const lo = Number(d & 0xffffffffn);
  const hi = Number(d >> 32n);
  const access = (hi >> 8) & 0xff;
  const flags = (hi >> 20) & 0xf;
  const limitRaw = (lo & 0xffff) | (hi & 0xf0000);
  const g = (flags >> 3) & 1;
  return {
    base: (lo >>> 16) | ((hi & 0xff) << 16) | (hi & 0xff000000),
    limit: g ? limitRaw * 0x1000 + 0xfff : limitRaw,
    selector,
    type: access & 0xf,
    present: (access >> 7) & 1,
    dpl: (access >> 5) & 3,
    db: (flags >> 2) & 1,
    s: (access >> 4) & 1,
    l: (flags >> 1) & 1,
    g,
  };
}

function putSegment(v: DataView, o: number, s: Segment): void {
  v.setBigUint64(o, BigInt(s.base >>> 0), true);
  v.setUint32(o + 8, s.limit >>> 0, true);
  v.setUint16(o + 12, s.selector, true);
  v.setUint8(o + 14, s.type);
  v.setUint8(o + 15, s.present);
  v.setUint8(o + 16, s.dpl);
  v.setUint8(o + 17, s.db);
  v.setUint8(o + 18, s.s);
  v.setUint8(o + 19, s.l);
  v.setUint8(o + 20, s.g);
  v.setUint8(o + 21, 0);
  v.setUint8(o + 22, 0);
}

export const SREGS = { cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208, cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apic_base: 272 } as const;

const CR0_PE = 1n;
const CR0_ET = 0x10n;
const CR0_PG = 0x80000000n;
const CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;

/** Fill segment, table and control registers of an existing kvm_sregs (from KVM_GET_SREGS). */
export function setupSregs(sregs: DataView, mode: EntryMode): void {
  const code = segmentFromDescriptor(mode === 'pvh32' ? SEL.code32 : SEL.code64);
  const data = segmentFromDescriptor(SEL.data);
  const tss = segmentFromDescriptor(SEL.tss);
  putSegment(sregs, SREGS.cs, code);
  for (const r of [SREGS.ds, SREGS.es, SREGS.fs, SREGS.gs, SREGS.ss]) putSegment(sregs, r, data);
  putSegment(sregs, SREGS.tr, tss);
  sregs.setBigUint64(SREGS.gdt, BigInt(GDT_ADDR), true);
  sregs.setUint16(SREGS.gdt + 8, GDT.length * 8 - 1, true);
  sregs.setBigUint64(SREGS.idt, BigInt(IDT_ADDR), true);
  sregs.setUint16(SREGS.idt + 8, 7, true);
  if (mode === 'pvh32') {
    sregs.setBigUint64(SREGS.cr0, CR0_PE | CR0_ET, true);
    sregs.setBigUint64(SREGS.cr3, 0n, true);
    sregs.setBigUint64(SREGS.cr4, 0n, true);
    sregs.setBigUint64(SREGS.efer, 0n, true);
  } else {
    sregs.setBigUint64(SREGS.cr0, CR0_PE | CR0_ET | CR0_PG, true);
    sregs.setBigUint64(SREGS.cr3, BigInt(PML4_ADDR), true);
    sregs.setBigUint64(SREGS.cr4, CR4_PAE, true);
    sregs.setBigUint64(SREGS.efer, EFER_LME | EFER_LMA, true);
  }
}

/** Index of each register in struct kvm_regs (u64 each). */
export const REG = { rax: 0, rbx: 1, rcx: 2, rdx: 3, rsi: 4, rdi: 5, rsp: 6, rbp: 7, rip: 16, rflags: 17 } as const;

export function bootRegs(entry: number, mode: EntryMode, pointer: number): BigUint64Array {
  const r = new BigUint64Array(18);
  r[REG.rip] = BigInt(entry);
  r[REG.rflags] = 0x2n;
  // PVH: %ebx = hvm_start_info; Linux 64-bit boot protocol: %rsi = boot_params
  r[mode === 'pvh32' ? REG.rbx : REG.rsi] = BigInt(pointer);
  if (mode === 'long64') r[REG.rsp] = r[REG.rbp] = BigInt(BOOT_STACK_TOP);
  return r;
}

/** x87 control word and MXCSR reset values (struct kvm_fpu offsets 128 and 408). */
export function setupFpu(fpu: DataView): void {
  fpu.setUint16(128, 0x37f, true);
  fpu.setUint32(408, 0x1f80, true);
}

export const BOOT_MSRS: Array<[number, bigint]> = [
  [0x174, 0n], // SYSENTER_CS
  [0x175, 0n], // SYSENTER_ESP
  [0x176, 0n], // SYSENTER_EIP
  [0xc0000081, 0n], // STAR
  [0xc0000082, 0n], // LSTAR
  [0xc0000083, 0n], // CSTAR
  [0xc0000084, 0n], // SFMASK
  [0xc0000102, 0n], // KERNEL_GS_BASE
  [0x1a0, 1n], // MISC_ENABLE: fast strings
  [0x2ff, (1n << 11n) | 6n], // MTRRdefType: enabled, write-back
];

/** Local APIC: LINT0 as ExtINT (the 8259 path) and LINT1 as NMI, as firmware leaves them. */
export function setupLapic(lapic: DataView): void {
  const LVT0 = 0x350;
  const LVT1 = 0x360;
  const set = (reg: number, mode: number) => lapic.setUint32(reg, (lapic.getUint32(reg, true) & ~0x700 & ~0x10000) | (mode << 8), true);
  set(LVT0, 7);
  set(LVT1, 4);
}
