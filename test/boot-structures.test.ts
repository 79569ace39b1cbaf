// Byte layouts the guest reads before its first instruction: boot_params, e820, PVH start info,
// MP table, page tables, GDT and the initial segment registers.
import { describe, it, expect } from 'vitest';
import { buildBootParams, parseBzImage, BP, isBzImage } from '../src/boot/bzimage.js';
import { e820Map, writeE820, E820_RAM, E820_RESERVED } from '../src/boot/e820.js';
import { buildMpTable } from '../src/boot/mptable.js';
import { writePageTables, writeGdt, setupSregs, SREGS, GDT, SEL, bootRegs, REG } from '../src/boot/cpu-state.js';
import { writeStartInfo, writeMemmap, HVM_START_MAGIC, loadPvhKernel } from '../src/boot/pvh.js';
import { loadKernel, placeHigh } from '../src/boot/loader.js';
import * as L from '../src/boot/layout.js';
import { UserError } from '../src/errors.js';
import { RESET_VECTOR_ADDR, resetVectorCode } from '../src/boot/reset-vector.js';
import { ResetControl, type PowerEvent } from '../src/vmm/devices/power.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MiB = 1024 * 1024;

/** A synthetic bzImage: 4 setup sectors plus a protected-mode part, protocol 2.15, 64-bit capable. */
function fakeBzImage(kernelBytes = 4096): Uint8Array {
  const setupSects = 4;
  const b = new Uint8Array((setupSects + 1) * 512 + kernelBytes);
  const v = new DataView(b.buffer);
  b[BP.setup_sects] = setupSects;
  v.setUint16(BP.boot_flag, 0xaa55, true);
  b[BP.jump] = 0xeb;
  b[BP.jump + 1] = 0x6a; // header ends at 0x202 + 0x6a = 0x26c
  v.setUint32(BP.header, 0x53726448, true);
  v.setUint16(BP.version, 0x20f, true);
  b[BP.loadflags] = 0x01;
  v.setUint32(BP.initrd_addr_max, 0x7fffffff, true);
  v.setUint16(BP.xloadflags, 0x1, true);
  v.setUint32(BP.cmdline_size, 2047, true);
  v.setUint32(BP.payload_offset, 0x100, true);
  v.setUint32(BP.payload_length, 0x200, true);
  v.setUint32(BP.init_size, 8 * MiB, true);
  for (let i = 0; i < kernelBytes; i++) b[(setupSects + 1) * 512 + i] = i & 0xff;
  return b;
}

