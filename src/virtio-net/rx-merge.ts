// Storage for one batch of receive chains with MRG_RXBUF: each frame of the batch (a packet of the
// driver batch, a "slot") gets as many chains as the largest frame takes (the first slot: as many as the
// frame the driver announced). After the driver call a frame that took fewer chains than its slot had,
// or a dropped one, leaves chains free in the middle of the batch: the next frames move down into them
// (a copy inside guest memory; none in the common case of one chain per frame and no drop), so the
// chains used are always the first popped, in order, and the rest go back to the ring (rewind).
// Preallocated: nothing per frame.
import type { ChainBatch } from '../virtio/chain-batch.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { META_WORDS, newPacketBatch, type PacketBatch } from '../drivers/api.js';
import { native } from '../native.js';
import { NET_HDR_LEN, writeHashFields, writeRxHeader } from './net-header.js';
import { RX_BATCH } from './rx-batch.js';
import { segmentsAfter } from './segments.js';

export class MergeSlots {
  readonly batch: PacketBatch;
  /** the chains popped for the batch, in pop order: head (as pop() gave it) and bytes it takes */
  private readonly heads: Uint16Array;
  private readonly caps: Float64Array;
  /** chain c's non-empty buffers (guest offset, length) are [pStart[c], pStart[c + 1]) */
  private readonly pStart: Uint32Array;
  private readonly pOff: Float64Array;
  private readonly pLen: Uint32Array;
  /** slot i's chains are [first[i], first[i + 1]); slot `count` is the one being filled */
  private readonly first = new Uint32Array(RX_BATCH + 1);
  /** bytes slot i takes, header included */
  readonly cap = new Float64Array(RX_BATCH);
  private readonly hdr: Uint8Array;
  private readonly hdrView: DataView;
  /** closed slots */
  count = 0;
  /** chains popped in all (the open slot's included) */
  chains = 0;
  /** bytes the open slot takes so far */
  open = 0;

  /**
   * `maxChains`: chains a batch may hold (the ring's size); `pieces`: buffers it may hold in all (at
   * least what one slot of the largest frame can take, so the first slot always fits); `headerLen`:
   * the virtio-net header's length (NET_HDR_LEN, NET_HDR_HASH_LEN with hash reports).
   */
  constructor(
    maxChains: number,
    private readonly pieces: number,
    private readonly headerLen = NET_HDR_LEN,
  ) {
    this.hdr = new Uint8Array(headerLen);
    this.hdrView = new DataView(this.hdr.buffer);
    this.heads = new Uint16Array(maxChains);
    this.caps = new Float64Array(maxChains);
    this.pStart = new Uint32Array(maxChains + 1);
    this.pOff = new Float64Array(pieces);
    this.pLen = new Uint32Array(pieces);
    this.batch = newPacketBatch(RX_BATCH, pieces);
  }

  reset(): void {
    this.count = 0;
    this.chains = 0;
    this.open = 0;
    this.first[0] = 0;
    this.batch.iovStart[0] = 0;
  }

  /** chains in the open slot */
  get openChains(): number {
    return this.chains - this.first[this.count];
  }

  /** Add chain i of `cb` (validated by the caller) to the open slot; false when the storage cannot hold it. */
  add(cb: ChainBatch, i: number): boolean {
    const n = this.chains;
    let p = this.pStart[n];
    const c0 = cb.first[i];
    const c1 = cb.first[i + 1];
    if (n >= this.heads.length || p + (c1 - c0) > this.pieces) return false;
    for (let k = c0; k < c1; k++) {
      const l = cb.lens[k];
      if (l === 0) continue;
      this.pOff[p] = cb.offsets[k];
      this.pLen[p++] = l;
    }
    const bytes = cb.writableBytes[i];
    this.heads[n] = cb.heads[i];
    this.caps[n] = bytes;
    this.pStart[n + 1] = p;
    this.chains = n + 1;
    this.open += bytes;
    return true;
  }

  /** Close the open slot: its segments for the driver are its buffers after the header space. */
  close(): void {
    const b = this.batch;
    const slot = this.count;
    const at = segmentsAfter(this.pOff, this.pLen, this.pStart[this.first[slot]], this.pStart[this.chains], this.headerLen, b.iov, b.iovStart[slot]);
    b.iovStart[slot + 1] = at;
    this.cap[slot] = this.open;
    this.count = slot + 1;
    this.first[slot + 1] = this.chains;
    this.open = 0;
  }

  /** Forget the open slot (its chains went back to the ring). */
  dropOpen(): void {
    this.chains = this.first[this.count];
    this.open = 0;
  }

