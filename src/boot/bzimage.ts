// Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit entry: the VMM plays boot loader,
// fills the zero page (boot_params) and jumps to startup_64 at load address + 0x200 in long mode.
import { writeE820, type E820Entry } from './e820.js';

export const BOOT_PARAMS_SIZE = 4096;
const HDR = 0x1f1;
export const BP = {
  acpi_rsdp_addr: 0x070,
  e820_entries: 0x1e8,
  setup_sects: 0x1f1,
  boot_flag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  type_of_loader: 0x210,
  loadflags: 0x211,
  code32_start: 0x214,
  ramdisk_image: 0x218,
  ramdisk_size: 0x21c,
  heap_end_ptr: 0x224,
  cmd_line_ptr: 0x228,
  initrd_addr_max: 0x22c,
  kernel_alignment: 0x230,
  xloadflags: 0x236,
  cmdline_size: 0x238,
  payload_offset: 0x248,
  payload_length: 0x24c,
  init_size: 0x260,
  e820_table: 0x2d0,
} as const;
export const E820_MAX_ENTRIES_ZEROPAGE = 128;
const HDRS_MAGIC = 0x53726448; // "HdrS"
const XLF_KERNEL_64 = 1;
const LOADED_HIGH = 0x01;
const CAN_USE_HEAP = 0x80;

export function isBzImage(b: Uint8Array): boolean {
  if (b.length < 0x270) return false;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return v.getUint16(BP.boot_flag, true) === 0xaa55 && v.getUint32(BP.header, true) === HDRS_MAGIC;
}

export interface BzImage {
  version: number;
  /** the protected-mode kernel (what is loaded at 1 MiB) */
  kernel: Uint8Array;
  /** setup header bytes, 0x1f1 .. end of header */
  header: Uint8Array;
  initrdAddrMax: number;
  cmdlineSize: number;
  initSize: number;
  /** compressed payload inside `kernel` (boot protocol 2.08+) */
  payload: Uint8Array;
}

export function parseBzImage(b: Uint8Array): BzImage {
  if (!isBzImage(b)) throw new Error('not a bzImage (no HdrS header)');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = v.getUint16(BP.version, true);
  if (version < 0x20c) throw new Error(`boot protocol ${version.toString(16)} too old (need 2.12+ for the 64-bit entry)`);
  if (!(v.getUint16(BP.xloadflags, true) & XLF_KERNEL_64)) throw new Error('bzImage has no 64-bit entry point (XLF_KERNEL_64)');
  const setupSects = b[BP.setup_sects] || 4;
  const kernelOff = (setupSects + 1) * 512;
  if (kernelOff >= b.length) throw new Error('bzImage truncated');
  const kernel = b.subarray(kernelOff);
  const hdrEnd = 0x202 + b[BP.jump + 1];
  const pOff = v.getUint32(BP.payload_offset, true);
  const pLen = v.getUint32(BP.payload_length, true);
  if (pOff + pLen > kernel.length) throw new Error('bzImage payload outside the file');
  return {
    version,
    kernel,
    header: b.subarray(HDR, hdrEnd),
    initrdAddrMax: v.getUint32(BP.initrd_addr_max, true),
    cmdlineSize: v.getUint32(BP.cmdline_size, true),
    initSize: v.getUint32(BP.init_size, true),
    payload: kernel.subarray(pOff, pOff + pLen),
  };
}

/** Build the zero page for a 64-bit entry. */
export function buildBootParams(
  bz: BzImage,
  o: { cmdlineAddr: number; cmdlineLen: number; initrdAddr?: number; initrdSize?: number; e820: E820Entry[]; rsdpAddr?: number },
): Uint8Array {
  if (o.e820.length > E820_MAX_ENTRIES_ZEROPAGE) throw new Error('too many e820 entries');
  if (bz.cmdlineSize && o.cmdlineLen > bz.cmdlineSize) throw new Error(`kernel command line longer than the kernel accepts (${bz.cmdlineSize} bytes)`);
  const bp = new Uint8Array(BOOT_PARAMS_SIZE);
  const v = new DataView(bp.buffer);
  bp.set(bz.header, HDR);
  bp[BP.type_of_loader] = 0xff; // undefined boot loader
  bp[BP.loadflags] |= LOADED_HIGH | CAN_USE_HEAP;
  v.setUint16(BP.heap_end_ptr, 0xfe00, true);
  v.setUint32(BP.cmd_line_ptr, o.cmdlineAddr, true);
  v.setUint32(BP.ramdisk_image, o.initrdAddr ?? 0, true);
  v.setUint32(BP.ramdisk_size, o.initrdSize ?? 0, true);
  v.setBigUint64(BP.acpi_rsdp_addr, BigInt(o.rsdpAddr ?? 0), true);
  bp[BP.e820_entries] = o.e820.length;
  writeE820(v, BP.e820_table, o.e820);
  return bp;
}
