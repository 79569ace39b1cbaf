// The device side of the split virtqueue: what only it has (its used ring, used_event/avail_event,
// NO_INTERRUPT/NO_NOTIFY, a jumping available index); the contract on both layouts is in
// virtqueue-layouts.test.ts.
import { describe, it, expect } from 'vitest';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { TestMemory, TestDriver, F_NEXT, F_WRITE, F_INDIRECT } from './helpers/virtq-driver.js';

function setup(opts: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}) {
  const mem = new TestMemory();
  const drv = new TestDriver(mem, opts.size ?? 8, opts.eventIdx);
  const q = SplitQueue.create(mem.view, drv.cfg, { eventIdx: !!opts.eventIdx, indirect: opts.indirect ?? true }, 256);
  if (typeof q === 'string') throw new Error(q);
  return { mem, drv, q };
}

describe('split virtqueue', () => {
  it('follows an indirect table at any alignment (the spec asks none)', () => {
    for (const misalign of [1, 2, 4, 8]) {
      const { mem, drv, q } = setup();
      const bufs = [0, 1, 2].map(() => ({ addr: mem.alloc(64), len: 40 + misalign }));
      const table = mem.alloc(16 * 3 + 16) + misalign;
      bufs.forEach((b, k) => drv.writeDesc(k, b.addr, b.len, (k === 2 ? F_WRITE : F_NEXT), k + 1, table));
      drv.writeDesc(0, table, 48, F_INDIRECT, 0);
      drv.publish(0);
      expect(q.pop()).toBe(true);
      expect(q.broken).toBeUndefined();
      const c = q.chain;
      expect([c.count, c.readable, c.readableBytes, c.writableBytes]).toEqual([3, 2, 2 * (40 + misalign), 40 + misalign]);
      expect([...c.offsets.subarray(0, 3)]).toEqual(bufs.map((b) => b.addr));
    }
  });

  it('publishes used elements in one index update per flush', () => {
    const { mem, drv, q } = setup();
    const h1 = drv.add([{ addr: mem.alloc(10), len: 10 }]);
    const h2 = drv.add([{ addr: mem.alloc(10), len: 10 }]);
    q.pop();
    q.addUsed(q.chain.head, 0);
    q.pop();
    q.addUsed(q.chain.head, 7);
    expect(drv.takeUsed()).toEqual([]); // not yet published
    q.flush();
    expect(drv.takeUsed()).toEqual([{ id: h1, len: 0 }, { id: h2, len: 7 }]);
  });

  it('wraps its indices past 65535', () => {
    const { mem, drv, q } = setup({ size: 4 });
    const buf = mem.alloc(16);
    q.setState({ nextAvail: 65534, nextUsed: 65534, availWrap: true, usedWrap: true });
    drv.availIdx = 65534;
    drv.lastUsed = 65534;
    for (let k = 0; k < 6; k++) {
      drv.add([{ addr: buf, len: 16 }]);
      expect(q.pop()).toBe(true);
      q.addUsed(q.chain.head, 16);
      q.flush();
      expect(drv.takeUsed()).toHaveLength(1);
    }
    expect(q.getState().nextAvail).toBe(4);
  });

  it('interrupts only when the driver asked (EVENT_IDX used_event)', () => {
    const { mem, drv, q } = setup({ eventIdx: true });
    const buf = mem.alloc(16);
    drv.usedEvent = 2; // "interrupt me when used.idx passes 2"
    for (let k = 0; k < 4; k++) drv.add([{ addr: buf, len: 16 }]);
    const results: boolean[] = [];
    for (let k = 0; k < 4; k++) {
      q.pop();
      q.addUsed(q.chain.head, 0);
      q.flush();
      results.push(q.needsInterrupt());
    }
    expect(results).toEqual([false, false, true, false]);
  });

  it('honours NO_INTERRUPT without EVENT_IDX', () => {
    const { mem, drv, q } = setup();
    drv.add([{ addr: mem.alloc(16), len: 16 }]);
    drv.noInterrupt = true;
    q.pop();
    q.addUsed(q.chain.head, 0);
    q.flush();
    expect(q.needsInterrupt()).toBe(false);
  });

  it('asks for kicks through avail_event (EVENT_IDX) or NO_NOTIFY', () => {
    const e = setup({ eventIdx: true });
    e.drv.add([{ addr: e.mem.alloc(16), len: 16 }]);
    e.q.pop();
    e.q.setKicks(true);
    expect(e.drv.availEvent).toBe(1);
    const p = setup();
    p.q.setKicks(false);
    expect(p.drv.usedFlags).toBe(1);
    p.q.setKicks(true);
    expect(p.drv.usedFlags).toBe(0);
  });

});

describe('split virtqueue against a hostile driver', () => {
  function hostile(write: (drv: TestDriver, mem: TestMemory) => void, opts: { indirect?: boolean } = {}) {
    const { mem, drv, q } = setup({ indirect: opts.indirect });
    write(drv, mem);
    expect(q.pop()).toBe(false);
    return q.broken;
  }

  it('breaks on a descriptor loop instead of spinning', () => {
    expect(hostile((d, m) => {
      const b = m.alloc(16);
      d.writeDesc(0, b, 16, F_NEXT, 1);
      d.writeDesc(1, b, 16, F_NEXT, 0);
      d.publish(0);
    })).toBe('descriptor chain too long');
    expect(hostile((d, m) => {
      const t = m.alloc(32);
      d.writeDesc(0, m.alloc(16), 16, F_NEXT, 1, t); // a loop inside an indirect table
      d.writeDesc(1, m.alloc(16), 16, F_NEXT, 0, t);
      d.writeDesc(0, t, 32, F_INDIRECT, 0);
      d.publish(0);
    })).toBe('descriptor chain too long');
  });

  it('breaks on out-of-range next indices', () => {
    expect(hostile((d, m) => {
      d.writeDesc(0, m.alloc(16), 16, F_NEXT, 9999);
      d.publish(0);
    })).toBe('descriptor index out of range');
  });

  it('breaks when the available index runs ahead by more than the ring', () => {
    const { drv, q } = setup();
    drv.availIdx = 9;
    drv.publish(0); // idx 10 with nothing taken: 10 > 8
    expect(q.pending()).toBe(0);
    expect(q.broken).toBe('available index jumped');
    expect(q.pop()).toBe(false);
  });
});
