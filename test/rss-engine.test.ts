// RSS steering in the net engine without threads: two queue pairs share the hand-over rings; frames of
// four TCP flows read from pair 0's driver queue land on the RX queues the indirection table names,
// each flow on one queue, with the Toeplitz hash and its type in the header (virtio_net_hdr_v1_hash).
import { describe, it, expect } from 'vitest';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { STAT } from '../src/dataplane/stats.js';
import { RssWords, RSS_MODE, type RssConfig } from '../src/virtio-net/rss-state.js';
import { newHandoverBuffer, newWakeFds, closeWakeFds } from '../src/virtio-net/rss-ring.js';
import { HASH_REPORT, SUPPORTED_HASH_TYPES } from '../src/virtio-net/rss-classify.js';
import type { PacketBatch } from '../src/drivers/api.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { RING_LAYOUTS, type RingDriver } from './helpers/ring-driver.js';
import { FLOWS, MS_KEY, TABLE, flowFrame } from './helpers/rss-frames.js';
import { RateLimitWords } from '../src/dataplane/rate-limit-shared.js';
import { FrameQueue } from './helpers/fake-drivers.js';
import { newPair } from './helpers/net-pair-rig.js';

/**
 * Receives the frames queued for it, one per call; remembers where it wrote each (its first segment).
 * `guest`: guest memory as drivers get it (GuestBytes.plain).
 */
class FrameDriver extends FrameQueue {
  readonly wroteAt: Array<{ intoGuest: boolean; offset: number }> = [];
  constructor(private readonly guest: ArrayBufferLike) {
    super();
  }
  override receive(b: PacketBatch, mem: ArrayBufferLike): number {
    const seg = 3 * b.iovStart[0];
    if (this.frames.length > 0) this.wroteAt.push({ intoGuest: b.iov[seg] === 0 && mem === this.guest, offset: b.iov[seg + 1] });
    return super.receive(b, mem);
  }
}


