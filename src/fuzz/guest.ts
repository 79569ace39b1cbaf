// Scripted guest memory and a scripted split-ring driver for the fuzz targets (the packed-ring driver
// is guest-packed.ts; both are DriverRings).
//
// The memory is one SharedArrayBuffer in which two RAM regions sit between guard areas that are not
// guest RAM: the guards hold a canary pattern, and any change to them is a write outside guest memory.
// Inside RAM, the driver records which ranges the device may write (the used ring and the buffers it
// marked device-writable); `diff` compares a snapshot with the memory after a device call and reports
// any byte written elsewhere.
import { MemoryTable } from '../vmm/memory.js';
import { guestView, type GuestView } from '../virtio/dma.js';

const GUARD = 256;
const CANARY = 0xa5;
/** guest-physical layout: region A at 0, a hole, region B */
export const RAM_A = 16 * 1024;
export const RAM_B = 8 * 1024;
export const GPA_B = 0x8000;

export class ScriptedMemory {
  readonly buffer = new SharedArrayBuffer(GUARD + RAM_A + GUARD + RAM_B + GUARD);
  readonly u8 = new Uint8Array(this.buffer);
  readonly table = new MemoryTable([
    { gpa: 0, size: RAM_A, offset: GUARD },
    { gpa: GPA_B, size: RAM_B, offset: GUARD + RAM_A + GUARD },
  ]);
  readonly view: GuestView = guestView(this.buffer, this.table);
  private readonly snap = new Uint8Array(this.buffer.byteLength);
  /** per byte of the buffer: 1 where the device may write */
  private readonly writable = new Uint8Array(this.buffer.byteLength);

  /** guards painted, RAM zeroed (copied in: filling shared memory byte by byte is ten times slower) */
  private readonly pristine = new Uint8Array(this.buffer.byteLength).fill(CANARY);

  /** A fresh session: RAM zeroed, guards painted, nothing writable. */
  reset(): void {
    if (this.pristine[GUARD] === CANARY) for (const r of this.table.regions) this.pristine.fill(0, r.offset, r.offset + r.size);
    this.u8.set(this.pristine);
    this.writable.fill(0);
  }

  /** Buffer offset of guest-physical `gpa` (which must be RAM: the script only writes there). */
  off(gpa: number, len = 1): number {
    return this.table.translate(gpa, len);
  }

  /** The device may write [gpa, gpa+len) (the parts of it that are RAM). */
  allowWrite(gpa: number, len: number): void {
    for (const r of this.table.regions) {
      const a = Math.max(gpa, r.gpa);
      const b = Math.min(gpa + len, r.gpa + r.size);
      if (a < b) this.writable.fill(1, r.offset + (a - r.gpa), r.offset + (b - r.gpa));
    }
  }

  /** Nothing is writable until allowWrite says so again (the driver's table changed). */
  clearWritable(): void {
    this.writable.fill(0);
  }

  snapshot(): void {
    this.snap.set(this.u8);
  }

  /** The first byte changed since snapshot() where the device may not write, or undefined. */
  diff(): string | undefined {
    // word by word (the common case: nothing changed), bytes only where a word did
    const a = this.u32;
    const s = this.snap32;
    for (let i = 0; i < a.length; i++) {
      if (a[i] === s[i]) continue;
      for (let b = 4 * i; b < 4 * i + 4; b++) {
        if (this.u8[b] !== this.snap[b] && !this.writable[b]) return `device wrote byte ${b} of the memory buffer (${this.where(b)}) which the guest did not give it`;
      }
    }
    return undefined;
  }
  private readonly u32 = new Uint32Array(this.buffer);
  private readonly snap32 = new Uint32Array(this.snap.buffer);

  private where(i: number): string {
    for (const r of this.table.regions) if (i >= r.offset && i < r.offset + r.size) return `gpa 0x${(r.gpa + i - r.offset).toString(16)}`;
    return 'a guard area, not guest RAM';
  }