  /** the first chain of slot i */
  firstChain(i: number): number {
    return this.first[i];
  }

  /** offset and length of slot i's first segment (where the destination MAC is) */
  firstOffset(i: number): number {
    return this.batch.iov[3 * this.batch.iovStart[i] + 1];
  }
  firstLength(i: number): number {
    const b = this.batch;
    return b.iovStart[i + 1] > b.iovStart[i] ? b.iov[3 * b.iovStart[i] + 2] : 0;
  }

  /**
   * Move the frame of slot i (len bytes) into the chains from chain `d` on (after their header space),
   * d before the slot's first chain. The chains from d to the end of slot i hold more than slot i
   * alone, so the frame fits there; it moves towards the start of the chains, so copying its pieces
   * in order never overwrites bytes still to be copied (each piece copy is a memmove).
   */
  move(mem: ArrayBufferLike, i: number, d: number, len: number, log: DirtyLog | undefined): void {
    const b = this.batch;
    const iov = b.iov;
    let si = b.iovStart[i];
    const sEnd = b.iovStart[i + 1];
    let di = this.pStart[d];
    const dEnd = this.pStart[this.first[i + 1]];
    let sOff = 0;
    let dOff = 0;
    // the destination starts after the header space of chain d
    for (let skip = this.headerLen; skip > 0 && di < dEnd; ) {
      const k = Math.min(skip, this.pLen[di]);
      skip -= k;
      if (k === this.pLen[di]) di++;
      else dOff = k;
    }
    let left = len;
    while (left > 0 && si < sEnd && di < dEnd) {
      const sLen = iov[3 * si + 2];
      const dLen = this.pLen[di];
      const k = Math.min(left, sLen - sOff, dLen - dOff);
      const to = this.pOff[di] + dOff;
      native.copy(mem, to, mem, iov[3 * si + 1] + sOff, k);
      if (log !== undefined) log.markOffset(to, k);
      sOff += k;
      dOff += k;
      left -= k;
      if (sOff >= sLen) {
        si++;
        sOff = 0;
      }
      if (dOff >= dLen) {
        di++;
        dOff = 0;
      }
    }
  }

  /** How many chains from chain d a frame of `total` bytes (header included) fills. */
  chainsFor(d: number, total: number): number {
    let n = 0;
    for (let left = total; left > 0; n++) left -= this.caps[d + n];
    return n;
  }

  /** Record the n chains from chain d as used by a frame of `total` bytes (header included). */
  addUsed(q: { addUsed(head: number, len: number): void }, d: number, n: number, total: number): void {
    for (let c = d, left = total; c < d + n; c++) {
      const k = Math.min(left, this.caps[c]);
      q.addUsed(this.heads[c], k);
      left -= k;
    }
  }

  /**
   * Write the virtio-net header of slot i's frame (its metadata, `numBuffers` chains; with hash reports
   * `hash` and its `report` type) into chain d's header space; logged when `log` is set.
   */
  writeHeader(bytes: GuestBytes, i: number, d: number, numBuffers: number, log: DirtyLog | undefined, hash = 0, report = 0): void {
    const meta = this.batch.meta;
    const len = this.headerLen;
    const hashed = len !== NET_HDR_LEN;
    let p = this.pStart[d];
    if (this.pLen[p] >= len) {
      // the common layout: the header whole in the first buffer
      const dst = this.pOff[p];
      const w = bytes.window(dst);
      writeRxHeader(w.dv, dst - w.base, meta, i * META_WORDS, numBuffers);
      if (hashed) writeHashFields(w.dv, dst - w.base + NET_HDR_LEN, hash, report);
      log?.markOffset(dst, len);
      return;
    }
    // any layout is legal: the header spread over the chain's first buffers (the chain holds it whole)
    writeRxHeader(this.hdrView, 0, meta, i * META_WORDS, numBuffers);
    if (hashed) writeHashFields(this.hdrView, NET_HDR_LEN, hash, report);
    for (let at = 0; at < len; p++) {
      const dst = this.pOff[p];
      const n = Math.min(len - at, this.pLen[p]);
      const w = bytes.window(dst);
      for (let j = 0, l = dst - w.base; j < n; j++) w.u8[l + j] = this.hdr[at++];
      log?.markOffset(dst, n);
    }
  }

  /** Every byte the closed slots' segments hold, for the dirty log (a driver may write any of them). */
  markAll(log: DirtyLog): void {
    const b = this.batch;
    for (let k = 0; k < b.iovStart[this.count]; k++) log.markOffset(b.iov[3 * k + 1], b.iov[3 * k + 2]);
  }
}
