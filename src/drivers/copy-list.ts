// A batch of byte copies made in one native call (native.copyv): per copy, a typed-array copy costs
// the making of a view and TypedArray.prototype.set's own checks (30-40 ns for 64 bytes), and an addon
// call per copy its fixed cost (native.copy); a list of copies run at once costs one addon call for
// the batch and a memmove each. Buffers are named by index, as in packet batches: 0 and 1.
import { native } from '../native.js';

export class CopyList {
  private list: Float64Array;
  /** copies waiting for run() */
  count = 0;

  constructor(entries = 64) {
    this.list = new Float64Array(5 * entries);
  }

  /** Copy `len` bytes from buffer `src` at `srcOff` to buffer `dst` at `dstOff` (when run() runs). */
  add(dst: number, dstOff: number, src: number, srcOff: number, len: number): void {
    let l = this.list;
    const e = 5 * this.count;
    if (e === l.length) {
      // (a batch larger than any before: the list doubles, once)
      const more = new Float64Array(2 * l.length);
      more.set(l);
      this.list = l = more;
    }
    l[e] = dst;
    l[e + 1] = dstOff;
    l[e + 2] = src;
    l[e + 3] = srcOff;
    l[e + 4] = len;
    this.count++;
  }

  /** Make the copies added since the last run, in order, between buf0 and buf1. */
  run(buf0: ArrayBufferLike | ArrayBufferView, buf1?: ArrayBufferLike | ArrayBufferView): void {
    if (this.count === 0) return;
    const n = this.count;
    this.count = 0;
    native.copyv(this.list, n, buf0, buf1);
  }
}
