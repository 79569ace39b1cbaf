// PCI: configuration space of one function (BAR sizing, command register, capability list) and the
// host bridge that reaches it through configuration mechanism #1 (ports 0xCF8/0xCFC).
import type { BusDevice } from '../bus.js';
import { Fields, StateError, type StateValue } from '../../state/fields.js';

export const PCI_CONFIG_ADDRESS = 0xcf8;
export const PCI_CMD_IO = 0x1;
export const PCI_CMD_MEM = 0x2;
export const PCI_CMD_MASTER = 0x4;
export const PCI_CMD_INTX_DISABLE = 0x400;
const PCI_STATUS_CAP_LIST = 0x10;
const PCI_STATUS_INTERRUPT = 0x08;
const BAR0 = 0x10;

export interface BarSpec {
  /** power of two, at least 16 bytes (MMIO) */
  size: number;
  is64: boolean;
  prefetchable?: boolean;
  /** called whenever the guest-visible address changes or decoding is switched (undefined = not decoded) */
  onMap?: (addr: number | undefined) => void;
}

export interface PciIds {
  vendor: number;
  device: number;
  classCode: number; // (class << 16) | (subclass << 8) | prog-if
  revision?: number;
  subsystemVendor?: number;
  subsystem?: number;
  interruptPin?: number;
}

/** Type-0 configuration space: 256 bytes with a write mask deciding which bits the guest may change. */
export class PciConfigSpace {
  readonly bytes = new Uint8Array(256);
  private readonly wmask = new Uint8Array(256);
  private readonly view = new DataView(this.bytes.buffer);
  private readonly bars: Array<BarSpec | undefined> = new Array(6);
  private nextCap = 0x40;
  private lastCap = 0;

  constructor(ids: PciIds) {
    const v = this.view;
    v.setUint16(0x00, ids.vendor, true);
    v.setUint16(0x02, ids.device, true);
    v.setUint8(0x08, ids.revision ?? 0);
    v.setUint8(0x09, ids.classCode & 0xff);
    v.setUint16(0x0a, ids.classCode >>> 8, true);
    v.setUint16(0x2c, ids.subsystemVendor ?? 0, true);
    v.setUint16(0x2e, ids.subsystem ?? 0, true);
    v.setUint8(0x3d, ids.interruptPin ?? 0);
    // command: I/O, memory, bus master, INTx disable are writable; interrupt line is scratch
    this.setMask(0x04, 2, PCI_CMD_IO | PCI_CMD_MEM | PCI_CMD_MASTER | PCI_CMD_INTX_DISABLE);
    this.setMask(0x0c, 1, 0xff);
    this.setMask(0x3c, 1, 0xff);
  }

