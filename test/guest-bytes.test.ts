// Guest memory seen through overlapping windows (src/virtio/guest-bytes.ts): every access lands on the
// right byte of the one buffer, whatever window it goes through, and memory larger than a typed array
// (a sparse 6 GiB memfd) is read and written above 4 GiB.
import { describe, it, expect } from 'vitest';
import { native } from '../src/native.js';
import { GuestBytes, WINDOW_OVERLAP, WINDOW_SPAN } from '../src/virtio/guest-bytes.js';
import { GuestMemory } from '../src/vmm/memory.js';
import { SplitQueue } from '../src/virtio/split-queue.js';
import { TestMemory, TestDriver, F_NEXT, F_WRITE, F_INDIRECT } from './helpers/virtq-driver.js';
import { ramRegions, GiB } from '../src/boot/layout.js';

describe('guest bytes', () => {
  it('small windows: each offset in the window of its first byte, structures up to the overlap whole in it', () => {
    const buf = new SharedArrayBuffer(256 * 1024);
    const g = new GuestBytes(buf, 64 * 1024, 4096);
    const plain = new DataView(buf);
    for (const off of [0, 65535 - 3, 65536 - 2, 65536, 131072 + 4095, 256 * 1024 - 8]) {
      g.setU32(off, 0x11223344 + off);
      expect(plain.getUint32(off, true)).toBe((0x11223344 + off) >>> 0);
      expect(g.u32(off)).toBe((0x11223344 + off) >>> 0);
      const w = g.window(off);
      expect(off - w.base + 4096 <= w.u8.length || off + 4096 > buf.byteLength).toBe(true);
    }
    // the end of the buffer (where an empty range ending RAM lies) has the last window, indexing nothing there
    expect(g.window(256 * 1024)).toBe(g.window(256 * 1024 - 1));
    expect(g.u8(256 * 1024)).toBeUndefined();
    g.setU16(65535, 0xabcd);
    expect(plain.getUint16(65535, true)).toBe(0xabcd);
    plain.setBigUint64(65532, 0x1234_5678_9abcn, true);
    expect(g.u64(65532)).toBe(0x1234_5678_9abc);
    // a range longer than the overlap across a boundary: a view of its own, and copies
    const src = Uint8Array.from({ length: 10000 }, (_, i) => i & 0xff);
    g.copyIn(60000, src);
    expect([...g.view(60000, 10000)]).toEqual([...src]);
    const out = new Uint8Array(10000);
    g.copyOut(60000, out, 0, 10000);
    expect(out).toEqual(src);
  });

  it('a 6 GiB memfd: bytes above 4 GiB through windows and copies', () => {
    const size = 6 * 2 ** 30;
    const fd = native.memfdCreate('guest-bytes-test', 0);
    try {
      native.ftruncate(fd, size);
      const m = native.mmapShared(fd, size);
      expect(() => new Uint8Array(m.buffer)).toThrow();
      const g = new GuestBytes(m.buffer);
      const high = 5 * WINDOW_SPAN + 12345;
      g.setU32(high, 0xdeadbeef);
      expect(new DataView(m.buffer, high, 4).getUint32(0, true)).toBe(0xdeadbeef);
      // the last window ends with the buffer
      const last = g.window(size - 8);
      expect(last.base + last.u8.length).toBe(size);
      g.setU32(size - 4, 7);
      expect(g.u32(size - 4)).toBe(7);
      // the window of an offset reaches WINDOW_OVERLAP past the next boundary
      const edge = 4 * WINDOW_SPAN;
      expect(g.window(edge - 1).u8.length).toBe(WINDOW_SPAN + WINDOW_OVERLAP);
      g.copyIn(edge - 3, Uint8Array.of(1, 2, 3, 4, 5, 6));
      expect([...g.view(edge - 3, 6)]).toEqual([1, 2, 3, 4, 5, 6]);
      expect(g.u8(edge)).toBe(4);
    } finally {
      native.close(fd);
    }
  });

  it('the 64 GiB of RAM of a VM (--mem 64G, sparse): the table and windows reach its last byte', () => {
    const mem = new GuestMemory(ramRegions(64 * GiB));
    try {
      expect(mem.buffer.byteLength).toBe(64 * GiB);
      // the top of RAM is at 65 GiB guest-physical (3 GiB below the hole, 61 GiB above 4 GiB)
      const top = 65 * GiB - 16;
      mem.write(top, Uint8Array.of(9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6));
      const off = mem.table.translate(top, 16);
      expect(off).toBe(64 * GiB - 16);
      expect(mem.bytes.u32(off)).toBe(0x06070809);
      expect([...mem.slice(60 * GiB - 2, 4)]).toEqual([0, 0, 0, 0]);
      mem.write(60 * GiB - 2, Uint8Array.of(1, 2, 3, 4));
      expect(mem.bytes.u16(mem.table.translate(60 * GiB, 2))).toBe(0x0403);
    } finally {
      mem.release();
    }
  });

  it('a split queue whose rings and indirect table straddle window boundaries (64 KiB windows)', () => {
    const mem = new TestMemory(1 << 20);
    mem.view.bytes = new GuestBytes(mem.buffer, 0x10000, 0x2000);
    const drv = new TestDriver(mem, 64, true);
    // desc ends at a boundary, avail and used cross one, all in windows other than the first
    Object.assign(drv.cfg, { desc: 0x20000 - 1024, avail: 0x30000 - 60, used: 0x40000 - 200 });
    const q = SplitQueue.create(mem.view, drv.cfg, { eventIdx: true, indirect: true }, 256);
    if (typeof q === 'string') throw new Error(q);
    // a ring that might not fit in one window's overlap (16 KiB of descriptors > 8 KiB) is refused
    expect(SplitQueue.create(mem.view, { ...drv.cfg, size: 1024 }, { eventIdx: true, indirect: true }, 1024)).toBe('bad queue size');
    const heads: number[] = [];
    for (let k = 0; k < 70; k++) {
      const a = 0x50000 + 256 * k;
      heads.push(drv.add([{ addr: a, len: 100 }, { addr: a + 100, len: 28, write: true }]));
      expect(q.pop()).toBe(true);
      expect([q.chain.head, q.chain.count, q.chain.readable, q.chain.offsets[0], q.chain.offsets[1], q.chain.lens[1]]).toEqual([heads[k], 2, 1, a, a + 100, 28]);
      q.addUsed(q.chain.head, 28 + k);
      q.flush();
      expect(drv.takeUsed()).toEqual([{ id: heads[k], len: 28 + k }]);
    }
    // an indirect table across the boundary at 0x60000
    const table = 0x60000 - 24;
    drv.writeDesc(0, 0x70000, 10, F_NEXT, 1, table);
    drv.writeDesc(1, 0x70100, 20, F_NEXT, 2, table);
    drv.writeDesc(2, 0x70200, 30, F_WRITE, 0, table);
    drv.writeDesc(5, table, 48, F_INDIRECT, 0);
    drv.publish(5);
    expect(q.pop()).toBe(true);
    expect([...q.chain.offsets.subarray(0, 3)]).toEqual([0x70000, 0x70100, 0x70200]);
    expect([q.chain.readable, q.chain.writableBytes]).toEqual([2, 30]);
    // EVENT_IDX fields at the ends of the rings (in the windows of their rings' first bytes)
    q.setKicks(true);
    expect(drv.availEvent).toBe(71);
    drv.usedEvent = 70;
    q.addUsed(5, 30);
    q.flush();
    expect(q.needsInterrupt()).toBe(true);
    expect(q.broken).toBeUndefined();
  });
});
