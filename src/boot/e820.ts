// The e820 memory map handed to the guest (boot_params for bzImage, the PVH memmap for PVH).
import { EBDA_START, BIOS_END, ACPI_ADDR, HIGH_RAM_START, PCI_ECAM_BASE, PCI_ECAM_SIZE, ramLayout } from './layout.js';

export const E820_RAM = 1;
export const E820_RESERVED = 2;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

export function e820Map(memSize: number): E820Entry[] {
  const { lowSize, highSize } = ramLayout(memSize);
  if (lowSize < BIOS_END + 1024 * 1024) throw new Error('guest memory must be at least 2 MiB');
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: 0xa0000 - EBDA_START, type: E820_RESERVED },
    { addr: ACPI_ADDR, size: BIOS_END - ACPI_ADDR, type: E820_RESERVED }, // ACPI and MP tables
    { addr: BIOS_END, size: lowSize - BIOS_END, type: E820_RAM },
    // PCI configuration space (ECAM): Linux uses MCFG's window only if the firmware reserved it
    { addr: PCI_ECAM_BASE, size: PCI_ECAM_SIZE, type: E820_RESERVED },
  ];
  if (highSize > 0) map.push({ addr: HIGH_RAM_START, size: highSize, type: E820_RAM });
  return map;
}

/** 20-byte packed entries: addr u64, size u64, type u32 (boot_params e820_table and PVH memmap share it, PVH pads to 24). */
export function writeE820(view: DataView, offset: number, entries: E820Entry[], stride = 20): void {
  entries.forEach((e, i) => {
    const o = offset + i * stride;
    view.setBigUint64(o, BigInt(e.addr), true);
    view.setBigUint64(o + 8, BigInt(e.size), true);
    view.setUint32(o + 16, e.type, true);
    if (stride === 24) view.setUint32(o + 20, 0, true);
  });
}
