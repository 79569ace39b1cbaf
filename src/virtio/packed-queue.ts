// Packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.x §2.8), device side. One descriptor ring that both
// sides write: the driver makes a descriptor available by setting its AVAIL flag to the driver's wrap
// counter and USED to the opposite; the device marks a chain used by writing one descriptor (buffer id,
// length, AVAIL = USED = the device's wrap counter) at its own next used position, which then moves on by
// as many ring slots as that chain took. Event suppression: the driver area holds the driver's wishes
// about interrupts, the device area ours about kicks ({off_wrap, flags}, §2.8.10).
//
// The guest-input contract is Virtqueue's (src/virtio/virtqueue.ts). Packed specifics checked here:
// ring placement and alignment, every descriptor of a chain available under the wrap counter of its
// slot (a chain never runs into a slot the driver has not filled), chains no longer than the ring,
// buffer ids below the ring size (every driver numbers them so; the device keeps a slot count per id)
// and not reused while in use. Descriptors not yet available are never read beyond their flags.
//
// Ordering: each descriptor's flags are read with Atomics.load before its other fields. A batch of used
// descriptors is published by storing the flags of its first one last, with Atomics.store (sequentially
// consistent in the JavaScript memory model, as the spec's barriers require), after the ids, lengths
// and flags of all the others: the driver, reading used descriptors in order, sees the batch whole.

import type { DirtyLog } from './dirty-log.js';
import { DMA_READ, DMA_WRITE, dmaContiguous, type GuestView } from './dma.js';
import { Chain, IOMMU_EXTRA_PIECES, le32, type BrokenReason, type QueueConfig, type QueueFeatures, type RingState, type Virtqueue } from './virtqueue.js';
import type { Window } from './guest-bytes.js';
import { popInto, type ChainBatch } from './chain-batch.js';
import { TakenChains } from './packed-taken.js';

export const PACKED_DESC_F_NEXT = 1;
export const PACKED_DESC_F_WRITE = 2;
export const PACKED_DESC_F_INDIRECT = 4;
export const PACKED_DESC_F_AVAIL = 1 << 7;
export const PACKED_DESC_F_USED = 1 << 15;
/** event suppression flags (§2.8.10) */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;

export class PackedQueue implements Virtqueue {
  readonly layout = 'packed';
  readonly size: number;
  /** the three areas, each as (window, byte offset in it): the ring and its two 4-byte event
   * suppression structures, each far smaller than the windows' overlap, so each lies whole in the window
   * of its first byte (guest-bytes.ts); behind the IOMMU looked up again by remapRings */
  private descW!: Window;
  private descOff = 0;
  /** driver event suppression (read: may we interrupt) */
  private driverW!: Window;
  private driverOff = 0;
  /** device event suppression (written: do we want kicks) */
  private deviceW!: Window;
  private deviceOff = 0;
  private cfg?: QueueConfig;
  private nextAvail = 0;
  private availWrap = true;
  private nextUsed = 0;
  private usedWrap = true;
  /** ring slots each buffer id's chain took (the used position moves on by this), while in use */
  private readonly slots: Uint16Array;
  private readonly inUse: Uint8Array;
  /** chains popped, newest last: what rewind() gives back */
  private readonly taken: TakenChains;
  /** the first used descriptor of the batch flush() publishes: its flags are written last (-1: none) */
  private batchSlot = -1;
  private batchFlags = 0;
  /** descriptors written used since the last flush */
  private unflushed = 0;
  /** used position as last published */
  private publishedUsed = 0;
  private publishedWrap = true;
  /** a flush since the last needsInterrupt() passed the driver's event (or it asked for every one) */
  private owed = false;
  broken: BrokenReason | undefined;
  readonly chain: Chain;
  missesWait = false;
  stalled = false;
  stallSignalled = false;
  private popStart = 0;
  private popStartWrap = true;
  private log: DirtyLog | undefined;
  private descLogGpa = 0;
  private deviceLogGpa = 0;

  /** Validate the driver's ring placement. Returns the queue, or the reason it cannot be used. */
  static create(mem: GuestView, cfg: QueueConfig, features: QueueFeatures, maxSize: number): PackedQueue | BrokenReason {
    const n = cfg.size;
    // (packed sizes need not be powers of two)
    if (!Number.isInteger(n) || n < 1 || n > maxSize) return 'bad queue size';
    // the ring and any indirect table (at most 16 * n bytes) must fit in a window's overlap, so that
    // each lies whole in the window of its first byte (guest-bytes.ts)
    if (16 * n > mem.bytes.overlap) return 'bad queue size';
    if (cfg.desc % 16 || cfg.avail % 4 || cfg.used % 4) return 'ring misaligned';
    const offs = PackedQueue.translateRings(mem, cfg);
    if (!offs) return mem.iommu ? 'IOMMU fault' : 'ring outside guest memory';
    const q = new PackedQueue(mem, n, offs, features);
    q.cfg = cfg;
    return q;
  }

