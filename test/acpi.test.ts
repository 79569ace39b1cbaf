// ACPI tables: our own checks of the bytes, then a third-party decoder (iasl -d from acpica-tools).
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAcpi, ACPI_GED_PORT, ACPI_GED_GSI, pciIntxGsi, type AcpiImage } from '../src/boot/acpi.js';
import * as aml from '../src/boot/aml.js';
import { ROOT } from './helpers/env.js';

const sum = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);

describe('ACPI tables', () => {
  // with a virtio-iommu at 00:01.0 translating for 00:02.0 and 00:03.0
  const acpi: AcpiImage = buildAcpi(0xe0000, 4, 4, { iommuBdf: 0x08, endpoints: [0x10, 0x18] });

  it('links RSDP → XSDT → FADT/MADT and FADT → DSDT at the addresses they were placed', () => {
    const rsdp = new DataView(acpi.tables.RSDP.bytes.buffer);
    expect(sum(acpi.tables.RSDP.bytes.subarray(0, 20))).toBe(0);
    expect(sum(acpi.tables.RSDP.bytes)).toBe(0);
    expect(Number(rsdp.getBigUint64(24, true))).toBe(acpi.tables.XSDT.addr);
    const xsdt = new DataView(acpi.tables.XSDT.bytes.buffer);
    expect([36, 44, 52, 60].map((o) => Number(xsdt.getBigUint64(o, true)))).toEqual([acpi.tables.FACP.addr, acpi.tables.APIC.addr, acpi.tables.MCFG.addr, acpi.tables.VIOT.addr]);
    const fadt = new DataView(acpi.tables.FACP.bytes.buffer);
    expect(Number(fadt.getBigUint64(140, true))).toBe(acpi.tables.DSDT.addr);
    for (const t of ['XSDT', 'FACP', 'DSDT', 'APIC', 'MCFG', 'VIOT']) expect(sum(acpi.tables[t].bytes)).toBe(0);
    for (const t of Object.values(acpi.tables)) expect(acpi.bytes.subarray(t.addr - 0xe0000, t.addr - 0xe0000 + t.bytes.length)).toEqual(t.bytes);
  });

  it('VIOT: a virtio-pci IOMMU node and a PCI range node per translated function, pointing at it', () => {
    // (our own reading of ACPI 6.4 §5.2.32 / Linux's actbl3.h; iasl's below is the independent one)
    const v = new DataView(acpi.tables.VIOT.bytes.buffer);
    expect([v.getUint16(36, true), v.getUint16(38, true)]).toEqual([3, 48]); // node count, first node
    expect([v.getUint8(48), v.getUint16(50, true), v.getUint16(52, true), v.getUint16(54, true)]).toEqual([3, 16, 0, 0x08]);
    for (const [i, bdf] of [0x10, 0x18].entries()) {
      const o = 64 + 24 * i;
      expect([v.getUint8(o), v.getUint16(o + 2, true), v.getUint32(o + 4, true), v.getUint16(o + 8, true), v.getUint16(o + 10, true), v.getUint16(o + 12, true), v.getUint16(o + 14, true), v.getUint16(o + 16, true)])
        .toEqual([1, 24, bdf, 0, 0, bdf, bdf, 48]);
    }
    expect(acpi.tables.VIOT.bytes.length).toBe(64 + 2 * 24);
    // without an IOMMU there is no VIOT
    expect(buildAcpi(0xe0000, 1, 1).tables.VIOT).toBeUndefined();
  });

  it('DSDT: the GED and the power button, byte for byte (our reading of ACPI 6.x §20 and §6.4.3.6)', () => {
    const ascii = (t: string) => [...t].map((c) => c.charCodeAt(0));
    // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {16}: large item 0x89, length 6, flags, count
    expect(aml.edgeInterrupt(16)).toEqual([0x89, 6, 0, 0x03, 1, 16, 0, 0, 0]);
    // Interrupt(ResourceConsumer, Level, ActiveHigh, Shared) {17}: flags consumer | shared
    expect(aml.interrupt(17, { level: true, shared: true })).toEqual([0x89, 6, 0, 0x09, 1, 17, 0, 0, 0]);
    expect(aml.string('ACPI0013')).toEqual([0x0d, ...ascii('ACPI0013'), 0]);
    // OperationRegion(GDST, SystemIO, 0x604, 1); Field(GDST, ByteAcc, NoLock, Preserve) { GDAT, 8 }
    expect(aml.ioRegion('GDST', 0x604, 1)).toEqual([0x5b, 0x80, ...ascii('GDST'), 0x01, 0x0b, 0x04, 0x06, 0x01]);
    expect(aml.byteField('GDST', [['GDAT', 8]])).toEqual([0x5b, 0x81, 11, ...ascii('GDST'), 0x01, ...ascii('GDAT'), 8]);
    // Method(_EVT, 1, Serialized) { Store(GDAT, Local0); If (And(Local0, 1)) { Notify(\_SB.PWRB, 0x80) } }
    const notify = [0x86, 0x5c, 0x2e, ...ascii('_SB_PWRB'), 0x0a, 0x80];
    const ifPart = [0xa0, 1 + 4 + notify.length, 0x7b, 0x60, 0x01, 0x00, ...notify];
    const body = [0x70, ...ascii('GDAT'), 0x60, ...ifPart];
    expect(aml.method('_EVT', 1, true, aml.store(aml.ref('GDAT'), aml.LOCAL0).concat(aml.ifThen(aml.and(aml.LOCAL0, aml.integer(1)), aml.notify('\\_SB_.PWRB', 0x80)))))
      .toEqual([0x14, 1 + 4 + 1 + body.length, ...ascii('_EVT'), 0x09, ...body]);
    // all of it inside the DSDT, under \_SB
    const dsdt = [...acpi.tables.DSDT.bytes];
    const has = (seq: number[]) => dsdt.some((_, i) => seq.every((b, j) => dsdt[i + j] === b));
    expect(has([0x5b, 0x82])).toBe(true);
    expect(has(aml.edgeInterrupt(ACPI_GED_GSI))).toBe(true);
    expect(has(aml.ioRegion('GDST', ACPI_GED_PORT, 1))).toBe(true);
    expect(has([0x14, 1 + 4 + 1 + body.length, ...ascii('_EVT'), 0x09, ...body])).toBe(true);
    expect(has(aml.name('_HID', aml.eisaId('PNP0C0C')))).toBe(true);
    expect(() => aml.byteField('GDST', [['GDAT', 64]])).toThrow(/field width/);
    expect(() => aml.method('_EVT', 8, true, [])).toThrow(/argument count/);
  });

  // Debian 13's iasl (scripts/fetch-iasl.sh, run by `npm run pretest`): Debian 12's (20200925) predates
  // VIOT (ACPICA 20210604) and would check that table's header and checksum only
  describe('decoded by iasl -d (Debian 13\'s acpica-tools)', () => {
    let dir: string;
    const dsl: Record<string, string> = {};
    const iasl = join(ROOT, '.cache', 'acpica', 'iasl');
    beforeAll(() => {
      if (!existsSync(iasl)) throw new Error(`${iasl} not found: run scripts/fetch-iasl.sh (npm run pretest does)`);
      dir = mkdtempSync(join(tmpdir(), 'tsvmm-acpi-'));
      // the RSDP is a pointer structure, not a table: iasl decodes tables only (checked above instead)
      for (const [name, t] of Object.entries(acpi.tables).filter(([n]) => n !== 'RSDP')) {
        const f = join(dir, `${name.toLowerCase()}.dat`);
        writeFileSync(f, t.bytes);
        execFileSync(iasl, ['-d', f], { cwd: dir, stdio: 'pipe' });
        dsl[name] = readFileSync(join(dir, `${name.toLowerCase()}.dsl`), 'utf8');
      }
      rmSync(dir, { recursive: true });
    });

    it('finds no checksum or structure complaints', () => {
      for (const text of Object.values(dsl)) expect(text).not.toMatch(/Incorrect checksum|Invalid|ERROR|Warning/i);
    });
    it('MADT: one enabled local APIC per vCPU, the IOAPIC, LINT1 NMI', () => {
      const m = dsl.APIC;
      expect(m.match(/Subtable Type : 00 \[Processor Local APIC\]/g)).toHaveLength(4);
      expect(m).toMatch(/Local Apic Address : FEE00000/);
      expect(m).toMatch(/Subtable Type : 01 \[I\/O APIC\][\s\S]*I\/O Apic ID : 04[\s\S]*Address : FEC00000/);
      expect(m).toMatch(/Interrupt Input LINT : 01/);
      expect(m.match(/Processor Enabled : 1/g)).toHaveLength(4);
    });
    it('FADT: hardware-reduced, reset register 0xCF9 ← 6, sleep control/status registers', () => {
      const f = dsl.FACP;
      expect(f).toMatch(/Hardware Reduced \(V5\) : 1/);
      expect(f).toMatch(/Reset Register Supported \(V2\) : 1/);
      expect(f).toMatch(/Reset Register :[\s\S]*?Address : 0000000000000CF9/);
      expect(f).toMatch(/Value to cause reset : 06/);
      expect(f).toMatch(/Sleep Control Register :[\s\S]*?Address : 0000000000000600/);
      expect(f).toMatch(/Sleep Status Register :[\s\S]*?Address : 0000000000000601/);
    });
    it('DSDT: \\_S5 with SLP_TYP 5', () => {
      expect(dsl.DSDT).toMatch(/Name \(_S5, Package \(0x04\)[\s\S]*0x05,/);
    });
    it('DSDT: the GED (ACPI0013) on GSI 16, edge, whose _EVT reads port 0x604 and notifies the power button (PNP0C0C)', () => {
      const d = dsl.DSDT;
      expect(d).toMatch(/Device \(GED\)\s*\{\s*Name \(_HID, "ACPI0013"[\s\S]*?Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000010,\s*\}/);
      expect(d).toMatch(/OperationRegion \(GDST, SystemIO, 0x0604, One\)\s*Field \(GDST, ByteAcc, NoLock, Preserve\)\s*\{\s*GDAT,\s+8\s*\}/);
      expect(d).toMatch(/Method \(_EVT, 1, Serialized\)[^{]*\{\s*Local0 = GDAT[^\n]*\s*If \(\(Local0 & One\)\)\s*\{\s*Notify \(\\_SB\.PWRB, 0x80\)/);
      expect(d).toMatch(/Device \(PWRB\)\s*\{\s*Name \(_HID, EisaId \("PNP0C0C"\)/);
    });
    it('DSDT: COM1 at 0x3F8 with IRQ 4', () => {
      expect(dsl.DSDT).toMatch(/Device \(COM1\)[\s\S]*EisaId \("PNP0501"\)[\s\S]*IO \(Decode16,[\s\S]*?0x03F8,[\s\S]*?0x03F8,[\s\S]*?IRQNoFlags \(\)\s*\{4\}/);
    });
    it('FADT: no CMOS RTC, no VGA', () => {
      expect(dsl.FACP).toMatch(/CMOS RTC Not Present \(V5\) : 1/);
      expect(dsl.FACP).toMatch(/VGA Not Present \(V4\) : 1/);
    });
    it('DSDT: the PCI host bridge with its bus, I/O and memory windows', () => {
      const d = dsl.DSDT;
      // (after the INTx link devices its _PRT names)
      expect(d).toMatch(/Scope \(\\_SB\)\s*\{\s*Device \(LK17\)[\s\S]*?\n        \}\s*Device \(LK18\)[\s\S]*Device \(LK23\)[\s\S]*?\n        \}\s*Device \(PCI0\)/);
      expect(d).toMatch(/Name \(_HID, EisaId \("PNP0A03"\)/);
      expect(d).toMatch(/WordBusNumber \(ResourceProducer, MinFixed, MaxFixed, PosDecode,[\s\S]*?0x0000,[\s\S]*?0x0000,[\s\S]*?0x0000,[\s\S]*?0x0000,[\s\S]*?0x0001,/);
      expect(d).toMatch(/IO \(Decode16,[\s\S]*?0x0CF8,[\s\S]*?0x0CF8,[\s\S]*?0x01,[\s\S]*?0x08,/);
      expect(d).toMatch(/WordIO \(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,[\s\S]*?0x0D00,[\s\S]*?0xFFFF,[\s\S]*?0xF300,/);
      expect(d).toMatch(/DWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,[\s\S]*?0xC0000000,[\s\S]*?0xDFFFFFFF,[\s\S]*?0x20000000,/);
    });
    it('DSDT: a PCI interrupt link (PNP0C0F) per INTx GSI 17-23, level, active high, shared, each fixed to its GSI', () => {
      const d = dsl.DSDT;
      for (let gsi = 17; gsi <= 23; gsi++) {
        const hex = gsi.toString(16).toUpperCase().padStart(8, '0');
        const irq = `Interrupt \\(ResourceConsumer, Level, ActiveHigh, Shared, ,, \\)\\s*\\{\\s*0x${hex},\\s*\\}`;
        expect(d).toMatch(new RegExp(`Device \\(LK${gsi}\\)\\s*\\{\\s*Name \\(_HID, EisaId \\("PNP0C0F"\\)[^\\n]*\\s*Name \\(_UID, 0x${gsi.toString(16).toUpperCase()}\\)[^\\n]*\\s*Name \\(_PRS, ResourceTemplate \\(\\)[^\\n]*\\s*\\{\\s*${irq}\\s*\\}\\)\\s*Name \\(_CRS, ResourceTemplate \\(\\)[^\\n]*\\s*\\{\\s*${irq}\\s*\\}\\)\\s*Method \\(_SRS, 1, NotSerialized\\)`));
      }
    });
    it('DSDT: the host bridge\'s _PRT routes INTA of slots 1-31 to the link of pciIntxGsi(slot)', () => {
      const prt = dsl.DSDT.slice(dsl.DSDT.indexOf('Name (_PRT, Package (0x1F)'));
      const entries = [...prt.matchAll(/Package \(0x04\)\s*\{\s*(0x[0-9A-F]+),\s*Zero,\s*\\_SB\.(LK\d\d),\s*Zero\s*\}/g)].map((m) => [Number(m[1]), m[2]]);
      expect(entries).toEqual(Array.from({ length: 31 }, (_, i) => [((i + 1) << 16) | 0xffff, `LK${pciIntxGsi(i + 1)}`]));
      expect([1, 2, 7, 8, 31].map(pciIntxGsi)).toEqual([17, 18, 23, 17, 19]);
      expect(() => pciIntxGsi(0)).toThrow();
      expect(() => pciIntxGsi(32)).toThrow();
    });
    it('MCFG: ECAM for segment 0, bus 0 at 0xE0000000', () => {
      expect(dsl.MCFG).toMatch(/Base Address : 00000000E0000000/);
      expect(dsl.MCFG).toMatch(/Segment Group Number : 0000/);
      expect(dsl.MCFG).toMatch(/Start Bus Number : 00/);
      expect(dsl.MCFG).toMatch(/End Bus Number : 00/);
    });
    it('VIOT: the virtio-pci IOMMU node at 00:01.0 and a PCI range node per translated function, each naming it', () => {
      const v = dsl.VIOT;
      expect(v).toMatch(/Signature : "VIOT"/);
      expect(v).toMatch(/Node count : 0003/);
      expect(v).toMatch(/Node offset : 0030/);
      expect(v).toMatch(/\[030h 0048 001h\]\s+Type : 03 \[VirtIO-PCI IOMMU\][\s\S]*?PCI Segment : 0000\s[\s\S]*?PCI BDF number : 0008/);
      const ranges = [...v.matchAll(/Type : 01 \[PCI Range\][\s\S]*?Endpoint start : (\w+)[\s\S]*?PCI BDF start : (\w+)[\s\S]*?PCI BDF end : (\w+)[\s\S]*?Output node : (\w+)/g)];
      expect(ranges.map((m) => m.slice(1))).toEqual([['00000010', '0010', '0010', '0030'], ['00000018', '0018', '0018', '0030']]);
    });
    it('XSDT decodes with its pointers', () => {
      expect(dsl.XSDT).toContain(`ACPI Table Address   0 : ${acpi.tables.FACP.addr.toString(16).toUpperCase().padStart(16, '0')}`);
      expect(dsl.XSDT).toContain(`ACPI Table Address   3 : ${acpi.tables.VIOT.addr.toString(16).toUpperCase().padStart(16, '0')}`);
    });
  });
});
