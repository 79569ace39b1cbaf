// Address-range dispatch for port I/O and MMIO exits. The VMM core knows devices only through this.
import type { Fields, StateValue } from '../state/fields.js';

export interface BusDevice {
  /** `size` is 1, 2 or 4 bytes; returns the value read (unsigned). */
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
  /** Stop its own threads touching guest memory (their positions kept) before saveState; unquiesce goes on. */
  quiesce?(): Promise<void>;
  unquiesce?(): Promise<void>;
  /** A device with state of its own saves it here (src/vmm/state/): the device must be quiescent. */
  saveState?(): StateValue;
  /** ...and takes it back into a freshly built device (StateError on a field that is wrong); resolves once it runs. */
  restoreState?(state: Fields): void | Promise<void>;
}

interface Range {
  base: number;
  len: number;
  dev: BusDevice;
  name: string;
}

export class Bus {
  private ranges: Range[] = [];
  /** accesses that hit no device (a guest probing, or a bug): visible in stats */
  unclaimed = 0;

  constructor(readonly name: string) {}

  register(base: number, len: number, dev: BusDevice, name: string): void {
    if (len <= 0) throw new Error(`${this.name}: empty range for ${name}`);
    for (const r of this.ranges) {
      if (base < r.base + r.len && r.base < base + len)
        throw new Error(`${this.name}: ${name} at 0x${base.toString(16)} overlaps ${r.name} at 0x${r.base.toString(16)}`);
    }
    this.ranges.push({ base, len, dev, name });
    this.ranges.sort((a, b) => a.base - b.base);
  }

  unregister(dev: BusDevice, base?: number): void {
    this.ranges = this.ranges.filter((r) => !(r.dev === dev && (base === undefined || r.base === base)));
  }

  /** The devices registered, by name, in address order. */
  devices(): Array<{ name: string; base: number; dev: BusDevice }> {
    return this.ranges.map((r) => ({ name: r.name, base: r.base, dev: r.dev }));
  }

  find(addr: number): Range | undefined {
    // binary search over sorted, non-overlapping ranges
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.ranges[mid];
      if (addr < r.base) hi = mid - 1;
      else if (addr >= r.base + r.len) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /** Read `size` bytes (1, 2, 4 or 8) at addr. Unclaimed reads float high like an empty bus. */
  read(addr: number, size: number): bigint {
    if (size === 8) return this.read(addr, 4) | (this.read(addr + 4, 4) << 32n);
    const r = this.find(addr);
    if (!r || addr + size > r.base + r.len) {
      this.unclaimed++;
      return BigInt(2 ** (size * 8) - 1);
    }
    return BigInt(r.dev.read(addr - r.base, size) >>> 0) & ((1n << BigInt(size * 8)) - 1n);
  }

  write(addr: number, size: number, value: bigint): void {
    if (size === 8) {
      this.write(addr, 4, value & 0xffffffffn);
      this.write(addr + 4, 4, value >> 32n);
      return;
    }
    const r = this.find(addr);
    if (!r || addr + size > r.base + r.len) {
      this.unclaimed++;
      return;
    }
    r.dev.write(addr - r.base, size, Number(value & 0xffffffffn));
  }
}
