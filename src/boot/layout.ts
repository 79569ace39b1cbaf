// Guest-physical memory layout. Everything the VMM writes before the first instruction has a fixed home.

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
export const PVH_START_INFO_ADDR = 0x6000;
export const PVH_MEMMAP_ADDR = 0x6040;
export const PVH_MODLIST_ADDR = 0x6800;
export const BOOT_PARAMS_ADDR = 0x7000;
/** a small stack for entry code (the 64-bit protocol promises none; Linux sets its own) */
export const BOOT_STACK_TOP = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
/** four page directories of 2 MiB pages: identity map of the first 4 GiB */
export const PD_ADDR = 0xb000;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 4096;
export const EBDA_START = 0x9fc00;
/** ACPI tables (RSDP first) and the MP tables live in the BIOS area, where a guest scans for them. */
export const ACPI_ADDR = 0xe0000;
export const MPTABLE_ADDR = 0xf0000;
export const BIOS_END = 0x100000;
export const KERNEL_LOAD_ADDR = 0x100000;

/** Start of the 32-bit PCI/MMIO hole; RAM above it moves to 4 GiB. */
export const MMIO_HOLE_START = 3 * GiB;
export const HIGH_RAM_START = 4 * GiB;
/** PCI Express enhanced configuration (ECAM, MCFG): bus 0 only, 4 KiB per function; reserved in e820 */
export const PCI_ECAM_BASE = 0xe0000000;
export const PCI_ECAM_SIZE = 1 << 20;
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;
export const TSS_ADDR = 0xfffbd000;
export const IDENTITY_MAP_ADDR = 0xfffbc000;

export interface RamLayout {
  lowSize: number;
  highSize: number;
}

export function ramLayout(memSize: number): RamLayout {
  const lowSize = Math.min(memSize, MMIO_HOLE_START);
  return { lowSize, highSize: memSize - lowSize };
}

export function ramRegions(memSize: number): Array<{ gpa: number; size: number; offset: number }> {
  const { lowSize, highSize } = ramLayout(memSize);
  const regions = [{ gpa: 0, size: lowSize, offset: 0 }];
  if (highSize > 0) regions.push({ gpa: HIGH_RAM_START, size: highSize, offset: lowSize });
  return regions;
}
