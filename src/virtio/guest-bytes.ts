// Guest memory as byte windows. Guest memory is one SharedArrayBuffer, which may be larger than any one
// typed array (V8 caps a typed array's length; Node 20 at 2^32 elements), so no view spans all of it.
// Instead it is seen through windows: views of WINDOW_SPAN bytes starting every WINDOW_SPAN bytes, each
// reaching WINDOW_OVERLAP bytes into the next. Any range of at most WINDOW_OVERLAP bytes then lies wholly
// in the window of its first byte, so a ring, a descriptor, an indirect table or a virtio header (all
// far smaller) is read with plain indexed access in one view. Longer copies (packets, loaded images) go
// through copyIn/copyOut or the native shim, which take buffer offsets of any size.
//
// Offsets are plain numbers: byte offsets into the one buffer, exact up to 2^53.
//
// Bulk copies (packets) go through `plain`, a non-shared ArrayBuffer over the same bytes: V8 copies into
// or out of a SharedArrayBuffer byte by byte (relaxed atomics, 30-60 ns for 64 bytes, ~0.05 ns a byte
// beyond), over a plain one TypedArray.prototype.set is a memcpy. Element reads and writes cost the same
// on either, and anything ordered (Atomics) needs the shared buffer, so rings stay on its views.
import { markAsUntransferable } from 'node:worker_threads';
import { native } from '../native.js';

/** bytes between window starts */
export const WINDOW_SPAN = 2 ** 30;
/** how far each window reaches into the next: the largest structure guaranteed to lie in one window */
export const WINDOW_OVERLAP = 2 ** 21;

/** One window: views of the buffer from `base`; an offset `off` in it is at index `off - base`. */
export interface Window {
  readonly base: number;
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly dv: DataView;
}

export class GuestBytes {
  readonly size: number;
  private readonly windows: Window[] = [];
  /** the last window's index */
  private readonly last: number;
  /** 1 / span: a power of two, so off * inv is exact (a multiplication where a division would do) */
  private readonly inv: number;

  constructor(
    readonly buffer: SharedArrayBuffer,
    private readonly span = WINDOW_SPAN,
    readonly overlap = WINDOW_OVERLAP,
  ) {
    this.size = buffer.byteLength;
    if (!(span > 0 && Number.isInteger(Math.log2(span)))) throw new RangeError('guest-bytes: the window span must be a power of two');
    this.inv = 1 / span;
    for (let k = 0; k === 0 || k * span < this.size; k++) {
      const base = k * span;
      const len = Math.min(span + overlap, this.size - base);
      this.windows.push({
        base,
        u8: new Uint8Array(buffer, base, len),
        u16: new Uint16Array(buffer, base, Math.floor(len / 2)),
        u32: new Uint32Array(buffer, base, Math.floor(len / 4)),
        dv: new DataView(buffer, base, len),
      });
    }
    this.last = this.windows.length - 1;
  }

  private plainBuffer: ArrayBuffer | undefined;

  /**
   * This thread's non-shared ArrayBuffer over the buffer's bytes (made on first use; native.plainView).
   * It keeps the mapping alive as the shared buffer does, and is marked untransferable: a transfer
   * would detach it here (views of a detached buffer have length 0: reads give undefined, writes do
   * nothing, never outside memory). V8 counts it as external memory once (one full GC when it is made).
   */
  get plain(): ArrayBuffer {
    if (this.plainBuffer === undefined) {
      this.plainBuffer = native.plainView(this.buffer);
      markAsUntransferable(this.plainBuffer);
    }
    return this.plainBuffer;
  }

  /**
   * The window holding [off, off + overlap) (or up to the buffer's end). `off` must lie in the buffer
   * or at its end: callers pass offsets the memory table gave them, and an empty range may end RAM (its
   * offset is then the buffer's size: it gets the last window, in which it indexes nothing).
   */
  window(off: number): Window {
    // (off * inv < 2^23 for any offset below 2^53, and exact: `| 0` truncates it, which for a
    // non-negative number is its floor, without Math.floor's checks)
    const k = (off * this.inv) | 0;
    return this.windows[k < this.last ? k : this.last];
  }

  u8(off: number): number {
    const w = this.window(off);
    return w.u8[off - w.base];
  }

  setU8(off: number, v: number): void {
    const w = this.window(off);
    w.u8[off - w.base] = v;
  }

  u16(off: number): number {
    const w = this.window(off);
    return w.dv.getUint16(off - w.base, true);
  }

  setU16(off: number, v: number): void {
    const w = this.window(off);
    w.dv.setUint16(off - w.base, v, true);
  }

  u32(off: number): number {
    const w = this.window(off);
    return w.dv.getUint32(off - w.base, true);
  }

  setU32(off: number, v: number): void {
    const w = this.window(off);
    w.dv.setUint32(off - w.base, v, true);
  }

  /** a 64-bit little-endian value as a number (exact below 2^53) */
  u64(off: number): number {
    const w = this.window(off);
    const l = off - w.base;
    return w.dv.getUint32(l, true) + w.dv.getUint32(l + 4, true) * 4294967296;
  }

  /** Copy `len` bytes at buffer offset `off` into dst[at..). */
  copyOut(off: number, dst: Uint8Array, at: number, len: number): void {
    native.copy(dst, at, this.buffer, off, len);
  }

  /** Copy src[at, at + len) to buffer offset `off`. */
  copyIn(off: number, src: Uint8Array, at = 0, len = src.length - at): void {
    native.copy(this.buffer, off, src, at, len);
  }

  /**
   * A view of [off, off + len): a window's subarray when the range lies in one, else a view made for it
   * (a slow path: ranges longer than the overlap, e.g. a kernel image being loaded).
   */
  view(off: number, len: number): Uint8Array {
    const w = this.window(off);
    if (w !== undefined && off - w.base + len <= w.u8.length) return w.u8.subarray(off - w.base, off - w.base + len);
    return new Uint8Array(this.buffer, off, len);
  }
}

const cache = new WeakMap<SharedArrayBuffer, GuestBytes>();

/** The windows of `buffer` (made once per buffer and thread). */
export function guestBytes(buffer: SharedArrayBuffer): GuestBytes {
  let g = cache.get(buffer);
  if (!g) cache.set(buffer, (g = new GuestBytes(buffer)));
  return g;
}
