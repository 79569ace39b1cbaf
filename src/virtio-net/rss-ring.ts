// The hand-over between queue pairs when RSS steers a frame read by one pair's thread to another
// pair's RX queue: one single-producer single-consumer ring per (from, to) pair, all in one
// SharedArrayBuffer, carrying a copy of each frame with its hash, report type and driver metadata.
// No locks: the producer alone moves `tail`, the consumer alone `head` (Atomics: the record's bytes,
// written before the store of `tail`, are visible to the thread that loads it). The producer then
// writes the destination pair's eventfd, which that pair's thread watches, so none sleeps on work.
import { META_WORDS } from '../drivers/api.js';
import { native, EFD_NONBLOCK } from '../native.js';

/** record header words: frame length (-1: the rest of the ring is skipped), hash, report, metadata */
const R_LEN = 0;
const R_HASH = 1;
const R_REPORT = 2;
const R_META = 3;
const RECORD_HDR = 8 * Math.ceil(((R_META + META_WORDS) * 4) / 8);
const SKIP = -1;
/** per ring: head and tail words, each on a cache line of its own */
const HDR_BYTES = 128;
const W_HEAD = 0;
const W_TAIL = 16;

const align8 = (n: number) => (n + 7) & ~7;

/**
 * Bytes each ring holds (a power of two): 256 KiB, and at least eight of the largest frame (GSO frames
 * of 64 KiB: 1 MiB), so that a burst waits there while the destination's thread catches up. With n
 * pairs there are n² rings.
 */
export function ringCapacity(maxFrame: number): number {
  let c = 1 << 18;
  while (c < 8 * (RECORD_HDR + align8(maxFrame))) c *= 2;
  return c;
}

/** The rings of `pairs` queue pairs for frames up to `maxFrame` bytes, made on the main thread. */
export function newHandoverBuffer(pairs: number, maxFrame: number): SharedArrayBuffer {
  return new SharedArrayBuffer(pairs * pairs * (HDR_BYTES + ringCapacity(maxFrame)));
}

/** The wake eventfds of `pairs` pairs (a thread reads its own; producers write it). */
export function newWakeFds(pairs: number): number[] {
  return Array.from({ length: pairs }, () => native.eventfd(0, EFD_NONBLOCK));
}

export function closeWakeFds(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

/** What peek() found: the frame's place in the buffer and what came with it (one object, reused). */
export interface HandoverRecord {
  /** offset of the frame's bytes in the buffer */
  offset: number;
  len: number;
  hash: number;
  report: number;
  /** the driver's META_WORDS words */
  meta: Int32Array;
}

/** One thread's view of the rings of `pairs` pairs. */
export class HandoverRings {
  readonly words: Int32Array;
  readonly bytes: Uint8Array;
  private readonly capacity: number;
  private readonly stride: number;
  readonly record: HandoverRecord = { offset: 0, len: 0, hash: 0, report: 0, meta: new Int32Array(META_WORDS) };

  constructor(
    readonly buffer: SharedArrayBuffer,
    readonly pairs: number,
    maxFrame: number,
  ) {
    this.capacity = ringCapacity(maxFrame);
    this.stride = HDR_BYTES + this.capacity;
    if (buffer.byteLength < pairs * pairs * this.stride) throw new Error('hand-over buffer too small');
    this.words = new Int32Array(buffer);
    this.bytes = new Uint8Array(buffer);
  }

  private base(from: number, to: number): number {
    return (from * this.pairs + to) * this.stride;
  }

  /**
   * (producer `from`) Append a frame of `len` bytes from `src` at `srcOffset` for pair `to`; false
   * when the ring has no room (the frame is the caller's to drop).
   */
  push(from: number, to: number, src: SharedArrayBuffer, srcOffset: number, len: number, hash: number, report: number, meta: Int32Array, metaAt: number): boolean {
    const b = this.base(from, to);
    const w = b >> 2;
    const cap = this.capacity;
    const head = Atomics.load(this.words, w + W_HEAD);
    let tail = this.words[w + W_TAIL];
    const size = RECORD_HDR + align8(len);
    const at = tail & (cap - 1);
    // a record never wraps: the end of the ring is skipped when it is too short
    const skip = cap - at < size ? cap - at : 0;
    if (cap - ((tail - head) | 0) < skip + size) return false;
    if (skip) {
      this.words[(b + HDR_BYTES + at) >> 2] = SKIP;
      tail = (tail + skip) | 0;
    }
    const r = b + HDR_BYTES + (tail & (cap - 1));
    const rw = r >> 2;
    this.words[rw + R_LEN] = len;
    this.words[rw + R_HASH] = hash | 0;
    this.words[rw + R_REPORT] = report;
    for (let i = 0; i < META_WORDS; i++) this.words[rw + R_META + i] = meta[metaAt + i];
    native.copy(this.buffer, r + RECORD_HDR, src, srcOffset, len);
    Atomics.store(this.words, w + W_TAIL, (tail + size) | 0);
    return true;
  }

  /** (consumer `to`) The oldest frame from `from` into `record`, or false when there is none. */
  peek(from: number, to: number): boolean {
    const b = this.base(from, to);
    const w = b >> 2;
    const cap = this.capacity;
    let head = this.words[w + W_HEAD];
    const tail = Atomics.load(this.words, w + W_TAIL);
    if (head === tail) return false;
    let r = b + HDR_BYTES + (head & (cap - 1));
    if (this.words[r >> 2] === SKIP) {
      head = (head + cap - (head & (cap - 1))) | 0;
      Atomics.store(this.words, w + W_HEAD, head);
      if (head === tail) return false;
      r = b + HDR_BYTES + (head & (cap - 1));
    }
    const rw = r >> 2;
    const rec = this.record;
    rec.len = this.words[rw + R_LEN];
    rec.hash = this.words[rw + R_HASH] >>> 0;
    rec.report = this.words[rw + R_REPORT];
    for (let i = 0; i < META_WORDS; i++) rec.meta[i] = this.words[rw + R_META + i];
    rec.offset = r + RECORD_HDR;
    return true;
  }

  /** (consumer `to`) Drop the frame peek() returned: its room goes back to the producer. */
  consume(from: number, to: number): void {
    const w = this.base(from, to) >> 2;
    const head = this.words[w + W_HEAD];
    Atomics.store(this.words, w + W_HEAD, (head + RECORD_HDR + align8(this.record.len)) | 0);
  }

  /** (producer `from`) How many frames of up to `maxFrame` bytes the ring towards `to` surely takes now. */
  room(from: number, to: number, maxFrame: number): number {
    const w = this.base(from, to) >> 2;
    const used = (this.words[w + W_TAIL] - Atomics.load(this.words, w + W_HEAD)) | 0;
    const size = RECORD_HDR + align8(maxFrame);
    // (one record's room is kept for what the end of the ring may waste: records never wrap)
    return Math.max(0, Math.floor((this.capacity - used) / size) - 1);
  }

  /** Does any ring towards `to` hold a frame? */
  pending(to: number): boolean {
    for (let from = 0; from < this.pairs; from++) {
      const w = this.base(from, to) >> 2;
      if (Atomics.load(this.words, w + W_HEAD) !== Atomics.load(this.words, w + W_TAIL)) return true;
    }
    return false;
  }
}