for (const L of RING_LAYOUTS) {
  for (const mergeable of [false, true]) {
    describe(`RSS steering, ${L.name} rings${mergeable ? ', mergeable buffers' : ''}`, () => {
      /** `chain`: the buffer lengths of each receive chain (adjacent in memory: its bytes read as one buffer) */
      function setup(pairs: number, hashReport: boolean, rateLimits?: RateLimitWords, chain = [2048]) {
        const mem = new TestMemory(8 << 20);
        const rss = new RssWords();
        const maxRxFrame = 1514;
        const rings = newHandoverBuffer(pairs, maxRxFrame);
        const wakeFds = newWakeFds(pairs);
        const filter = new RxFilter();
        filter.reset(Uint8Array.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        const made = Array.from({ length: pairs }, (_, p) => {
          const rx: RingDriver = L.driver(mem, 64);
          const tx: RingDriver = L.driver(mem, 64);
          const driver = new FrameDriver(mem.view.bytes.plain);
          const { rxq, pair, rxStats } = newPair(mem, rx, tx, driver, L, { mergeable, maxRxFrame, filter, rateLimits, steer: { pair: p, pairs, rings, wakeFds, rss: rss.buffer, hashReport } });
          pair.updateLimits();
          // receive buffers, remembered by id
          const bufs = new Map<number, number>();
          // (32 chains, or as many as the ring's 64 descriptors hold)
          for (let i = 0; i < Math.min(32, Math.floor(64 / chain.length)); i++) {
            const a = mem.alloc(2048);
            bufs.set(rx.add(chain.map((len, k) => ({ addr: a + chain.slice(0, k).reduce((x, y) => x + y, 0), len, write: true }))), a);
          }
          return { rx, rxq, driver, pair, rxStats, bufs };
        });
        /** what each pair's guest received: header fields and the frame's flow (its source port) */
        const received = (p: number) =>
          made[p].rx.takeUsed().map(({ id, len }) => {
            const a = made[p].bufs.get(id)!;
            const b = mem.bytes(a, len);
            const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
            const h = hashReport ? 20 : 12;
            return { numBuffers: v.getUint16(10, true), hash: hashReport ? v.getUint32(12, true) : 0, report: hashReport ? v.getUint16(16, true) : 0, sport: v.getUint16(h + 14 + 20, false), len: len - h };
          });
        const run = () => {
          for (let i = 0; i < 512; i++) made.forEach((m) => m.pair.processRx(256));
        };
        return { mem, made, rss, rings, received, run, close: () => closeWakeFds(wakeFds) };
      }

      const steer: RssConfig = { mode: RSS_MODE.STEER, hashTypes: SUPPORTED_HASH_TYPES, table: TABLE, unclassified: 1, key: MS_KEY };

      it('frames of 4 flows read by pair 0 land on the queues the table names, each flow on one, hash in the header', () => {
        const s = setup(2, true);
        s.rss.set(steer);
        for (let round = 0; round < 3; round++) for (const f of FLOWS) s.made[0].driver.frames.push(flowFrame(f));
        s.run();
        const got = [s.received(0), s.received(1)];
        const want = FLOWS.map((f) => TABLE[f[4] & 127]);
        expect(want).toEqual([1, 0, 0, 1]);
        for (const [i, f] of FLOWS.entries()) {
          const on = got.map((g) => g.filter((r) => r.sport === f[3]));
          // all three frames of the flow on the queue the table names, none on the other
          expect(on[want[i]].length).toBe(3);
          expect(on[1 - want[i]].length).toBe(0);
          for (const r of on[want[i]]) expect(r).toMatchObject({ hash: f[4], report: HASH_REPORT.TCPv4, numBuffers: 1, len: 14 + 20 + 20 + 100 });
        }
        expect(s.made[0].rxStats[STAT.PACKETS] + s.made[1].rxStats[STAT.PACKETS]).toBe(12);
        expect(s.made[1].rxStats[STAT.PACKETS]).toBe(6);
        s.close();
      });

      it('a frame no hash is computed for goes to the unclassified queue, with report NONE', () => {
        const s = setup(2, true);
        s.rss.set(steer);
        const arp = flowFrame(FLOWS[1]);
        arp[12] = 0x08;
        arp[13] = 0x06;
        s.made[0].driver.frames.push(arp);
        s.run();
        expect(s.received(0)).toEqual([]);
        expect(s.received(1)).toMatchObject([{ report: HASH_REPORT.NONE, hash: 0 }]);
        s.close();
      });

      it('hash report without steering: frames stay on the pair that read them, hashed', () => {
        const s = setup(1, true);
        s.rss.set({ ...steer, mode: RSS_MODE.HASH, table: new Uint16Array(1), unclassified: 0 });
        for (const f of FLOWS) s.made[0].driver.frames.push(flowFrame(f));
        s.run();
        expect(s.received(0).map((r) => [r.hash, r.report])).toEqual(FLOWS.map((f) => [f[4], HASH_REPORT.TCPv4]));
        s.close();
      });

      it('one pair with hash reports: the driver writes each frame straight into a guest buffer, after the 20-byte header (no hand-over), hash in the header', () => {
        const s = setup(1, true);
        s.rss.set({ ...steer, table: new Uint16Array(1), unclassified: 0 });
        for (const f of FLOWS) s.made[0].driver.frames.push(flowFrame(f));
        s.run();
        const used = s.made[0].rx.takeUsed();
        const bufs = s.made[0].bufs;
        expect(s.made[0].driver.wroteAt).toEqual(used.map(({ id }) => ({ intoGuest: true, offset: bufs.get(id)! + 20 })));
        // what the guest got: each flow's hash and type, whole frames
        const got = used.map(({ id, len }) => {
          const v = new DataView(s.mem.buffer, bufs.get(id)!, len);
          return { hash: v.getUint32(12, true), report: v.getUint16(16, true), pad: v.getUint16(18, true), numBuffers: v.getUint16(10, true), sport: v.getUint16(20 + 34, false), len: len - 20 };
        });
        expect(got).toEqual(FLOWS.map((f) => ({ hash: f[4], report: HASH_REPORT.TCPv4, pad: 0, numBuffers: 1, sport: f[3], len: 14 + 20 + 20 + 100 })));
        // the hand-over ring was never written
        expect(new Uint8Array(s.rings).every((b) => b === 0)).toBe(true);
        expect(s.made[0].rxStats[STAT.PACKETS]).toBe(FLOWS.length);
        s.close();
      });

      it('one pair with hash reports, the header spread over two buffers and the frame starting in a 28-byte piece: hashed all the same', () => {
        // 8 + 40 + 2000: the header takes 8 and 12, the frame's first segment is the 28 left of the second buffer
        const s = setup(1, true, undefined, [8, 40, 2000]);
        s.rss.set({ ...steer, table: new Uint16Array(1), unclassified: 0 });
        for (const f of FLOWS) s.made[0].driver.frames.push(flowFrame(f));
        s.run();
        expect(s.made[0].driver.wroteAt.every((w) => w.intoGuest)).toBe(true);
        expect(s.received(0)).toEqual(FLOWS.map((f) => ({ hash: f[4], report: HASH_REPORT.TCPv4, numBuffers: 1, sport: f[3], len: 14 + 20 + 20 + 100 })));
        s.close();
      });

      it('RSS without hash report: 12-byte headers, steered all the same', () => {
        const s = setup(2, false);
        s.rss.set(steer);
        for (const f of FLOWS) s.made[1].driver.frames.push(flowFrame(f));
        s.run();
        expect(s.received(0).map((r) => r.sport)).toEqual([FLOWS[1][3], FLOWS[2][3]]);
        expect(s.received(1).map((r) => r.sport)).toEqual([FLOWS[0][3], FLOWS[3][3]]);
        s.close();
      });

      it('under an RX rate limit, frames wait in the hand-over ring (none dropped) until tokens return or the limit goes', () => {
        const words = new RateLimitWords();
        words.set({ rx: { ops: { size: 2, refillTimeMs: 10_000 } } });
        const s = setup(2, true, words);
        s.rss.set(steer);
        // flow 1 goes to pair 0: five frames, two tokens
        for (let i = 0; i < 5; i++) s.made[0].driver.frames.push(flowFrame(FLOWS[1]));
        s.run();
        const st = s.made[0].rxStats;
        expect(s.received(0)).toHaveLength(2);
        expect(s.made[0].pair.rxThrottled).toBe(true);
        expect(s.made[0].pair.limitWaitMs()).toBeGreaterThan(1000);
        // one wait, however many passes found it still on
        expect(st[STAT.RATE_LIMITED]).toBe(1);
        expect(st[STAT.DROPS]).toBe(0);
        expect(s.made[0].pair.handedOver).toBe(true);
        words.set({ rx: {} });
        for (const m of s.made) m.pair.updateLimits();
        expect(s.made[0].pair.rxThrottled).toBe(false);
        s.run();
        expect(s.received(0).map((r) => r.report)).toEqual([HASH_REPORT.TCPv4, HASH_REPORT.TCPv4, HASH_REPORT.TCPv4]);
        expect(st[STAT.PACKETS]).toBe(5);
        expect(st[STAT.RATE_LIMITED_MS]).toBeGreaterThan(0);
        s.close();
      });

      it('frames for a pair whose ring has no buffers wait in the hand-over ring, drop once it is full, and hold up no other pair', () => {
        const s = setup(2, true);
        s.rss.set(steer);
        // pair 1's guest has 32 buffers; 300 full-size frames for it (a hand-over ring holds 256 KiB), then 4 for pair 0
        for (let i = 0; i < 300; i++) s.made[0].driver.frames.push(flowFrame(FLOWS[0], 1400));
        for (let i = 0; i < 4; i++) s.made[0].driver.frames.push(flowFrame(FLOWS[1]));
        s.run();
        expect(s.received(1).length).toBe(32);
        expect(s.received(0).length).toBe(4);
        const dropped = s.made[0].rxStats[STAT.DROPS_WIRE];
        expect(dropped).toBeGreaterThan(0);
        expect(s.made[0].rxStats[STAT.DROPS]).toBe(dropped);
        // what waits in the ring reaches the guest once it gives buffers
        for (let i = 0; i < 32; i++) {
          const a = s.mem.alloc(2048);
          s.made[1].bufs.set(s.made[1].rx.add([{ addr: a, len: 2048, write: true }]), a);
        }
        s.run();
        expect(s.received(1).length).toBe(Math.min(32, 300 - 32 - dropped));
        s.close();
      });
    });
  }
}
