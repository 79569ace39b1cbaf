// The vIOMMU's shared translation table and what the dataplane does with it: map/unmap semantics,
// permissions, faults on unmapped and read-only DMA, buffers split across mappings, rings that lose
// their mapping, and UNMAP completing only once no thread can still use the old translation.
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { IommuTable, IommuReader, MAP_READ, MAP_WRITE, ENDPOINT_BYPASS, ENDPOINT_NONE } from '../src/viommu/table.js';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { guestView } from '../src/virtio/dma.js';
import { TestDriver, TestMemory } from './helpers/virtq-driver.js';

const RW = MAP_READ | MAP_WRITE;

describe('vIOMMU table', () => {
  it('maps, refuses overlaps, unmaps whole mappings only', () => {
    const t = new IommuTable();
    expect(t.map(1, 0x1000, 0x1fff, 0x10000, RW)).toBe(true);
    expect(t.map(1, 0x3000, 0x3fff, 0x20000, MAP_READ)).toBe(true);
    expect(t.map(1, 0x1800, 0x27ff, 0x50000, RW)).toBe(false); // overlaps the first
    expect(t.map(2, 0x1800, 0x27ff, 0x50000, RW)).toBe(true); // another domain: its own space
    expect(t.unmap(1, 0x1000, 0x17ff)).toBe(-1); // would split a mapping: refused, nothing removed
    expect(t.count).toBe(3);
    expect(t.unmap(1, 0, 0x2fff)).toBe(1);
    expect(t.unmap(1, 0, 0x2fff)).toBe(0);
    expect(t.count).toBe(2);
    t.dropDomain(2);
    expect(t.count).toBe(1);
  });

  it('translates through the endpoint\'s domain, with permissions, and records faults', () => {
    const t = new IommuTable();
    const r = new IommuReader(t.buffer, 7, t.newThreadSlot());
    expect(r.translate(0x1000, 16, MAP_READ)).toBe(false); // not attached: no DMA at all
    t.setEndpoint(7, 3);
    t.map(3, 0x1000, 0x1fff, 0x80000, MAP_READ);
    expect(r.translate(0x1010, 16, MAP_READ)).toBe(true);
    expect(r.hit).toEqual({ gpa: 0x80010, len: 16 });
    expect(r.translate(0x1ff0, 64, MAP_READ)).toBe(true);
    expect(r.hit).toEqual({ gpa: 0x80ff0, len: 16 }); // the rest lies beyond this mapping
    expect(r.translate(0x1010, 16, MAP_WRITE)).toBe(false); // read-only
    expect(r.translate(0x5000, 16, MAP_READ)).toBe(false); // unmapped
    const f = t.faultsSince(0);
    expect(f.next).toBe(3);
    expect(t.faultCount).toBe(3);
    expect(f.faults.slice(1)).toEqual([{ endpoint: 7, address: 0x1010, access: MAP_WRITE, generation: t.generation }, { endpoint: 7, address: 0x5000, access: MAP_READ, generation: t.generation }]);
    t.setEndpoint(7, ENDPOINT_BYPASS);
    expect(r.translate(0x5000, 16, MAP_WRITE)).toBe(true);
    expect(r.hit).toEqual({ gpa: 0x5000, len: 16 });
    t.setEndpoint(7, ENDPOINT_NONE);
    expect(r.translate(0x5000, 16, MAP_WRITE)).toBe(false);
  });

  it('reports each fault once it is written, in order, and never an older one in its place', () => {
    const t = new IommuTable();
    t.setEndpoint(1, 0);
    const r = new IommuReader(t.buffer, 1, t.newThreadSlot());
    for (let i = 0; i < 70; i++) r.translate(0x1000 * i, 8, MAP_READ);
    // more than the ring holds: the oldest are gone, the rest come in order
    const all = t.faultsSince(0);
    expect(all.next).toBe(70);
    expect(all.faults.map((f) => f.address / 0x1000)).toEqual(Array.from({ length: 64 }, (_, i) => i + 6));
    expect(t.faultsSince(68).faults.map((f) => f.address)).toEqual([68 * 0x1000, 69 * 0x1000]);
    // a thread has counted a fault (word 2 of the table) but not yet filled its slot: the slot still
    // holds fault 6's entry, which must not be reported as the new one; it comes when written
    Atomics.add(new Int32Array(t.buffer), 2, 1);
    expect(t.faultsSince(70)).toEqual({ next: 70, faults: [] });
  });

  it('sees a change at once (the cached translation dies with the generation)', () => {
    const t = new IommuTable();
    const r = new IommuReader(t.buffer, 1, t.newThreadSlot());
    t.setEndpoint(1, 1);
    t.map(1, 0, 0xfff, 0x10000, RW);
    expect(r.translate(0x10, 4, MAP_READ)).toBe(true);
    t.unmap(1, 0, 0xfff);
    expect(r.translate(0x10, 4, MAP_READ)).toBe(false);
    t.map(1, 0, 0xfff, 0x20000, RW);
    expect(r.translate(0x10, 4, MAP_READ)).toBe(true);
    expect(r.hit.gpa).toBe(0x20010);
  });
});

