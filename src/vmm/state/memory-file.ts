// Guest memory to a sparse file: the file is as large as the memory, and only pages holding a non-zero
// byte are written, each at its own offset; the rest stay holes (they read back as zeros and take no
// disk). Only pages the guest may have touched are looked at, so a large, mostly untouched memory is
// neither read nor faulted in:
//   - a memfd (a VM booted here): its data ranges, as lseek(SEEK_DATA/SEEK_HOLE) gives them (tmpfs
//     knows which pages were ever allocated);
//   - a memory file mapped copy-on-write (a restored VM): the file's data ranges and every page this
//     process has in its page tables or swap (/proc/self/pagemap), which holds the guest's own copies.
// The VM must be paused and its devices quiesced: nothing may write guest memory meanwhile.
import { closeSync, fdatasyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { native } from '../../native.js';
import type { GuestMemory } from '../memory.js';

export const PAGE = 4096;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
/** pages written (and looked at) per call: a run never crosses a guest-bytes window this way */
const CHUNK = 1 << 20;
/** pagemap: bit 63 present, bit 62 swapped (of each 64-bit entry, here its upper 32 bits) */
const PM_PRESENT = 0x80000000;
const PM_SWAPPED = 0x40000000;
const PAGEMAP_BATCH = 1 << 16;

/** [start, end) byte offsets, page-aligned, ascending, not overlapping */
export type Ranges = Array<[number, number]>;

/** The data ranges of `fd` up to `size` (lseek SEEK_DATA/SEEK_HOLE), widened to whole pages. */
export function seekDataRanges(fd: number, size: number): Ranges {
  const out: Ranges = [];
  let at = 0;
  while (at < size) {
    const data = native.lseek(fd, at, SEEK_DATA);
    if (data === -ENXIO) break;
    if (data < 0) throw new Error(`lseek(SEEK_DATA): errno ${-data}`);
    if (data >= size) break;
    const hole = native.lseek(fd, data, SEEK_HOLE);
    const end = hole < 0 ? size : Math.min(size, Math.ceil(hole / PAGE) * PAGE);
    out.push([Math.floor(data / PAGE) * PAGE, end]);
    at = end;
  }
  return out;
}

/** The pages of [address, address+size) this process has present or swapped (/proc/self/pagemap). */
export function residentRanges(address: bigint, size: number): Ranges {
  const out: Ranges = [];
  const pages = Math.ceil(size / PAGE);
  const fd = openSync('/proc/self/pagemap', 'r');
  try {
    const buf = Buffer.alloc(PAGEMAP_BATCH * 8);
    const hi = new Uint32Array(buf.buffer, buf.byteOffset, PAGEMAP_BATCH * 2);
    const first = Number(address / BigInt(PAGE));
    for (let p = 0; p < pages; p += PAGEMAP_BATCH) {
      const n = Math.min(PAGEMAP_BATCH, pages - p);
      const got = readSync(fd, buf, 0, n * 8, (first + p) * 8);
      if (got !== n * 8) throw new Error(`/proc/self/pagemap: read ${got} of ${n * 8} bytes`);
      for (let i = 0; i < n; i++) {
        if (!(hi[2 * i + 1] & (PM_PRESENT | PM_SWAPPED))) continue;
        const start = (p + i) * PAGE;
        const last = out[out.length - 1];
        if (last && last[1] === start) last[1] = start + PAGE;
        else out.push([start, start + PAGE]);
      }
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Two sets of ranges as one (sorted, overlaps and neighbours merged). */
export function unionRanges(a: Ranges, b: Ranges): Ranges {
  const all = [...a, ...b].sort((x, y) => x[0] - y[0]);
  const out: Ranges = [];
  for (const [s, e] of all) {
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** Where the guest may have written: the only ranges a snapshot looks at. */
export function touchedRanges(mem: GuestMemory): Ranges {
  const size = mem.table.totalSize;
  const fileData = seekDataRanges(mem.fd, size);
  return mem.copyOnWrite ? unionRanges(fileData, residentRanges(mem.hostAddress, size)) : fileData;
}

export interface MemoryFileStats {
  /** bytes of the memory (the file's size) */
  size: number;
  /** pages looked at (touched) and pages written (not all zero) */
  scanned: number;
  written: number;
}

/** Write `mem` to a new file at `path` (which must not exist): non-zero pages only, holes elsewhere. */
export function writeMemoryFile(path: string, mem: GuestMemory): MemoryFileStats {
  const size = mem.table.totalSize;
  const stats: MemoryFileStats = { size, scanned: 0, written: 0 };
  const fd = openSync(path, 'wx', 0o600);
  try {
    ftruncateSync(fd, size);
    for (const [start, end] of touchedRanges(mem)) {
      for (let at = start; at < end; ) {
        const stop = Math.min(end, (Math.floor(at / CHUNK) + 1) * CHUNK);
        writeChunk(fd, mem, at, stop, stats);
        at = stop;
      }
    }
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return stats;
}

/** The non-zero pages of [from, to) (inside one CHUNK, so inside one window), in runs. */
function writeChunk(fd: number, mem: GuestMemory, from: number, to: number, stats: MemoryFileStats): void {
  const w = mem.bytes.window(from);
  let run = -1;
  const flush = (end: number) => {
    if (run < 0) return;
    writeSync(fd, w.u8, run - w.base, end - run, run);
    run = -1;
  };
  for (let page = from; page < to; page += PAGE) {
    stats.scanned++;
    const words = w.u32;
    const i0 = (page - w.base) >>> 2;
    let nonZero = 0;
    for (let i = i0; i < i0 + PAGE / 4; i++) nonZero |= words[i];
    if (nonZero) {
      stats.written++;
      if (run < 0) run = page;
    } else flush(page);
  }
  flush(to);
}
