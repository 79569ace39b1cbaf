// The device side of one virtqueue, whatever its layout (split: virtio 1.x §2.7, packed: §2.8). Devices
// and engines (the net queue pair, the control queue, the vIOMMU's queues, vhost-user) use only this.
//
// Guest-input contract (both layouts): every guest-controlled value is checked before use — ring
// placement, indices and buffer ids, descriptor flags, chain length (bounded, so loops end), buffer
// addresses and lengths (each buffer wholly in guest RAM, or mapped behind the IOMMU), indirect tables
// (only when negotiated, never nested, never combined with NEXT, a whole number of descriptors), and
// readable-before-writable order. Each descriptor field is read from guest memory once. A violation
// marks the queue `broken` with a typed reason: it stops processing and the device reports
// DEVICE_NEEDS_RESET (or vhost-user ends the ring). Nothing here throws on guest input, and nothing
// reads or writes outside guest RAM.
import type { DirtyLog } from './dirty-log.js';
import { DMA_READ, DMA_WRITE, type GuestView } from './dma.js';
import type { ChainBatch } from './chain-batch.js';

/** the largest queue either layout allows (virtio 1.x: split sizes are powers of two up to 32768) */
export const MAX_QUEUE_SIZE = 32768;
/** pieces a chain may have beyond one per descriptor when buffers cross IOMMU mappings */
export const IOMMU_EXTRA_PIECES = 256;

/** Ring addresses and size as the driver programmed them (device addresses: guest-physical or IOVA). */
export interface QueueConfig {
  size: number;
  /** the descriptor table (split) or ring (packed) */
  desc: number;
  /** the driver area: the available ring (split) or driver event suppression (packed) */
  avail: number;
  /** the device area: the used ring (split) or device event suppression (packed) */
  used: number;
}

export interface QueueFeatures {
  eventIdx: boolean;
  indirect: boolean;
  /** VIRTIO_F_RING_PACKED */
  packed?: boolean;
  /** VIRTIO_F_IN_ORDER: buffers are used in the order they were made available */
  inOrder?: boolean;
}

/**
 * One descriptor chain, in reusable storage (no allocation per chain). Buffers are [offset, len] in the
 * guest-memory SharedArrayBuffer; readable ones come first. `head` is what addUsed() takes back: the
 * head descriptor's index (split) or the buffer id (packed).
 */
export class Chain {
  head = 0;
  count = 0;
  readable = 0;
  readableBytes = 0;
  writableBytes = 0;
  readonly offsets: Float64Array;
  readonly lens: Uint32Array;
  constructor(capacity: number) {
    this.offsets = new Float64Array(capacity);
    this.lens = new Uint32Array(capacity);
  }
  get writable(): number {
    return this.count - this.readable;
  }
  reset(head: number): void {
    this.head = head;
    this.count = 0;
    this.readable = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }

  /**
   * Append the buffer [addr, addr+len) the driver described: one piece, or behind the IOMMU one per
   * mapping it crosses (a zero-length buffer is translated too: its address is an IOVA like any other,
   * and must be mapped for the access, as without the IOMMU it must lie in RAM). Returns why the chain
   * cannot be used, or undefined.
   */
  add(mem: GuestView, addr: number, len: number, writable: boolean): BrokenReason | undefined {
    if (writable) this.writableBytes += len;
    else {
      if (this.count > this.readable) return 'readable after writable';
      this.readableBytes += len;
    }
    const before = this.count;
    const io = mem.iommu;
    if (!io) {
      const off = mem.table.translate(addr, len);
      if (off < 0) return 'buffer outside guest memory';
      if (this.count >= this.offsets.length) return 'descriptor chain too long';
      this.offsets[this.count] = off;
      this.lens[this.count] = len;
      this.count++;
    } else {
      const access = writable ? DMA_WRITE : DMA_READ;
      let done = 0;
      do {
        if (!io.translate(addr + done, len - done, access)) return 'IOMMU fault';
        const piece = io.hit.len;
        const off = mem.table.translate(io.hit.gpa, piece);
        if (off < 0) return 'buffer outside guest memory';
        if (this.count >= this.offsets.length) return 'descriptor chain too long';
        this.offsets[this.count] = off;
        this.lens[this.count] = piece;
        this.count++;
        done += piece;
      } while (done < len);
    }
    if (!writable) this.readable += this.count - before;
    return undefined;
  }
}

/** A little-endian 32-bit value at any byte offset. */
export function le32(u8: Uint8Array, at: number): number {
  return (u8[at] | (u8[at + 1] << 8) | (u8[at + 2] << 16) | (u8[at + 3] << 24)) >>> 0;
}

