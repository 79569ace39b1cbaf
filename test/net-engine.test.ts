// The net engine (NetQueuePair) on split and packed rings, without a thread or a backend: a scripted
// guest on rings in a SharedArrayBuffer, a scripted driver that records what it is given and takes or
// refuses what it is told to.
import { describe, it, expect } from 'vitest';
import { RX_MODE } from '../src/virtio-net/rx-filter.js';
import { STAT, dropsByCause } from '../src/dataplane/stats.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { txPolicy, F, bit } from '../src/virtio-net/features.js';
import { META, META_NEEDS_CSUM, type PacketBatch } from '../src/drivers/api.js';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { TestMemory, F_WRITE } from './helpers/virtq-driver.js';
import { eventfdCount as calls, RING_LAYOUTS } from './helpers/ring-driver.js';
import { FrameQueue } from './helpers/fake-drivers.js';
import { newPair } from './helpers/net-pair-rig.js';
import { testDirtyLog } from './helpers/test-dirty-log.js';

/** A driver that records the packets it is given and receives the frames queued for it. */
class ScriptedDriver extends FrameQueue {
  /** what each transmit call was given: per packet its bytes and its offload metadata */
  readonly sent: Array<Array<{ bytes: number[]; flags: number; csumStart: number }>> = [];
  /** how many packets the next transmit calls take (unset: all) */
  takes: number[] = [];
  override transmit(b: PacketBatch, mem: SharedArrayBuffer): number {
    const u8 = new Uint8Array(mem);
    const batch = [];
    for (let i = 0; i < b.count; i++) {
      const bytes: number[] = [];
      for (let k = b.iovStart[i]; k < b.iovStart[i + 1]; k++) bytes.push(...u8.subarray(b.iov[3 * k + 1], b.iov[3 * k + 1] + b.iov[3 * k + 2]));
      batch.push({ bytes, flags: b.meta[i * 8 + META.FLAGS], csumStart: b.meta[i * 8 + META.CSUM_START] });
    }
    this.sent.push(batch);
    return Math.min(b.count, this.takes.shift() ?? b.count);
  }
}

const OUR_MAC = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/** A frame of `len` bytes to `dst` (default: broadcast), its payload numbered. */
function frame(len: number, dst: number[] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + 3) & 0xff;
  f.set(dst, 0);
  return f;
}

