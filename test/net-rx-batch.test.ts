// Batched receive in the net engine (NetQueuePair.processRx) on split and packed rings: several chains
// offered per driver call, frames that did not arrive or were dropped leaving their chains to the next
// frames in order, hostile chains inside a batch.
import { describe, it, expect } from 'vitest';
import { RX_BATCH } from '../src/virtio-net/rx-batch.js';
import { RX_MODE } from '../src/virtio-net/rx-filter.js';
import { STAT, dropsByCause } from '../src/dataplane/stats.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import type { DriverQueue, PacketBatch } from '../src/drivers/api.js';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { RING_LAYOUTS, eventfdCount } from './helpers/ring-driver.js';
import { newPair } from './helpers/net-pair-rig.js';
import { testDirtyLog } from './helpers/test-dirty-log.js';

/** Receives as many queued frames as a call offers packets, as the tap's io_uring receive does. */
class BatchDriver implements DriverQueue {
  readonly pollFd = -1;
  readonly drops = 0;
  readonly frames: Uint8Array[] = [];
  /** the packet count of each receive call */
  readonly offered: number[] = [];
  /** frames one call fills at most (1: a driver that cannot batch) */
  perCall = Infinity;
  nextLength?: () => number;
  nextLengths?: (lengths: Uint32Array, max: number) => number;
  /** lengths nextLengths() announces instead of the frames' own (a driver that gets it wrong) */
  announce?: number[];
  constructor(knowsLength: boolean | 'all') {
    if (knowsLength === true) this.nextLength = () => this.frames[0]?.length ?? 0;
    if (knowsLength === 'all')
      this.nextLengths = (lengths, max) => {
        const n = Math.min(max, this.frames.length);
        for (let k = 0; k < n; k++) lengths[k] = this.announce?.[k] ?? this.frames[k].length;
        return n;
      };
  }
  transmit(b: PacketBatch): number {
    return b.count;
  }
  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    this.offered.push(b.count);
    const u8 = new Uint8Array(mem);
    let got = 0;
    for (; got < Math.min(b.count, this.perCall) && this.frames.length > 0; got++) {
      const f = this.frames.shift()!;
      let at = 0;
      for (let k = b.iovStart[got]; k < b.iovStart[got + 1] && at < f.length; k++) {
        const n = Math.min(b.iov[3 * k + 2], f.length - at);
        u8.set(f.subarray(at, at + n), b.iov[3 * k + 1]);
        at += n;
      }
      // (the length of the frame, as a driver that knows it reports a frame larger than the buffers)
      b.len[got] = f.length;
      b.meta.fill(0, got * 6, got * 6 + 6);
    }
    return got;
  }
  close(): void {}
}

const OUR_MAC = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const OTHER_MAC = [0x52, 0x54, 0, 0x99, 0x99, 0x99];

/** A frame of `len` bytes to `dst` (default: broadcast), its payload marked with `tag`. */
function frame(len: number, tag: number, dst: number[] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + tag) & 0xff;
  f.set(dst, 0);
  return f;
}