  private setMask(off: number, len: number, mask: number): void {
    for (let i = 0; i < len; i++) this.wmask[off + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** Declare a memory BAR (a 64-bit BAR takes two slots). */
  addBar(index: number, spec: BarSpec): void {
    if (spec.size < 16 || (spec.size & (spec.size - 1)) !== 0) throw new Error('BAR size must be a power of two >= 16');
    if (index < 0 || index > (spec.is64 ? 4 : 5) || this.bars[index]) throw new Error(`BAR ${index} unavailable`);
    this.bars[index] = spec;
    const flags = (spec.is64 ? 0x4 : 0) | (spec.prefetchable ? 0x8 : 0);
    this.view.setUint32(BAR0 + index * 4, flags, true);
    // size-aligned address bits are writable; the low 4 flag bits are not
    const lowMask = spec.size >= 2 ** 32 ? 0 : ~(spec.size - 1) & 0xfffffff0;
    this.setMask(BAR0 + index * 4, 4, lowMask >>> 0);
    if (spec.is64) {
      const highMask = spec.size > 2 ** 32 ? ~(spec.size / 2 ** 32 - 1) >>> 0 : 0xffffffff;
      this.setMask(BAR0 + (index + 1) * 4, 4, highMask);
    }
  }

  /** Firmware's job, done by the VMM: give a BAR its address (decoding follows the command register). */
  assignBar(index: number, addr: number): void {
    const bar = this.bars[index];
    if (!bar) throw new Error(`no BAR ${index}`);
    const flags = this.view.getUint32(BAR0 + index * 4, true) & 0xf;
    this.view.setUint32(BAR0 + index * 4, ((addr % 2 ** 32) | flags) >>> 0, true);
    if (bar.is64) this.view.setUint32(BAR0 + (index + 1) * 4, Math.floor(addr / 2 ** 32), true);
    this.remap();
  }

  barAddress(index: number): number {
    const bar = this.bars[index];
    if (!bar) return 0;
    const lo = this.view.getUint32(BAR0 + index * 4, true) & 0xfffffff0;
    const hi = bar.is64 ? this.view.getUint32(BAR0 + (index + 1) * 4, true) : 0;
    return hi * 2 ** 32 + (lo >>> 0);
  }

  get command(): number {
    return this.view.getUint16(0x04, true);
  }

  set command(v: number) {
    this.view.setUint16(0x04, v, true);
    this.remap();
  }

  /**
   * Append a capability: `body` starts after the ID/next bytes; `writable` is a byte mask over the
   * whole capability (ID and next included). Returns its offset.
   */
  addCapability(id: number, body: Uint8Array, writable?: Uint8Array): number {
    const off = this.nextCap;
    const len = 2 + body.length;
    if (off + len > 256) throw new Error('PCI capability space exhausted');
    this.bytes[off] = id;
    this.bytes[off + 1] = 0;
    this.bytes.set(body, off + 2);
    if (writable) this.wmask.set(writable.subarray(0, len), off);
    if (this.lastCap) this.bytes[this.lastCap + 1] = off;
    else this.bytes[0x34] = off;
    this.view.setUint16(0x06, this.view.getUint16(0x06, true) | PCI_STATUS_CAP_LIST, true);
    this.lastCap = off;
    this.nextCap = (off + len + 3) & ~3;
    return off;
  }

  private mapped: Array<number | undefined> = new Array(6);

  private remap(): void {
    const memOn = (this.command & PCI_CMD_MEM) !== 0;
    this.bars.forEach((bar, i) => {
      if (!bar) return;
      const addr = this.barAddress(i);
      // an address of 0, or one still holding the sizing pattern, is not decoded
      const valid = memOn && addr !== 0 && addr + bar.size <= (bar.is64 ? 2 ** 52 : 2 ** 32) && addr % bar.size === 0;
      const want = valid ? addr : undefined;
      if (want !== this.mapped[i]) {
        this.mapped[i] = want;
        bar.onMap?.(want);
      }
    });
  }

  read(offset: number, size: number): number {
    if (offset + size > 256) return 0xffffffff;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (offset + i === 0x06 && this.interruptStatus?.() ? this.bytes[0x06] | PCI_STATUS_INTERRUPT : this.bytes[offset + i]);
    return v >>> 0;
  }

  /** The status register's Interrupt Status bit: whether the function asserts INTx now (read, never stored). */
  interruptStatus?: () => boolean;

  /** Guest write: only the bits the write mask allows change. Hook: onWrite for capability side effects. */
  write(offset: number, size: number, value: number): void {
    if (offset + size > 256) return;
    let touchedBar = false;
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      const b = (value >>> (8 * i)) & 0xff;
      this.bytes[o] = (this.bytes[o] & ~this.wmask[o]) | (b & this.wmask[o]);
      if (o >= BAR0 && o < BAR0 + 24) touchedBar = true;
    }
    if (touchedBar || (offset <= 0x04 && offset + size > 0x04)) this.remap();
    this.onWrite?.(offset, size);
  }

  onWrite?: (offset: number, size: number) => void;

  /** The 256 bytes: what the guest wrote (BAR addresses, command, capability controls) and what it cannot change. */
  saveState(): Uint8Array {
    return this.bytes.slice();
  }

  /**
   * Take a saved configuration space: the bits the guest cannot write must be this function's own
   * (another device, or a corrupted document, is refused); BARs are decoded again where they say.
   */
  restoreState(saved: Uint8Array, path: string): void {
    if (saved.length !== 256) throw new StateError(`${path}: ${saved.length} bytes, expected 256`);
    for (let o = 0; o < 256; o++) {
      if ((saved[o] ^ this.bytes[o]) & ~this.wmask[o] & 0xff)
        throw new StateError(`${path}: read-only byte 0x${o.toString(16)} is 0x${saved[o].toString(16)}, this device has 0x${this.bytes[o].toString(16)}`);
    }
    this.bytes.set(saved);
    this.remap();
  }
}

export interface PciDevice {
  readonly config: PciConfigSpace;
  quiesce?(): Promise<void>;
  unquiesce?(): Promise<void>;
  /** what a function keeps beyond its configuration space (a virtio transport: its registers and device) */
  saveState?(): StateValue;
  /** resolves once the function runs again (a live virtio device: its threads started) */
  restoreState?(state: Fields): void | Promise<void>;
}

/** Host bridge at 00:00.0 plus configuration mechanism #1; byte accesses to 0xCF9 go to `resetControl`. */
export class PciHost implements BusDevice {
  private address = 0;
  private readonly slots: Array<PciDevice | undefined> = new Array(32);

  constructor(private readonly resetControl?: BusDevice) {
    const bridge = new PciConfigSpace({ vendor: 0x1b36, device: 0x0008, classCode: 0x060000 });
    bridge.command = PCI_CMD_MEM | PCI_CMD_IO;
    this.slots[0] = { config: bridge };
  }

  /** The slot add() would use next. */
  freeSlot(): number {
    const s = this.slots.findIndex((d, i) => i > 0 && !d);
    if (s <= 0) throw new Error('no free PCI slot');
    return s;
  }