  private static translateRings(mem: GuestView, cfg: QueueConfig): [number, number, number] | undefined {
    // the device writes used descriptors into the ring: it must be writable too
    const desc = dmaContiguous(mem, cfg.desc, 16 * cfg.size, DMA_WRITE);
    const drv = dmaContiguous(mem, cfg.avail, 4, DMA_READ);
    const dev = dmaContiguous(mem, cfg.used, 4, DMA_WRITE);
    return desc < 0 || drv < 0 || dev < 0 ? undefined : [desc, drv, dev];
  }

  private constructor(
    private readonly mem: GuestView,
    size: number,
    offs: [number, number, number],
    readonly features: QueueFeatures,
  ) {
    this.size = size;
    this.placeRings(offs);
    this.slots = new Uint16Array(size);
    this.inUse = new Uint8Array(size);
    this.taken = new TakenChains(size);
    this.chain = this.newChain();
  }

  newChain(): Chain {
    // as the split ring: fewer than `size` ring descriptors, then at most one indirect table of at most
    // `size` entries; behind an IOMMU room for buffers crossing mappings
    return new Chain(2 * this.size + (this.mem.iommu ? IOMMU_EXTRA_PIECES : 0));
  }

  remapRings(): void {
    const cfg = this.cfg;
    if (!cfg || this.broken) return;
    this.stalled = this.stallSignalled = false;
    const offs = PackedQueue.translateRings(this.mem, cfg);
    if (!offs) {
      if (this.missesWait) this.stalled = true;
      else this.broken = 'IOMMU fault';
      return;
    }
    this.placeRings(offs);
  }

  /** Keep each area as (window, offset in it), from its offset in the buffer. */
  private placeRings([desc, driver, device]: [number, number, number]): void {
    const b = this.mem.bytes;
    this.descW = b.window(desc);
    this.driverW = b.window(driver);
    this.deviceW = b.window(device);
    this.descOff = desc - this.descW.base;
    this.driverOff = driver - this.driverW.base;
    this.deviceOff = device - this.deviceW.base;
  }

  setState(s: RingState): void {
    this.nextAvail = s.nextAvail % this.size;
    this.availWrap = s.availWrap;
    this.nextUsed = this.publishedUsed = s.nextUsed % this.size;
    this.usedWrap = this.publishedWrap = s.usedWrap;
    this.inUse.fill(0);
    this.taken.clear();
    this.batchSlot = -1;
    this.unflushed = 0;
    this.owed = false;
  }

  getState(): RingState {
    return { nextAvail: this.nextAvail, nextUsed: this.nextUsed, availWrap: this.availWrap, usedWrap: this.usedWrap };
  }

  setDirtyLog(log: DirtyLog | undefined, ring: { desc: number; used: number }): void {
    this.log = log;
    this.descLogGpa = ring.desc;
    this.deviceLogGpa = ring.used;
  }

  /** flags of the ring descriptor in `slot` */
  private flagsAt(slot: number): number {
    return Atomics.load(this.descW.u16, (this.descOff / 2) + 8 * slot + 7);
  }

  private static isAvail(flags: number, wrap: boolean): boolean {
    return (flags & PACKED_DESC_F_AVAIL) !== 0 === wrap && (flags & PACKED_DESC_F_USED) !== 0 !== wrap;
  }

  /** set by walk(): the slot and wrap counter after the chains it counted */
  private walkPos = 0;
  private walkWrap = true;

  /** Count available chains from the next one (at most `limit`), reading flags only. */
  private walk(limit: number): number {
    let pos = this.nextAvail;
    let wrap = this.availWrap;
    let chains = 0;
    for (let seen = 0; chains < limit && seen < this.size; ) {
      const flags = this.flagsAt(pos);
      if (!PackedQueue.isAvail(flags, wrap)) break;
      let f = flags;
      // (a chain's end is its first descriptor without NEXT; pop() checks the rest)
      for (;;) {
        seen++;
        if (++pos === this.size) {
          pos = 0;
          wrap = !wrap;
        }
        if (!(f & PACKED_DESC_F_NEXT) || seen >= this.size) break;
        f = this.flagsAt(pos);
      }
      chains++;
    }
    this.walkPos = pos;
    this.walkWrap = wrap;
    return chains;
  }

  pending(limit = this.size): number {
    if (this.broken || this.stalled) return 0;
    return this.walk(limit);
  }

  private fail(reason: BrokenReason): false {
    if (reason === 'IOMMU fault' && this.missesWait) {
      // an IOTLB miss: the chain stays available; retried once the frontend's update arrives
      this.nextAvail = this.popStart;
      this.availWrap = this.popStartWrap;
      this.stalled = true;
      return false;
    }
    this.broken = reason;
    return false;
  }

