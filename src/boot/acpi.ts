// ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (→ DSDT), MADT.
// Debian's 6.12 kernel has no MP-table parser (CONFIG_X86_MPPARSE off), so this is how a stock Linux
// finds its CPUs, local APICs and IOAPIC, powers off (sleep control register + \_S5) and resets
// (FADT reset register). Checked against a third-party decoder (iasl -d) in test/acpi.test.ts.
import { IOAPIC_ADDR, LAPIC_ADDR, MMIO_HOLE_START } from './layout.js';
import * as aml from './aml.js';

export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_RESET_PORT = 0xcf9;
export const ACPI_RESET_VALUE = 0x06;
/** SLP_TYP for S5 in \_S5 (what the guest writes to the sleep control register, bits 4:2) */
export const ACPI_S5_SLP_TYP = 5;
export const SLP_EN = 0x20;

const OEM_ID = 'TSVMM ';
const OEM_TABLE_ID = 'TSVMMVM ';
const CREATOR_ID = 'TSVM';

function checksum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return (0x100 - s) & 0xff;
}

function putAscii(b: Uint8Array, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) b[off + i] = s.charCodeAt(i);
}

/** A system description table: the 36-byte header, then `body`; checksum filled. */
export function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(36 + body.length);
  const v = new DataView(t.buffer);
  putAscii(t, 0, signature);
  v.setUint32(4, t.length, true);
  t[8] = revision;
  putAscii(t, 10, OEM_ID);
  putAscii(t, 16, OEM_TABLE_ID);
  v.setUint32(24, 1, true);
  putAscii(t, 28, CREATOR_ID);
  v.setUint32(32, 1, true);
  t.set(body, 36);
  t[9] = checksum(t);
  return t;
}

/** Generic Address Structure (12 bytes) for a system I/O port register. */
function gasIo(v: DataView, off: number, port: number, bits: number): void {
  v.setUint8(off, 1); // SystemIO
  v.setUint8(off + 1, bits);
  v.setUint8(off + 2, 0);
  v.setUint8(off + 3, 1); // byte access
  v.setBigUint64(off + 4, BigInt(port), true);
}

export function buildFadt(dsdtAddr: number): Uint8Array {
  const body = new Uint8Array(276 - 36);
  const v = new DataView(body.buffer);
  const at = (off: number) => off - 36; // offsets below are the spec's, from the table start
  v.setUint32(at(40), dsdtAddr, true); // DSDT (32-bit)
  // flags: WBINVD | RESET_REG_SUP | HW_REDUCED_ACPI
  v.setUint32(at(112), (1 << 0) | (1 << 10) | (1 << 20), true);
  gasIo(v, at(116), ACPI_RESET_PORT, 8);
  v.setUint8(at(128), ACPI_RESET_VALUE);
  // IAPC_BOOT_ARCH: VGA not present, CMOS RTC not present (guests take wall time from kvmclock;
  // without this Linux's rtc_cmos probe spins on the update-in-progress bit of a port nobody answers)
  v.setUint16(at(109), (1 << 2) | (1 << 5), true);
  v.setUint8(at(131), 0); // FADT minor version (6.0)
  v.setBigUint64(at(140), BigInt(dsdtAddr), true); // X_DSDT
  gasIo(v, at(244), ACPI_SLEEP_CONTROL_PORT, 8);
  gasIo(v, at(256), ACPI_SLEEP_STATUS_PORT, 8);
  body.set(new TextEncoder().encode('TSVMM\0\0\0'), at(268)); // hypervisor vendor identity
  return sdt('FACP', 6, body);
}

/** The 32-bit window the PCI host bridge decodes for BARs (IOAPIC and LAPIC pages above it). */
export const PCI_MMIO_WINDOW = { start: MMIO_HOLE_START, end: IOAPIC_ADDR - 1 };

/**
 * DSDT: the PCI host bridge (PNP0A03, bus 0, configuration mechanism #1 at 0xCF8, its I/O and memory
 * windows: with ACPI, Linux finds PCI only through such a device), COM1 (PNP0501 at 0x3F8, IRQ 4: a
 * hardware-reduced platform has no legacy serial ports unless described), and \_S5 (SLP_TYPa = 5).
 */
