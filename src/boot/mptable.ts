// Intel MultiProcessor Specification 1.4 tables: how a guest finds its CPUs, local APICs and the IOAPIC
// without ACPI. Linux scans 0xF0000-0xFFFFF for the "_MP_" floating pointer.
import { IOAPIC_ADDR, LAPIC_ADDR } from './layout.js';

const ISA_BUS = 0;
const PCI_BUS = 1;
export const MP_IRQ_COUNT = 16;

function checksum(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xff;
  return (0x100 - s) & 0xff;
}

function ascii(b: Uint8Array, off: number, s: string, len: number): void {
  for (let i = 0; i < len; i++) b[off + i] = i < s.length ? s.charCodeAt(i) : 0x20;
}

/** IOAPIC id: right after the CPUs' APIC ids. */
export function ioapicId(cpus: number): number {
  return cpus;
}

/** Build the floating pointer (at `addr`) followed by the configuration table. */
export function buildMpTable(cpus: number, addr: number): Uint8Array {
  if (cpus < 1 || cpus > 254) throw new Error(`cpus must be 1..254, got ${cpus}`);
  const entries: Uint8Array[] = [];
  for (let id = 0; id < cpus; id++) {
    const e = new Uint8Array(20);
    const v = new DataView(e.buffer);
    e[0] = 0; // processor
    e[1] = id;
    e[2] = 0x14; // local APIC version
    e[3] = 1 | (id === 0 ? 2 : 0); // enabled, BSP
    v.setUint32(4, 0x600, true); // family 6
    v.setUint32(8, 0x201, true); // FPU, APIC
    entries.push(e);
  }
  const bus = (id: number, type: string) => {
    const e = new Uint8Array(8);
    e[0] = 1;
    e[1] = id;
    ascii(e, 2, type, 6);
    return e;
  };
  entries.push(bus(ISA_BUS, 'ISA'), bus(PCI_BUS, 'PCI'));
  const io = new Uint8Array(8);
  io[0] = 2;
  io[1] = ioapicId(cpus);
  io[2] = 0x11;
  io[3] = 1;
  new DataView(io.buffer).setUint32(4, IOAPIC_ADDR, true);
  entries.push(io);
  for (let irq = 0; irq < MP_IRQ_COUNT; irq++) {
    const e = new Uint8Array(8);
    e[0] = 3; // I/O interrupt assignment
    e[1] = 0; // INT
    e[4] = ISA_BUS;
    e[5] = irq;
    e[6] = ioapicId(cpus);
    e[7] = irq; // KVM's default routing wires ISA IRQ n to IOAPIC pin n
    entries.push(e);
  }
  const lint = (type: number, destApic: number, pin: number) => {
    const e = new Uint8Array(8);
    e[0] = 4; // local interrupt assignment
    e[1] = type;
    e[4] = ISA_BUS;
    e[6] = destApic;
    e[7] = pin;
    return e;
  };
  entries.push(lint(3, 0xff, 0), lint(1, 0xff, 1)); // ExtINT → LINT0, NMI → LINT1 on every CPU

  const bodyLen = entries.reduce((s, e) => s + e.length, 0);
  const out = new Uint8Array(16 + 44 + bodyLen);
  const v = new DataView(out.buffer);
  // floating pointer
  ascii(out, 0, '_MP_', 4);
  v.setUint32(4, addr + 16, true);
  out[8] = 1; // length in 16-byte units
  out[9] = 4; // spec 1.4
  out[10] = checksum(out.subarray(0, 16));
  // configuration table header
  const h = 16;
  ascii(out, h, 'PCMP', 4);
  v.setUint16(h + 4, 44 + bodyLen, true);
  out[h + 6] = 4;
  ascii(out, h + 8, 'TSVMM', 8);
  ascii(out, h + 16, 'TSVMM', 12);
  v.setUint16(h + 34, entries.length, true);
  v.setUint32(h + 36, LAPIC_ADDR, true);
  let o = h + 44;
  for (const e of entries) {
    out.set(e, o);
    o += e.length;
  }
  out[h + 7] = checksum(out.subarray(h, h + 44 + bodyLen));
  return out;
}
