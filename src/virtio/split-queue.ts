// Split virtqueue (virtio 1.x §2.7), device side, over guest memory shared as one SharedArrayBuffer.
// The guest-input contract is Virtqueue's (src/virtio/virtqueue.ts). Split specifics checked here: ring
// placement and alignment, a power-of-two size, the available index (it may not run more than a ring
// ahead of us), head and next indices within their table.
//
// Ordering: the available index is read with Atomics.load and the used index published with
// Atomics.store; in the JavaScript memory model these are sequentially consistent, so descriptor reads
// follow the index read and used-element writes precede the index write, as the spec's barriers require.

import type { DirtyLog } from './dirty-log.js';
import { DMA_READ, DMA_WRITE, dmaContiguous, type GuestView } from './dma.js';
import { Chain, IOMMU_EXTRA_PIECES, le32, type BrokenReason, type QueueConfig, type QueueFeatures, type RingState, type Virtqueue } from './virtqueue.js';
import type { Window } from './guest-bytes.js';
import { popInto, type ChainBatch } from './chain-batch.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

export class SplitQueue implements Virtqueue {
  readonly layout = 'split';
  readonly size: number;
  /** the three areas: each in one window of guest memory (a ring is far smaller than the windows'
   * overlap), at a byte offset in that window, indexed directly; behind the IOMMU they are looked up
   * again whenever its mappings change: remapRings */
  private descW!: Window;
  private availW!: Window;
  private usedW!: Window;
  private descOff = 0;
  private availOff = 0;
  private usedOff = 0;
  private cfg?: QueueConfig;
  private lastAvail = 0;
  /**
   * the available index as pending() last read it: pop() takes entries up to it without reading the
   * index again (one atomic load per batch rather than per chain, as vhost does); entries between
   * lastAvail and it are available whatever the driver does meanwhile (it may only add)
   */
  private availSeen = 0;
  private usedIdx = 0;
  /** used index last published to the guest (for EVENT_IDX notification decisions) */
  private publishedUsed = 0;
  private signalledUsed = 0;
  broken: BrokenReason | undefined;
  readonly chain: Chain;
  /**
   * Behind a vhost-user frontend's IOTLB, a translation that fails is a miss the frontend will fill,
   * not a fault: the queue stalls (the chain stays available) until the table changes.
   */
  missesWait = false;
  /** a miss stopped this queue; cleared when the table changes (remapRings) */
  stalled = false;
  /** whoever watches for stalls has been told about this one */
  stallSignalled = false;
  private popStart = 0;
  /** while migrating: every used-ring write is logged, at the ring's log address */
  private log: DirtyLog | undefined;
  private usedLogGpa = 0;

  /** Validate the driver's ring placement. Returns the queue, or the reason it cannot be used. */
  static create(mem: GuestView, cfg: QueueConfig, features: QueueFeatures, maxSize: number): SplitQueue | BrokenReason {
    const n = cfg.size;
    if (!Number.isInteger(n) || n < 1 || n > maxSize || (n & (n - 1)) !== 0) return 'bad queue size';
    // every ring area and indirect table (at most 16 * n bytes) must fit in a window's overlap, so that
    // each lies whole in the window of its first byte (guest-bytes.ts)
    if (16 * n > mem.bytes.overlap) return 'bad queue size';
    if (cfg.desc % 16 || cfg.avail % 2 || cfg.used % 4) return 'ring misaligned';
    const evt = features.eventIdx ? 2 : 0;
    const desc = dmaContiguous(mem, cfg.desc, 16 * n, DMA_READ);
    const avail = dmaContiguous(mem, cfg.avail, 4 + 2 * n + evt, DMA_READ);
    const used = dmaContiguous(mem, cfg.used, 4 + 8 * n + evt, DMA_WRITE);
    if (desc < 0 || avail < 0 || used < 0) return mem.iommu ? 'IOMMU fault' : 'ring outside guest memory';
    const q = new SplitQueue(mem, n, desc, avail, used, features);
    q.cfg = cfg;
    return q;
  }

  /**
   * The IOMMU's mappings changed: translate the rings again (the guest may have moved them, or unmapped
   * them: that is a fault, and the queue stops rather than touch memory it may no longer use).
   */
  remapRings(): void {
    const cfg = this.cfg;
    if (!cfg || this.broken) return;
    this.stalled = this.stallSignalled = false;
    const evt = this.features.eventIdx ? 2 : 0;
    const n = this.size;
    const desc = dmaContiguous(this.mem, cfg.desc, 16 * n, DMA_READ);
    const avail = dmaContiguous(this.mem, cfg.avail, 4 + 2 * n + evt, DMA_READ);
    const used = dmaContiguous(this.mem, cfg.used, 4 + 8 * n + evt, DMA_WRITE);
    if (desc < 0 || avail < 0 || used < 0) {
      if (this.missesWait) this.stalled = true;
      else this.broken = 'IOMMU fault';
      return;
    }
    this.placeRings(desc, avail, used);
  }

