// ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (→ DSDT), MADT.
// Debian's 6.12 kernel has no MP-table parser (CONFIG_X86_MPPARSE off), so this is how a stock Linux
// finds its CPUs, local APICs and IOAPIC, powers off (sleep control register + \_S5) and resets
// (FADT reset register). Checked against a third-party decoder (iasl -d) in test/acpi.test.ts.
import { IOAPIC_ADDR, LAPIC_ADDR, MMIO_HOLE_START, PCI_ECAM_BASE, PCI_ECAM_SIZE } from './layout.js';
import * as aml from './aml.js';

export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const ACPI_RESET_PORT = 0xcf9;
export const ACPI_RESET_VALUE = 0x06;
/** SLP_TYP for S5 in \_S5 (what the guest writes to the sleep control register, bits 4:2) */
export const ACPI_S5_SLP_TYP = 5;
export const SLP_EN = 0x20;
/**
 * The Generic Event Device's event register (one byte, SystemIO): a read returns the pending events
 * and clears them; _EVT reads it when the GED's interrupt fires.
 */
export const ACPI_GED_PORT = 0x604;
/** The GED's interrupt: an IOAPIC pin above the ISA range, so no 8259 input is behind it; edge, active high. */
export const ACPI_GED_GSI = 16;
/**
 * The IOAPIC pins that carry PCI INTx: above the ISA range and the GED's pin. Each function's INTA
 * goes to one of them, by slot (pciIntxGsi), described to the guest by the host bridge's _PRT.
 */
export const PCI_INTX_GSI_FIRST = 17;
export const PCI_INTX_GSI_COUNT = 7;

/** The GSI of slot `slot`'s INTA (bus 0, slots 1-31): slot 1 on 17, ..., slot 7 on 23, slot 8 on 17 again. */
export function pciIntxGsi(slot: number): number {
  if (!Number.isInteger(slot) || slot < 1 || slot > 31) throw new Error(`no PCI slot ${slot}`);
  return PCI_INTX_GSI_FIRST + ((slot - 1) % PCI_INTX_GSI_COUNT);
}

/** Event bits in the GED's register. */
export const GED_EVENT_POWER_BUTTON = 0x01;

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

/** The 32-bit window the PCI host bridge decodes for BARs (ECAM, IOAPIC and LAPIC pages above it). */
export const PCI_MMIO_WINDOW = { start: MMIO_HOLE_START, end: PCI_ECAM_BASE - 1 };

/** MCFG: where PCI Express configuration space (ECAM) is, for segment 0, bus 0. */
export function buildMcfg(): Uint8Array {
  const body = new Uint8Array(8 + 16);
  const v = new DataView(body.buffer);
  v.setBigUint64(8, BigInt(PCI_ECAM_BASE), true);
  v.setUint16(16, 0, true); // segment
  v.setUint8(18, 0); // start bus
  v.setUint8(19, PCI_ECAM_SIZE / (1 << 20) - 1); // end bus
  return sdt('MCFG', 1, body);
}

/** What the VIOT describes: the virtio-iommu's PCI function and the requester ids it translates. */
export interface ViotSpec {
  iommuBdf: number;
  endpoints: number[];
}

/**
 * VIOT (ACPI 6.4 §5.2.32, Linux drivers/acpi/viot.c): a virtio-pci IOMMU node, and a PCI range node per
 * translated function whose endpoint id is its requester id (what our virtio-iommu's ATTACH expects).
 */
export function buildViot(spec: ViotSpec): Uint8Array {
  const iommuNode = 48; // offset of the IOMMU node from the table's start: right after the header
  const nodes = 1 + spec.endpoints.length;
  const body = new Uint8Array(12 + 16 + 24 * spec.endpoints.length);
  const v = new DataView(body.buffer);
  const at = (off: number) => off - 36;
  v.setUint16(at(36), nodes, true);
  v.setUint16(at(38), iommuNode, true); // the first node
  // virtio-pci IOMMU node: type 3, length 16, segment, BDF
  v.setUint8(at(48), 3);
  v.setUint16(at(50), 16, true);
  v.setUint16(at(52), 0, true);
  v.setUint16(at(54), spec.iommuBdf, true);
  spec.endpoints.forEach((bdf, i) => {
    const o = 64 + 24 * i;
    v.setUint8(at(o), 1); // PCI range node
    v.setUint16(at(o + 2), 24, true);
    v.setUint32(at(o + 4), bdf, true); // endpoint id of the first BDF in the range
    v.setUint16(at(o + 8), 0, true); // segments 0..0
    v.setUint16(at(o + 10), 0, true);
    v.setUint16(at(o + 12), bdf, true); // BDF range: this one function
    v.setUint16(at(o + 14), bdf, true);
    v.setUint16(at(o + 16), iommuNode, true); // translated by the IOMMU node
  });
  return sdt('VIOT', 0, body);
}

/**
 * The Generic Event Device (ACPI0013, ACPI 6.x §5.6.9: how a hardware-reduced platform signals events)
 * and the power button (PNP0C0C) it notifies. Linux's evged binds the GED and, when its interrupt fires,
 * runs _EVT; _EVT reads the event register and sends Notify(PWRB, 0x80), on which Linux's button driver
 * reports KEY_POWER.
 */
