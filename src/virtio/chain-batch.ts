// Several descriptor chains taken at once (Virtqueue.popBatch), in flat preallocated arrays: what a
// ring pass works on instead of one Chain object per pop, as DPDK's vhost takes descriptors in bursts.
// Chain i's buffers are the pieces [first[i], first[i + 1]) (guest-memory offsets and lengths, each
// already checked to lie in guest RAM), readable ones first; heads[i] is what addUsed() takes back.
import type { Chain, Virtqueue } from './virtqueue.js';

export class ChainBatch {
  /** chains in the batch */
  count = 0;
  readonly heads: Uint16Array;
  readonly first: Uint32Array;
  /** readable pieces of chain i (they come first) */
  readonly readable: Uint32Array;
  readonly readableBytes: Float64Array;
  readonly writableBytes: Float64Array;
  readonly offsets: Float64Array;
  readonly lens: Uint32Array;

  /**
   * Room for `chains` chains of `pieces` buffers in all. `pieces` must be at least what one chain of
   * the queue may hold (its Chain's capacity), so that any chain fits in an empty batch.
   */
  constructor(
    readonly chains: number,
    readonly pieces: number,
  ) {
    this.heads = new Uint16Array(chains);
    this.first = new Uint32Array(chains + 1);
    this.readable = new Uint32Array(chains);
    this.readableBytes = new Float64Array(chains);
    this.writableBytes = new Float64Array(chains);
    this.offsets = new Float64Array(pieces);
    this.lens = new Uint32Array(pieces);
  }

  reset(): void {
    this.count = 0;
    this.first[0] = 0;
  }

  /** pieces of chain i */
  piecesOf(i: number): number {
    return this.first[i + 1] - this.first[i];
  }

  /** Append a chain of one buffer at guest-memory offset `off` (the common case, written in place). */
  addOne(head: number, off: number, len: number, writable: boolean): void {
    const i = this.count;
    const p = this.first[i];
    this.offsets[p] = off;
    this.lens[p] = len;
    this.heads[i] = head;
    this.first[i + 1] = p + 1;
    if (writable) {
      this.readable[i] = 0;
      this.readableBytes[i] = 0;
      this.writableBytes[i] = len;
    } else {
      this.readable[i] = 1;
      this.readableBytes[i] = len;
      this.writableBytes[i] = 0;
    }
    this.count = i + 1;
  }

  /** Append chain `c`; false when the batch has no room for it (chains or pieces). */
  add(c: Chain): boolean {
    const i = this.count;
    const p = this.first[i];
    if (i >= this.chains || p + c.count > this.pieces) return false;
    for (let k = 0; k < c.count; k++) {
      this.offsets[p + k] = c.offsets[k];
      this.lens[p + k] = c.lens[k];
    }
    this.heads[i] = c.head;
    this.first[i + 1] = p + c.count;
    this.readable[i] = c.readable;
    this.readableBytes[i] = c.readableBytes;
    this.writableBytes[i] = c.writableBytes;
    this.count = i + 1;
    return true;
  }

  /** Is there room for another chain of one buffer? */
  get roomForOne(): boolean {
    return this.count < this.chains && this.first[this.count] < this.pieces;
  }
}

/**
 * Take the next chain of `q` through pop() into `out`: false when there is none, the queue broke on
 * it, or `out` has no room for it (it goes back). popBatch's way for chains it does not read in place.
 */
export function popInto(q: Virtqueue, out: ChainBatch): boolean {
  if (!q.pop(q.chain)) return false;
  if (out.add(q.chain)) return true;
  q.rewind(1);
  return false;
}