  /** Keep each ring area as (window, offset in it), from its offset in the buffer. */
  private placeRings(desc: number, avail: number, used: number): void {
    const b = this.mem.bytes;
    this.descW = b.window(desc);
    this.availW = b.window(avail);
    this.usedW = b.window(used);
    this.descOff = desc - this.descW.base;
    this.availOff = avail - this.availW.base;
    this.usedOff = used - this.usedW.base;
  }

  private constructor(
    private readonly mem: GuestView,
    size: number,
    descOff: number,
    availOff: number,
    usedOff: number,
    readonly features: QueueFeatures,
  ) {
    this.size = size;
    this.placeRings(descOff, availOff, usedOff);
    this.chain = this.newChain();
  }

  newChain(): Chain {
    // a chain has fewer than `size` direct descriptors and then at most one indirect table, which we
    // bound by the queue size too: 2 * size buffers at most; behind an IOMMU a buffer may cross
    // mappings and become several pieces: room for that too (more breaks the queue)
    return new Chain(2 * this.size + (this.mem.iommu ? IOMMU_EXTRA_PIECES : 0));
  }

  /** Restore ring positions (device reset keeps none; migration and vhost-user restore them). */
  setState(s: RingState): void {
    this.lastAvail = this.availSeen = s.nextAvail & 0xffff;
    this.usedIdx = this.publishedUsed = this.signalledUsed = s.nextUsed & 0xffff;
  }

  getState(): RingState {
    return { nextAvail: this.lastAvail, nextUsed: this.usedIdx, availWrap: true, usedWrap: true };
  }

  /** Log used-ring writes from now on (`ring.used`: where the used ring is, for the log). */
  setDirtyLog(log: DirtyLog | undefined, ring: { desc: number; used: number }): void {
    this.log = log;
    this.usedLogGpa = ring.used;
  }

  private availIdx(): number {
    return Atomics.load(this.availW.u16, (this.availOff / 2) + 1);
  }