for (const L of RING_LAYOUTS) {
  function setup(o: { mergeable?: boolean; knowsLength?: boolean | 'all'; size?: number; log?: boolean } = {}) {
    const mem = new TestMemory(4 << 20);
    const rx = L.driver(mem, o.size ?? 64);
    const tx = L.driver(mem, o.size ?? 64);
    const driver = new BatchDriver(o.knowsLength ?? false);
    const { log, logged } = testDirtyLog(mem, o.log);
    const rxCall = native.eventfd(0, EFD_NONBLOCK);
    const { rxq, pair, rxStats, filter } = newPair(mem, rx, tx, driver, L, { log, mergeable: o.mergeable ?? false, rxCallFd: rxCall });
    filter.reset(new Uint8Array(OUR_MAC));
    /** a receive chain of one 2048-byte buffer: [id, address] */
    const chain = (len = 2048): [number, number] => {
      const a = mem.alloc(len);
      return [rx.add([{ addr: a, len, write: true }]), a];
    };
    const body = (a: number, len: number) => [...mem.bytes(a + NET_HDR_LEN, len)];
    const close = () => native.close(rxCall);
    return { mem, rx, rxq, driver, pair, rxStats, filter, chain, body, logged, calls: () => eventfdCount(rxCall), close };
  }

  describe(`batched receive on ${L.name} rings`, () => {
    for (const knowsLength of [false, true]) {
      it(`receives several frames in one driver call and publishes them at once${knowsLength ? ' (a driver that knows the next length)' : ''}`, () => {
        const s = setup({ knowsLength });
        const chains = [0, 1, 2, 3, 4].map(() => s.chain());
        for (let t = 0; t < 5; t++) s.driver.frames.push(frame(60 + t, t));
        expect(s.pair.processRx(64)).toBe(5);
        // one call offered every chain the ring had; the fifth frame filled the last
        expect(s.driver.offered).toEqual([5]);
        expect(s.rx.takeUsed()).toEqual(chains.map(([id], t) => ({ id, len: NET_HDR_LEN + 60 + t })));
        chains.forEach(([, a], t) => {
          expect([...s.mem.bytes(a, NET_HDR_LEN)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
          expect(s.body(a, 60 + t)).toEqual([...frame(60 + t, t)]);
        });
        expect([s.rxStats[STAT.PACKETS], s.rxStats[STAT.BATCHES], s.calls()]).toEqual([5, 1, 1]);
        s.close();
      });
    }

    it('gives back the chains of frames that did not arrive, and the next batch uses them in order', () => {
      const s = setup();
      const chains = [0, 1, 2, 3, 4, 5].map(() => s.chain());
      s.driver.frames.push(frame(60, 0), frame(61, 1));
      expect(s.pair.processRx(64)).toBe(2);
      expect(s.rx.takeUsed()).toEqual([{ id: chains[0][0], len: 72 }, { id: chains[1][0], len: 73 }]);
      expect([s.pair.dry, s.pair.starved, s.rxq.pending()]).toEqual([true, false, 4]);
      for (let t = 2; t < 5; t++) s.driver.frames.push(frame(60 + t, t));
      expect(s.pair.processRx(64)).toBe(3);
      // (each time, a call after the frames found nothing more: its chains went back)
      expect(s.driver.offered).toEqual([6, 4, 4, 1]);
      expect(s.rx.takeUsed()).toEqual([2, 3, 4].map((t) => ({ id: chains[t][0], len: 72 + t })));
      for (let t = 2; t < 5; t++) expect(s.body(chains[t][1], 60 + t)).toEqual([...frame(60 + t, t)]);
      expect(s.rxq.pending()).toBe(1);
      s.close();
    });

    it('serves a driver that fills one packet per call: every frame in the same pass, in order', () => {
      const s = setup();
      s.driver.perCall = 1;
      const chains = [0, 1, 2, 3].map(() => s.chain());
      for (let t = 0; t < 3; t++) s.driver.frames.push(frame(60 + t, t));
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.driver.offered).toEqual([4, 3, 2, 1]);
      expect(s.rx.takeUsed()).toEqual([0, 1, 2].map((t) => ({ id: chains[t][0], len: 72 + t })));
      expect([s.pair.dry, s.rxq.pending()]).toEqual([true, 1]);
      s.close();
    });

    it('drops frames its filter refuses, runts and frames too large inside a batch, and the next frames take their chains in order', () => {
      const s = setup();
      s.filter.setMode(RX_MODE.PROMISC, false);
      const chains = [0, 1, 2, 3, 4].map(() => s.chain());
      const keep = [frame(70, 1, OUR_MAC), frame(71, 3), frame(72, 5, OUR_MAC)];
      s.driver.frames.push(keep[0], frame(60, 2, OTHER_MAC), keep[1], frame(10, 4), frame(3000, 6), keep[2]);
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.rxStats[STAT.DROPS]).toBe(3);
      expect(dropsByCause(s.rxStats)).toEqual({ filtered: 1, tooBig: 1, malformed: 1, wire: 0 });
      expect(s.rx.takeUsed()).toEqual(keep.map((f, i) => ({ id: chains[i][0], len: NET_HDR_LEN + f.length })));
      keep.forEach((f, i) => expect(s.body(chains[i][1], f.length)).toEqual([...f]));
      // the two chains left went back, first the older
      s.driver.frames.push(frame(80, 7, OUR_MAC));
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.rx.takeUsed()).toEqual([{ id: chains[3][0], len: 92 }]);
      s.close();
    });

    it('offers no more chains than the ring has, nor than the budget allows', () => {
      const s = setup();
      const chains = [0, 1, 2].map(() => s.chain());
      for (let t = 0; t < 10; t++) s.driver.frames.push(frame(60, t));
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.driver.offered).toEqual([3]);
      expect(s.pair.starved).toBe(true);
      expect(s.rx.takeUsed().map((u) => u.id)).toEqual(chains.map(([id]) => id));
      for (let k = 0; k < 40; k++) s.chain();
      expect(s.pair.processRx(2)).toBe(2);
      expect(s.pair.processRx(64)).toBe(5);
      expect(s.driver.offered).toEqual([3, 2, RX_BATCH, RX_BATCH]);
      s.close();
    });

    it('offers a chain smaller than the largest frame alone, and drops a frame it may have cut', () => {
      const s = setup();
      const big = [s.chain(), s.chain()];
      const small = [s.chain(NET_HDR_LEN + 100), s.chain(NET_HDR_LEN + 100)];
      const after = s.chain();
      for (const [len, t] of [[60, 0], [60, 1], [60, 2], [100, 3], [61, 4], [62, 5]]) s.driver.frames.push(frame(len, t));
      expect(s.pair.processRx(64)).toBe(5);
      // the big chains go together; the small ones alone, where a frame that fills one exactly may
      // have been cut: dropped, and its chain takes the next frame
      expect(s.driver.offered).toEqual([2, 1, 1, 1, 1]);
      expect(s.rx.takeUsed()).toEqual([
        { id: big[0][0], len: 72 },
        { id: big[1][0], len: 72 },
        { id: small[0][0], len: 72 },
        { id: small[1][0], len: 73 },
        { id: after[0], len: 74 },
      ]);
      expect(s.rxStats[STAT.DROPS]).toBe(1);
      s.close();
    });

    it('spreads a frame over chains with MRG_RXBUF, and offers no slot the ring cannot fill', () => {
      const s = setup({ mergeable: true });
      const chains = [0, 1, 2].map(() => s.chain(1024));
      s.driver.frames.push(frame(1500, 9));
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.driver.offered).toEqual([1]);
      expect(s.rx.takeUsed()).toEqual([{ id: chains[0][0], len: 1024 }, { id: chains[1][0], len: 1512 - 1024 }]);
      expect(s.mem.bytes(chains[0][1], NET_HDR_LEN)[10]).toBe(2);
      s.close();
    });

    /** The used entries a frame of `len` bytes (header included) takes over chains of `cap` bytes. */
    const spread = (ids: number[], len: number, cap = 1024) => ids.map((id, k) => ({ id, len: Math.min(cap, len + NET_HDR_LEN - k * cap) }));
    /** The frame bytes chains of `cap` bytes hold after the header, joined. */
    const joined = (s: ReturnType<typeof setup>, addrs: number[], len: number, cap = 1024) => {
      const out: number[] = [];
      addrs.forEach((a, k) => out.push(...s.mem.bytes(k === 0 ? a + NET_HDR_LEN : a, Math.min(len - out.length, k === 0 ? cap - NET_HDR_LEN : cap))));
      return out;
    };

    it('receives several frames over several chains each in one driver call with MRG_RXBUF, each frame in the chains after the last', () => {
      const s = setup({ mergeable: true });
      const chains = [0, 1, 2, 3, 4, 5, 6, 7].map(() => s.chain(1024));
      const lens = [1500, 60, 1000, 1400];
      lens.forEach((l, t) => s.driver.frames.push(frame(l, t)));
      expect(s.pair.processRx(64)).toBe(4);
      // room for the largest frame (two chains) per frame: four frames in one call, published at once
      expect(s.driver.offered).toEqual([4, 1]);
      const ids = chains.map(([id]) => id);
      const addrs = chains.map(([, a]) => a);
      expect(s.rx.takeUsed()).toEqual([...spread(ids.slice(0, 2), 1500), ...spread([ids[2]], 60), ...spread([ids[3]], 1000), ...spread(ids.slice(4, 6), 1400)]);
      const firsts = [0, 2, 3, 4];
      lens.forEach((l, t) => {
        const n = Math.ceil((l + NET_HDR_LEN) / 1024);
        expect(s.mem.bytes(addrs[firsts[t]], NET_HDR_LEN)[10]).toBe(n);
        expect(joined(s, addrs.slice(firsts[t], firsts[t] + n), l)).toEqual([...frame(l, t)]);
      });
      expect([s.rxStats[STAT.PACKETS], s.calls(), s.rxq.pending()]).toEqual([4, 1, 2]);
      // the two chains left went back: the next frame takes them, first the older
      s.driver.frames.push(frame(1200, 9));
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.rx.takeUsed()).toEqual(spread(ids.slice(6, 8), 1200));
      s.close();
    });

    it('drops frames inside a MRG_RXBUF batch (filtered, runt, too large) and the next frames take their chains in order', () => {
      const s = setup({ mergeable: true });
      s.filter.setMode(RX_MODE.PROMISC, false);
      const chains = Array.from({ length: 12 }, () => s.chain(1024));
      const keep = [frame(1100, 1, OUR_MAC), frame(70, 3), frame(1300, 5, OUR_MAC)];
      s.driver.frames.push(keep[0], frame(1400, 2, OTHER_MAC), keep[1], frame(10, 4), frame(3000, 6), keep[2]);
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.driver.offered[0]).toBe(6);
      expect(dropsByCause(s.rxStats)).toEqual({ filtered: 1, tooBig: 1, malformed: 1, wire: 0 });
      const ids = chains.map(([id]) => id);
      const addrs = chains.map(([, a]) => a);
      expect(s.rx.takeUsed()).toEqual([...spread(ids.slice(0, 2), 1100), ...spread([ids[2]], 70), ...spread(ids.slice(3, 5), 1300)]);
      expect(joined(s, addrs.slice(0, 2), 1100)).toEqual([...keep[0]]);
      expect(joined(s, addrs.slice(2, 3), 70)).toEqual([...keep[1]]);
      expect(joined(s, addrs.slice(3, 5), 1300)).toEqual([...keep[2]]);
      expect(s.mem.bytes(addrs[3], NET_HDR_LEN)[10]).toBe(2);
      expect(s.rxq.pending()).toBe(7);
      s.close();
    });

    it('never publishes part of a frame with MRG_RXBUF: a slot the ring runs out in goes back whole, and waits for buffers', () => {
      const s = setup({ mergeable: true });
      const chains = [0, 1, 2, 3, 4].map(() => s.chain(1024));
      for (let t = 0; t < 3; t++) s.driver.frames.push(frame(1500, t));
      expect(s.pair.processRx(64)).toBe(2);
      // two slots of two chains; the fifth chain alone cannot hold the largest frame: not offered
      expect(s.driver.offered).toEqual([2]);
      expect([s.pair.starved, s.pair.starvedPending, s.rxq.pending()]).toEqual([true, 1, 1]);
      const ids = chains.map(([id]) => id);
      expect(s.rx.takeUsed()).toEqual([...spread(ids.slice(0, 2), 1500), ...spread(ids.slice(2, 4), 1500)]);
      expect([...s.mem.bytes(chains[4][1], 1024)].every((v) => v === 0)).toBe(true);
      expect(s.driver.frames).toHaveLength(1);
      const more = s.chain(1024);
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.rx.takeUsed()).toEqual(spread([ids[4], more[0]], 1500));
      expect(joined(s, [chains[4][1], more[1]], 1500)).toEqual([...frame(1500, 2)]);
      s.close();
    });

    it('with MRG_RXBUF and a driver that knows the next length, gives the first frame only the chains it needs', () => {
      const s = setup({ mergeable: true, knowsLength: true });
      const chains = [0, 1, 2, 3].map(() => s.chain(1024));
      s.driver.frames.push(frame(100, 0), frame(1500, 1), frame(60, 2));
      // one chain for the 100-byte frame, two (the largest) for the next, and none left for a third
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.driver.offered).toEqual([2, 1]);
      const ids = chains.map(([id]) => id);
      expect(s.rx.takeUsed()).toEqual([...spread([ids[0]], 100), ...spread(ids.slice(1, 3), 1500), ...spread([ids[3]], 60)]);
      s.close();
    });

    it('with MRG_RXBUF and a driver that knows the lengths of every waiting frame, gives each only the chains it needs, in one call', () => {
      const s = setup({ mergeable: true, knowsLength: 'all' });
      const chains = [0, 1, 2, 3, 4].map(() => s.chain(1024));
      s.driver.frames.push(frame(100, 0), frame(1500, 1), frame(60, 2));
      expect(s.pair.processRx(64)).toBe(3);
      expect(s.driver.offered).toEqual([3]);
      const ids = chains.map(([id]) => id);
      expect(s.rx.takeUsed()).toEqual([...spread([ids[0]], 100), ...spread(ids.slice(1, 3), 1500), ...spread([ids[3]], 60)]);
      expect(joined(s, [chains[1][1], chains[2][1]], 1500)).toEqual([...frame(1500, 1)]);
      // the chain no frame took went back, and takes the next
      s.driver.frames.push(frame(70, 3));
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.rx.takeUsed()).toEqual(spread([ids[4]], 70));
      s.close();
    });

    it('with MRG_RXBUF drops a frame shorter than the driver announced (it may have been cut), and the next takes its chains', () => {
      const s = setup({ mergeable: true, knowsLength: 'all' });
      const chains = [0, 1, 2, 3].map(() => s.chain(1024));
      s.driver.frames.push(frame(100, 0), frame(1000, 1), frame(60, 2));
      s.driver.announce = [100, 1500, 60];
      expect(s.pair.processRx(64)).toBe(2);
      expect(dropsByCause(s.rxStats).tooBig).toBe(1);
      const ids = chains.map(([id]) => id);
      expect(s.rx.takeUsed()).toEqual([...spread([ids[0]], 100), ...spread([ids[1]], 60)]);
      expect(s.body(chains[1][1], 60)).toEqual([...frame(60, 2)]);
      s.close();
    });

    it('with MRG_RXBUF logs the bytes a frame moved down into, header space of a chain it continues into included', () => {
      const s = setup({ mergeable: true, log: true });
      // chains of two buffers on pages of their own: 12 bytes (header space), then 1012 bytes
      const pages = Array.from({ length: 4 }, () => [s.mem.alloc(4096, 4096), s.mem.alloc(4096, 4096)]);
      const ids = pages.map(([h, d]) => s.rx.add([{ addr: h, len: NET_HDR_LEN, write: true }, { addr: d, len: 1024 - NET_HDR_LEN, write: true }]));
      s.driver.frames.push(frame(60, 0), frame(1500, 1));
      expect(s.pair.processRx(64)).toBe(2);
      // the second frame was read into chains 2 and 3, and moved into chains 1 and 2: chain 2's header
      // space holds frame bytes now, written only by the move
      expect(s.rx.takeUsed()).toEqual([{ id: ids[0], len: 72 }, { id: ids[1], len: 1024 }, { id: ids[2], len: 1512 - 1024 }]);
      expect(pages.slice(0, 3).map(([h, d]) => [s.logged(h), s.logged(d)])).toEqual([
        [1, 1],
        [1, 1],
        [1, 1],
      ]);
      const [h2] = pages[2];
      expect([...s.mem.bytes(h2, NET_HDR_LEN)]).toEqual([...frame(1500, 1).subarray(1024 - NET_HDR_LEN, 1024)]);
      s.close();
    });

    it('with MRG_RXBUF moves a frame into chains whose header space is split over buffers (any layout)', () => {
      const s = setup({ mergeable: true });
      // each chain: 4 + 8 bytes of header space, then 1012 bytes
      const bufs = Array.from({ length: 4 }, () => [s.mem.alloc(4), s.mem.alloc(8), s.mem.alloc(1024 - NET_HDR_LEN)]);
      const ids = bufs.map((b) => s.rx.add(b.map((addr, k) => ({ addr, len: [4, 8, 1024 - NET_HDR_LEN][k], write: true }))));
      s.driver.frames.push(frame(60, 0), frame(1500, 1));
      expect(s.pair.processRx(64)).toBe(2);
      expect(s.rx.takeUsed()).toEqual([{ id: ids[0], len: 72 }, { id: ids[1], len: 1024 }, { id: ids[2], len: 1512 - 1024 }]);
      const chainBytes = (k: number) => [...s.mem.bytes(bufs[k][0], 4), ...s.mem.bytes(bufs[k][1], 8), ...s.mem.bytes(bufs[k][2], 1024 - NET_HDR_LEN)];
      // the moved frame: its header (num_buffers 2) in chain 1's split header space, its bytes after it
      // and on through chain 2, that chain's header space included
      const got = [...chainBytes(1), ...chainBytes(2)];
      expect(got.slice(0, NET_HDR_LEN)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
      expect(got.slice(NET_HDR_LEN, NET_HDR_LEN + 1500)).toEqual([...frame(1500, 1)]);
      expect(chainBytes(0).slice(0, NET_HDR_LEN + 60)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, ...frame(60, 0)]);
      s.close();
    });

    it('with MRG_RXBUF breaks the ring on a buffer smaller than the header anywhere in a chain list, after the frames before it', () => {
      const s = setup({ mergeable: true });
      const good = [s.chain(1024), s.chain(1024), s.chain(1024)];
      s.rx.add([{ addr: s.mem.alloc(8), len: 8, write: true }]);
      for (let t = 0; t < 3; t++) s.driver.frames.push(frame(60, t));
      expect(s.pair.processRx(64)).toBe(1);
      expect(s.rxq.broken).toBe('receive buffer too small for the header');
      expect(s.rx.takeUsed()).toEqual(spread([good[0][0]], 60));
      s.close();
    });

    it('stops at a hostile chain inside a batch: the chains before it take frames, nothing is written past it', () => {
      for (const bad of ['readable', 'tiny', 'outside'] as const) {
        const s = setup();
        const good = [s.chain(), s.chain()];
        if (bad === 'readable') s.rx.add([{ addr: s.mem.alloc(2048), len: 2048 }]);
        else if (bad === 'tiny') s.rx.add([{ addr: s.mem.alloc(20), len: 20, write: true }]);
        else s.rx.raw([{ addr: 2 ** 45, len: 2048, flags: L.WRITE }]);
        const later = s.chain();
        for (let t = 0; t < 4; t++) s.driver.frames.push(frame(60, t));
        expect(s.pair.processRx(64)).toBe(2);
        expect(s.rxq.broken).toBe(
          { readable: 'device-readable receive buffer', tiny: 'receive buffer too small for any frame', outside: 'buffer outside guest memory' }[bad],
        );
        expect(s.driver.offered).toEqual([2]);
        expect(s.rx.takeUsed()).toEqual(good.map(([id]) => ({ id, len: 72 })));
        expect([...s.mem.bytes(later[1], 2048)].every((v) => v === 0)).toBe(true);
        expect(s.driver.frames).toHaveLength(2);
        expect([s.pair.starved, s.pair.processRx(64)]).toEqual([true, 0]);
        s.close();
      }
    });
  });
}