function gedAndPowerButton(): number[] {
  const ged = aml.device('GED_', [
    ...aml.name('_HID', aml.string('ACPI0013')),
    ...aml.name('_UID', aml.integer(0)),
    ...aml.name('_CRS', aml.resourceTemplate([aml.edgeInterrupt(ACPI_GED_GSI)])),
    ...aml.ioRegion('GDST', ACPI_GED_PORT, 1),
    ...aml.byteField('GDST', [['GDAT', 8]]),
    ...aml.method('_EVT', 1, true, [
      ...aml.store(aml.ref('GDAT'), aml.LOCAL0),
      ...aml.ifThen(aml.and(aml.LOCAL0, aml.integer(GED_EVENT_POWER_BUTTON)), aml.notify('\\_SB_.PWRB', 0x80)),
    ]),
  ]);
  const pwrb = aml.device('PWRB', [...aml.name('_HID', aml.eisaId('PNP0C0C')), ...aml.name('_UID', aml.integer(0))]);
  return [...ged, ...pwrb];
}

/**
 * PCI interrupt routing: a link device (PNP0C0F) per INTx GSI, fixed to it (its one possible setting;
 * _SRS accepts it), level-triggered, active high (KVM's IOAPIC knows no polarity: a line is asserted
 * when a device raises it) and shared; and the host bridge's _PRT naming, for INTA of every slot, the
 * link of pciIntxGsi(slot). Linux routes a function without MSI(-X) through these.
 */
function pciLinks(): number[] {
  const out: number[] = [];
  for (let i = 0; i < PCI_INTX_GSI_COUNT; i++) {
    const gsi = PCI_INTX_GSI_FIRST + i;
    const res = aml.resourceTemplate([aml.interrupt(gsi, { level: true, shared: true })]);
    out.push(
      ...aml.device(linkName(gsi), [
        ...aml.name('_HID', aml.eisaId('PNP0C0F')),
        ...aml.name('_UID', aml.integer(gsi)),
        ...aml.name('_PRS', res),
        ...aml.name('_CRS', res),
        ...aml.method('_SRS', 1, false, []),
      ]),
    );
  }
  return out;
}

function linkName(gsi: number): string {
  return `LK${gsi}`;
}

/** _PRT: Package { address (slot << 16 | 0xFFFF: any function), pin 0 (INTA), source (the link), index 0 } per slot. */
function pciRoutingTable(): number[] {
  const entries: number[][] = [];
  for (let slot = 1; slot < 32; slot++) {
    entries.push(aml.pkg([aml.integer(slot * 0x10000 + 0xffff), aml.integer(0), aml.ref(`\\_SB_.${linkName(pciIntxGsi(slot))}`), aml.integer(0)]));
  }
  return aml.name('_PRT', aml.pkg(entries));
}

/**
 * DSDT: the PCI host bridge (PNP0A03, bus 0, configuration mechanism #1 at 0xCF8, its I/O and memory
 * windows: with ACPI, Linux finds PCI only through such a device; its _PRT and the INTx links), COM1 (PNP0501 at 0x3F8, IRQ 4: a
 * hardware-reduced platform has no legacy serial ports unless described), the GED with its power button,
 * and \_S5 (SLP_TYPa = 5).
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
    ...pciRoutingTable(),
  ]);
  const com1 = aml.device('COM1', [
    ...aml.name('_HID', aml.eisaId('PNP0501')),
    ...aml.name('_UID', aml.integer(1)),
    ...aml.name('_CRS', aml.resourceTemplate([aml.ioPort(0x3f8, 0x3f8, 0, 8), aml.irq(4)])),
  ]);
  const body = [
    ...aml.scope('\\_SB_', [...pciLinks(), ...pci0, ...com1, ...gedAndPowerButton()]),
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
export function buildAcpi(base: number, cpus: number, ioapicId: number, viot?: ViotSpec): AcpiImage {
  const dsdt = buildDsdt();
  const madt = buildMadt(cpus, ioapicId);
  const mcfg = buildMcfg();
  const viotTable = viot && buildViot(viot);
  // the tables the XSDT lists (the DSDT is reached through the FADT)
  const listed = ['FACP', 'APIC', 'MCFG', ...(viotTable ? ['VIOT'] : [])];
  const order = ['RSDP', 'XSDT', 'FACP', 'DSDT', 'APIC', 'MCFG', ...(viotTable ? ['VIOT'] : [])];
  const sizes: Record<string, number> = { RSDP: 36, XSDT: 36 + 8 * listed.length, FACP: 276, DSDT: dsdt.length, APIC: madt.length, MCFG: mcfg.length, VIOT: viotTable?.length ?? 0 };
  const addr: Record<string, number> = {};
  let cursor = base;
  for (const name of order) {
    addr[name] = cursor;
    cursor = align16(cursor + sizes[name]);
  }
  const built: Record<string, Uint8Array> = {
    RSDP: buildRsdp(addr.XSDT),
    XSDT: buildXsdt(listed.map((n) => addr[n])),
    FACP: buildFadt(addr.DSDT),
    DSDT: dsdt,
    APIC: madt,
    MCFG: mcfg,
    ...(viotTable ? { VIOT: viotTable } : {}),
  };
  const bytes = new Uint8Array(cursor - base);
  const tables: AcpiImage['tables'] = {};
  for (const name of order) {
    bytes.set(built[name], addr[name] - base);
    tables[name] = { addr: addr[name], bytes: built[name] };
  }
  return { bytes, rsdpAddr: addr.RSDP, tables };
}
