// PVH boot (Xen's HVM direct boot ABI, also used by QEMU, Firecracker and Cloud Hypervisor): load an ELF
// kernel, enter its XEN_ELFNOTE_PHYS32_ENTRY in 32-bit protected mode with %ebx = hvm_start_info.
import { parseElf, PT_LOAD, type ElfImage } from './elf.js';
import { writeE820, type E820Entry } from './e820.js';

export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const HVM_START_MAGIC = 0x336ec578;
export const HVM_START_INFO_SIZE = 56;
export const HVM_MODLIST_ENTRY_SIZE = 32;
export const HVM_MEMMAP_ENTRY_SIZE = 24;

export function pvhEntry(elf: ElfImage): number | undefined {
  const note = elf.notes.find((n) => n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
  if (!note || note.desc.length < 4) return undefined;
  return new DataView(note.desc.buffer, note.desc.byteOffset, note.desc.byteLength).getUint32(0, true);
}

export interface LoadedKernel {
  entry: number;
  /** first byte past the highest loaded segment */
  end: number;
}

/** Copy the PT_LOAD segments to their physical addresses (zero-filling bss) through `place`. */
export function loadPvhKernel(image: Uint8Array, place: (gpa: number, len: number) => Uint8Array): LoadedKernel {
  const elf = parseElf(image);
  const entry = pvhEntry(elf);
  if (entry === undefined) throw new Error('ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y');
  let end = 0;
  for (const s of elf.segments.filter((s) => s.type === PT_LOAD && s.memsz > 0)) {
    const dst = place(s.paddr, s.memsz);
    dst.set(image.subarray(s.offset, s.offset + s.filesz));
    dst.fill(0, s.filesz);
    end = Math.max(end, s.paddr + s.memsz);
  }
  return { entry, end };
}

/** struct hvm_start_info (version 1, with the memory map). */
export function writeStartInfo(
  view: DataView,
  off: number,
  info: { cmdlineAddr: number; modlistAddr: number; nrModules: number; memmapAddr: number; memmapEntries: number; rsdpAddr?: number },
): void {
  view.setUint32(off, HVM_START_MAGIC, true);
  view.setUint32(off + 4, 1, true);
  view.setUint32(off + 8, 0, true);
  view.setUint32(off + 12, info.nrModules, true);
  view.setBigUint64(off + 16, BigInt(info.modlistAddr), true);
  view.setBigUint64(off + 24, BigInt(info.cmdlineAddr), true);
  view.setBigUint64(off + 32, BigInt(info.rsdpAddr ?? 0), true);
  view.setBigUint64(off + 40, BigInt(info.memmapAddr), true);
  view.setUint32(off + 48, info.memmapEntries, true);
  view.setUint32(off + 52, 0, true);
}

export function writeModule(view: DataView, off: number, paddr: number, size: number): void {
  view.setBigUint64(off, BigInt(paddr), true);
  view.setBigUint64(off + 8, BigInt(size), true);
  view.setBigUint64(off + 16, 0n, true);
  view.setBigUint64(off + 24, 0n, true);
}

export function writeMemmap(view: DataView, off: number, map: E820Entry[]): void {
  writeE820(view, off, map, HVM_MEMMAP_ENTRY_SIZE);
}
