// What only the packed ring has: wrap counters, event suppression structures, buffer ids, used
// descriptors written into the ring — and a driver abusing them.
import { describe, it, expect } from 'vitest';
import { PackedQueue, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE } from '../src/virtio/packed-queue.js';
import { IommuTable, IommuReader, MAP_READ, MAP_WRITE } from '../src/viommu/table.js';
import { guestView } from '../src/virtio/dma.js';
import { decodeRingBase, encodeRingBase } from '../src/virtio/virtqueue.js';
import { GuestBytes } from '../src/virtio/guest-bytes.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { PackedTestDriver, P_AVAIL, P_USED, P_NEXT, P_WRITE, P_INDIRECT } from './helpers/packed-driver.js';

function setup(o: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}) {
  const mem = new TestMemory();
  const drv = new PackedTestDriver(mem, o.size ?? 8, o.eventIdx);
  const q = PackedQueue.create(mem.view, drv.cfg, { eventIdx: !!o.eventIdx, indirect: o.indirect ?? true, packed: true }, 256);
  if (typeof q === 'string') throw new Error(q);
  return { mem, drv, q };
}

/** pop what is there and give it back used, one flush */
function serve(q: PackedQueue, len = 0): number {
  let n = 0;
  while (q.pop()) {
    q.addUsed(q.chain.head, len);
    n++;
  }
  q.flush();
  return n;
}

