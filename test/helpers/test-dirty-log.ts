// A dirty log (a bit per 4 KiB guest-physical page, src/virtio/dirty-log.ts) over all of a test's
// memory, and a look at the bit of the page holding a guest-physical address.
import { DirtyLog } from '../../src/virtio/dirty-log.js';
import type { TestMemory } from './virtq-driver.js';

/** `on` false: no log (undefined), as a device without one runs; `logged` then reads 0. */
export function testDirtyLog(mem: TestMemory, on = true): { log: DirtyLog | undefined; logged: (gpa: number) => number } {
  const bytes = Math.ceil((mem.base + mem.size) / 4096 / 8);
  const area = { buffer: new SharedArrayBuffer(bytes), offset: 0, size: bytes };
  const bits = new Uint8Array(area.buffer);
  return {
    log: on ? new DirtyLog(area, mem.view.table.regions) : undefined,
    logged: (gpa) => (bits[gpa >> 15] >> ((gpa >> 12) & 7)) & 1,
  };
}