  pop(into: Chain = this.chain): boolean {
    if (this.broken || this.stalled) return false;
    const size = this.size;
    let pos = this.nextAvail;
    let wrap = this.availWrap;
    let flags = this.flagsAt(pos);
    if (!PackedQueue.isAvail(flags, wrap)) return false;
    this.popStart = pos;
    this.popStartWrap = wrap;
    const c = into;
    c.reset(0);
    let id = 0;
    for (let taken = 1; ; taken++) {
      if (taken > size) return this.fail('descriptor chain too long');
      const d = this.descOff + 16 * pos;
      const u32 = this.descW.u32;
      const addr = u32[d / 4] + u32[d / 4 + 1] * 4294967296;
      const len = u32[d / 4 + 2];
      id = this.descW.u16[d / 2 + 6];
      if (++pos === size) {
        pos = 0;
        wrap = !wrap;
      }
      if (flags & PACKED_DESC_F_INDIRECT) {
        if (flags & PACKED_DESC_F_NEXT) return this.fail('indirect with next');
        if (!this.indirect(c, addr, len)) return false;
      } else {
        const bad = c.add(this.mem, addr, len, (flags & PACKED_DESC_F_WRITE) !== 0);
        if (bad) return this.fail(bad);
      }
      if (!(flags & PACKED_DESC_F_NEXT)) {
        // the buffer id is the last descriptor's (§2.8.6)
        if (id >= size) return this.fail('buffer id out of range');
        if (this.inUse[id]) return this.fail('buffer id already in use');
        this.inUse[id] = 1;
        this.slots[id] = taken;
        break;
      }
      flags = this.flagsAt(pos);
      if (!PackedQueue.isAvail(flags, wrap)) return this.fail('chain continues into an unavailable descriptor');
    }
    c.head = id;
    this.took(this.popStart, this.popStartWrap, id, pos, wrap);
    return true;
  }

  /** A chain from `start` (under wrap counter `startWrap`), buffer `id`, was taken; the next is at `pos`, `wrap`. */
  private took(start: number, startWrap: boolean, id: number, pos: number, wrap: boolean): void {
    this.nextAvail = pos;
    this.availWrap = wrap;
    this.taken.push(start, startWrap, id);
  }

  popBatch(out: ChainBatch, max: number): number {
    if (this.broken || this.stalled) return 0;
    // (a one-descriptor chain is read in place, in pop()'s order of checks; any other through pop())
    const fast = this.mem.iommu === undefined && this.descOff % 4 === 0;
    const table = this.mem.table;
    const u32 = this.descW.u32;
    const u16 = this.descW.u16;
    const d0 = this.descOff / 4;
    const size = this.size;
    let k = 0;
    while (k < max && out.roomForOne) {
      const pos = this.nextAvail;
      const wrap = this.availWrap;
      const flags = this.flagsAt(pos);
      if (!PackedQueue.isAvail(flags, wrap)) break;
      if (fast && (flags & (PACKED_DESC_F_NEXT | PACKED_DESC_F_INDIRECT)) === 0) {
        const d = d0 + 4 * pos;
        const len = u32[d + 2];
        const off = table.translate(u32[d] + u32[d + 1] * 4294967296, len);
        const id = u16[2 * d + 6];
        if (off < 0) this.broken = 'buffer outside guest memory';
        else if (id >= size) this.broken = 'buffer id out of range';
        else if (this.inUse[id]) this.broken = 'buffer id already in use';
        if (this.broken) break;
        this.inUse[id] = 1;
        this.slots[id] = 1;
        this.took(pos, wrap, id, pos + 1 === size ? 0 : pos + 1, pos + 1 === size ? !wrap : wrap);
        out.addOne(id, off, len, (flags & PACKED_DESC_F_WRITE) !== 0);
      } else if (!popInto(this, out)) break;
      k++;
    }
    return k;
  }

  /** An indirect table's descriptors, in order (NEXT is not used in a packed table, §2.8.7). */
  private indirect(c: Chain, addr: number, len: number): boolean {
    if (!this.features.indirect) return this.fail('indirect descriptor not negotiated');
    if (len === 0 || len % 16 || len / 16 > this.size) return this.fail('bad indirect table size');
    const mem = this.mem;
    const off = dmaContiguous(mem, addr, len, DMA_READ);
    if (off < 0) return this.fail(mem.iommu ? 'IOMMU fault' : 'buffer outside guest memory');
    const w = mem.bytes.window(off);
    const u8 = w.u8;
    const start = off - w.base;
    for (let d = start; d < start + len; d += 16) {
      // (the spec asks no alignment of an indirect table: read byte by byte)
      const flags = u8[d + 14] | (u8[d + 15] << 8);
      if (flags & PACKED_DESC_F_INDIRECT) return this.fail('nested indirect table');
      const bad = c.add(mem, le32(u8, d) + le32(u8, d + 4) * 4294967296, le32(u8, d + 8), (flags & PACKED_DESC_F_WRITE) !== 0);
      if (bad) return this.fail(bad);
    }
    return true;
  }

