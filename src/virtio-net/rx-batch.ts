// One batch of receive chains without MRG_RXBUF: taken from the ring (take), one chain per frame, each
// slot a packet of the driver batch; completed once the frames are in (complete). The first bytes of
// each chain are header space (NET_HDR_LEN, or NET_HDR_HASH_LEN with hash reports; kept as pieces,
// written once the frame is in), the rest the packet's segments. Preallocated: nothing per frame.
import type { ChainBatch } from '../virtio/chain-batch.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { META_WORDS, copyPacket, newPacketBatch, type PacketBatch } from '../drivers/api.js';
import { native } from '../native.js';
import { NET_HDR_LEN, writeHashFields, writeRxHeader } from './net-header.js';
import type { RssHasher } from './rss-hash.js';
import { segmentsAfter } from './segments.js';

/** Frames per driver call on receive (DPDK's vhost burst is 32). */
export const RX_BATCH = 32;
/** the smallest frame there is: an Ethernet header */
export const ETH_HLEN = 14;

/** Chains [taken, popped) of a batch were not used: they go back to the ring, in order. */
export function giveBack(q: Virtqueue, popped: number, taken: number): void {
  if (taken < popped) q.rewind(popped - taken);
}

/** Where layOutChain left off: the next header piece and the next iov segment (one object, reused). */
const laidOut = { hdr: 0, iov: 0 };

/**
 * Lay a receive chain out, its buffers being pieces [p0, p1) of `offsets`/`lens`: its first `skip`
 * bytes are header space, recorded as pieces (guest offset, length) in hdrAt/hdrLen from index `hdr`
 * (any buffer layout is legal, so the header may be spread); the rest are the frame's segments, iov
 * triples into guest memory from index `at` (segmentsAfter). Returns where both lists end.
 */
export function layOutChain(offsets: Float64Array, lens: Uint32Array, p0: number, p1: number, skip: number, hdrAt: Float64Array, hdrLen: Uint8Array, hdr: number, iov: Float64Array, at: number): typeof laidOut {
  // (an empty buffer takes no header piece: there is a slot per header byte, one piece per byte at most)
  for (let i = p0, left = skip; i < p1 && left > 0; i++) {
    if (lens[i] === 0) continue;
    const n = Math.min(left, lens[i]);
    hdrAt[hdr] = offsets[i];
    hdrLen[hdr++] = n;
    left -= n;
  }
  laidOut.hdr = hdr;
  laidOut.iov = segmentsAfter(offsets, lens, p0, p1, skip, iov, at);
  return laidOut;
}

export class RxSlots {
  readonly batch: PacketBatch;
  /** each slot's chain (head as pop() gave it) and the bytes it can take, header included */
  readonly heads = new Uint16Array(RX_BATCH);
  readonly cap = new Float64Array(RX_BATCH);
  /** slot i's header pieces (offset, length) are [hdrStart[i], hdrStart[i + 1]) */
  private readonly hdrStart = new Uint16Array(RX_BATCH + 1);
  private readonly hdrAt: Float64Array;
  private readonly hdrLen: Uint8Array;
  private readonly hdr: Uint8Array;
  private readonly hdrView: DataView;
  /** segments the batch holds in all */
  private readonly segments: number;
  count = 0;

  /**
   * `chainPieces`: the most pieces one chain of the ring can have (a chain alone always fits);
   * `headerLen`: the virtio-net header's length (NET_HDR_LEN, NET_HDR_HASH_LEN with hash reports)
   */
  constructor(
    chainPieces: number,
    private readonly headerLen = NET_HDR_LEN,
  ) {
    this.segments = Math.max(RX_BATCH * 4, chainPieces);
    this.batch = newPacketBatch(RX_BATCH, this.segments);
    this.hdrAt = new Float64Array(RX_BATCH * headerLen);
    this.hdrLen = new Uint8Array(RX_BATCH * headerLen);
    this.hdr = new Uint8Array(headerLen);
    this.hdrView = new DataView(this.hdr.buffer);
  }

  reset(): void {
    this.count = 0;
    this.batch.iovStart[0] = 0;
    this.hdrStart[0] = 0;
  }

  /**
   * Take up to `want` chains of `q` (through `cb`) as the batch's slots, one frame each; returns how
   * many. A chain the ring must not offer breaks it (the chains before it are still taken). The
   * driver is promised room for `largest` bytes in each packet of a batch of several: a smaller chain
   * (legal: frames that do not fit drop) goes alone, where a cut frame is detected.
   */
  take(q: Virtqueue, cb: ChainBatch, want: number, largest: number): number {
    this.reset();
    cb.reset();
    const popped = q.popBatch(cb, want);
    let i = 0;
    for (; i < popped; i++) {
      const room = cb.writableBytes[i];
      // (one chain takes one whole frame: one that holds no Ethernet header never can)
      const bad = cb.readable[i] > 0 ? 'device-readable receive buffer' : room < this.headerLen ? 'receive buffer too small for the header' : room < this.headerLen + ETH_HLEN ? 'receive buffer too small for any frame' : undefined;
      if (bad !== undefined) {
        q.markBroken(bad);
        i++;
        break;
      }
      const small = room < largest;
      if (this.count > 0 && (small || !this.fits(cb.piecesOf(i)))) break;
      this.add(cb, i);
      if (small) {
        i++;
        break;
      }
    }
    giveBack(q, popped, i);
    return this.count;
  }

