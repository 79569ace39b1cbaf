// RSS steering across real dataplane threads: two queue pairs, each on a thread of its own, the frames
// of four flows read by pair 0's thread; pair 1's thread sleeps in epoll until pair 0 hands it frames
// (its wake eventfd), and each flow lands on the RX queue the indirection table names.
import { describe, it, expect } from 'vitest';
import { fileURLToPath } from 'node:url';
import { Dataplane, type DataplaneConfig } from '../src/dataplane/index.js';
import { NET_HANDLER_MODULE } from '../src/virtio-net/dataplane.js';
import type { NetHandlerConfig } from '../src/virtio-net/queue-handler.js';
import { newStatsBuffer, readStats } from '../src/dataplane/stats.js';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { RateLimitWords } from '../src/dataplane/rate-limit-shared.js';
import { txPolicy } from '../src/virtio-net/features.js';
import { RssWords, RSS_MODE } from '../src/virtio-net/rss-state.js';
import { newHandoverBuffer, newWakeFds, closeWakeFds } from '../src/virtio-net/rss-ring.js';
import { HASH_REPORT, SUPPORTED_HASH_TYPES } from '../src/virtio-net/rss-classify.js';
import { native, EFD_NONBLOCK, ONE } from '../src/native.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { RING_LAYOUTS } from './helpers/ring-driver.js';
import { FLOWS, MS_KEY, TABLE, flowFrame } from './helpers/rss-frames.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('RSS across dataplane threads', () => {
  for (const L of RING_LAYOUTS) {
    it(`frames read by pair 0's thread reach pair 1's thread and queue as the table says (${L.name} rings)`, async () => {
      const mem = new TestMemory(8 << 20);
      const pairs = 2;
      const rss = new RssWords();
      rss.set({ mode: RSS_MODE.STEER, hashTypes: SUPPORTED_HASH_TYPES, table: TABLE, unclassified: 0, key: MS_KEY });
      const wakeFds = newWakeFds(pairs);
      const filter = new RxFilter();
      filter.reset(Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
      const handlerConfig: NetHandlerConfig = {
        driverModule: fileURLToPath(new URL('./helpers/frames-driver.mjs', import.meta.url)),
        mergeable: true,
        maxRxFrame: 1514,
        txPolicy: txPolicy(0n),
        filter: filter.buffer,
        rateLimit: new RateLimitWords().buffer,
        steer: { pairs, rings: newHandoverBuffer(pairs, 1514), wakeFds, rss: rss.buffer, hashReport: true },
      };
      const stats = newStatsBuffer(2 * pairs);
      const cfg: DataplaneConfig = {
        memory: mem.buffer,
        table: { regions: [...mem.view.table.regions] },
        handlerModule: NET_HANDLER_MODULE,
        handlerConfig,
        queueFeatures: { eventIdx: false, indirect: true, packed: L.packed, inOrder: false },
        stats,
        busyPollUs: 0,
      };
      const frames = [0, 1, 2].flatMap(() => FLOWS.map((f) => Array.from(flowFrame(f, 200))));
      const fds: number[] = [];
      const start = { nextAvail: 0, nextUsed: 0, availWrap: true, usedWrap: true };
      const made = Array.from({ length: pairs }, (_, p) => {
        const rx = L.driver(mem, 64);
        const tx = L.driver(mem, 64);
        const bufs = new Map<number, number>();
        for (let i = 0; i < 32; i++) {
          const a = mem.alloc(2048);
          bufs.set(rx.add([{ addr: a, len: 2048, write: true }]), a);
        }
        const kick = [native.eventfd(0, EFD_NONBLOCK), native.eventfd(0, EFD_NONBLOCK)];
        fds.push(...kick);
        const unit = {
          queues: [
            { ...rx.cfg, size: 64, index: 2 * p, kickFd: kick[0], callFd: -1, statsSlot: 2 * p, start },
            { ...tx.cfg, size: 64, index: 2 * p + 1, kickFd: kick[1], callFd: -1, statsSlot: 2 * p + 1, start },
          ],
          init: { pair: p, driver: { frames: p === 0 ? frames : [] } },
        };
        return { rx, bufs, unit, kick };
      });
      const dp = new Dataplane((reason) => {
        throw new Error(reason);
      });
      // one thread per pair
      await dp.start(cfg, [[made[0].unit], [made[1].unit]]);
      // (the rings were filled before the threads started: a kick says so)
      for (const m of made) native.write(m.kick[0], ONE);
      const got: Array<Array<{ sport: number; hash: number; report: number }>> = [[], []];
      for (const end = Date.now() + 10_000; Date.now() < end && got[0].length + got[1].length < 12; ) {
        await sleep(20);
        made.forEach((m, p) => {
          for (const { id } of m.rx.takeUsed()) {
            const b = mem.bytes(m.bufs.get(id)!, 20 + 14 + 24);
            const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
            got[p].push({ sport: v.getUint16(20 + 14 + 20, false), hash: v.getUint32(12, true), report: v.getUint16(16, true) });
          }
        });
      }
      await dp.stop();
      for (const fd of fds) native.close(fd);
      closeWakeFds(wakeFds);
      for (const [i, f] of FLOWS.entries()) {
        const q = TABLE[f[4] & 127];
        expect(got[q].filter((r) => r.sport === f[3]), `flow ${i}`).toEqual([0, 1, 2].map(() => ({ sport: f[3], hash: f[4], report: HASH_REPORT.TCPv4 })));
        expect(got[1 - q].filter((r) => r.sport === f[3])).toEqual([]);
      }
      expect(readStats(stats, 2).packets).toBe(6);
      expect(readStats(stats, 0).packets).toBe(6);
    });
  }
});