describe('e820', () => {
  it('describes low RAM, the legacy holes and RAM above 1 MiB', () => {
    expect(e820Map(512 * MiB)).toEqual([
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
      { addr: 0xe0000, size: 0x20000, type: E820_RESERVED },
      { addr: 0x100000, size: 511 * MiB, type: E820_RAM },
      { addr: 0xe0000000, size: MiB, type: E820_RESERVED }, // PCI ECAM (MCFG)
    ]);
  });
  it('moves RAM above the 3 GiB PCI hole to 4 GiB', () => {
    const map = e820Map(4 * 1024 * MiB);
    expect(map.at(-3)).toEqual({ addr: 0x100000, size: 3 * 1024 * MiB - 0x100000, type: E820_RAM });
    expect(map.at(-1)).toEqual({ addr: 4 * 1024 * MiB, size: 1024 * MiB, type: E820_RAM });
  });
  it('packs 20-byte entries (boot_params) and 24-byte ones (PVH memmap)', () => {
    const v = new DataView(new ArrayBuffer(48));
    writeE820(v, 0, [{ addr: 0x100000, size: 0x2000, type: 1 }, { addr: 0x9fc00, size: 0x400, type: 2 }]);
    expect([...new Uint8Array(v.buffer, 0, 20)]).toEqual([0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    expect(v.getUint32(36, true)).toBe(2);
  });
});

describe('boot_params (zero page)', () => {
  const bz = parseBzImage(fakeBzImage());
  const bp = buildBootParams(bz, { cmdlineAddr: 0x20000, cmdlineLen: 10, initrdAddr: 0x1000000, initrdSize: 0x5000, e820: e820Map(512 * MiB), rsdpAddr: 0xe0000 });
  const v = new DataView(bp.buffer);
  it('copies the setup header and fills the loader fields', () => {
    expect(bp.length).toBe(4096);
    expect(v.getUint32(0x202, true)).toBe(0x53726448); // "HdrS"
    expect(v.getUint16(0x206, true)).toBe(0x20f);
    expect(bp[0x210]).toBe(0xff); // type_of_loader
    expect(bp[0x211] & 0x81).toBe(0x81); // LOADED_HIGH | CAN_USE_HEAP
    expect(v.getUint16(0x224, true)).toBe(0xfe00); // heap_end_ptr
    expect(v.getUint32(0x228, true)).toBe(0x20000); // cmd_line_ptr
    expect(v.getUint32(0x218, true)).toBe(0x1000000); // ramdisk_image
    expect(v.getUint32(0x21c, true)).toBe(0x5000); // ramdisk_size
    expect(v.getBigUint64(0x070, true)).toBe(0xe0000n); // acpi_rsdp_addr
  });
  it('holds the e820 table at 0x2d0 with its count at 0x1e8', () => {
    expect(bp[0x1e8]).toBe(5);
    expect(v.getBigUint64(0x2d0 + 3 * 20, true)).toBe(0x100000n);
    expect(v.getUint32(0x2d0 + 3 * 20 + 16, true)).toBe(E820_RAM);
  });
  it('finds the protected-mode kernel after the setup sectors', () => {
    expect(bz.kernel.length).toBe(4096);
    expect(bz.kernel[5]).toBe(5);
    expect(bz.payload.length).toBe(0x200);
  });
  it('rejects what it cannot boot', () => {
    const old = fakeBzImage();
    new DataView(old.buffer).setUint16(BP.version, 0x204, true);
    expect(() => parseBzImage(old)).toThrow(/too old/);
    const no64 = fakeBzImage();
    new DataView(no64.buffer).setUint16(BP.xloadflags, 0, true);
    expect(() => parseBzImage(no64)).toThrow(/64-bit/);
    expect(isBzImage(new Uint8Array(100))).toBe(false);
    expect(() => buildBootParams(bz, { cmdlineAddr: 0x20000, cmdlineLen: 5000, e820: [] })).toThrow(/command line/);
  });
});

describe('PVH start info', () => {
  it('is struct hvm_start_info version 1', () => {
    const v = new DataView(new ArrayBuffer(56));
    writeStartInfo(v, 0, { cmdlineAddr: 0x20000, modlistAddr: 0x6800, nrModules: 1, memmapAddr: 0x6040, memmapEntries: 4, rsdpAddr: 0xe0000 });
    expect(v.getUint32(0, true)).toBe(HVM_START_MAGIC);
    expect(v.getUint32(4, true)).toBe(1);
    expect(v.getUint32(12, true)).toBe(1); // nr_modules
    expect(v.getBigUint64(16, true)).toBe(0x6800n);
    expect(v.getBigUint64(24, true)).toBe(0x20000n);
    expect(v.getBigUint64(32, true)).toBe(0xe0000n);
    expect(v.getBigUint64(40, true)).toBe(0x6040n);
    expect(v.getUint32(48, true)).toBe(4);
  });
  it('writes the memmap as 24-byte entries', () => {
    const v = new DataView(new ArrayBuffer(120));
    writeMemmap(v, 0, e820Map(64 * MiB));
    expect(v.getBigUint64(72, true)).toBe(0x100000n);
    expect(v.getBigUint64(80, true)).toBe(BigInt(63 * MiB));
    expect(v.getUint32(88, true)).toBe(1);
  });
});

describe('MP table', () => {
  const cpus = 3;
  const t = buildMpTable(cpus, 0xf0000);
  const v = new DataView(t.buffer);
  const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);
  it('has a valid floating pointer', () => {
    expect(new TextDecoder().decode(t.subarray(0, 4))).toBe('_MP_');
    expect(v.getUint32(4, true)).toBe(0xf0010);
    expect(sum(t.subarray(0, 16))).toBe(0);
  });
  it('has a configuration table whose checksum and entry count hold', () => {
    expect(new TextDecoder().decode(t.subarray(16, 20))).toBe('PCMP');
    const len = v.getUint16(20, true);
    expect(len).toBe(t.length - 16);
    expect(sum(t.subarray(16, 16 + len))).toBe(0);
    expect(v.getUint32(16 + 36, true)).toBe(L.LAPIC_ADDR);
    // cpus processors, 2 buses, 1 IOAPIC, 16 interrupts, 2 local interrupts
    expect(v.getUint16(16 + 34, true)).toBe(cpus + 2 + 1 + 16 + 2);
  });
  it('lists one enabled processor per vCPU, the first as BSP', () => {
    for (let i = 0; i < cpus; i++) {
      const e = 16 + 44 + i * 20;
      expect(t[e]).toBe(0);
      expect(t[e + 1]).toBe(i);
      expect(t[e + 3]).toBe(i === 0 ? 3 : 1);
    }
    const io = 16 + 44 + cpus * 20 + 16;
    expect(t[io]).toBe(2);
    expect(v.getUint32(io + 4, true)).toBe(L.IOAPIC_ADDR);
  });
});

describe('page tables and segments', () => {
  it('identity-maps 4 GiB with 2 MiB pages', () => {
    const mem = new DataView(new ArrayBuffer(0x10000));
    writePageTables(mem, (gpa) => gpa);
    expect(mem.getBigUint64(L.PML4_ADDR, true)).toBe(BigInt(L.PDPT_ADDR) | 3n);
    expect(mem.getBigUint64(L.PDPT_ADDR + 24, true)).toBe(BigInt(L.PD_ADDR + 0x3000) | 3n);
    expect(mem.getBigUint64(L.PD_ADDR, true)).toBe(0x83n);
    expect(mem.getBigUint64(L.PD_ADDR + 8, true)).toBe(0x200083n);
    // last entry of the fourth directory: 4 GiB - 2 MiB
    expect(mem.getBigUint64(L.PD_ADDR + 0x3000 + 511 * 8, true)).toBe(0xffe00083n);
  });
  it('writes the GDT the 64-bit boot protocol expects (__BOOT_CS 0x10, __BOOT_DS 0x18)', () => {
    const mem = new DataView(new ArrayBuffer(0x100));
    writeGdt(mem, 0, 0x40);
    expect(mem.getBigUint64(SEL.code64, true)).toBe(0x00af9b000000ffffn);
    expect(mem.getBigUint64(SEL.data, true)).toBe(0x00cf93000000ffffn);
    expect(GDT.length).toBe(5);
  });
  it('enters long mode for bzImage and flat 32-bit protected mode for PVH', () => {
    const long = new DataView(new ArrayBuffer(312));
    setupSregs(long, 'long64');
    expect(long.getUint16(SREGS.cs + 12, true)).toBe(0x10);
    expect(long.getUint8(SREGS.cs + 19)).toBe(1); // L
    expect(long.getBigUint64(SREGS.cr0, true)).toBe(0x80000011n);
    expect(long.getBigUint64(SREGS.cr3, true)).toBe(BigInt(L.PML4_ADDR));
    expect(long.getBigUint64(SREGS.cr4, true)).toBe(0x20n);
    expect(long.getBigUint64(SREGS.efer, true)).toBe(0x500n);
    const pvh = new DataView(new ArrayBuffer(312));
    setupSregs(pvh, 'pvh32');
    expect(pvh.getUint16(SREGS.cs + 12, true)).toBe(0x08);
    expect(pvh.getUint8(SREGS.cs + 17)).toBe(1); // D/B
    expect(pvh.getUint32(SREGS.cs + 8, true)).toBe(0xffffffff);
    expect(pvh.getBigUint64(SREGS.cr0, true)).toBe(0x11n);
    expect(pvh.getBigUint64(SREGS.efer, true)).toBe(0n);
    expect(pvh.getUint8(SREGS.tr + 14)).toBe(0xb); // busy TSS
  });
  it('passes the boot pointer in %ebx (PVH) or %rsi (bzImage)', () => {
    expect(bootRegs(0x1000000, 'pvh32', 0x6000)[REG.rbx]).toBe(0x6000n);
    expect(bootRegs(0x100200, 'long64', 0x7000)[REG.rsi]).toBe(0x7000n);
    expect(bootRegs(0x100200, 'long64', 0x7000)[REG.rip]).toBe(0x100200n);
  });
});

/** Guest memory stand-in for the loader. */
function fakeMemory(size: number) {
  const bytes = new Uint8Array(size);
  return {
    bytes,
    lowSize: size,
    slice(gpa: number, len: number) {
      if (gpa < 0 || gpa + len > size) throw new Error('not RAM');
      return bytes.subarray(gpa, gpa + len);
    },
  };
}

describe('kernel loader', () => {
  it('loads a bzImage at 1 MiB with boot_params, command line and initrd', () => {
    const mem = fakeMemory(64 * MiB);
    const initrd = new Uint8Array(10000).fill(7);
    const entry = loadKernel(mem, { kernel: fakeBzImage(), initrd, cmdline: 'console=ttyS0', memSize: 64 * MiB, cpus: 1 });
    expect(entry).toMatchObject({ mode: 'long64', entry: 0x100200, pointer: L.BOOT_PARAMS_ADDR, kernelFormat: 'bzimage' });
    expect(mem.bytes[0x100005]).toBe(5);
    const bp = new DataView(mem.bytes.buffer, L.BOOT_PARAMS_ADDR, 4096);
    const rd = bp.getUint32(0x218, true);
    expect(rd % 4096).toBe(0);
    expect(rd + 10000).toBeLessThanOrEqual(64 * MiB);
    expect(mem.bytes[rd]).toBe(7);
    expect(new TextDecoder().decode(mem.bytes.subarray(L.CMDLINE_ADDR, L.CMDLINE_ADDR + 13))).toBe('console=ttyS0');
    expect(mem.bytes[L.CMDLINE_ADDR + 13]).toBe(0);
    expect(new TextDecoder().decode(mem.bytes.subarray(L.ACPI_ADDR, L.ACPI_ADDR + 8))).toBe('RSD PTR ');
    expect(new TextDecoder().decode(mem.bytes.subarray(L.MPTABLE_ADDR, L.MPTABLE_ADDR + 4))).toBe('_MP_');
  });
  it('puts code at the real-mode reset vector (F000:FFF0) that resets through 0xcf9, as decoded by objdump', () => {
    const mem = fakeMemory(16 * MiB);
    loadKernel(mem, { kernel: fakeBzImage(), cmdline: '', memSize: 16 * MiB, cpus: 2 });
    const code = resetVectorCode();
    expect(RESET_VECTOR_ADDR).toBe(0xf000 * 16 + 0xfff0);
    expect(mem.bytes.subarray(RESET_VECTOR_ADDR, RESET_VECTOR_ADDR + code.length)).toEqual(code);
    expect(RESET_VECTOR_ADDR + code.length).toBeLessThanOrEqual(L.BIOS_END);
    // a third party's reading of the bytes as 16-bit code (binutils, installed with gcc)
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-resetvec-'));
    try {
      writeFileSync(join(dir, 'code'), code);
      const text = execFileSync('objdump', ['-D', '-b', 'binary', '-m', 'i8086', `--adjust-vma=${RESET_VECTOR_ADDR}`, join(dir, 'code')]).toString();
      const insns = [...text.matchAll(/^\s*[0-9a-f]+:\s+(?:[0-9a-f]{2} )+\s*(.+)$/gm)].map((m) => m[1].replace(/\s+/g, ' ').trim());
      expect(insns).toEqual(['mov $0xcf9,%dx', 'mov $0xe,%al', 'out %al,(%dx)', 'hlt', 'jmp 0xffff6']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // and the byte it writes is a reset for tsvmm's reset control register
    const events: PowerEvent[] = [];
    new ResetControl((e) => events.push(e)).write(0, 1, 0x0e);
    expect(events).toEqual([{ reason: 'reset', detail: 'reset control register (0xcf9)' }]);
  });
  it('rejects unknown formats and oversized inputs with user errors', () => {
    const mem = fakeMemory(16 * MiB);
    expect(() => loadKernel(mem, { kernel: new Uint8Array(1024), cmdline: '', memSize: 16 * MiB, cpus: 1 })).toThrow(UserError);
    expect(() => loadKernel(mem, { kernel: fakeBzImage(), cmdline: 'x'.repeat(5000), memSize: 16 * MiB, cpus: 1 })).toThrow(/cmdline/);
    expect(() => placeHigh(32 * MiB, 2 * MiB, 16 * MiB)).toThrow(/increase --mem/);
  });
  it('refuses an ELF without a PVH note', () => {
    const elf = new Uint8Array(64);
    elf.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
    expect(() => loadPvhKernel(elf, () => new Uint8Array(0))).toThrow(/PVH entry note/);
  });
});