  /** Plug a device into the first free slot (or `slot`); returns the slot number. */
  add(dev: PciDevice, slot?: number): number {
    const s = slot ?? this.slots.findIndex((d, i) => i > 0 && !d);
    if (s <= 0 || s >= 32 || this.slots[s]) throw new Error('no free PCI slot');
    this.slots[s] = dev;
    return s;
  }

  /** Quiesce every function (before saveState). */
  async quiesce(): Promise<void> {
    await Promise.all(this.slots.map((d) => d?.quiesce?.()));
  }

  async unquiesce(): Promise<void> {
    await Promise.all(this.slots.map((d) => d?.unquiesce?.()));
  }

  /**
   * The bridge's address latch, the reset register, and each occupied slot's configuration space and
   * the state of the function there.
   */
  saveState(): StateValue {
    const slots: StateValue[] = [];
    this.slots.forEach((d, slot) => {
      if (d) slots.push({ slot, config: d.config.saveState(), device: d.saveState?.() ?? null });
    });
    const reset = this.resetControl?.saveState?.() ?? null;
    return { address: this.address, reset, slots };
  }

  /**
   * The slots must hold the same functions (the configuration spaces' read-only bits say which).
   * They are restored in slot order: the vIOMMU, plugged before the devices behind it, has its table
   * full before their rings are translated. Resolves once every function runs again.
   */
  restoreState(f: Fields): Promise<void> {
    const address = f.uint('address', 0xffffffff);
    const occupied = this.slots.flatMap((d, i) => (d ? [i] : []));
    const saved = f.list('slots', 32, (v, path) => new Fields(v, path));
    const savedSlots = saved.map((s) => s.uint('slot', 31));
    if (savedSlots.join() !== occupied.join()) throw new StateError(`${f.path}.slots: PCI slots ${savedSlots.join(',') || 'none'} saved, this machine has ${occupied.join(',')}`);
    const running: Array<void | Promise<void>> = [];
    saved.forEach((s, i) => {
      const d = this.slots[savedSlots[i]]!;
      d.config.restoreState(s.bytes('config', 256), `${s.path}.config`);
      const dev = s.any('device');
      if ((dev === null) !== !d.restoreState) throw new StateError(`${s.path}.device: ${dev === null ? 'missing' : 'unexpected'}`);
      if (dev !== null) running.push(d.restoreState!(s.obj('device')));
      s.done();
    });
    const reset = f.optional('reset', (r) => r);
    if (reset && this.resetControl?.restoreState) this.resetControl.restoreState(reset);
    else if (reset || this.resetControl?.restoreState) throw new StateError(`${f.path}.reset: ${reset ? 'unexpected' : 'missing'}`);
    f.done();
    this.address = address;
    return Promise.all(running).then(() => undefined);
  }

  /** The configuration space of slot `dev` on bus 0, if a device is there. */
  configOf(dev: number): PciConfigSpace | undefined {
    return this.slots[dev]?.config;
  }

  private target(): PciConfigSpace | undefined {
    if (!(this.address & 0x80000000)) return undefined;
    const bus = (this.address >>> 16) & 0xff;
    const dev = (this.address >>> 11) & 0x1f;
    const fn = (this.address >>> 8) & 0x7;
    if (bus !== 0 || fn !== 0) return undefined;
    return this.slots[dev]?.config;
  }

  read(offset: number, size: number): number {
    if (offset < 4) {
      if (offset === 1 && size === 1 && this.resetControl) return this.resetControl.read(0, 1);
      return offset === 0 && size === 4 ? this.address >>> 0 : 0xffffffff;
    }
    const cfg = this.target();
    if (!cfg) return 0xffffffff;
    return cfg.read((this.address & 0xfc) + (offset - 4), size);
  }

  write(offset: number, size: number, value: number): void {
    if (offset < 4) {
      if (offset === 1 && size === 1) this.resetControl?.write(0, 1, value);
      else if (offset === 0 && size === 4) this.address = value >>> 0;
      return;
    }
    this.target()?.write((this.address & 0xfc) + (offset - 4), size, value);
  }
}

/**
 * PCI Express enhanced configuration access (ECAM, described by MCFG): the same configuration spaces
 * as mechanism #1, memory-mapped, 4 KiB per function (bus 0 only; only function 0 exists).
 */
export class PciEcam implements BusDevice {
  constructor(private readonly host: PciHost) {}

  private space(offset: number): PciConfigSpace | undefined {
    const dev = (offset >>> 15) & 0x1f;
    const fn = (offset >>> 12) & 0x7;
    return fn === 0 ? this.host.configOf(dev) : undefined;
  }

  read(offset: number, size: number): number {
    const cfg = this.space(offset);
    // (no function there: all ones; past the 256 bytes a conventional function has: the same)
    return cfg ? cfg.read(offset & 0xfff, size) : size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
  }

  write(offset: number, size: number, value: number): void {
    this.space(offset)?.write(offset & 0xfff, size, value);
  }
}
