// Storage for one batch of receive chains without MRG_RXBUF: one chain per frame, each slot a packet
// of the driver batch. The first bytes of each chain are header space (NET_HDR_LEN, or NET_HDR_HASH_LEN
// with hash reports; kept as pieces, written once the frame is in), the rest the packet's segments.
// Preallocated: nothing per frame.
import type { Chain } from '../virtio/virtqueue.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { META_WORDS, copyPacket, newPacketBatch, type PacketBatch } from '../drivers/api.js';
import { native } from '../native.js';
import { NET_HDR_LEN, writeHashFields, writeRxHeader } from './net-header.js';

/** Frames per driver call on receive (DPDK's vhost burst is 32). */
export const RX_BATCH = 32;

/** Where layOutChain left off: the next header piece and the next iov segment (one object, reused). */
const laidOut = { hdr: 0, iov: 0 };

/**
 * Lay receive chain `c` out: its first `skip` bytes are header space, recorded as pieces (guest offset,
 * length) in hdrAt/hdrLen from index `hdr` (any buffer layout is legal, so the header may be spread);
 * the rest are the frame's segments, iov triples into guest memory from index `iov`. Returns where
 * both lists end.
 */
export function layOutChain(c: Chain, skip: number, hdrAt: Float64Array, hdrLen: Uint8Array, hdr: number, iov: Float64Array, at: number): typeof laidOut {
  for (let i = 0; i < c.count; i++) {
    let off = c.offsets[i];
    let l = c.lens[i];
    // (an empty buffer takes no header piece: there is a slot per header byte, one piece per byte at most)
    if (skip > 0 && l > 0) {
      const n = Math.min(skip, l);
      hdrAt[hdr] = off;
      hdrLen[hdr++] = n;
      off += n;
      l -= n;
      skip -= n;
    }
    if (l === 0) continue;
    iov[3 * at] = 0;
    iov[3 * at + 1] = off;
    iov[3 * at + 2] = l;
    at++;
  }
  laidOut.hdr = hdr;
  laidOut.iov = at;
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
  }

  reset(): void {
    this.count = 0;
    this.batch.iovStart[0] = 0;
    this.hdrStart[0] = 0;
  }

  /** Does chain `c` still fit in the segment storage? */
  fits(c: Chain): boolean {
    return this.batch.iovStart[this.count] + c.count <= this.segments;
  }

  /** Add chain `c` (validated by the caller, fits()) as the next slot. */
  add(c: Chain): void {
    const b = this.batch;
    const slot = this.count;
    const at = layOutChain(c, this.headerLen, this.hdrAt, this.hdrLen, this.hdrStart[slot], b.iov, b.iovStart[slot]);
    this.heads[slot] = c.head;
    this.cap[slot] = c.writableBytes;
    b.iovStart[slot + 1] = at.iov;
    this.hdrStart[slot + 1] = at.hdr;
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
  move(mem: SharedArrayBuffer, from: number, to: number, len: number): void {
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
      writeRxHeader(w.u8, dst - w.base, this.batch.meta, i * META_WORDS, 1);
      if (hashed) writeHashFields(w.u8, dst - w.base + NET_HDR_LEN, hash, report);
      log?.markOffset(dst, this.headerLen);
      return;
    }
    writeRxHeader(this.hdr, 0, this.batch.meta, i * META_WORDS, 1);
    if (hashed) writeHashFields(this.hdr, NET_HDR_LEN, hash, report);
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
