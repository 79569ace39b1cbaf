// The Virtqueue contract on both layouts (split and packed): the same chains, used entries, rewinds
// and ring state, and every kind of hostile ring breaking the queue with its reason, never an
// exception, never an access outside guest memory.
import { describe, it, expect } from 'vitest';
import { createQueue } from '../src/virtio/queues.js';
import { GuestBytes } from '../src/virtio/guest-bytes.js';
import type { Virtqueue } from '../src/virtio/virtqueue.js';
import { ChainBatch } from '../src/virtio/chain-batch.js';
import { TestMemory, TestDriver, F_NEXT, F_WRITE, F_INDIRECT } from './helpers/virtq-driver.js';
import { PackedTestDriver, P_NEXT, P_WRITE, P_INDIRECT } from './helpers/packed-driver.js';

import type { RingDriver } from './helpers/ring-driver.js';

interface Layout {
  name: 'split' | 'packed';
  NEXT: number;
  WRITE: number;
  INDIRECT: number;
  driver(mem: TestMemory, size: number): RingDriver;
}

const layouts: Layout[] = [
  { name: 'split', NEXT: F_NEXT, WRITE: F_WRITE, INDIRECT: F_INDIRECT, driver: (m, n) => new TestDriver(m, n) },
  { name: 'packed', NEXT: P_NEXT, WRITE: P_WRITE, INDIRECT: P_INDIRECT, driver: (m, n) => new PackedTestDriver(m, n) },
];

// Each layout twice: with the memory's real windows (1 GiB: all of the test memory in the first), and
// with a window every 256 bytes reaching 128 bytes into the next (the largest ring or table here: 8
// descriptors), so that rings, tables and buffers cross window boundaries and anything read through
// the wrong window is out of its reach (the driver writes through a view of the whole buffer, the queue
// through its windows: src/virtio/guest-bytes.ts).
const windowings = [
  { name: '', span: 0, overlap: 0 },
  { name: ', 256-byte windows', span: 0x100, overlap: 0x80 },
];