  markBroken(reason: BrokenReason): void {
    this.broken ??= reason;
  }

  rewind(n: number): void {
    const t = this.taken;
    for (let k = 0; k < n && t.dropNewest(); k++) {
      this.inUse[t.lastId] = 0;
      this.nextAvail = t.lastPos;
      this.availWrap = t.lastWrap;
    }
  }

  addUsed(head: number, len: number): void {
    // (only chains pop() gave out are written back: a used descriptor overwrites ring slots, which is
    // safe only for slots whose chains we have read)
    if (head >= this.size || !this.inUse[head]) return;
    this.inUse[head] = 0;
    const slot = this.nextUsed;
    const d = this.descOff + 16 * slot;
    const w = this.descW;
    w.u32[d / 4 + 2] = len;
    w.u16[d / 2 + 6] = head;
    const flags = (this.usedWrap ? PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED : 0) | (len > 0 ? PACKED_DESC_F_WRITE : 0);
    // (the flags of the batch's later descriptors are plain stores: the driver reads used descriptors
    // in ring order, so it looks at them only after the first one's flags, which flush() stores
    // atomically after all of these)
    if (this.batchSlot < 0) {
      this.batchSlot = slot;
      this.batchFlags = flags;
    } else w.u16[d / 2 + 7] = flags;
    if (this.log !== undefined) this.log.markGpa(this.descLogGpa + 16 * slot, 16);
    this.nextUsed += this.slots[head];
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap = !this.usedWrap;
    }
    // (a flush's interrupt decision needs its range under a lap: a ring's worth goes out at once)
    this.unflushed += this.slots[head];
    if (this.unflushed >= this.size) this.flush();
  }

  flush(): void {
    if (this.batchSlot < 0) return;
    Atomics.store(this.descW.u16, (this.descOff / 2) + 8 * this.batchSlot + 7, this.batchFlags);
    this.batchSlot = -1;
    this.unflushed = 0;
    const old = this.publishedUsed;
    this.publishedUsed = this.nextUsed;
    this.publishedWrap = this.usedWrap;
    // Decided per flush, against the driver's event as it is now (after the flags above: a driver that
    // sets its event later sees them when it looks again). A flush publishes at most a ring's worth,
    // so its range of positions is exact; the range since the last interrupt decision is not: a
    // thread's pass may publish more than a lap while the driver recycles buffers, and a wrap counter
    // of one bit cannot tell one lap from the next (a crossing missed there is an interrupt the
    // driver waits for forever).
    this.owed ||= this.passesEvent(old);
  }

  /**
   * Interrupt unless the driver disabled interrupts; with EVENT_IDX and its DESC mode only if the used
   * position it named was passed by a flush since the last call (§2.8.10).
   */
  needsInterrupt(): boolean {
    const owed = this.owed;
    this.owed = false;
    return owed;
  }

  /** Did publishing from used position `old` to publishedUsed pass the driver's event (the wrap arithmetic as DPDK's vhost_vring_call_packed)? */
  private passesEvent(old: number): boolean {
    const flags = Atomics.load(this.driverW.u16, (this.driverOff / 2) + 1);
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC || !this.features.eventIdx) return true;
    const neu = this.publishedUsed;
    const offWrap = Atomics.load(this.driverW.u16, this.driverOff / 2);
    let off = offWrap & 0x7fff;
    if (neu <= old) old -= this.size;
    if (this.publishedWrap !== (offWrap >> 15 === 1)) off -= this.size;
    return ((neu - off - 1) & 0xffff) < ((neu - old) & 0xffff);
  }

  setKicks(enable: boolean, afterPending = false): void {
    const u16 = this.deviceW.u16;
    const at = this.deviceOff / 2;
    if (enable && this.features.eventIdx) {
      // kick when the driver makes the next chain available (or, `afterPending`, the one after those there now)
      let pos = this.nextAvail;
      let wrap = this.availWrap;
      if (afterPending) {
        this.walk(this.size);
        pos = this.walkPos;
        wrap = this.walkWrap;
      }
      Atomics.store(u16, at, pos | (wrap ? 0x8000 : 0));
      Atomics.store(u16, at + 1, RING_EVENT_FLAGS_DESC);
    } else Atomics.store(u16, at + 1, enable ? RING_EVENT_FLAGS_ENABLE : RING_EVENT_FLAGS_DISABLE);
    if (this.log !== undefined) this.log.markGpa(this.deviceLogGpa, 4);
  }
}