describe('virtqueue behind the vIOMMU', () => {
  /** guest memory at 0, the device's endpoint 1 in domain 1, rings identity-mapped */
  function setup() {
    const mem = new TestMemory(1 << 20, 0);
    const t = new IommuTable();
    const reader = new IommuReader(t.buffer, 1, t.newThreadSlot());
    t.setEndpoint(1, 1);
    const drv = new TestDriver(mem, 16);
    // the rings: one identity mapping over the first 128 KiB
    t.map(1, 0, 0x1ffff, 0, RW);
    const view = guestView(mem.buffer, mem.view.table, reader);
    const q = SplitQueue.create(view, drv.cfg, { eventIdx: false, indirect: true }, 256);
    if (typeof q === 'string') throw new Error(q);
    return { mem, t, drv, q };
  }

  it('splits a buffer that crosses mappings into the guest-physical pieces behind them', () => {
    const { mem, t, drv, q } = setup();
    // IOVA 0x100000..0x101fff: two pages mapped to guest pages far apart, in reverse order
    t.map(1, 0x100000, 0x100fff, 0x60000, MAP_READ);
    t.map(1, 0x101000, 0x101fff, 0x40000, MAP_READ);
    mem.bytes(0x60ff0, 16).fill(0xaa);
    mem.bytes(0x40000, 16).fill(0xbb);
    drv.add([{ addr: 0x100ff0, len: 32 }]);
    expect(q.pop()).toBe(true);
    const c = q.chain;
    expect(c.count).toBe(2);
    expect(c.readable).toBe(2);
    expect([c.offsets[0], c.lens[0], c.offsets[1], c.lens[1]]).toEqual([0x60ff0, 16, 0x40000, 16]);
    expect(c.readableBytes).toBe(32);
  });

  it('refuses DMA to an unmapped address: the queue stops, a fault is counted, nothing is touched', () => {
    const { drv, q, t } = setup();
    drv.add([{ addr: 0x300000, len: 64, write: true }]);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('IOMMU fault');
    expect(t.faultCount).toBe(1);
  });

  it('translates a zero-length buffer\'s address like any other: never used as guest-physical', () => {
    const { drv, q, t } = setup();
    t.map(1, 0x100000, 0x100fff, 0x60000, RW);
    // mapped: an empty piece where the mapping leads (0x100010 is not RAM as a guest-physical address)
    drv.add([{ addr: 0x100000, len: 16 }, { addr: 0x100010, len: 0, write: true }]);
    expect(q.pop()).toBe(true);
    expect([q.chain.count, q.chain.offsets[1], q.chain.lens[1]]).toEqual([2, 0x60010, 0]);
    // unmapped, though RAM at that guest-physical address: a fault
    drv.add([{ addr: 0x100000, len: 16 }, { addr: 0x50000, len: 0, write: true }]);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('IOMMU fault');
    expect(t.faultsSince(0).faults.at(-1)).toMatchObject({ endpoint: 1, address: 0x50000, access: MAP_WRITE });
  });

  it('refuses device writes into a read-only mapping', () => {
    const { drv, q, t } = setup();
    t.map(1, 0x100000, 0x100fff, 0x60000, MAP_READ);
    drv.add([{ addr: 0x100000, len: 64, write: true }]);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('IOMMU fault');
    expect(t.faultsSince(0).faults.at(-1)).toMatchObject({ endpoint: 1, address: 0x100000, access: MAP_WRITE });
  });

  it('stops touching a ring whose mapping the guest removed', () => {
    const { q, t } = setup();
    t.unmap(1, 0, 0x1ffff);
    q.remapRings();
    expect(q.broken).toBe('IOMMU fault');
    expect(q.pending()).toBe(0);
  });
});

