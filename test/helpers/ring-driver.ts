// What tests need of a scripted guest driver whatever its ring layout (TestDriver: split,
// PackedTestDriver: packed), both layouts with their flag values, and a look at an eventfd's count.
import type { QueueConfig } from '../../src/virtio/virtqueue.js';
import { native } from '../../src/native.js';
import { TestDriver, F_NEXT, F_WRITE, F_INDIRECT, type TestMemory } from './virtq-driver.js';
import { PackedTestDriver, P_NEXT, P_WRITE, P_INDIRECT } from './packed-driver.js';

export type Buf = { addr: number; len: number; write?: boolean };

export interface RingDriver {
  readonly cfg: QueueConfig;
  add(bufs: Buf[]): number;
  addIndirect(bufs: Buf[]): number;
  raw(descs: Array<{ addr: number; len: number; flags: number }>): number;
  writeTableEntry(table: number, k: number, addr: number, len: number, flags: number): void;
  takeUsed(): Array<{ id: number; len: number }>;
}

export interface RingLayout {
  name: 'split' | 'packed';
  packed: boolean;
  NEXT: number;
  WRITE: number;
  INDIRECT: number;
  driver(mem: TestMemory, size: number): RingDriver;
}

export const RING_LAYOUTS: RingLayout[] = [
  { name: 'split', packed: false, NEXT: F_NEXT, WRITE: F_WRITE, INDIRECT: F_INDIRECT, driver: (m, n) => new TestDriver(m, n) },
  { name: 'packed', packed: true, NEXT: P_NEXT, WRITE: P_WRITE, INDIRECT: P_INDIRECT, driver: (m, n) => new PackedTestDriver(m, n) },
];

/** What a non-blocking eventfd counted since the last look (interrupts signalled), reset to 0. */
export function eventfdCount(fd: number): number {
  const n = new BigUint64Array(1);
  try {
    native.read(fd, n);
  } catch {
    return 0;
  }
  return Number(n[0]);
}
