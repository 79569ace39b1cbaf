// Puts a kernel and everything it expects into guest memory; returns how to enter it.
import { isElf } from './elf.js';
import { isBzImage, parseBzImage, buildBootParams } from './bzimage.js';
import { loadPvhKernel, writeStartInfo, writeModule, writeMemmap, HVM_START_INFO_SIZE } from './pvh.js';
import { e820Map } from './e820.js';
import { buildMpTable, ioapicId } from './mptable.js';
import { buildAcpi, type ViotSpec } from './acpi.js';
import { RESET_VECTOR_ADDR, resetVectorCode } from './reset-vector.js';
import { writeGdt, writePageTables, type EntryMode } from './cpu-state.js';
import * as L from './layout.js';
import { UserError } from '../errors.js';

/** What the loader needs of guest memory: a writable view of a RAM range (throws if not RAM). */
export interface BootMemory {
  slice(gpa: number, len: number): Uint8Array;
  lowSize: number;
}

export interface BootSpec {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  memSize: number;
  cpus: number;
  /** a virtio-iommu and the PCI functions it translates: described to the guest by ACPI VIOT */
  viot?: ViotSpec;
}

export interface BootEntry {
  mode: EntryMode;
  entry: number;
  /** %ebx (PVH start info) or %rsi (boot_params) */
  pointer: number;
  kernelFormat: 'pvh-elf' | 'bzimage';
}

const PAGE = 4096;

function dataView(u: Uint8Array): DataView {
  return new DataView(u.buffer, u.byteOffset, u.byteLength);
}

/** Highest page-aligned address for `size` bytes, ending at or below `limit`, starting at or above `floor`. */
export function placeHigh(size: number, floor: number, limit: number): number {
  const addr = Math.floor((limit - size) / PAGE) * PAGE;
  if (addr < floor) throw new UserError(`initrd (${size} bytes) does not fit in guest memory: increase --mem`);
  return addr;
}

export function loadKernel(mem: BootMemory, spec: BootSpec): BootEntry {
  const cmdline = new TextEncoder().encode(spec.cmdline + '\0');
  if (cmdline.length > L.CMDLINE_MAX) throw new UserError(`--cmdline is longer than ${L.CMDLINE_MAX - 1} bytes`);

  // Platform structures every guest gets.
  writeGdt(dataView(mem.slice(L.GDT_ADDR, 0x40)), 0, L.IDT_ADDR - L.GDT_ADDR);
  const pt = mem.slice(L.PML4_ADDR, PD_SPAN);
  writePageTables(dataView(pt), (gpa) => gpa - L.PML4_ADDR);
  // Both descriptions of the platform: ACPI for current kernels, the MP table for those without ACPI.
  const mp = buildMpTable(spec.cpus, L.MPTABLE_ADDR);
  mem.slice(L.MPTABLE_ADDR, mp.length).set(mp);
  const acpi = buildAcpi(L.ACPI_ADDR, spec.cpus, ioapicId(spec.cpus), spec.viot);
  if (L.ACPI_ADDR + acpi.bytes.length > L.MPTABLE_ADDR) throw new Error('ACPI tables overflow their area');
  mem.slice(L.ACPI_ADDR, acpi.bytes.length).set(acpi.bytes);
  if (L.MPTABLE_ADDR + mp.length > RESET_VECTOR_ADDR) throw new Error('MP tables overflow their area');
  const reset = resetVectorCode();
  mem.slice(RESET_VECTOR_ADDR, reset.length).set(reset);
  mem.slice(L.CMDLINE_ADDR, cmdline.length).set(cmdline);
  const e820 = e820Map(spec.memSize);

  if (isElf(spec.kernel)) {
    let loaded;
    try {
      loaded = loadPvhKernel(spec.kernel, (gpa, len) => {
        if (gpa < L.BIOS_END) throw new Error(`ELF segment at 0x${gpa.toString(16)} overlaps the low 1 MiB`);
        try {
          return mem.slice(gpa, len);
        } catch {
          throw new Error(`ELF segment 0x${gpa.toString(16)}+0x${len.toString(16)} lies outside guest RAM: increase --mem`);
        }
      });
    } catch (e) {
      throw new UserError(`--kernel: ${(e as Error).message}`);
    }
    let nrModules = 0;
    if (spec.initrd) {
      const addr = placeHigh(spec.initrd.length, loaded.end, mem.lowSize);
      mem.slice(addr, spec.initrd.length).set(spec.initrd);
      writeModule(dataView(mem.slice(L.PVH_MODLIST_ADDR, 32)), 0, addr, spec.initrd.length);
      nrModules = 1;
    }
    writeMemmap(dataView(mem.slice(L.PVH_MEMMAP_ADDR, e820.length * 24)), 0, e820);
    writeStartInfo(dataView(mem.slice(L.PVH_START_INFO_ADDR, HVM_START_INFO_SIZE)), 0, {
      cmdlineAddr: L.CMDLINE_ADDR,
      modlistAddr: nrModules ? L.PVH_MODLIST_ADDR : 0,
      nrModules,
      memmapAddr: L.PVH_MEMMAP_ADDR,
      memmapEntries: e820.length,
      rsdpAddr: acpi.rsdpAddr,
    });
    return { mode: 'pvh32', entry: loaded.entry, pointer: L.PVH_START_INFO_ADDR, kernelFormat: 'pvh-elf' };
  }

  if (isBzImage(spec.kernel)) {
    let bz;
    try {
      bz = parseBzImage(spec.kernel);
    } catch (e) {
      throw new UserError(`--kernel: ${(e as Error).message}`);
    }
    const kernelEnd = L.KERNEL_LOAD_ADDR + Math.max(bz.kernel.length, bz.initSize);
    if (kernelEnd > mem.lowSize) throw new UserError('kernel does not fit in guest memory: increase --mem');
    mem.slice(L.KERNEL_LOAD_ADDR, bz.kernel.length).set(bz.kernel);
    let initrdAddr: number | undefined;
    if (spec.initrd) {
      initrdAddr = placeHigh(spec.initrd.length, kernelEnd, Math.min(mem.lowSize, bz.initrdAddrMax + 1));
      mem.slice(initrdAddr, spec.initrd.length).set(spec.initrd);
    }
    const bp = buildBootParams(bz, { cmdlineAddr: L.CMDLINE_ADDR, cmdlineLen: cmdline.length - 1, initrdAddr, initrdSize: spec.initrd?.length, e820, rsdpAddr: acpi.rsdpAddr });
    mem.slice(L.BOOT_PARAMS_ADDR, bp.length).set(bp);
    return { mode: 'long64', entry: L.KERNEL_LOAD_ADDR + 0x200, pointer: L.BOOT_PARAMS_ADDR, kernelFormat: 'bzimage' };
  }

  throw new UserError('--kernel: unknown kernel format (expected a bzImage or an ELF vmlinux with a PVH note)');
}

const PD_SPAN = L.PD_ADDR + 4 * 0x1000 - L.PML4_ADDR;