export function buildDsdt(): Uint8Array {
  const pci0 = aml.device('PCI0', [
    ...aml.name('_HID', aml.eisaId('PNP0A03')),
    ...aml.name('_UID', aml.integer(0)),
    ...aml.name('_SEG', aml.integer(0)),
    ...aml.name('_BBN', aml.integer(0)),
    ...aml.name(
      '_CRS',
      aml.resourceTemplate([
        aml.wordRange('bus', 0, 0),
        aml.ioPort(0xcf8, 0xcf8, 1, 8),
        aml.wordRange('io', 0x0000, 0x0cf7),
        aml.wordRange('io', 0x0d00, 0xffff),
        aml.dwordMemory(PCI_MMIO_WINDOW.start, PCI_MMIO_WINDOW.end),
      ]),
    ),
  ]);
  const com1 = aml.device('COM1', [
    ...aml.name('_HID', aml.eisaId('PNP0501')),
    ...aml.name('_UID', aml.integer(1)),
    ...aml.name('_CRS', aml.resourceTemplate([aml.ioPort(0x3f8, 0x3f8, 0, 8), aml.irq(4)])),
  ]);
  const body = [
    ...aml.scope('\\_SB_', [...pci0, ...com1]),
    ...aml.name('_S5_', aml.pkg([aml.integer(ACPI_S5_SLP_TYP), aml.integer(0), aml.integer(0), aml.integer(0)])),
  ];
  return sdt('DSDT', 2, new Uint8Array(body));
}

export function buildMadt(cpus: number, ioapicId: number): Uint8Array {
  const entries: number[] = [];
  const u32 = (x: number) => [x & 0xff, (x >>> 8) & 0xff, (x >>> 16) & 0xff, (x >>> 24) & 0xff];
  for (let id = 0; id < cpus; id++) entries.push(0, 8, id, id, ...u32(1)); // Processor Local APIC: enabled
  entries.push(1, 12, ioapicId, 0, ...u32(IOAPIC_ADDR), ...u32(0)); // I/O APIC, GSI base 0
  entries.push(4, 6, 0xff, 0, 0, 1); // Local APIC NMI: all processors, flags 0, LINT1
  const body = new Uint8Array(8 + entries.length);
  const v = new DataView(body.buffer);
  v.setUint32(0, LAPIC_ADDR, true);
  v.setUint32(4, 1, true); // PCAT_COMPAT: an 8259 pair is present (KVM's in-kernel PIC)
  body.set(entries, 8);
  return sdt('APIC', 6, body);
}

export function buildXsdt(tables: number[]): Uint8Array {
  const body = new Uint8Array(8 * tables.length);
  const v = new DataView(body.buffer);
  tables.forEach((a, i) => v.setBigUint64(8 * i, BigInt(a), true));
  return sdt('XSDT', 1, body);
}

export function buildRsdp(xsdtAddr: number): Uint8Array {
  const r = new Uint8Array(36);
  const v = new DataView(r.buffer);
  putAscii(r, 0, 'RSD PTR ');
  putAscii(r, 9, OEM_ID);
  r[15] = 2; // ACPI 2.0+
  v.setUint32(20, 36, true);
  v.setBigUint64(24, BigInt(xsdtAddr), true);
  r[8] = checksum(r.subarray(0, 20));
  r[32] = checksum(r);
  return r;
}

export interface AcpiImage {
  /** bytes to place at `base` */
  bytes: Uint8Array;
  rsdpAddr: number;
  tables: Record<string, { addr: number; bytes: Uint8Array }>;
}

const align16 = (x: number) => (x + 15) & ~15;

/** Lay out RSDP and tables contiguously from `base`, each 16-byte aligned. */
export function buildAcpi(base: number, cpus: number, ioapicId: number): AcpiImage {
  const dsdt = buildDsdt();
  const madt = buildMadt(cpus, ioapicId);
  const order = ['RSDP', 'XSDT', 'FACP', 'DSDT', 'APIC'] as const;
  const sizes = { RSDP: 36, XSDT: 36 + 8 * 2, FACP: 276, DSDT: dsdt.length, APIC: madt.length };
  const addr = {} as Record<(typeof order)[number], number>;
  let cursor = base;
  for (const name of order) {
    addr[name] = cursor;
    cursor = align16(cursor + sizes[name]);
  }
  const built = {
    RSDP: buildRsdp(addr.XSDT),
    XSDT: buildXsdt([addr.FACP, addr.APIC]),
    FACP: buildFadt(addr.DSDT),
    DSDT: dsdt,
    APIC: madt,
  };
  const bytes = new Uint8Array(cursor - base);
  const tables: AcpiImage['tables'] = {};
  for (const name of order) {
    bytes.set(built[name], addr[name] - base);
    tables[name] = { addr: addr[name], bytes: built[name] };
  }
  return { bytes, rsdpAddr: addr.RSDP, tables };
}