export type BrokenReason =
  | 'ring outside guest memory'
  | 'ring misaligned'
  | 'bad queue size'
  | 'available index jumped'
  | 'descriptor index out of range'
  | 'descriptor chain too long'
  | 'buffer outside guest memory'
  | 'indirect descriptor not negotiated'
  | 'nested indirect table'
  | 'indirect with next'
  | 'bad indirect table size'
  | 'readable after writable'
  | 'buffer id out of range'
  | 'buffer id already in use'
  | 'chain continues into an unavailable descriptor'
  | 'device-readable receive buffer'
  | 'receive buffer too small for the header'
  | 'receive buffer too small for any frame'
  | 'device-readable entropy buffer'
  | 'IOMMU fault';

/**
 * Where a ring stands, for save/restore and vhost-user GET/SET_VRING_BASE. Split rings have no wrap
 * counters (both stay true); the indices are free-running 16-bit (split) or ring positions with wrap
 * counters (packed). After a clean stop every chain taken was used or given back, so nextAvail and
 * nextUsed agree.
 */
export interface RingState {
  nextAvail: number;
  nextUsed: number;
  availWrap: boolean;
  usedWrap: boolean;
}

export const RING_START: RingState = { nextAvail: 0, nextUsed: 0, availWrap: true, usedWrap: true };

/** vhost-user's 32-bit vring base (bits 0–14 avail index, 15 its wrap counter, 16–30 used, 31 wrap) */
export function encodeRingBase(s: RingState, packed: boolean): number {
  if (!packed) return s.nextAvail & 0xffff;
  return ((s.nextAvail & 0x7fff) | (s.availWrap ? 0x8000 : 0) | ((s.nextUsed & 0x7fff) << 16) | (s.usedWrap ? 0x80000000 : 0)) >>> 0;
}

export function decodeRingBase(base: number, packed: boolean): RingState {
  if (!packed) return { nextAvail: base & 0xffff, nextUsed: base & 0xffff, availWrap: true, usedWrap: true };
  return { nextAvail: base & 0x7fff, availWrap: (base & 0x8000) !== 0, nextUsed: (base >>> 16) & 0x7fff, usedWrap: (base & 0x80000000) !== 0 };
}

export interface Virtqueue {
  readonly layout: 'split' | 'packed';
  readonly size: number;
  readonly features: QueueFeatures;
  /** the queue's own chain: where pop() puts a chain unless given another */
  readonly chain: Chain;
  /** why the queue stopped (a guest violation); undefined while it works */
  readonly broken: BrokenReason | undefined;
  /**
   * Behind a vhost-user frontend's IOTLB, a translation that fails is a miss the frontend will fill,
   * not a fault: the queue stalls (the chain stays available) until the table changes.
   */
  missesWait: boolean;
  /** a miss stopped this queue; cleared when the table changes (remapRings) */
  stalled: boolean;
  /** whoever watches for stalls has been told about this one */
  stallSignalled: boolean;

  /**
   * Chains the driver has made available and we have not taken (0 when broken or stalled); counting
   * stops at `limit` (a packed ring counts by walking its descriptors' flags).
   */
  pending(limit?: number): number;
  /**
   * Take the next available chain into `into` (caller-owned, from newChain(); default `chain`). False
   * when there is none or the queue broke on it.
   */
  pop(into?: Chain): boolean;
  /**
   * Take up to `max` available chains into `out` (appended; `out` must have room for at least one of
   * the queue's longest chains). The common chain (one buffer, no IOMMU) is read in place, others as
   * pop() reads them; every check is pop()'s. Stops early when none is left, the queue breaks (the
   * chains before stay in `out`) or `out` is full. Returns chains taken: rewind() gives them back.
   */
  popBatch(out: ChainBatch, max: number): number;
  /** storage for a chain of this queue (room for the longest chain it accepts) */
  newChain(): Chain;
  /**
   * Give back the last `n` chains popped and not used (no buffer for them yet, a frame that did not
   * fit): the next pop() returns the first of them again.
   */
  rewind(n: number): void;
  /** Record a used chain (`head` as pop() gave it, `len` bytes written); published by flush() (a packed ring publishes a ring's worth at once). */
  addUsed(head: number, len: number): void;
  /** Publish what addUsed() recorded since the last flush, at once. */
  flush(): void;
  /** Should the guest be interrupted for what was published since the last interrupt? */
  needsInterrupt(): boolean;
  /**
   * Ask the driver to kick (enable) or not (disable, while we poll). After enabling, callers must check
   * pending() again: the driver may have added buffers before it saw the request. `afterPending`: what
   * is already there cannot be used yet (too little room), so ask for a kick on the next addition.
   */
  setKicks(enable: boolean, afterPending?: boolean): void;
  /** A device-specific rule (e.g. receive buffers must be writable) broke the queue. */
  markBroken(reason: BrokenReason): void;
  /** The IOMMU's mappings changed: translate the rings again (unmapped now: a fault, or a stall). */
  remapRings(): void;
  /** Log every device write into the rings from now on (`ringLogGpa`: where the driver's rings are, for the log). */
  setDirtyLog(log: DirtyLog | undefined, ringLogGpa: { desc: number; used: number }): void;
  getState(): RingState;
  setState(s: RingState): void;
}
