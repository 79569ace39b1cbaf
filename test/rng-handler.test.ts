// virtio-rng's queue handler on split and packed rings, without a VM: a scripted guest on rings in a
// SharedArrayBuffer, first driving the handler directly, then through a real dataplane thread that
// loads it by module path (kicks and interrupts on eventfds).
import { describe, it, expect } from 'vitest';
import { createQueue } from '../src/virtio/queues.js';
import { testDirtyLog } from './helpers/test-dirty-log.js';
import { RngHandler, RNG_PASS_MAX, RNG_REQUEST_MAX } from '../src/virtio-rng/queue-handler.js';
import { RNG_HANDLER_MODULE } from '../src/virtio-rng/device.js';
import { Dataplane } from '../src/dataplane/index.js';
import { newStatsBuffer, readStats, STAT, STAT_WORDS } from '../src/dataplane/stats.js';
import { native, EFD_NONBLOCK, ONE } from '../src/native.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { RING_LAYOUTS, eventfdCount as calls, type RingDriver } from './helpers/ring-driver.js';

/** how many different byte values `b` holds */
const distinct = (b: Uint8Array) => new Set(b).size;

for (const L of RING_LAYOUTS) {
  const setup = (o: { size?: number; log?: boolean } = {}) => {
    const mem = new TestMemory(4 << 20);
    const drv = L.driver(mem, o.size ?? 64);
    const q = createQueue(mem.view, drv.cfg, { eventIdx: false, indirect: true, packed: L.packed }, 32768);
    if (typeof q === 'string') throw new Error(q);
    const { log, logged } = testDirtyLog(mem, o.log);
    q.setDirtyLog(log, drv.cfg);
    const callFd = native.eventfd(0, EFD_NONBLOCK);
    const stats = new Float64Array(STAT_WORDS);
    const h = new RngHandler({ mem: mem.view, memory: mem.buffer, queues: [q], indices: [0], callFds: [callFd], stats: [stats], log, init: undefined });
    return { mem, drv, q, h, stats, callFd, logged, close: () => native.close(callFd) };
  };

  describe(`rng handler, ${L.name} ring`, () => {
    it('fills each request with random bytes and uses it with the count written', () => {
      const { mem, drv, h, stats, callFd, close } = setup();
      const a = mem.alloc(4096);
      const b1 = mem.alloc(100);
      const b2 = mem.alloc(3000);
      const c = mem.alloc(4096);
      const ida = drv.add([{ addr: a, len: 4096, write: true }]);
      // one request over two buffers, and one through an indirect table
      const idb = drv.add([{ addr: b1, len: 100, write: true }, { addr: b2, len: 3000, write: true }]);
      const idc = drv.addIndirect([{ addr: c, len: 4096, write: true }]);
      expect(h.beforeWait(false)).toBe(0);
      expect(h.process(256)).toBe(3);
      expect(drv.takeUsed()).toEqual([
        { id: ida, len: 4096 },
        { id: idb, len: 3100 },
        { id: idc, len: 4096 },
      ]);
      // random, not constant, not the same twice; every byte given written (a zeroed buffer would show
      // 4096 / 256 runs of zeros: count them)
      expect(distinct(mem.bytes(a, 4096))).toBeGreaterThan(200);
      expect(distinct(mem.bytes(b2 + 2900, 100))).toBeGreaterThan(50);
      expect(distinct(mem.bytes(b1, 100))).toBeGreaterThan(50);
      expect(Buffer.compare(mem.bytes(a, 4096), mem.bytes(c, 4096))).not.toBe(0);
      expect(calls(callFd)).toBe(1);
      expect(stats[STAT.PACKETS]).toBe(3);
      expect(stats[STAT.BYTES]).toBe(4096 + 3100 + 4096);
      expect(h.process(256)).toBe(0);
      expect(h.beforeWait(false)).toBe(-1);
      close();
    });

    it('gives a request at most RNG_REQUEST_MAX bytes, and a pass at most its budget and RNG_PASS_MAX bytes', () => {
      const { mem, drv, h, q, close } = setup({ size: 512 });
      const big = mem.alloc(RNG_REQUEST_MAX + 4096);
      const id = drv.add([{ addr: big, len: RNG_REQUEST_MAX + 4096, write: true }]);
      expect(h.process(256)).toBe(1);
      expect(drv.takeUsed()).toEqual([{ id, len: RNG_REQUEST_MAX }]);
      // the bytes past what the request was given stay the guest's
      expect(distinct(mem.bytes(big + RNG_REQUEST_MAX, 4096))).toBe(1);
      // eight requests of the largest size: a pass stops at RNG_PASS_MAX bytes
      const per = RNG_PASS_MAX / RNG_REQUEST_MAX;
      const buf = mem.alloc(RNG_REQUEST_MAX);
      for (let i = 0; i < 2 * per; i++) drv.add([{ addr: buf, len: RNG_REQUEST_MAX, write: true }]);
      expect(h.process(256)).toBe(per);
      expect(h.process(256)).toBe(per);
      // 300 one-byte requests: a pass takes its budget
      const one = mem.alloc(1);
      for (let i = 0; i < 300; i++) drv.add([{ addr: one, len: 1, write: true }]);
      expect(h.process(256)).toBe(256);
      expect(h.process(256)).toBe(44);
      expect(q.broken).toBeUndefined();
      close();
    });

    it('uses a request with no room (zero-length buffers) with 0 bytes', () => {
      const { mem, drv, h, close } = setup();
      const id = drv.add([{ addr: mem.alloc(16), len: 0, write: true }]);
      expect(h.process(256)).toBe(1);
      expect(drv.takeUsed()).toEqual([{ id, len: 0 }]);
      close();
    });

    it('marks the bytes it writes and the used ring in the dirty log', () => {
      const { mem, drv, h, logged, close } = setup({ log: true });
      const a = mem.alloc(8192, 4096) + 4096;
      expect(logged(a)).toBe(0);
      drv.add([{ addr: a, len: 64, write: true }]);
      h.process(256);
      expect(logged(a)).toBe(1);
      expect(logged(a + 4096)).toBe(0);
      expect(logged(drv.cfg.used) | logged(drv.cfg.desc)).toBe(1);
      close();
    });

    const hostile: Array<[string, (m: TestMemory, d: RingDriver) => void, string]> = [
      ['a device-readable buffer', (m, d) => d.add([{ addr: m.alloc(64), len: 64 }]), 'device-readable entropy buffer'],
      ['a readable buffer before writable ones', (m, d) => d.raw([{ addr: m.alloc(64), len: 64, flags: L.NEXT }, { addr: m.alloc(64), len: 64, flags: L.WRITE }]), 'device-readable entropy buffer'],
      ['a buffer outside guest memory', (_m, d) => d.raw([{ addr: 2 ** 40, len: 64, flags: L.WRITE }]), 'buffer outside guest memory'],
      ['a buffer running past the end of guest memory', (m, d) => d.raw([{ addr: m.size - 100, len: 0xffffffff, flags: L.WRITE }]), 'buffer outside guest memory'],
    ];
    for (const [what, make, reason] of hostile) {
      it(`breaks the queue on ${what}, using nothing of it and writing nothing`, () => {
        const { mem, drv, h, q, close } = setup();
        const good = mem.alloc(64);
        const id = drv.add([{ addr: good, len: 64, write: true }]);
        make(mem, drv);
        const after = mem.alloc(64);
        drv.add([{ addr: after, len: 64, write: true }]);
        const before = new Uint8Array(mem.buffer).slice();
        expect(() => h.process(256)).not.toThrow();
        expect(q.broken).toBe(reason);
        // the request before it was served; nothing after it
        expect(drv.takeUsed()).toEqual([{ id, len: 64 }]);
        expect(distinct(mem.bytes(after, 64))).toBe(1);
        const now = new Uint8Array(mem.buffer);
        // outside the served buffer and the device's ring writes, memory is as the driver left it
        for (const [at, len] of [[good, 64], [drv.cfg.used, 4096], [drv.cfg.desc, 16 * 64]] as const) now.fill(0, at, at + len), before.fill(0, at, at + len);
        expect(Buffer.compare(now, before)).toBe(0);
        expect(h.process(256)).toBe(0);
        close();
      });
    }

    it('breaks the queue on a chain longer than the ring, instead of spinning or writing', () => {
      // split: a descriptor loop; packed: a chain running on into the slots the driver has not filled
      const { mem, drv, h, q, close } = setup({ size: 8 });
      const bufs = Array.from({ length: 8 }, () => mem.alloc(16));
      drv.raw(bufs.map((addr) => ({ addr, len: 16, flags: L.NEXT | L.WRITE })));
      expect(h.process(256)).toBe(0);
      expect(q.broken).toBe(L.packed ? 'chain continues into an unavailable descriptor' : 'descriptor chain too long');
      for (const b of bufs) expect(distinct(mem.bytes(b, 16))).toBe(1);
      expect(drv.takeUsed()).toEqual([]);
      close();
    });

    it('is served by a dataplane thread that loads it by module path', async () => {
      const mem = new TestMemory(4 << 20);
      const drv = L.driver(mem, 64);
      const kickFd = native.eventfd(0, EFD_NONBLOCK);
      const callFd = native.eventfd(0, EFD_NONBLOCK);
      const stats = newStatsBuffer(1);
      const broken: string[] = [];
      const dp = new Dataplane((r) => broken.push(r));
      await dp.start(
        {
          memory: mem.buffer,
          table: { regions: [...mem.view.table.regions] },
          handlerModule: RNG_HANDLER_MODULE,
          handlerConfig: undefined,
          queueFeatures: { eventIdx: false, indirect: true, packed: L.packed, inOrder: false },
          stats,
          busyPollUs: 0,
        },
        [[{ queues: [{ ...drv.cfg, index: 0, kickFd, callFd, statsSlot: 0, start: { nextAvail: 0, nextUsed: 0, availWrap: true, usedWrap: true } }], init: undefined }]],
      );
      const bufs = [mem.alloc(4096), mem.alloc(4096)];
      const ids = bufs.map((addr) => drv.add([{ addr, len: 4096, write: true }]));
      native.write(kickFd, ONE);
      const used: Array<{ id: number; len: number }> = [];
      for (let t = 0; t < 500 && used.length < 2; t++) {
        await new Promise((r) => setTimeout(r, 10));
        used.push(...drv.takeUsed());
      }
      await dp.stop();
      expect(used).toEqual(ids.map((id) => ({ id, len: 4096 })));
      expect(distinct(mem.bytes(bufs[0], 4096))).toBeGreaterThan(200);
      expect(calls(callFd)).toBeGreaterThan(0);
      const s = readStats(stats, 0);
      expect(s.packets).toBe(2);
      expect(s.bytes).toBe(8192);
      expect(s.kicks).toBeGreaterThan(0);
      expect(dp.ringStates.get(0)?.nextAvail).toBe(L.packed ? 2 : 2);
      expect(broken).toEqual([]);
      native.close(kickFd);
      native.close(callFd);
    });
  });
}
