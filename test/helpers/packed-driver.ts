// A virtio packed-ring *driver* in plain memory, to drive the device-side queue in unit tests the way a
// guest would (and, writing raw descriptors, the way a hostile one would). Same shape as TestDriver.
import type { QueueConfig } from '../../src/virtio/virtqueue.js';
import type { TestMemory } from './virtq-driver.js';

export const P_NEXT = 1;
export const P_WRITE = 2;
export const P_INDIRECT = 4;
export const P_AVAIL = 1 << 7;
export const P_USED = 1 << 15;

export interface Buf {
  addr: number;
  len: number;
  write?: boolean;
}

export class PackedTestDriver {
  readonly cfg: QueueConfig;
  /** where the driver makes the next descriptor available, and its wrap counter */
  nextAvail = 0;
  availWrap = true;
  /** where the driver expects the next used descriptor */
  nextUsed = 0;
  usedWrap = true;
  private nextId = 0;
  /** ring slots each outstanding buffer id's chain took */
  private readonly slotsOf = new Map<number, number>();
  constructor(readonly mem: TestMemory, readonly size: number, readonly eventIdx = false) {
    this.cfg = { size, desc: mem.alloc(16 * size, 16), avail: mem.alloc(4, 4), used: mem.alloc(4, 4) };
  }
  private o(gpa: number) {
    return gpa - this.mem.base;
  }
  /** Write descriptor `i` of the ring (or of an indirect `table`) raw: any values. */
  writeDesc(i: number, addr: number, len: number, id: number, flags: number, table = this.cfg.desc): void {
    const d = this.o(table) + 16 * i;
    this.mem.dv.setBigUint64(d, BigInt(addr), true);
    this.mem.dv.setUint32(d + 8, len, true);
    this.mem.dv.setUint16(d + 12, id, true);
    this.mem.dv.setUint16(d + 14, flags, true);
  }
  /** AVAIL/USED bits that make a descriptor available under wrap counter `wrap` */
  static availBits(wrap: boolean): number {
    return wrap ? P_AVAIL : P_USED;
  }
  private takeId(): number {
    if (this.slotsOf.size >= this.size) throw new Error('every buffer id is in use');
    while (this.slotsOf.has(this.nextId)) this.nextId = (this.nextId + 1) % this.size;
    const id = this.nextId;
    this.nextId = (this.nextId + 1) % this.size;
    return id;
  }
  /**
   * Make a chain of raw descriptors available (flags as given plus the availability bits, unless
   * `bits` overrides them per descriptor): the head's flags are written last. Returns the buffer id.
   */
  raw(descs: Array<{ addr: number; len: number; flags: number; bits?: number }>, id = this.takeId()): number {
    let slot = this.nextAvail;
    let wrap = this.availWrap;
    const headSlot = slot;
    let headFlags = 0;
    descs.forEach((d, k) => {
      const flags = d.flags | (d.bits ?? PackedTestDriver.availBits(wrap));
      if (k === 0) {
        this.writeDesc(slot, d.addr, d.len, id, 0);
        headFlags = flags;
      } else this.writeDesc(slot, d.addr, d.len, id, flags);
      if (++slot === this.size) {
        slot = 0;
        wrap = !wrap;
      }
    });
    this.mem.dv.setUint16(this.o(this.cfg.desc) + 16 * headSlot + 14, headFlags, true);
    this.nextAvail = slot;
    this.availWrap = wrap;
    this.slotsOf.set(id, descs.length);
    return id;
  }
  /** Add a chain of buffers (readable ones first); returns its buffer id. */
  add(bufs: Buf[]): number {
    return this.raw(bufs.map((b, k) => ({ addr: b.addr, len: b.len, flags: (b.write ? P_WRITE : 0) | (k < bufs.length - 1 ? P_NEXT : 0) })));
  }
  /** Entry `k` of an indirect table (its flags as given; packed tables are used in order, no NEXT). */
  writeTableEntry(table: number, k: number, addr: number, len: number, flags: number): void {
    this.writeDesc(k, addr, len, 0, flags, table);
  }
  /** Add one indirect descriptor pointing at a table holding `bufs`. */
  addIndirect(bufs: Buf[]): number {
    const table = this.mem.alloc(16 * bufs.length, 16);
    bufs.forEach((b, k) => this.writeTableEntry(table, k, b.addr, b.len, b.write ? P_WRITE : 0));
    return this.raw([{ addr: table, len: 16 * bufs.length, flags: P_INDIRECT }]);
  }
  /** Used descriptors not yet consumed. */
  takeUsed(): Array<{ id: number; len: number }> {
    const out: Array<{ id: number; len: number }> = [];
    for (;;) {
      const d = this.o(this.cfg.desc) + 16 * this.nextUsed;
      const flags = this.mem.dv.getUint16(d + 14, true);
      const used = (flags & P_USED) !== 0;
      if (used !== this.usedWrap || ((flags & P_AVAIL) !== 0) !== this.usedWrap) break;
      const id = this.mem.dv.getUint16(d + 12, true);
      out.push({ id, len: this.mem.dv.getUint32(d + 8, true) });
      const slots = this.slotsOf.get(id);
      if (slots === undefined) throw new Error(`device used buffer id ${id}, which is not outstanding`);
      this.slotsOf.delete(id);
      this.nextUsed += slots;
      if (this.nextUsed >= this.size) {
        this.nextUsed -= this.size;
        this.usedWrap = !this.usedWrap;
      }
    }
    return out;
  }
  /** driver event suppression: the interrupts the driver wants (flags 0 enable, 1 disable, 2 at off_wrap) */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.mem.dv.setUint16(this.o(this.cfg.avail), offWrap, true);
    this.mem.dv.setUint16(this.o(this.cfg.avail) + 2, flags, true);
  }
  /** device event suppression: the kicks the device wants */
  get deviceEvent(): { flags: number; offWrap: number } {
    return { offWrap: this.mem.dv.getUint16(this.o(this.cfg.used), true), flags: this.mem.dv.getUint16(this.o(this.cfg.used) + 2, true) };
  }
}