describe('packed virtqueue', () => {
  it('writes used descriptors over the chains they complete, with WRITE when bytes were written', () => {
    const { mem, drv, q } = setup();
    const a = drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }]);
    const b = drv.add([{ addr: mem.alloc(16), len: 16, write: true }]);
    expect(serve(q, 0)).toBe(2);
    // a's used descriptor in slot 0 (a took slots 0-1), b's in slot 2: where the driver looks for them
    const flags = (slot: number) => mem.dv.getUint16(drv.cfg.desc - mem.base + 16 * slot + 14, true);
    expect(flags(0) & (P_AVAIL | P_USED | P_WRITE)).toBe(P_AVAIL | P_USED);
    expect(drv.takeUsed()).toEqual([{ id: a, len: 0 }, { id: b, len: 0 }]);
    drv.add([{ addr: mem.alloc(16), len: 16, write: true }]);
    serve(q, 16);
    expect(flags(3) & P_WRITE).toBe(P_WRITE); // (slot 3: after a and b)
  });

  it('uses chains out of order: each used descriptor moves the used position by its own chain', () => {
    const { mem, drv, q } = setup({ size: 4 });
    const a = drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }]);
    const b = drv.add([{ addr: mem.alloc(16), len: 16 }]);
    q.pop();
    q.pop();
    q.addUsed(b, 1);
    q.addUsed(a, 2);
    q.flush();
    // the driver reads b (1 slot) then a (2 slots): back at slot 3, same wrap
    expect(drv.takeUsed()).toEqual([{ id: b, len: 1 }, { id: a, len: 2 }]);
    const c = drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }]);
    expect(q.pop()).toBe(true);
    expect(q.chain.head).toBe(c);
    q.addUsed(c, 3);
    q.flush();
    expect(drv.takeUsed()).toEqual([{ id: c, len: 3 }]);
    expect(q.getState()).toEqual({ nextAvail: 1, nextUsed: 1, availWrap: false, usedWrap: false });
  });

  it('follows an indirect table at any alignment (the spec asks none)', () => {
    for (const misalign of [1, 2, 4, 8]) {
      const { mem, drv, q } = setup();
      const bufs = [0, 1, 2].map(() => ({ addr: mem.alloc(64), len: 40 + misalign }));
      const table = mem.alloc(16 * 3 + 16) + misalign;
      bufs.forEach((b, k) => drv.writeTableEntry(table, k, b.addr, b.len, k === 2 ? P_WRITE : 0));
      drv.raw([{ addr: table, len: 48, flags: P_INDIRECT }]);
      expect(q.pop()).toBe(true);
      const c = q.chain;
      expect([c.count, c.readable, c.readableBytes, c.writableBytes]).toEqual([3, 2, 2 * (40 + misalign), 40 + misalign]);
      expect([...c.offsets.subarray(0, 3)]).toEqual(bufs.map((b) => b.addr));
    }
  });

  it('counts available chains, not descriptors, and asks for kicks past them when told to', () => {
    const { mem, drv, q } = setup({ size: 8, eventIdx: true });
    drv.add([{ addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }, { addr: mem.alloc(16), len: 16 }]);
    drv.add([{ addr: mem.alloc(16), len: 16 }]);
    expect(q.pending()).toBe(2);
    expect(q.pending(1)).toBe(1);
    q.setKicks(true);
    expect(drv.deviceEvent).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8000 | 0 });
    q.setKicks(true, true);
    expect(drv.deviceEvent).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8000 | 4 });
    q.setKicks(false);
    expect(drv.deviceEvent.flags).toBe(RING_EVENT_FLAGS_DISABLE);
    const plain = setup();
    plain.q.setKicks(false);
    expect(plain.drv.deviceEvent.flags).toBe(RING_EVENT_FLAGS_DISABLE);
    plain.q.setKicks(true);
    expect(plain.drv.deviceEvent.flags).toBe(RING_EVENT_FLAGS_ENABLE);
  });

  it('interrupts as the driver event suppression says: enabled, disabled, or at a used position', () => {
    const { mem, drv, q } = setup({ size: 4, eventIdx: true });
    const buf = mem.alloc(16);
    const one = () => {
      drv.add([{ addr: buf, len: 16 }]);
      serve(q);
      drv.takeUsed();
      return q.needsInterrupt();
    };
    drv.setDriverEvent(RING_EVENT_FLAGS_ENABLE);
    expect(one()).toBe(true);
    expect(q.needsInterrupt()).toBe(false); // nothing new
    drv.setDriverEvent(RING_EVENT_FLAGS_DISABLE);
    expect(one()).toBe(false);
    // used position so far: 2 (wrap 1). "interrupt me once the used descriptor at 3 is written"
    drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8000 | 3);
    expect(one()).toBe(false); // wrote slot 2
    expect(one()).toBe(true); // wrote slot 3
    // across the wrap: at slot 1 of the next lap (wrap counter 0)
    drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 1);
    expect(one()).toBe(false); // slot 0
    expect(one()).toBe(true); // slot 1
    expect(one()).toBe(false);
  });

  it('interrupts when a batch passes the event position, however far', () => {
    const { mem, drv, q } = setup({ size: 8, eventIdx: true });
    drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8000 | 2);
    for (let k = 0; k < 6; k++) drv.add([{ addr: mem.alloc(16), len: 16 }]);
    expect(serve(q)).toBe(6);
    expect(q.needsInterrupt()).toBe(true);
  });

  it('interrupts for an event passed early in a pass that published more than a lap before it decided', () => {
    // (a dataplane pass publishes batch after batch while the driver recycles buffers, and asks once at
    // its end: more than a lap since the last decision, which positions and one wrap bit cannot tell
    // from less; the event passed in the first batch must still be owed)
    const { mem, drv, q } = setup({ size: 8, eventIdx: true });
    drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8000 | 2);
    const batch = (n: number) => {
      for (let k = 0; k < n; k++) drv.add([{ addr: mem.alloc(16), len: 16 }]);
      expect(serve(q)).toBe(n);
      drv.takeUsed();
    };
    batch(6); // slots 0-5 of lap 1: passes slot 2
    batch(4); // slots 6, 7, then 0, 1 of lap 2
    expect(q.needsInterrupt()).toBe(true);
    expect(q.needsInterrupt()).toBe(false);
  });

  it('publishes a ring\'s worth at once, so that no flush spans more than a lap', () => {
    const { mem, drv, q } = setup({ size: 4, eventIdx: true });
    drv.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8000 | 1);
    // the driver recycles each buffer as soon as it is used; the device flushes only at the end
    let used = 0;
    for (let k = 0; k < 6; k++) {
      drv.add([{ addr: mem.alloc(16), len: 16 }]);
      expect(q.pop()).toBe(true);
      q.addUsed(q.chain.head, 0);
      used += drv.takeUsed().length;
    }
    // the first four went out when the fourth was written, without a flush
    expect(used).toBe(4);
    q.flush();
    expect(used + drv.takeUsed().length).toBe(6);
    expect(q.needsInterrupt()).toBe(true);
  });

  it('leaves alone what the wrap counters say is not available, and keeps working', () => {
    const { mem, drv, q } = setup({ size: 4 });
    const buf = mem.alloc(16);
    // AVAIL = USED = 1: a used descriptor of this lap, not an available one
    drv.raw([{ addr: buf, len: 16, flags: 0, bits: P_AVAIL | P_USED }]);
    expect(q.pending()).toBe(0);
    expect(q.pop()).toBe(false);
    // the next lap's marking (AVAIL 0, USED 1) is not available on this one either
    const other = setup({ size: 4 });
    other.drv.raw([{ addr: buf, len: 16, flags: 0, bits: P_USED }]);
    expect(other.q.pop()).toBe(false);
    expect(q.broken ?? other.q.broken).toBeUndefined();
  });

  it('breaks on a chain that runs into a descriptor not available under its wrap counter', () => {
    const { mem, drv, q } = setup({ size: 4 });
    drv.raw([
      { addr: mem.alloc(16), len: 16, flags: P_NEXT },
      { addr: mem.alloc(16), len: 16, flags: 0, bits: P_AVAIL | P_USED },
    ]);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('chain continues into an unavailable descriptor');
  });

  it('breaks on a buffer id reused while its chain is in use', () => {
    const { mem, drv, q } = setup();
    drv.raw([{ addr: mem.alloc(16), len: 16, flags: 0 }], 3);
    drv.raw([{ addr: mem.alloc(16), len: 16, flags: 0 }], 3);
    expect(q.pop()).toBe(true);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('buffer id already in use');
  });

  it('writes back only chains it gave out (a stale or foreign id changes nothing)', () => {
    const { mem, drv, q } = setup();
    const id = drv.add([{ addr: mem.alloc(16), len: 16 }]);
    q.pop();
    q.addUsed(5, 9);
    q.addUsed(id, 1);
    q.addUsed(id, 1);
    q.flush();
    expect(drv.takeUsed()).toEqual([{ id, len: 1 }]);
    expect(q.getState().nextUsed).toBe(1);
  });

  it('starts from a ring state with the other wrap counter without touching what is not its lap', () => {
    const { mem, drv, q } = setup({ size: 4 });
    drv.add([{ addr: mem.alloc(16), len: 16 }]);
    q.setState({ nextAvail: 0, nextUsed: 0, availWrap: false, usedWrap: false });
    expect(q.pop()).toBe(false);
    expect(q.broken).toBeUndefined();
    // out-of-range positions from a frontend land inside the ring
    q.setState({ nextAvail: 70000, nextUsed: 9, availWrap: true, usedWrap: true });
    const s = q.getState();
    expect(s.nextAvail).toBeLessThan(4);
    expect(s.nextUsed).toBeLessThan(4);
  });

  it('stalls on an IOTLB miss with the chain still available, and takes it once the mapping comes', () => {
    const mem = new TestMemory(1 << 20, 0);
    const t = new IommuTable();
    const reader = new IommuReader(t.buffer, 1, t.newThreadSlot());
    t.setEndpoint(1, 1);
    t.map(1, 0, 0x1ffff, 0, MAP_READ | MAP_WRITE);
    const drv = new PackedTestDriver(mem, 8);
    const q = PackedQueue.create(guestView(mem.buffer, mem.view.table, reader), drv.cfg, { eventIdx: false, indirect: true, packed: true }, 256);
    if (typeof q === 'string') throw new Error(q);
    q.missesWait = true;
    const id = drv.add([{ addr: 0x100000, len: 64, write: true }]);
    expect(q.pop()).toBe(false);
    expect([q.stalled, q.broken]).toEqual([true, undefined]);
    t.map(1, 0x100000, 0x100fff, 0x60000, MAP_WRITE);
    q.remapRings();
    expect(q.pop()).toBe(true);
    expect([q.chain.head, q.chain.offsets[0]]).toEqual([id, 0x60000]);
    // without missesWait (the vIOMMU) an unmapped buffer is a fault: the queue stops
    q.missesWait = false;
    drv.add([{ addr: 0x200000, len: 64, write: true }]);
    expect(q.pop()).toBe(false);
    expect(q.broken).toBe('IOMMU fault');
  });

  it('reads and writes a ring, its event suppression areas and an indirect table across window boundaries (64 KiB windows)', () => {
    const mem = new TestMemory(1 << 20);
    mem.view.bytes = new GuestBytes(mem.buffer, 0x10000, 0x2000);
    const drv = new PackedTestDriver(mem, 64, true);
    // the ring (1 KiB) across the boundary at 0x20000; the driver area ends at the one at 0x30000, the
    // device area starts at the one at 0x40000 (each in a window other than the first)
    Object.assign(drv.cfg, { desc: 0x20000 - 512, avail: 0x30000 - 4, used: 0x40000 });
    const features = { eventIdx: true, indirect: true, packed: true };
    const q = PackedQueue.create(mem.view, drv.cfg, features, 1024);
    if (typeof q === 'string') throw new Error(q);
    // a ring that might not fit in one window's overlap (more than 8 KiB of descriptors) is refused
    expect(PackedQueue.create(mem.view, { ...drv.cfg, size: 513 }, features, 1024)).toBe('bad queue size');
    expect(typeof PackedQueue.create(mem.view, { ...drv.cfg, size: 512 }, features, 1024)).not.toBe('string');
    // 70 two-descriptor chains: every slot written and used on both sides of the boundary, over two laps
    for (let k = 0; k < 70; k++) {
      const a = 0x50000 + 256 * k;
      const id = drv.add([{ addr: a, len: 100 }, { addr: a + 100, len: 28, write: true }]);
      expect(q.pop()).toBe(true);
      expect([q.chain.head, q.chain.count, q.chain.readable, q.chain.offsets[0], q.chain.offsets[1], q.chain.lens[1]]).toEqual([id, 2, 1, a, a + 100, 28]);
      q.addUsed(q.chain.head, 28 + k);
      q.flush();
      expect(drv.takeUsed()).toEqual([{ id, len: 28 + k }]);
    }
    // (owed for those: the driver has interrupts enabled)
    expect(q.needsInterrupt()).toBe(true);
    // an indirect table across the boundary at 0x60000 (8-byte aligned: the spec asks no alignment)
    const table = 0x60000 - 24;
    drv.writeTableEntry(table, 0, 0x70000, 10, 0);
    drv.writeTableEntry(table, 1, 0x70100, 20, 0);
    drv.writeTableEntry(table, 2, 0x70200, 30, P_WRITE);
    const id = drv.raw([{ addr: table, len: 48, flags: P_INDIRECT }]);
    expect(q.pop()).toBe(true);
    expect([q.chain.head, ...q.chain.offsets.subarray(0, 3)]).toEqual([id, 0x70000, 0x70100, 0x70200]);
    expect([q.chain.readable, q.chain.readableBytes, q.chain.writableBytes]).toEqual([2, 30, 30]);
    // event suppression through the windows of those areas: kicks wanted at the next slot (140 % 64,
    // plus the indirect chain's one, in the ring's third lap: wrap counter 1)
    q.setKicks(true);
    expect(drv.deviceEvent).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8000 | 13 });
    drv.setDriverEvent(RING_EVENT_FLAGS_DISABLE);
    q.addUsed(id, 30);
    q.flush();
    expect(q.needsInterrupt()).toBe(false);
    expect(drv.takeUsed()).toEqual([{ id, len: 30 }]);
    expect(q.broken).toBeUndefined();
  });
});

describe('ring state as a vhost-user vring base', () => {
  it('packs both positions and wrap counters for packed rings, the avail index alone for split ones', () => {
    const s = { nextAvail: 0x1234, nextUsed: 0x0567, availWrap: false, usedWrap: true };
    expect(encodeRingBase(s, true)).toBe(0x85671234);
    expect(decodeRingBase(encodeRingBase(s, true), true)).toEqual(s);
    expect(encodeRingBase({ ...s, nextAvail: 0xfffe }, false)).toBe(0xfffe);
    expect(decodeRingBase(0xfffe, false)).toEqual({ nextAvail: 0xfffe, nextUsed: 0xfffe, availWrap: true, usedWrap: true });
  });
});