for (const L of RING_LAYOUTS) {
  function setup(o: { size?: number; mergeable?: boolean; maxRxFrame?: number; features?: bigint; log?: boolean; knowsLength?: boolean } = {}) {
    const mem = new TestMemory(4 << 20);
    const size = o.size ?? 64;
    const rx = L.driver(mem, size);
    const tx = L.driver(mem, size);
    const driver = new ScriptedDriver(o.knowsLength);
    const { log, logged } = testDirtyLog(mem, o.log);
    const rxCall = native.eventfd(0, EFD_NONBLOCK);
    const txCall = native.eventfd(0, EFD_NONBLOCK);
    const { rxq, txq, pair, rxStats, txStats, filter } = newPair(mem, rx, tx, driver, L, {
      mergeable: o.mergeable ?? false,
      maxRxFrame: o.maxRxFrame ?? 1514,
      txPolicy: txPolicy(o.features ?? 0n),
      rxCallFd: rxCall,
      txCallFd: txCall,
      log,
    });
    filter.reset(new Uint8Array(OUR_MAC));
    rxq.setDirtyLog(log, rx.cfg);
    txq.setDirtyLog(log, tx.cfg);
    const close = () => [rxCall, txCall].forEach((fd) => native.close(fd));
    return { mem, rx, tx, rxq, txq, driver, pair, rxStats, txStats, filter, rxCalls: () => calls(rxCall), txCalls: () => calls(txCall), close, logged };
  }

  /** a TX chain: a header (zero but for what `hdr` sets) and the frame, in `split` pieces */
  function txChain(s: ReturnType<typeof setup>, f: Uint8Array, pieces = [NET_HDR_LEN + f.length], hdr?: Uint8Array): number {
    const all = new Uint8Array(NET_HDR_LEN + f.length);
    if (hdr) all.set(hdr);
    all.set(f, NET_HDR_LEN);
    let at = 0;
    const bufs = pieces.map((n) => {
      const a = s.mem.alloc(Math.max(n, 1), 1);
      s.mem.bytes(a, n).set(all.subarray(at, at + n));
      at += n;
      return { addr: a, len: n };
    });
    return s.tx.add(bufs);
  }

  describe(`net engine on ${L.name} rings: transmit`, () => {
    it('hands the driver a batch and completes every chain once, with one interrupt', () => {
      const s = setup();
      const frames = [60, 1514, 200, 64, 99].map((n) => frame(n));
      const ids = frames.map((f) => txChain(s, f));
      expect(s.pair.processTx(256)).toBe(5);
      expect(s.driver.sent).toHaveLength(1);
      expect(s.driver.sent[0].map((p) => p.bytes)).toEqual(frames.map((f) => [...f]));
      expect(s.tx.takeUsed()).toEqual(ids.map((id) => ({ id, len: 0 })));
      expect([s.txStats[STAT.PACKETS], s.txStats[STAT.BYTES], s.txStats[STAT.DROPS]]).toEqual([5, 60 + 1514 + 200 + 64 + 99, 0]);
      expect(s.txCalls()).toBe(1);
      s.close();
    });

    it('takes a header that spans descriptors, and a frame in several', () => {
      const s = setup({ features: bit(F.CSUM) });
      const f = frame(300);
      const hdr = new Uint8Array(NET_HDR_LEN);
      hdr[0] = 1; // NEEDS_CSUM at 34 + 16
      hdr[6] = 34;
      hdr[8] = 16;
      txChain(s, f, [5, 7 + 10, 100, 190], hdr);
      expect(s.pair.processTx(256)).toBe(1);
      const p = s.driver.sent[0][0];
      expect(p.bytes).toEqual([...f]);
      expect([p.flags & META_NEEDS_CSUM, p.csumStart]).toEqual([META_NEEDS_CSUM, 34]);
      s.close();
    });

    it('completes what a driver refused as dropped, and counts it', () => {
      const s = setup();
      for (let i = 0; i < 5; i++) txChain(s, frame(100));
      s.driver.takes = [2];
      expect(s.pair.processTx(256)).toBe(5);
      expect(s.tx.takeUsed()).toHaveLength(5);
      expect([s.txStats[STAT.PACKETS], s.txStats[STAT.DROPS]]).toEqual([2, 3]);
      expect(dropsByCause(s.txStats)).toEqual({ filtered: 0, tooBig: 0, malformed: 0, wire: 3 });
      s.close();
    });

    it('drops chains no frame can come from (writable, runt, oversized, bad header) and goes on', () => {
      const s = setup();
      const w = s.mem.alloc(200);
      s.tx.add([{ addr: w, len: 12 }, { addr: w, len: 100, write: true }]);
      txChain(s, frame(10));
      const big = s.mem.alloc(70000);
      s.tx.add([{ addr: big, len: NET_HDR_LEN + 65535 + 14 + 4 + 1 }]);
      const bad = new Uint8Array(NET_HDR_LEN);
      bad[0] = 2; // DATA_VALID: receive-side only
      txChain(s, frame(100), undefined, bad);
      const good = txChain(s, frame(100));
      expect(s.pair.processTx(256)).toBe(5);
      expect(s.driver.sent.flat().map((p) => p.bytes.length)).toEqual([100]);
      expect(s.tx.takeUsed().map((u) => u.id)).toContain(good);
      expect(s.txStats[STAT.DROPS]).toBe(4);
      expect(dropsByCause(s.txStats)).toEqual({ filtered: 0, tooBig: 0, malformed: 4, wire: 0 });
      expect(s.txq.broken).toBeUndefined();
      s.close();
    });

    it('stops at a chain that breaks the ring, completing what came before', () => {
      const s = setup();
      const ok = txChain(s, frame(100));
      s.tx.raw([{ addr: 2 ** 40, len: 100, flags: 0 }]);
      expect(s.pair.processTx(256)).toBe(1);
      expect(s.txq.broken).toBe('buffer outside guest memory');
      expect(s.tx.takeUsed()).toEqual([{ id: ok, len: 0 }]);
      expect(s.pair.processTx(256)).toBe(0);
      s.close();
    });

    it('ends each batch at 64 packets and at the budget', () => {
      const s = setup({ size: 256 });
      for (let i = 0; i < 150; i++) txChain(s, frame(60));
      expect(s.pair.processTx(100)).toBe(100);
      expect(s.driver.sent.map((b) => b.length)).toEqual([64, 36]);
      expect(s.pair.processTx(100)).toBe(50);
      expect(s.tx.takeUsed()).toHaveLength(150);
      s.close();
    });
  });

  describe(`net engine on ${L.name} rings: receive`, () => {
    const rxBuf = (s: ReturnType<typeof setup>, len: number) => s.rx.add([{ addr: s.mem.alloc(len), len, write: true }]);
    /** the bytes a used chain holds: header then frame, from the buffers the test gave it */
    const header = (s: ReturnType<typeof setup>, addr: number) => [...s.mem.bytes(addr, NET_HDR_LEN)];

    it('delivers a frame with its header into one chain and interrupts', () => {
      const s = setup();
      const a = s.mem.alloc(2048);
      const id = s.rx.add([{ addr: a, len: 2048, write: true }]);
      s.driver.frames.push(frame(60));
      expect(s.pair.processRx(8)).toBe(1);
      expect(s.rx.takeUsed()).toEqual([{ id, len: 72 }]);
      expect(header(s, a)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      expect([...s.mem.bytes(a + NET_HDR_LEN, 60)]).toEqual([...frame(60)]);
      expect(s.rxCalls()).toBe(1);
      expect(s.pair.starved).toBe(true); // no buffer for another
      s.close();
    });

    it('spreads a frame over chains with MRG_RXBUF and says how many in num_buffers', () => {
      // (a driver that knows the frame's length: only the chains it needs are taken)
      const s = setup({ mergeable: true, maxRxFrame: 9018, knowsLength: true });
      const bufs = [0, 1, 2, 3].map(() => s.mem.alloc(1024));
      const ids = bufs.map((a) => s.rx.add([{ addr: a, len: 1024, write: true }]));
      s.driver.frames.push(frame(2500));
      expect(s.pair.processRx(8)).toBe(1);
      expect(s.rx.takeUsed()).toEqual([{ id: ids[0], len: 1024 }, { id: ids[1], len: 1024 }, { id: ids[2], len: 2512 - 2048 }]);
      expect(header(s, bufs[0])[10]).toBe(3);
      const got = [...s.mem.bytes(bufs[0] + 12, 1012), ...s.mem.bytes(bufs[1], 1024), ...s.mem.bytes(bufs[2], 2512 - 2048)];
      expect(got).toEqual([...frame(2500)]);
      // the fourth chain was given back: it takes the next frame
      s.driver.frames.push(frame(100));
      expect(s.pair.processRx(8)).toBe(1);
      expect(s.rx.takeUsed()).toEqual([{ id: ids[3], len: 112 }]);
      s.close();
    });

    it('writes a header that spans descriptors', () => {
      const s = setup();
      const [h1, h2, body] = [5, 4, 2048].map((n) => s.mem.alloc(n, 1));
      s.rx.add([{ addr: h1, len: 5, write: true }, { addr: h2, len: 4, write: true }, { addr: body, len: 2048, write: true }]);
      s.driver.frames.push(frame(100));
      expect(s.pair.processRx(8)).toBe(1);
      expect([...s.mem.bytes(h1, 5), ...s.mem.bytes(h2, 4), ...s.mem.bytes(body, 3)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
      expect([...s.mem.bytes(body + 3, 100)]).toEqual([...frame(100)]);
      s.close();
    });

    it('gives the buffers back when the driver has nothing, and starves without buffers', () => {
      const s = setup();
      const id = rxBuf(s, 2048);
      expect(s.pair.processRx(8)).toBe(0);
      expect([s.pair.dry, s.pair.starved, s.rxq.pending()]).toEqual([true, false, 1]);
      s.driver.frames.push(frame(60), frame(60));
      expect(s.pair.processRx(8)).toBe(1);
      expect(s.rx.takeUsed()).toEqual([{ id, len: 72 }]);
      expect(s.pair.starved).toBe(true);
      expect(s.driver.frames).toHaveLength(1); // not read: no buffer to put it in
      s.close();
    });

    it('waits with MRG_RXBUF until the buffers can hold the largest frame', () => {
      const s = setup({ mergeable: true });
      rxBuf(s, 1024);
      s.driver.frames.push(frame(60));
      expect(s.pair.processRx(8)).toBe(0);
      expect([s.pair.starved, s.pair.starvedPending, s.rxq.pending()]).toEqual([true, 1, 1]);
      rxBuf(s, 1024);
      expect(s.pair.processRx(8)).toBe(1);
      s.close();
    });

    it('drops what its filter refuses and what does not fit, keeping the buffers for the next frame', () => {
      const s = setup();
      s.filter.setMode(RX_MODE.PROMISC, false);
      const a = s.mem.alloc(2048);
      const id = s.rx.add([{ addr: a, len: 2048, write: true }]);
      s.driver.frames.push(frame(60, [0x52, 0x54, 0, 0x99, 0x99, 0x99]), frame(3000), frame(10), frame(80, OUR_MAC));
      expect(s.pair.processRx(8)).toBe(1);
      expect(s.rxStats[STAT.DROPS]).toBe(3);
      // (not for our MAC, 3000 bytes for a 2048-byte buffer, a 10-byte runt)
      expect(dropsByCause(s.rxStats)).toEqual({ filtered: 1, tooBig: 1, malformed: 1, wire: 0 });
      expect(s.rx.takeUsed()).toEqual([{ id, len: 92 }]);
      expect([...s.mem.bytes(a + 12, 80)]).toEqual([...frame(80, OUR_MAC)]);
      s.close();
    });

    it('marks in the dirty log the pages it wrote: the frame, the header and the ring', () => {
      const s = setup({ log: true });
      const a = s.mem.alloc(3 * 4096, 4096) + 4000; // a frame across a page boundary
      const far = s.mem.alloc(4096, 4096);
      s.rx.add([{ addr: a, len: 2048, write: true }]);
      s.driver.frames.push(frame(1000));
      expect(s.pair.processRx(8)).toBe(1);
      expect([s.logged(a), s.logged(a + 1000)]).toEqual([1, 1]);
      expect(s.logged(far)).toBe(0);
      // used entries: in the used ring (split) or the descriptor ring (packed)
      expect(s.logged(L.packed ? s.rx.cfg.desc : s.rx.cfg.used)).toBe(1);
      s.close();
    });

    it('stops at a hostile receive chain, publishing what it delivered before', () => {
      for (const bad of ['readable', 'tiny', 'outside'] as const) {
        const s = setup();
        const good = rxBuf(s, 2048);
        if (bad === 'readable') s.rx.add([{ addr: s.mem.alloc(2048), len: 2048 }]);
        else if (bad === 'tiny') s.rx.add([{ addr: s.mem.alloc(8), len: 8, write: true }]);
        else s.rx.raw([{ addr: 2 ** 45, len: 2048, flags: L.packed ? 2 : F_WRITE }]);
        s.driver.frames.push(frame(60), frame(60));
        expect(s.pair.processRx(8)).toBe(1);
        expect(s.rxq.broken).toBe(
          { readable: 'device-readable receive buffer', tiny: 'receive buffer too small for the header', outside: 'buffer outside guest memory' }[bad],
        );
        expect(s.rx.takeUsed()).toEqual([{ id: good, len: 72 }]);
        expect(s.rxCalls()).toBe(1);
        expect(s.pair.starved).toBe(true);
        s.close();
      }
    });
  });
}