  put16(gpa: number, v: number): void {
    const o = this.off(gpa, 2);
    this.u8[o] = v & 0xff;
    this.u8[o + 1] = (v >> 8) & 0xff;
  }
  get16(gpa: number): number {
    const o = this.off(gpa, 2);
    return this.u8[o] | (this.u8[o + 1] << 8);
  }
  put32(gpa: number, v: number): void {
    const o = this.off(gpa, 4);
    for (let k = 0; k < 4; k++) this.u8[o + k] = (v >>> (8 * k)) & 0xff;
  }
  get32(gpa: number): number {
    const o = this.off(gpa, 4);
    return (this.u8[o] | (this.u8[o + 1] << 8) | (this.u8[o + 2] << 16) | (this.u8[o + 3] << 24)) >>> 0;
  }
}

export interface Desc {
  addr: number;
  len: number;
  write: boolean;
}

/** A chain the driver made available and the device has not returned. */
export interface InFlight {
  head: number;
  /** descriptor slots the chain holds in the ring's table */
  slots: number[];
  bufs: Desc[];
  writableBytes: number;
}

/** A ring driven as a guest driver would (split: ScriptedRing; packed: guest-packed.ts). */
export interface DriverRing {
  readonly size: number;
  /** the descriptor table (split) or ring (packed), the driver area, the device area: as QueueConfig */
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** the first guest-physical address past the ring's areas */
  readonly end: number;
  /** chains available and not yet used, by head (split) or buffer id (packed) */
  readonly inFlight: Map<number, InFlight>;
  /** used entries seen that named no chain in flight, or claimed more bytes than it had */
  bad: string | undefined;
  /**
   * Make a chain of `bufs` available (direct, or through an indirect table at `indirectAt` holding all
   * of them). Returns false when there are not enough free descriptors.
   */
  add(bufs: Desc[], indirectAt?: number): boolean;
  /** Mark what the device may write now (read back from memory: a hostile script may have changed it). */
  allowFromTable(): void;
  /** Used entries published since the last call, each checked against what is in flight. */
  reclaim(): Array<{ chain: InFlight; len: number }>;
  /** A hostile driver's move: overwrite bytes of the ring's own areas. */
  poke(where: number, value: number): void;
  /** A hostile driver's move: make chains available where the device does not stand. */
  jumpAvail(by: number): void;
}

/**
 * A split ring driven as a guest driver would: descriptors from a free list, chains direct or through
 * an indirect table, the avail ring and its index, used entries reclaimed. Everything it places lies
 * in RAM region A from `base` upwards (a bump allocator); buffers may be placed anywhere by the caller.
 */
export class ScriptedRing implements DriverRing {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  private availIdx = 0;
  private lastUsed = 0;
  private readonly free: number[] = [];
  readonly inFlight = new Map<number, InFlight>();
  /** used entries seen that named no chain in flight, or claimed more bytes than it had */
  bad: string | undefined;

  constructor(
    private readonly m: ScriptedMemory,
    readonly size: number,
    at: number,
    readonly eventIdx: boolean,
    /** hand out descriptors in order (as an IN_ORDER driver does) */
    private readonly inOrder: boolean,
  ) {
    this.desc = align(at, 16);
    this.avail = this.desc + 16 * size;
    this.used = align(this.avail + 6 + 2 * size, 4);
    this.end = this.used + 6 + 8 * size;
    for (let i = 0; i < size; i++) this.free.push(i);
  }
  readonly end: number;

  get freeCount(): number {
    return this.free.length;
  }

  private writeDesc(tableGpa: number, i: number, d: Desc, flags: number, next: number): void {
    const g = tableGpa + 16 * i;
    this.m.put32(g, d.addr % 2 ** 32);
    this.m.put32(g + 4, Math.floor(d.addr / 2 ** 32));
    this.m.put32(g + 8, d.len);
    this.m.put16(g + 12, flags | (d.write ? 2 : 0));
    this.m.put16(g + 14, next);
  }

