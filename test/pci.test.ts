// PCI configuration mechanism #1, BAR sizing and decoding, capabilities.
import { describe, it, expect } from 'vitest';
import { PciHost, PciConfigSpace, PCI_CMD_MEM } from '../src/vmm/devices/pci.js';

const addr = (dev: number, reg: number) => (0x80000000 | (dev << 11) | reg) >>> 0;

function cfgRead(h: PciHost, dev: number, reg: number, size = 4) {
  h.write(0, 4, addr(dev, reg & 0xfc));
  return h.read(4 + (reg & 3), size);
}
function cfgWrite(h: PciHost, dev: number, reg: number, v: number, size = 4) {
  h.write(0, 4, addr(dev, reg & 0xfc));
  h.write(4 + (reg & 3), size, v);
}

describe('PCI host bridge', () => {
  it('answers for the host bridge at 00:00.0 and floats empty slots', () => {
    const h = new PciHost();
    expect(cfgRead(h, 0, 0)).toBe(0x00081b36);
    expect(cfgRead(h, 0, 8) >>> 8).toBe(0x060000);
    expect(cfgRead(h, 5, 0)).toBe(0xffffffff);
    h.write(0, 4, 0x12345678 & 0x7fffffff); // enable bit clear: no target
    expect(h.read(4, 4)).toBe(0xffffffff);
    h.write(0, 4, 0x80000000);
    expect(h.read(0, 4)).toBe(0x80000000);
  });
  it('sizes, assigns and decodes a 64-bit memory BAR', () => {
    const h = new PciHost();
    const maps: Array<number | undefined> = [];
    const cfg = new PciConfigSpace({ vendor: 0x1af4, device: 0x1041, classCode: 0x020000 });
    cfg.addBar(0, { size: 0x4000, is64: true, onMap: (a) => maps.push(a) });
    const slot = h.add({ config: cfg });
    expect(cfgRead(h, slot, 0)).toBe(0x10411af4);
    // sizing: write all ones, read back the mask
    cfgWrite(h, slot, 0x10, 0xffffffff);
    cfgWrite(h, slot, 0x14, 0xffffffff);
    expect(cfgRead(h, slot, 0x10)).toBe(0xffffc004);
    expect(cfgRead(h, slot, 0x14)).toBe(0xffffffff);
    expect(maps).toEqual([]); // memory decoding still off
    cfgWrite(h, slot, 0x10, 0xc0000000);
    cfgWrite(h, slot, 0x14, 0x1);
    cfgWrite(h, slot, 0x04, PCI_CMD_MEM, 2);
    expect(maps).toEqual([0x1c0000000]);
    cfgWrite(h, slot, 0x04, 0, 2);
    expect(maps).toEqual([0x1c0000000, undefined]);
  });
  it('keeps read-only fields read-only', () => {
    const h = new PciHost();
    const cfg = new PciConfigSpace({ vendor: 0x1af4, device: 0x1041, classCode: 0x020000, interruptPin: 1 });
    const slot = h.add({ config: cfg });
    cfgWrite(h, slot, 0, 0xdeadbeef);
    expect(cfgRead(h, slot, 0)).toBe(0x10411af4);
    cfgWrite(h, slot, 0x3c, 0xffff, 2);
    expect(cfgRead(h, slot, 0x3c, 2)).toBe(0x01ff); // line writable, pin not
  });
  it('chains capabilities from 0x34 and flags them in the status register', () => {
    const cfg = new PciConfigSpace({ vendor: 1, device: 2, classCode: 0 });
    const a = cfg.addCapability(0x11, new Uint8Array(10));
    const b = cfg.addCapability(0x09, new Uint8Array(14));
    expect(cfg.read(0x34, 1)).toBe(a);
    expect(cfg.read(a + 1, 1)).toBe(b);
    expect(cfg.read(b + 1, 1)).toBe(0);
    expect(cfg.read(0x06, 2) & 0x10).toBe(0x10);
  });
  it('passes byte writes at 0xCF9 to the reset control register', () => {
    const seen: number[] = [];
    const h = new PciHost({ read: () => 0, write: (_o, _s, v) => seen.push(v) });
    h.write(1, 1, 0x06);
    expect(seen).toEqual([6]);
  });
});

describe('PCI ECAM (MCFG)', () => {
  it('maps each slot\'s configuration space at bus 0, 32 KiB per device, 4 KiB per function', async () => {
    const { PciHost, PciEcam, PciConfigSpace } = await import('../src/vmm/devices/pci.js');
    const host = new PciHost();
    const dev = { config: new PciConfigSpace({ vendor: 0x1af4, device: 0x1041, classCode: 0x020000 }) };
    const slot = host.add(dev);
    const ecam = new PciEcam(host);
    expect(ecam.read(slot << 15, 4)).toBe(0x10411af4);
    expect(ecam.read(0, 2)).toBe(0x1b36); // the host bridge at 00:00.0
    expect(ecam.read((slot << 15) | (1 << 12), 4)).toBe(0xffffffff); // function 1: nothing there
    expect(ecam.read(9 << 15, 2)).toBe(0xffff); // an empty slot
    ecam.write((slot << 15) + 4, 2, 0x6);
    expect(host.configOf(slot)!.read(4, 2) & 0x6).toBe(0x6); // the same space as mechanism #1's
  });
});