for (const L of layouts) for (const W of windowings) {
  const setup = (o: { size?: number; indirect?: boolean; mem?: TestMemory } = {}) => {
    const mem = o.mem ?? new TestMemory();
    if (W.span) mem.view.bytes = new GuestBytes(mem.buffer, W.span, W.overlap);
    const drv = L.driver(mem, o.size ?? 8);
    const q = createQueue(mem.view, drv.cfg, { eventIdx: false, indirect: o.indirect ?? true, packed: L.name === 'packed' }, 256);
    if (typeof q === 'string') throw new Error(q);
    return { mem, drv, q };
  };

  describe(`${L.name} virtqueue${W.name}`, () => {
    it('is the layout the features asked for', () => {
      expect(setup().q.layout).toBe(L.name);
    });

    it('pops a chain with its readable and writable buffers as offsets into guest memory', () => {
      const { mem, drv, q } = setup();
      const [a, b, c] = [100, 200, 300].map((n) => mem.alloc(n));
      const id = drv.add([{ addr: a, len: 100 }, { addr: b, len: 200 }, { addr: c, len: 300, write: true }]);
      expect(q.pending()).toBe(1);
      expect(q.pop()).toBe(true);
      const ch = q.chain;
      expect([ch.head, ch.count, ch.readable, ch.writable, ch.readableBytes, ch.writableBytes]).toEqual([id, 3, 2, 1, 300, 300]);
      expect([...ch.offsets.subarray(0, 3)]).toEqual([a, b, c]);
      expect(q.pop()).toBe(false);
      expect(q.broken).toBeUndefined();
    });

    it('pops into chains the caller owns, each keeping its buffers', () => {
      const { mem, drv, q } = setup();
      const [a, b] = [mem.alloc(32), mem.alloc(64)];
      const ida = drv.add([{ addr: a, len: 32 }]);
      const idb = drv.add([{ addr: b, len: 64, write: true }]);
      const [ca, cb] = [q.newChain(), q.newChain()];
      expect(q.pop(ca) && q.pop(cb)).toBe(true);
      expect([ca.head, ca.offsets[0], ca.readableBytes, cb.head, cb.offsets[0], cb.writableBytes]).toEqual([ida, a, 32, idb, b, 64]);
    });

    it('takes chains in batches as pop() takes them one by one: one-buffer, indirect and chained alike', () => {
      const { mem, drv, q } = setup();
      const one = mem.alloc(64);
      const [a, b] = [mem.alloc(16), mem.alloc(32)];
      const t = [mem.alloc(24), mem.alloc(40)];
      const ids = [drv.add([{ addr: one, len: 64, write: true }]), drv.add([{ addr: a, len: 16 }, { addr: b, len: 32, write: true }]), drv.addIndirect([{ addr: t[0], len: 24 }, { addr: t[1], len: 40 }]), drv.add([{ addr: one, len: 12 }])];
      const cb = new ChainBatch(8, 64);
      expect(q.popBatch(cb, 8)).toBe(4);
      expect(cb.count).toBe(4);
      expect([...cb.heads.subarray(0, 4)]).toEqual(ids);
      expect([...cb.first.subarray(0, 5)]).toEqual([0, 1, 3, 5, 6]);
      expect([...cb.offsets.subarray(0, 6)]).toEqual([one, a, b, t[0], t[1], one]);
      expect([...cb.lens.subarray(0, 6)]).toEqual([64, 16, 32, 24, 40, 12]);
      expect([...cb.readable.subarray(0, 4)]).toEqual([0, 1, 2, 1]);
      expect([...cb.readableBytes.subarray(0, 4)]).toEqual([0, 16, 64, 12]);
      expect([...cb.writableBytes.subarray(0, 4)]).toEqual([64, 32, 0, 0]);
      expect(q.popBatch(cb, 8)).toBe(0);
      // given back, they come again in order; then used, in any order
      q.rewind(4);
      cb.reset();
      expect(q.popBatch(cb, 2)).toBe(2);
      expect(q.popBatch(cb, 8)).toBe(2);
      expect([...cb.heads.subarray(0, 4)]).toEqual(ids);
      for (const k of [2, 0, 3, 1]) q.addUsed(ids[k], 0);
      q.flush();
      expect(drv.takeUsed().map((u) => u.id)).toEqual([2, 0, 3, 1].map((k) => ids[k]));
      expect(q.broken).toBeUndefined();
    });

    it('leaves a chain that the batch has no room for in the ring', () => {
      const { mem, drv, q } = setup();
      const ids = [drv.add([{ addr: mem.alloc(16), len: 16 }]), drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }]), drv.add([{ addr: mem.alloc(16), len: 16 }])];
      const cb = new ChainBatch(8, 2);
      expect(q.popBatch(cb, 8)).toBe(1);
      cb.reset();
      expect(q.popBatch(cb, 8)).toBe(1);
      expect(cb.heads[0]).toBe(ids[1]);
      cb.reset();
      const small = new ChainBatch(1, 8);
      expect(q.popBatch(small, 8)).toBe(1);
      expect(small.heads[0]).toBe(ids[2]);
      expect(q.broken).toBeUndefined();
    });

    it('follows an indirect table', () => {
      const { mem, drv, q } = setup();
      const bufs = [0, 1, 2, 3].map(() => ({ addr: mem.alloc(64), len: 64 }));
      drv.addIndirect([...bufs.slice(0, 2), ...bufs.slice(2).map((b) => ({ ...b, write: true }))]);
      expect(q.pop()).toBe(true);
      expect([q.chain.count, q.chain.readable, q.chain.writable]).toEqual([4, 2, 2]);
      expect(q.chain.offsets[3]).toBe(bufs[3].addr);
    });

    it('publishes used entries only at flush, all of a batch at once', () => {
      const { mem, drv, q } = setup();
      const ids = [1, 2, 3].map(() => drv.add([{ addr: mem.alloc(10), len: 10, write: true }]));
      for (let k = 0; k < 3; k++) {
        q.pop();
        q.addUsed(q.chain.head, k);
      }
      expect(drv.takeUsed()).toEqual([]);
      q.flush();
      expect(drv.takeUsed()).toEqual(ids.map((id, k) => ({ id, len: k })));
    });

    it('gives back chains popped and not used: the next pops return them again', () => {
      const { mem, drv, q } = setup();
      const ids = [0, 1, 2].map(() => drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(64), len: 64, write: true }]));
      const popped: number[] = [];
      for (let k = 0; k < 3; k++) {
        expect(q.pop()).toBe(true);
        popped.push(q.chain.head);
      }
      expect(popped).toEqual(ids);
      q.addUsed(ids[0], 64);
      q.rewind(2);
      expect(q.pending()).toBe(2);
      q.flush();
      expect(drv.takeUsed()).toEqual([{ id: ids[0], len: 64 }]);
      expect(q.pop()).toBe(true);
      expect(q.chain.head).toBe(ids[1]);
      expect(q.pop()).toBe(true);
      expect(q.chain.head).toBe(ids[2]);
      q.addUsed(ids[1], 1);
      q.addUsed(ids[2], 2);
      q.flush();
      expect(drv.takeUsed()).toEqual([{ id: ids[1], len: 1 }, { id: ids[2], len: 2 }]);
      expect(q.broken).toBeUndefined();
    });

    it('moves chains through the ring many times over (indices and wrap counters wrap)', () => {
      const { mem, drv, q } = setup({ size: 4 });
      const buf = mem.alloc(64);
      // chains of 1, 2 and 3 descriptors: on a packed ring of 4 they straddle the wrap in every way
      for (let round = 0; round < 40; round++) {
        const n = 1 + (round % 3);
        const id = drv.add(Array.from({ length: n }, (_, k) => ({ addr: buf, len: 8, write: k === n - 1 })));
        expect(q.pop()).toBe(true);
        expect([q.chain.head, q.chain.count]).toEqual([id, n]);
        q.addUsed(id, round);
        q.flush();
        expect(drv.takeUsed()).toEqual([{ id, len: round }]);
      }
      expect(q.broken).toBeUndefined();
    });

    it('resumes where it stood from its ring state (save/restore, a restarted thread)', () => {
      const mem = new TestMemory();
      const { drv, q } = setup({ size: 4, mem });
      const buf = mem.alloc(64);
      for (let k = 0; k < 5; k++) {
        drv.add([{ addr: buf, len: 8 }, { addr: buf, len: 8, write: true }]);
        expect(q.pop()).toBe(true);
        q.addUsed(q.chain.head, 8);
        q.flush();
        expect(drv.takeUsed()).toHaveLength(1);
      }
      const state = q.getState();
      // a fresh queue on the same rings, told where the old one stood
      const q2 = createQueue(mem.view, drv.cfg, { eventIdx: false, indirect: true, packed: L.name === 'packed' }, 256) as Virtqueue;
      q2.setState(state);
      expect(q2.getState()).toEqual(state);
      const id = drv.add([{ addr: buf, len: 8, write: true }]);
      expect(q2.pop()).toBe(true);
      expect(q2.chain.head).toBe(id);
      q2.addUsed(id, 3);
      q2.flush();
      expect(drv.takeUsed()).toEqual([{ id, len: 3 }]);
    });
  });

  describe(`${L.name} virtqueue against a hostile driver${W.name}`, () => {
    /** why the queue broke on what `write` put in the ring: through pop(), and the same through popBatch() */
    function hostile(write: (drv: RingDriver, mem: TestMemory) => void, opts: { indirect?: boolean; size?: number } = {}) {
      const { mem, drv, q } = setup(opts);
      write(drv, mem);
      expect(q.pop()).toBe(false);
      // a broken queue takes nothing more
      expect(q.pending()).toBe(0);
      expect(q.pop()).toBe(false);
      const again = setup(opts);
      write(again.drv, again.mem);
      const cb = new ChainBatch(8, 64);
      expect(again.q.popBatch(cb, 8)).toBe(0);
      expect(again.q.broken).toBe(q.broken);
      expect(again.q.popBatch(cb, 8)).toBe(0);
      return q.broken;
    }

    it('takes what a batch holds and stops at the chain that breaks the ring, the chains before it taken', () => {
      const { mem, drv, q } = setup();
      const ok = [drv.add([{ addr: mem.alloc(16), len: 16 }]), drv.add([{ addr: mem.alloc(16), len: 16, write: true }])];
      drv.raw([{ addr: 2 ** 40, len: 16, flags: 0 }]);
      const cb = new ChainBatch(8, 64);
      expect(q.popBatch(cb, 8)).toBe(2);
      expect([...cb.heads.subarray(0, 2)]).toEqual(ok);
      expect(q.broken).toBe('buffer outside guest memory');
    });

    it('refuses rings outside guest memory, misaligned or of a bad size', () => {
      const mem = new TestMemory();
      const ok = { size: 8, desc: 0x10000, avail: 0x11000, used: 0x12000 };
      const f = { eventIdx: true, indirect: true, packed: L.name === 'packed' };
      expect(createQueue(mem.view, { ...ok, size: 0 }, f, 256)).toBe('bad queue size');
      expect(createQueue(mem.view, { ...ok, size: 512 }, f, 256)).toBe('bad queue size');
      expect(createQueue(mem.view, { ...ok, desc: 0x10008 }, f, 256)).toBe('ring misaligned');
      expect(createQueue(mem.view, { ...ok, used: 0x12002 }, f, 256)).toBe('ring misaligned');
      expect(createQueue(mem.view, { ...ok, used: mem.size }, f, 256)).toBe('ring outside guest memory');
      expect(createQueue(mem.view, { ...ok, desc: mem.size - 64 }, f, 256)).toBe('ring outside guest memory');
      expect(createQueue(mem.view, { ...ok, desc: 2 ** 40 }, f, 256)).toBe('ring outside guest memory');
      // split sizes are powers of two; packed ones need not be
      expect(typeof createQueue(mem.view, { ...ok, size: 6 }, f, 256)).toBe(L.name === 'split' ? 'string' : 'object');
    });

    it('breaks on buffers outside guest memory, including lengths that overflow', () => {
      expect(hostile((d) => d.raw([{ addr: 2 ** 36, len: 16, flags: 0 }]))).toBe('buffer outside guest memory');
      expect(hostile((d, m) => d.raw([{ addr: m.size - 100, len: 0xffffffff, flags: 0 }]))).toBe('buffer outside guest memory');
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(16), len: 16, flags: L.NEXT }, { addr: 2 ** 52, len: 1, flags: L.WRITE }]))).toBe('buffer outside guest memory');
    });

    it('breaks on readable buffers after writable ones', () => {
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(16), len: 16, flags: L.WRITE | L.NEXT }, { addr: m.alloc(16), len: 16, flags: 0 }]))).toBe('readable after writable');
      expect(hostile((d, m) => {
        const t = m.alloc(32);
        d.writeTableEntry(t, 0, m.alloc(16), 16, L.WRITE | L.NEXT);
        d.writeTableEntry(t, 1, m.alloc(16), 16, 0);
        d.raw([{ addr: t, len: 32, flags: L.INDIRECT }]);
      })).toBe('readable after writable');
    });

    it('breaks on bad indirect tables', () => {
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(32), len: 32, flags: L.INDIRECT }]), { indirect: false })).toBe('indirect descriptor not negotiated');
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(32), len: 32, flags: L.INDIRECT | L.NEXT }, { addr: m.alloc(16), len: 16, flags: 0 }]))).toBe('indirect with next');
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(32), len: 24, flags: L.INDIRECT }]))).toBe('bad indirect table size');
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(32), len: 0, flags: L.INDIRECT }]))).toBe('bad indirect table size');
      // more entries than the ring has descriptors
      expect(hostile((d, m) => d.raw([{ addr: m.alloc(16 * 16), len: 16 * 16, flags: L.INDIRECT }]))).toBe('bad indirect table size');
      expect(hostile((d, m) => d.raw([{ addr: m.size - 16, len: 32, flags: L.INDIRECT }]))).toBe('buffer outside guest memory');
      expect(hostile((d, m) => {
        const t = m.alloc(32);
        d.writeTableEntry(t, 0, m.alloc(32), 32, L.INDIRECT);
        d.raw([{ addr: t, len: 32, flags: L.INDIRECT }]);
      })).toBe('nested indirect table');
    });

    it('breaks on a chain longer than the ring instead of spinning', () => {
      // split: a descriptor loop; packed: a chain that runs on into the slots the driver has not filled
      // (after a whole ring of NEXT it comes back to its own head, under the other wrap counter)
      const reason = hostile((d, m) => d.raw(Array.from({ length: 8 }, () => ({ addr: m.alloc(16), len: 16, flags: L.NEXT }))));
      expect(reason).toBe(L.name === 'split' ? 'descriptor chain too long' : 'chain continues into an unavailable descriptor');
      if (L.name === 'split') {
        expect(hostile((d, m) => {
          const t = m.alloc(32);
          d.writeTableEntry(t, 0, m.alloc(16), 16, L.NEXT);
          d.writeTableEntry(t, 1, m.alloc(16), 16, L.NEXT); // entry 1 links to 2, out of a 2-entry table
          d.raw([{ addr: t, len: 32, flags: L.INDIRECT }]);
        })).toBe('descriptor index out of range');
      }
    });

    it('breaks on out-of-range heads or buffer ids', () => {
      if (L.name === 'split') {
        expect(hostile((d) => (d as TestDriver).publish(100))).toBe('descriptor index out of range');
      } else {
        expect(hostile((d, m) => (d as PackedTestDriver).raw([{ addr: m.alloc(16), len: 16, flags: 0 }], 8))).toBe('buffer id out of range');
        expect(hostile((d, m) => (d as PackedTestDriver).raw([{ addr: m.alloc(16), len: 16, flags: 0 }], 0xffff))).toBe('buffer id out of range');
        // a buffer id still in use (taken, not yet used) breaks the ring at its second chain, by pop() or in a batch
        for (const batch of [false, true]) {
          const { mem, drv, q } = setup();
          for (let k = 0; k < 2; k++) (drv as PackedTestDriver).raw([{ addr: mem.alloc(16), len: 16, flags: 0 }], 3);
          if (batch) expect(q.popBatch(new ChainBatch(8, 64), 8)).toBe(1);
          else expect([q.pop(), q.pop()]).toEqual([true, false]);
          expect(q.broken).toBe('buffer id already in use');
        }
      }
    });
  });
}
