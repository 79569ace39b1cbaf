// Dirty-page log for live migration: one bit per 4 KiB page of guest-physical memory (bit p%8 of byte
// p/8, the vhost log layout), set for every byte the device writes into guest memory — used rings and
// received frames — so the migration source re-sends pages the dataplane changed behind the vCPUs'
// (or the frontend's) back. The bitmap is shared memory (the vhost-user frontend's log fd, or the
// VMM's own); bits are set with an atomic OR because the frontend clears them concurrently.
import type { GuestRegion } from './dma.js';

export const LOG_PAGE_SHIFT = 12;

/** where a log lies: a shared bitmap (the frontend's log fd mapped, or the VMM's own), as threads are handed it */
export interface DirtyLogArea {
  buffer: SharedArrayBuffer;
  offset: number;
  size: number;
  /** (tracing) a second bitmap of the same size, set alike and never cleared */
  copy?: SharedArrayBuffer;
}

export class DirtyLog {
  private readonly bits: Uint8Array;
  private readonly copy?: Uint8Array;
  /** pages the log covers (writes beyond it are not logged: the frontend sized it for its memory) */
  private readonly pages: number;
  /** regions by buffer offset, to turn an offset back into a guest-physical address */
  private readonly byOffset: GuestRegion[];

  constructor(area: DirtyLogArea, regions: readonly GuestRegion[]) {
    this.bits = new Uint8Array(area.buffer, area.offset, area.size);
    this.copy = area.copy && new Uint8Array(area.copy);
    this.pages = area.size * 8;
    this.byOffset = [...regions].sort((a, b) => a.offset - b.offset);
  }

  /** The guest-physical range [gpa, gpa+len) was written. */
  markGpa(gpa: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(gpa / 4096);
    const last = Math.min(Math.floor((gpa + len - 1) / 4096), this.pages - 1);
    for (let p = first; p <= last; p++) Atomics.or(this.bits, p >>> 3, 1 << (p & 7));
    if (this.copy) for (let p = first; p <= last; p++) Atomics.or(this.copy, p >>> 3, 1 << (p & 7));
  }

  /** The shared-buffer range [off, off+len) was written (one region: the dataplane's buffers never span two). */
  markOffset(off: number, len: number): void {
    for (const r of this.byOffset) {
      if (off >= r.offset && off < r.offset + r.size) {
        this.markGpa(r.gpa + (off - r.offset), len);
        return;
      }
    }
  }
}
