// The frontend's memory, as vhost-user hands it over (up to 8 regions, each an fd), mapped once into
// one reserved range so the dataplane sees a single SharedArrayBuffer and a memory table, exactly as
// for tsvmm's own guests. Ring addresses arrive as the frontend's virtual addresses: vaToGpa() turns
// them into guest-physical ones for the table.
import { native } from '../native.js';
import { MemoryTable, type MemoryRegion } from '../vmm/memory.js';
import type { MemoryRegionDesc } from './protocol.js';

const PAGE = 4096;

export class FrontendMemory {
  private released = false;

  private constructor(
    readonly buffer: SharedArrayBuffer,
    readonly address: bigint,
    readonly table: MemoryTable,
    readonly regions: ReadonlyArray<MemoryRegionDesc & { offset: number }>,
    private readonly total: number,
  ) {}

  /** Map the regions (consuming their fds). Returns the memory, or why it cannot be used. */
  static map(regions: MemoryRegionDesc[], fds: number[]): FrontendMemory | string {
    try {
      if (fds.length !== regions.length) return `${regions.length} regions but ${fds.length} descriptors`;
      // laid out in guest-physical order, so that regions adjacent there are adjacent in the buffer too
      const order = regions.map((_, i) => i).sort((a, b) => regions[a].gpa - regions[b].gpa);
      const placed = regions.map((r) => ({ ...r, offset: 0 }));
      let total = 0;
      for (const i of order) {
        const r = regions[i];
        if (r.size <= 0 || r.size % PAGE || r.mmapOffset % PAGE || !Number.isSafeInteger(r.gpa + r.size) || !Number.isSafeInteger(r.uaddr + r.size))
          throw new Error('region not page-aligned or out of range');
        placed[i].offset = total;
        total += r.size;
      }
      let table: MemoryTable;
      try {
        table = new MemoryTable(joinAdjacent(order.map((i) => placed[i])));
      } catch {
        return 'regions overlap';
      }
      // a region past the end of its file would fault (SIGBUS) the first time the dataplane touched it
      placed.forEach((r, i) => {
        if (r.mmapOffset + r.size > native.fileSize(fds[i])) throw new Error('region extends past the end of its file');
      });
      const res = native.reserveShared(total);
      placed.forEach((r, i) => native.mmapFixed(res.address + BigInt(r.offset), r.size, fds[i], r.mmapOffset));
      return new FrontendMemory(res.buffer, res.address, table, placed, total);
    } catch (e) {
      return (e as Error).message;
    } finally {
      for (const fd of fds) native.close(fd);
    }
  }

  /** Guest-physical address of the frontend virtual range [va, va+len), or -1 if it is not all mapped. */
  vaToGpa(va: number, len: number): number {
    for (const r of this.regions) if (va >= r.uaddr && va + len <= r.uaddr + r.size) return r.gpa + (va - r.uaddr);
    return -1;
  }

  /** Drop the frontend's pages now (views of the buffer then read zeros). */
  release(): void {
    if (this.released) return;
    this.released = true;
    native.remapAnonymous(this.address, this.total);
  }
}

/**
 * The memory table's entries: regions that follow each other in guest-physical addresses (and so, as
 * laid out, in the buffer) become one, so a buffer that crosses from one into the next (legal, and
 * common where a frontend splits its RAM) translates to one contiguous range. `sorted`: by address.
 */
function joinAdjacent(sorted: ReadonlyArray<{ gpa: number; size: number; offset: number }>): MemoryRegion[] {
  const out: MemoryRegion[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && last.gpa + last.size === r.gpa && last.offset + last.size === r.offset) last.size += r.size;
    else out.push({ gpa: r.gpa, size: r.size, offset: r.offset });
  }
  return out;
}