  /**
   * Make a chain of `bufs` available (direct, or through an indirect table at `indirectAt` holding all
   * of them). Returns false when there are not enough free descriptors.
   */
  add(bufs: Desc[], indirectAt?: number): boolean {
    const need = indirectAt === undefined ? bufs.length : 1;
    if (bufs.length === 0 || this.free.length < need) return false;
    if (this.inOrder) this.free.sort((a, b) => a - b);
    const slots = this.free.splice(0, need);
    if (indirectAt === undefined) {
      bufs.forEach((d, k) => this.writeDesc(this.desc, slots[k], d, k + 1 < bufs.length ? 1 : 0, k + 1 < bufs.length ? slots[k + 1] : 0));
    } else {
      bufs.forEach((d, k) => this.writeDesc(indirectAt, k, d, k + 1 < bufs.length ? 1 : 0, k + 1 < bufs.length ? k + 1 : 0));
      this.writeDesc(this.desc, slots[0], { addr: indirectAt, len: 16 * bufs.length, write: false }, 4, 0);
    }
    this.m.put16(this.avail + 4 + 2 * (this.availIdx % this.size), slots[0]);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.m.put16(this.avail + 2, this.availIdx);
    this.inFlight.set(slots[0], { head: slots[0], slots, bufs, writableBytes: bufs.reduce((s, d) => s + (d.write ? d.len : 0), 0) });
    return true;
  }

  /**
   * What the device may write now: the used ring (with avail_event), and every buffer the table, or an
   * indirect table it names, marks device-writable (read back from memory: a hostile script may have
   * changed them behind the driver's back).
   */
  allowFromTable(): void {
    this.m.allowWrite(this.used, 6 + 8 * this.size);
    for (let i = 0; i < this.size; i++) this.allowDesc(this.desc + 16 * i, true);
  }

  private allowDesc(g: number, top: boolean): void {
    const m = this.m;
    const addr = m.get32(g) + m.get32(g + 4) * 2 ** 32;
    const len = m.get32(g + 8);
    const flags = m.get16(g + 12);
    if (flags & 2) m.allowWrite(addr, len);
    if (top && flags & 4 && len % 16 === 0 && m.off(addr, len) >= 0) {
      for (let k = 0; k < len / 16; k++) this.allowDesc(addr + 16 * k, false);
    }
  }

  /** Used entries published since the last call, each checked against what is in flight. */
  reclaim(): Array<{ chain: InFlight; len: number }> {
    const out: Array<{ chain: InFlight; len: number }> = [];
    const idx = this.m.get16(this.used + 2);
    while (this.lastUsed !== idx) {
      const e = this.used + 4 + 8 * (this.lastUsed % this.size);
      const head = this.m.get32(e);
      const len = this.m.get32(e + 4);
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      const chain = this.inFlight.get(head);
      if (!chain) {
        this.bad ??= `used entry names head ${head}, which is not in flight`;
        continue;
      }
      if (len > chain.writableBytes) this.bad ??= `used entry for head ${head} says ${len} bytes written into ${chain.writableBytes} writable`;
      this.inFlight.delete(head);
      this.free.push(...chain.slots);
      out.push({ chain, len });
    }
    if (this.eventIdx) this.m.put16(this.avail + 4 + 2 * this.size, this.lastUsed);
    return out;
  }

  /** the device's used index as published (for counting) */
  get usedIdx(): number {
    return this.m.get16(this.used + 2);
  }

  /** A hostile driver's move: overwrite bytes of the ring's own areas. */
  poke(where: number, value: number): void {
    const span = this.end - this.desc;
    const at = this.desc + (where % span);
    this.m.u8[this.m.off(at)] = value & 0xff;
  }

  /** A hostile driver's move: publish an avail index that is not where the ring stands. */
  jumpAvail(by: number): void {
    this.availIdx = (this.availIdx + by) & 0xffff;
    this.m.put16(this.avail + 2, this.availIdx);
  }
}

export function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/** `total` bytes cut at the given points into buffer sizes (a zero-length cut only where the script asks) */
export function cutInto(total: number, cuts: number[]): number[] {
  const points = [...new Set(cuts.filter((x) => x > 0 && x < total))].sort((a, b) => a - b);
  const out: number[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(p - prev);
    prev = p;
  }
  out.push(total - prev);
  return out;
}