  /** Entries the driver has made available and we have not taken (0 when broken). */
  pending(): number {
    if (this.broken || this.stalled) return 0;
    const idx = this.availIdx();
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.size) {
      this.broken = 'available index jumped';
      return 0;
    }
    this.availSeen = idx;
    return n;
  }

  private fail(reason: BrokenReason): false {
    if (reason === 'IOMMU fault' && this.missesWait) {
      // an IOTLB miss: the chain goes back; retried once the frontend's update arrives
      this.lastAvail = this.popStart;
      this.stalled = true;
      return false;
    }
    this.broken = reason;
    return false;
  }

  /**
   * Take the next available chain into `into` (default: `this.chain`). Returns false when there is none or the queue
   * broke on it (check `broken`).
   */
  pop(into: Chain = this.chain): boolean {
    if (this.broken || this.stalled) return false;
    if (this.lastAvail === this.availSeen && this.pending() === 0) return false;
    const mem = this.mem;
    const head = this.availW.u16[(this.availOff / 2) + 2 + (this.lastAvail % this.size)];
    if (head >= this.size) return this.fail('descriptor index out of range');
    this.popStart = this.lastAvail;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;

    const c = into;
    c.reset(head);
    let tableW = this.descW;
    let tableOff = this.descOff;
    let tableLen = this.size;
    let indirect = false;
    let i = head;
    let seen = 0;
    for (;;) {
      if (++seen > tableLen) return this.fail('descriptor chain too long');
      this.readDesc(tableW, tableOff + i * 16);
      const addr = this.dAddr;
      const len = this.dLen;
      const flags = this.dFlags;
      const next = this.dNext;
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.features.indirect) return this.fail('indirect descriptor not negotiated');
        if (indirect) return this.fail('nested indirect table');
        if (flags & VIRTQ_DESC_F_NEXT) return this.fail('indirect with next');
        if (len === 0 || len % 16 || len / 16 > this.size) return this.fail('bad indirect table size');
        // (the spec asks no alignment of an indirect table: readDesc reads one anywhere)
        const off = dmaContiguous(mem, addr, len, DMA_READ);
        if (off < 0) return this.fail(mem.iommu ? 'IOMMU fault' : 'buffer outside guest memory');
        indirect = true;
        tableW = mem.bytes.window(off);
        tableOff = off - tableW.base;
        tableLen = len / 16;
        i = 0;
        seen = 0;
        continue;
      }
      const bad = c.add(mem, addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (bad) return this.fail(bad);
      if (!(flags & VIRTQ_DESC_F_NEXT)) return true;
      i = next;
      if (i >= tableLen) return this.fail('descriptor index out of range');
    }
  }

  /**
   * Take up to `max` available chains into `out` (appended), with no more reads of the available index
   * than pop() would make for the first: a one-buffer chain (neither NEXT nor INDIRECT; no IOMMU) is
   * read and checked in place, any other through pop(). Stops when the entries seen are taken, the
   * queue breaks (the chains before stay in `out`), or `out` is full (that chain goes back). Returns
   * chains taken.
   */
  popBatch(out: ChainBatch, max: number): number {
    if (this.broken || this.stalled) return 0;
    if (this.lastAvail === this.availSeen && this.pending() === 0) return 0;
    // (the descriptor table is 16-byte aligned in guest-physical memory; its window offset is 4-byte
    // aligned whenever guest memory's regions are, which readDesc checks and this requires)
    const fast = this.mem.iommu === undefined && this.descOff % 4 === 0;
    const table = this.mem.table;
    const ring = this.availW.u16;
    const at = this.availOff / 2 + 2;
    const u32 = this.descW.u32;
    const u16 = this.descW.u16;
    const d0 = this.descOff / 4;
    const size = this.size;
    let k = 0;
    while (k < max && this.lastAvail !== this.availSeen && out.roomForOne) {
      const head = ring[at + (this.lastAvail & (size - 1))];
      const d = d0 + 4 * head;
      const flags = head < size ? u16[2 * d + 6] : VIRTQ_DESC_F_INDIRECT;
      if (fast && (flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) === 0) {
        const len = u32[d + 2];
        const off = table.translate(u32[d] + u32[d + 1] * 4294967296, len);
        if (off < 0) {
          this.broken = 'buffer outside guest memory';
          break;
        }
        out.addOne(head, off, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
        this.lastAvail = (this.lastAvail + 1) & 0xffff;
      } else if (!popInto(this, out)) break;
      k++;
    }
    return k;
  }

  /** the fields of the descriptor readDesc() read last (each read from guest memory once) */
  private dAddr = 0;
  private dLen = 0;
  private dFlags = 0;
  private dNext = 0;

  /**
   * Read the 16-byte descriptor at offset `d` in window `win`: with aligned views when it is 4-byte
   * aligned (the ring's table always is, checked in create; windows start aligned), else byte by byte
   * (an indirect table may lie anywhere).
   */
  private readDesc(win: Window, d: number): void {
    if (d % 4 === 0) {
      const w = d / 4;
      const u32 = win.u32;
      this.dAddr = u32[w] + u32[w + 1] * 4294967296;
      this.dLen = u32[w + 2];
      this.dFlags = win.u16[(d / 2) + 6];
      this.dNext = win.u16[(d / 2) + 7];
      return;
    }
    const u8 = win.u8;
    this.dAddr = le32(u8, d) + le32(u8, d + 4) * 4294967296;
    this.dLen = le32(u8, d + 8);
    this.dFlags = u8[d + 12] | (u8[d + 13] << 8);
    this.dNext = u8[d + 14] | (u8[d + 15] << 8);
  }

  /** Device-specific rules (e.g. receive buffers must be writable) break the queue here too. */
  markBroken(reason: BrokenReason): void {
    this.broken ??= reason;
  }

  /** Give back the last `n` chains popped (each took one available entry). */
  rewind(n: number): void {
    this.lastAvail = (this.lastAvail - n) & 0xffff;
  }

  /** Record a used element; published to the guest by flush(). */
  addUsed(head: number, len: number): void {
    const slot = this.usedIdx % this.size;
    const e = (this.usedOff / 4) + 1 + 2 * slot;
    this.usedW.u32[e] = head;
    this.usedW.u32[e + 1] = len;
    if (this.log !== undefined) this.log.markGpa(this.usedLogGpa + 4 + 8 * slot, 8);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /** Publish used elements added since the last flush (one index store per batch). */
  flush(): void {
    if (this.usedIdx === this.publishedUsed) return;
    Atomics.store(this.usedW.u16, (this.usedOff / 2) + 1, this.usedIdx);
    this.publishedUsed = this.usedIdx;
    if (this.log !== undefined) this.log.markGpa(this.usedLogGpa + 2, 2);
  }

  /**
   * Should the guest be interrupted for what was published since the last interrupt? With EVENT_IDX:
   * only if used_event lies in the new range (virtio 1.x §2.7.10); without: unless NO_INTERRUPT.
   */
  needsInterrupt(): boolean {
    const newIdx = this.publishedUsed;
    const old = this.signalledUsed;
    if (newIdx === old) return false;
    let notify: boolean;
    if (this.features.eventIdx) {
      const usedEvent = Atomics.load(this.availW.u16, (this.availOff / 2) + 2 + this.size);
      notify = ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
    } else {
      notify = !(Atomics.load(this.availW.u16, this.availOff / 2) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    }
    this.signalledUsed = newIdx;
    return notify;
  }

  /**
   * Ask the driver to kick (enable) or not (disable, while we poll). After enabling, callers must
   * check pending() again: the driver may have added buffers before it saw the request.
   */
  setKicks(enable: boolean, afterPending = false): void {
    if (this.features.eventIdx) {
      // avail_event = the next index we will read: the driver kicks when it passes it. `afterPending`:
      // we cannot use what is already there yet (too little room), so ask for the next addition.
      if (enable) {
        Atomics.store(this.usedW.u16, this.usedOff / 2 + 2 + 4 * this.size, afterPending ? this.availIdx() : this.lastAvail);
        if (this.log !== undefined) this.log.markGpa(this.usedLogGpa + 4 + 8 * this.size, 2);
      }
    } else {
      const f = this.usedOff / 2;
      Atomics.store(this.usedW.u16, f, enable ? 0 : VIRTQ_USED_F_NO_NOTIFY);
      if (this.log !== undefined) this.log.markGpa(this.usedLogGpa, 2);
    }
  }
}