  /**
   * Slots [0, k) used, each with its header written (logged when `log` is set; with `hasher`, hash
   * reports: each frame hashed where it lies). Returns their frames' bytes.
   */
  complete(q: Virtqueue, k: number, bytes: GuestBytes, log: DirtyLog | undefined, hasher?: RssHasher): number {
    const b = this.batch;
    const len = b.len;
    let total = 0;
    for (let i = 0; i < k; i++) {
      q.addUsed(this.heads[i], len[i] + this.headerLen);
      if (hasher === undefined) this.writeHeader(bytes, i, log);
      else {
        const report = hasher.classifyPacket(bytes, b, i, len[i]);
        this.writeHeader(bytes, i, log, hasher.value, report);
      }
      total += len[i];
    }
    return total;
  }

  /** Does a chain of `pieces` buffers still fit in the segment storage? */
  fits(pieces: number): boolean {
    return this.batch.iovStart[this.count] + pieces <= this.segments;
  }

  /** Add chain i of `cb` (validated by the caller, fits()) as the next slot. */
  add(cb: ChainBatch, i: number): void {
    const b = this.batch;
    const slot = this.count;
    const p0 = cb.first[i];
    if (cb.first[i + 1] === p0 + 1 && cb.lens[p0] > this.headerLen) {
      // (the common chain, one buffer: its header space, then one segment)
      const off = cb.offsets[p0];
      const h = this.hdrStart[slot];
      const at = b.iovStart[slot];
      this.hdrAt[h] = off;
      this.hdrLen[h] = this.headerLen;
      b.iov[3 * at] = 0;
      b.iov[3 * at + 1] = off + this.headerLen;
      b.iov[3 * at + 2] = cb.lens[p0] - this.headerLen;
      b.iovStart[slot + 1] = at + 1;
      this.hdrStart[slot + 1] = h + 1;
    } else {
      const at = layOutChain(cb.offsets, cb.lens, p0, cb.first[i + 1], this.headerLen, this.hdrAt, this.hdrLen, this.hdrStart[slot], b.iov, b.iovStart[slot]);
      b.iovStart[slot + 1] = at.iov;
      this.hdrStart[slot + 1] = at.hdr;
    }
    this.heads[slot] = cb.heads[i];
    this.cap[slot] = cb.writableBytes[i];
    this.count = slot + 1;
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
   * Move the frame of slot `from` (len bytes, with its metadata) into slot `to`'s buffers, which hold
   * it (every chain of a batch of several takes the largest frame): a frame dropped inside a batch
   * leaves its chain to the next frame, so that the chains used stay the first ones popped.
   */
  move(mem: ArrayBufferLike, from: number, to: number, len: number): void {
    const b = this.batch;
    copyPacket(b, from, to, len, mem, mem, native.copy);
    b.len[to] = len;
    b.meta.copyWithin(to * META_WORDS, from * META_WORDS, (from + 1) * META_WORDS);
  }

  /**
   * Write slot i's virtio-net header (one buffer; with hash reports `hash` and its `report` type) into
   * its header space; logged when `log` is set.
   */
  writeHeader(bytes: GuestBytes, i: number, log: DirtyLog | undefined, hash = 0, report = 0): void {
    const h0 = this.hdrStart[i];
    const h1 = this.hdrStart[i + 1];
    const hashed = this.headerLen !== NET_HDR_LEN;
    if (h1 - h0 === 1) {
      // the common layout: the header whole in the first buffer
      const dst = this.hdrAt[h0];
      const w = bytes.window(dst);
      writeRxHeader(w.dv, dst - w.base, this.batch.meta, i * META_WORDS, 1);
      if (hashed) writeHashFields(w.dv, dst - w.base + NET_HDR_LEN, hash, report);
      log?.markOffset(dst, this.headerLen);
      return;
    }
    writeRxHeader(this.hdrView, 0, this.batch.meta, i * META_WORDS, 1);
    if (hashed) writeHashFields(this.hdrView, NET_HDR_LEN, hash, report);
    for (let k = h0, at = 0; k < h1; k++) {
      const dst = this.hdrAt[k];
      const w = bytes.window(dst);
      for (let j = 0, l = dst - w.base; j < this.hdrLen[k]; j++) w.u8[l + j] = this.hdr[at++];
      log?.markOffset(dst, this.hdrLen[k]);
    }
  }

  /** Every byte the segments of slots [0, count) hold, for the dirty log (a driver may write any of them). */
  markAll(log: DirtyLog): void {
    const b = this.batch;
    for (let k = 0; k < b.iovStart[this.count]; k++) log.markOffset(b.iov[3 * k + 1], b.iov[3 * k + 2]);
  }
}