describe('UNMAP waits for the dataplane threads', () => {
  it('completes only when no thread can still use the old mapping (no use after unmap)', async () => {
    const t = new IommuTable();
    t.setEndpoint(1, 1);
    const control = new SharedArrayBuffer(12);
    const c = new Int32Array(control);
    const iova = 0x100000;
    const w = new Worker(new URL('./helpers/iommu-reader-worker.mjs', import.meta.url), { workerData: { buffer: t.buffer, slot: t.newThreadSlot(), iova, control } });
    await new Promise((r) => w.once('message', r));
    let violations = 0;
    let overlapping = 0;
    for (let i = 0; i < 200; i++) {
      t.map(1, iova, iova + 0xfff, 0x5000, RW);
      const usesBefore = Atomics.load(c, 2);
      for (let k = 0; k < 1000 && Atomics.load(c, 2) === usesBefore; k++) await new Promise((r) => setImmediate(r));
      t.unmap(1, iova, iova + 0xfff);
      if (Atomics.load(c, 1)) overlapping++; // the thread held it when the guest asked: the wait matters
      t.quiescentSync(t.generation);
      // from here on the guest may reuse the memory: the thread must not be using the translation
      if (Atomics.load(c, 1)) violations++;
    }
    Atomics.store(c, 0, 1);
    await new Promise((r) => w.once('exit', r));
    expect(violations).toBe(0);
    // (the test is only meaningful if unmaps did land while the thread held the mapping)
    expect(overlapping).toBeGreaterThan(0);
  });

  it('a thread waking while the guest unmaps translates its rings again (enter() publishes no stale generation)', async () => {
    // (the thread read the generation, the guest's UNMAP then completed finding it idle, and the thread
    // published the generation it read: it went on with its rings' old translations, `moved` false)
    const t = new IommuTable();
    t.setEndpoint(1, 1);
    const ring = 0x200000;
    t.map(1, ring, ring + 0xfff, 0x9000, RW);
    const c = new Int32Array(new SharedArrayBuffer(4));
    const w = new Worker(new URL('./helpers/iommu-enter-race-worker.mjs', import.meta.url), { workerData: { buffer: t.buffer, slot: t.newThreadSlot(), control: c.buffer } });
    const said: unknown[] = [];
    const next = () => new Promise((r) => w.once('message', (m) => r(said.push(m))));
    await next();
    expect(said[0]).toBe('between read and publish');
    t.unmap(1, ring, ring + 0xfff);
    t.quiescentSync(t.generation); // the thread is idle: this returns at once, and the guest reuses the page
    const answer = next();
    Atomics.store(c, 0, 1);
    Atomics.notify(c, 0);
    await answer;
    await new Promise((r) => w.once('exit', r));
    expect(said[1]).toEqual({ moved: true });
  });

  it('waits as long as a thread holds the old mapping, past any time limit, and says it is slow', async () => {
    // (a thread not scheduled for seconds on a loaded host: the wait used to give up after 5 s and let
    // the guest reuse memory the thread was about to write)
    const t = new IommuTable();
    t.setEndpoint(1, 1);
    const c = new Int32Array(new SharedArrayBuffer(12));
    const iova = 0x100000;
    t.map(1, iova, iova + 0xfff, 0x5000, RW);
    const w = new Worker(new URL('./helpers/iommu-reader-worker.mjs', import.meta.url), { workerData: { buffer: t.buffer, slot: t.newThreadSlot(), iova, control: c.buffer, holdUs: 5_500_000 } });
    await new Promise((r) => w.once('message', r));
    while (!Atomics.load(c, 1)) await new Promise((r) => setTimeout(r, 1));
    t.unmap(1, iova, iova + 0xfff);
    const slow: Array<[number, boolean]> = [];
    t.quiescentSync(t.generation, (thread, _ms, done) => slow.push([thread, done]));
    const stillUsing = Atomics.load(c, 1);
    Atomics.store(c, 0, 1);
    await new Promise((r) => w.once('exit', r));
    expect(stillUsing).toBe(0);
    // (said as it passed a second, and when it ended)
    expect(slow).toEqual([[0, false], [0, true]]);
  });
});
