// The queue-pair engine without a thread or a backend: a scripted guest ring on one side, a recording
// driver on the other.
import { describe, it, expect } from 'vitest';
import { STAT } from '../src/dataplane/stats.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';
import { RX_BATCH } from '../src/virtio-net/rx-batch.js';
import type { DriverQueue, PacketBatch } from '../src/drivers/api.js';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { TestMemory, TestDriver, F_NEXT, F_WRITE, F_INDIRECT, receiveFrame } from './helpers/virtq-driver.js';
import { RateLimitWords } from '../src/dataplane/rate-limit-shared.js';
import type { NetRateLimits } from '../src/dataplane/rate-limit.js';
import { newPair } from './helpers/net-pair-rig.js';
import { GuestBytes } from '../src/virtio/guest-bytes.js';

/** Records what it is given to send; receives `frame` each time it is asked. */
class RecordingDriver implements DriverQueue {
  readonly pollFd = -1;
  readonly drops = 0;
  /** per transmit call: the segment count of each packet */
  readonly sent: number[][] = [];
  frame: Uint8Array | undefined;
  /** packets one transmit takes before its wire is full (it then sets wouldBlock) */
  take = Infinity;
  wouldBlock = false;
  /** the first byte of each frame taken */
  readonly taken: number[] = [];
  transmit(b: PacketBatch, mem: SharedArrayBuffer): number {
    this.sent.push(Array.from({ length: b.count }, (_, i) => b.iovStart[i + 1] - b.iovStart[i]));
    const n = Math.min(b.count, this.take);
    this.wouldBlock = n < b.count;
    for (let i = 0; i < n; i++) this.taken.push(new Uint8Array(mem)[b.iov[3 * b.iovStart[i] + 1]]);
    return n;
  }
  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    const f = this.frame;
    if (!f) return 0;
    return receiveFrame(b, mem, f);
  }
  close(): void {}
}

function setup(o: { size?: number; mergeable?: boolean; maxRxFrame?: number; rxCallFd?: number; rateLimits?: RateLimitWords; smallWindows?: boolean } = {}) {
  const mem = new TestMemory(4 << 20);
  // (windows of 256 bytes: an offset at the end of memory has no window at all)
  if (o.smallWindows) mem.view.bytes = new GuestBytes(mem.buffer, 0x100, 0x80);
  const size = o.size ?? 256;
  const rx = new TestDriver(mem, size);
  const tx = new TestDriver(mem, size);
  const driver = new RecordingDriver();
  const { rxq, txq, pair, rxStats, txStats } = newPair(mem, rx, tx, driver, {}, { mergeable: o.mergeable ?? false, maxRxFrame: o.maxRxFrame ?? 1514, rxCallFd: o.rxCallFd ?? -1, rateLimits: o.rateLimits });
  return { mem, rx, tx, rxq, txq, driver, pair, rxStats, txStats };
}

/** A broadcast frame of `len` bytes. */
function frame(len: number): Uint8Array {
  const f = new Uint8Array(len).fill(0x5a);
  f.fill(0xff, 0, 6);
  return f;
}

describe('NetQueuePair transmit', () => {
  it('drops a chain of one empty buffer at the very end of guest memory, reading nothing there', () => {
    for (const smallWindows of [false, true]) {
      const { mem, tx, pair, txStats } = setup({ smallWindows, size: 8 });
      tx.add([{ addr: mem.size, len: 0 }]);
      tx.add([{ addr: mem.size - NET_HDR_LEN - 60, len: NET_HDR_LEN + 60 }]);
      // (and an empty buffer there first in a chain whose header then has to be gathered)
      tx.add([{ addr: mem.size, len: 0 }, { addr: mem.size - NET_HDR_LEN - 60, len: NET_HDR_LEN + 60 }]);
      expect(pair.processTx(256)).toBe(3);
      expect([txStats[STAT.DROPS_MALFORMED], txStats[STAT.PACKETS]]).toEqual([1, 2]);
      expect(pair.txq.broken).toBeUndefined();
      expect(tx.takeUsed().length).toBe(3);
    }
  });

  it('ends a batch whose segment array is nearly full and sends the next chain in a new one, dropping nothing', () => {
    const { mem, tx, driver, pair, txStats } = setup();
    // chains of 100 descriptors (a header and 99 fragments, as a many-fragment TSO frame), indirect:
    // five fill 500 of the batch's 513 segments and the sixth does not fit beside them
    const chains = 6;
    for (let n = 0; n < chains; n++) {
      const table = mem.alloc(16 * 100);
      tx.writeDesc(0, mem.alloc(12), 12, F_NEXT, 1, table);
      for (let k = 1; k < 100; k++) tx.writeDesc(k, mem.alloc(16), 16, k < 99 ? F_NEXT : 0, k + 1, table);
      tx.writeDesc(n, table, 16 * 100, F_INDIRECT, 0);
      tx.publish(n);
    }
    expect(pair.processTx(256)).toBe(chains);
    expect(txStats[STAT.DROPS]).toBe(0);
    expect(txStats[STAT.PACKETS]).toBe(chains);
    expect(driver.sent.map((b) => b.length)).toEqual([5, 1]);
    expect(driver.sent.flat()).toEqual(Array(chains).fill(99));
    expect(tx.takeUsed().map((u) => u.id)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('leaves in the ring, in order, what a driver that would block did not take, and sends it once it can', () => {
    const { mem, tx, driver, pair, txStats } = setup();
    const add = (id: number, valid = true) => {
      const at = mem.alloc(NET_HDR_LEN + 60);
      mem.bytes(at + NET_HDR_LEN, 60).fill(id);
      tx.add([{ addr: at, len: NET_HDR_LEN + 60, write: !valid }]);
    };
    for (let id = 0; id < 5; id++) add(id);
    add(5, false); // device-writable: dropped, and it ends the batch before it
    add(6);
    add(7);
    driver.take = 3;
    expect(pair.processTx(256)).toBe(3);
    expect(tx.takeUsed().map((u) => u.id)).toEqual([0, 1, 2]);
    expect(txStats[STAT.WAITS]).toBe(1);
    expect(txStats[STAT.DROPS]).toBe(0);
    expect(pair.processTx(256)).toBe(0); // waits for the driver's fd
    driver.take = Infinity;
    pair.txBlocked = false;
    expect(pair.processTx(256)).toBe(5);
    expect(driver.taken).toEqual([0, 1, 2, 3, 4, 6, 7]);
    expect(tx.takeUsed().map((u) => u.id)).toEqual([3, 4, 5, 6, 7]);
    expect(txStats[STAT.DROPS]).toBe(1);
    expect(txStats[STAT.PACKETS]).toBe(7);
    expect(txStats[STAT.WAITS]).toBe(1);
  });
});

describe('NetQueuePair receive', () => {
  it('publishes (and signals) the frames it delivered before a bad buffer broke the ring', () => {
    const call = native.eventfd(0, EFD_NONBLOCK);
    try {
      const { mem, rx, rxq, driver, pair, rxStats } = setup({ rxCallFd: call });
      driver.frame = frame(60);
      const good = rx.add([{ addr: mem.alloc(2048), len: 2048, write: true }]);
      rx.add([{ addr: mem.alloc(2048), len: 2048 }]); // device-readable: not a receive buffer
      expect(pair.processRx(8)).toBe(1);
      expect(rxq.broken).toBe('device-readable receive buffer');
      expect(rxStats[STAT.PACKETS]).toBe(1);
      expect(rx.takeUsed()).toEqual([{ id: good, len: 72 }]);
      const n = new BigUint64Array(1);
      expect(native.read(call, n)).toBe(8);
      // nothing to offer any more: the driver's fd is not to be watched
      expect(pair.starved).toBe(true);
      expect(pair.processRx(8)).toBe(0);
      expect(pair.starved).toBe(true);
    } finally {
      native.close(call);
    }
  });

  it('publishes what it delivered before a buffer too small for the header broke the ring', () => {
    const { mem, rx, rxq, driver, pair } = setup();
    driver.frame = frame(60);
    const good = rx.add([{ addr: mem.alloc(2048), len: 2048, write: true }]);
    rx.add([{ addr: mem.alloc(8), len: 8, write: true }]);
    expect(pair.processRx(8)).toBe(1);
    expect(rxq.broken).toBe('receive buffer too small for the header');
    expect(rx.takeUsed()).toEqual([{ id: good, len: 72 }]);
  });

  for (const knows of [true, false]) {
    it(`drops a frame larger than the one chain it would go to without MRG_RXBUF (driver ${knows ? 'tells' : 'does not tell'} the length)`, () => {
      // a driver that reports what it copied (the tap, the null driver), with or without nextLength();
      // found by the net-pair fuzz target: the frame was delivered cut to the chain
      const { mem, rx, rxq, pair, rxStats } = setup();
      const frames = [frame(200), frame(60)];
      const cutting: DriverQueue = {
        pollFd: -1,
        drops: 0,
        transmit: () => 0,
        receive(b: PacketBatch, m: SharedArrayBuffer): number {
          const f = frames.shift();
          if (!f) return 0;
          let at = 0;
          for (let k = b.iovStart[0]; k < b.iovStart[1] && at < f.length; k++) {
            const n = Math.min(b.iov[3 * k + 2], f.length - at);
            new Uint8Array(m).set(f.subarray(at, at + n), b.iov[3 * k + 1]);
            at += n;
          }
          b.len[0] = at;
          b.meta.fill(0);
          return 1;
        },
        ...(knows ? { nextLength: () => frames[0]?.length ?? 0 } : {}),
        close() {},
      };
      (pair as unknown as { driver: DriverQueue }).driver = cutting;
      const buf = mem.alloc(100);
      const id = rx.add([{ addr: buf, len: 100, write: true }]);
      expect(pair.processRx(1)).toBe(0);
      expect(rx.takeUsed()).toEqual([]);
      expect(rxStats[STAT.DROPS]).toBe(1);
      // the buffer stays the guest's: the next frame, which fits, goes there
      expect(pair.processRx(1)).toBe(1);
      expect(rx.takeUsed()).toEqual([{ id, len: 72 }]);
      expect([...mem.bytes(buf + 12, 60)]).toEqual([...frame(60)]);
      expect(rxq.broken).toBeUndefined();
    });
  }

  it('writes the header whole after empty buffers at the start of a chain', () => {
    const { mem, rx, driver, pair } = setup();
    driver.frame = frame(60);
    const buf = mem.alloc(2048);
    mem.bytes(buf, 12).fill(0xee);
    rx.add([...Array.from({ length: 16 }, () => ({ addr: mem.alloc(16), len: 0, write: true })), { addr: buf, len: 2048, write: true }]);
    expect(pair.processRx(8)).toBe(1);
    // no offload, one buffer: a zero header but for num_buffers = 1
    expect([...mem.bytes(buf, 12)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    expect([...mem.bytes(buf + 12, 60)]).toEqual([...frame(60)]);
  });

  it('holds its receive segments to what the largest frame can use, whatever the ring size', () => {
    // 32768 entries with MRG_RXBUF: room for every piece of 1025 chains would be 67 M segments (1.6 GB)
    const { pair } = setup({ size: 32768, mergeable: true, maxRxFrame: 65535 + 14 + 4 });
    const iov = (pair as unknown as { rx: { merge: { batch: PacketBatch } } }).rx.merge.batch.iov;
    // (one frame of the largest size over chains as long as the ring allows, and a batch of small ones)
    expect(iov.length / 3).toBeLessThanOrEqual(65553 + NET_HDR_LEN + 2 * 32768 + 4 * RX_BATCH);
  });

  it('places a frame over chains of 1-byte buffers without overrunning its segments', () => {
    // MRG_RXBUF, 25 chains of 64 one-byte buffers (indirect): the header over 12 of them, and the
    // frame in as many pieces as it has bytes, the most any frame can take
    const { mem, rx, driver, pair } = setup({ size: 1024, mergeable: true, maxRxFrame: 1514 });
    driver.frame = frame(1514);
    const bytes: number[] = [];
    for (let n = 0; n < 25; n++) {
      const table = mem.alloc(16 * 64);
      for (let k = 0; k < 64; k++) {
        const a = mem.alloc(1, 1);
        bytes.push(a);
        rx.writeDesc(k, a, 1, F_WRITE | (k < 63 ? F_NEXT : 0), k + 1, table);
      }
      rx.writeDesc(n, table, 16 * 64, F_INDIRECT, 0);
      rx.publish(n);
    }
    expect(pair.processRx(1)).toBe(1);
    const at = (k: number) => mem.bytes(bytes[k], 1)[0];
    expect(Array.from({ length: 1514 }, (_, k) => at(12 + k))).toEqual([...frame(1514)]);
    expect(at(10)).toBe(24); // num_buffers: ceil(1526 / 64)
    expect(rx.takeUsed().map((u) => u.len)).toEqual([...Array(23).fill(64), 1526 - 23 * 64]);
  });
});

describe('NetQueuePair under a rate limit', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  function limited(limits: NetRateLimits, mergeable = false) {
    const words = new RateLimitWords();
    words.set(limits);
    const s = setup({ rateLimits: words, mergeable });
    s.pair.updateLimits();
    return { ...s, words };
  }

  it('leaves TX chains over the frame limit in the ring, sleeps until tokens return, then sends them in order', async () => {
    // 3 frames per 40 ms
    const { mem, tx, driver, pair, txStats } = limited({ tx: { ops: { size: 3, refillTimeMs: 40 } } });
    for (let id = 0; id < 5; id++) {
      const at = mem.alloc(NET_HDR_LEN + 60);
      mem.bytes(at + NET_HDR_LEN, 60).fill(id);
      tx.add([{ addr: at, len: NET_HDR_LEN + 60 }]);
    }
    expect(pair.processTx(256)).toBe(3);
    expect(driver.taken).toEqual([0, 1, 2]);
    expect(tx.takeUsed().map((u) => u.id)).toEqual([0, 1, 2]);
    // the other two wait in the ring (not used, not dropped), and the pair says how long to sleep
    expect(pair.txThrottled).toBe(true);
    expect(pair.txq.pending(8)).toBe(2);
    const wait = pair.limitWaitMs();
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(40 / 3 + 1);
    expect(pair.processTx(256)).toBe(0);
    expect(txStats[STAT.RATE_LIMITED]).toBe(1);
    await sleep(45);
    expect(pair.limitWaitMs()).toBe(0);
    expect(pair.processTx(256)).toBe(2);
    expect(driver.taken).toEqual([0, 1, 2, 3, 4]);
    expect(tx.takeUsed().map((u) => u.id)).toEqual([3, 4]);
    expect(txStats[STAT.PACKETS]).toBe(5);
    expect(txStats[STAT.DROPS]).toBe(0);
    expect(txStats[STAT.RATE_LIMITED_MS]).toBeGreaterThan(0);
    expect(pair.txThrottled).toBe(false);
  });

  it('holds TX to its byte limit, and a limit removed while chains wait lets them go at once', () => {
    // 200 bytes per 10 s: three 60-byte frames, the fourth waits
    const { mem, tx, driver, pair, words } = limited({ tx: { bandwidth: { size: 200, refillTimeMs: 10_000 } } });
    for (let id = 0; id < 6; id++) {
      const at = mem.alloc(NET_HDR_LEN + 60);
      mem.bytes(at + NET_HDR_LEN, 60).fill(id);
      tx.add([{ addr: at, len: NET_HDR_LEN + 60 }]);
    }
    expect(pair.processTx(256)).toBe(3);
    expect(pair.limitWaitMs()).toBeGreaterThan(100);
    words.set({ tx: {} });
    pair.updateLimits();
    expect(pair.txThrottled).toBe(false);
    expect(pair.processTx(256)).toBe(3);
    expect(driver.taken).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('gives back the tokens of frames a blocked driver did not take', () => {
    const { mem, tx, driver, pair } = limited({ tx: { ops: { size: 4, refillTimeMs: 10_000 } } });
    for (let id = 0; id < 4; id++) {
      const at = mem.alloc(NET_HDR_LEN + 60);
      tx.add([{ addr: at, len: NET_HDR_LEN + 60 }]);
    }
    driver.take = 1;
    expect(pair.processTx(256)).toBe(1);
    driver.take = Infinity;
    pair.txBlocked = false;
    // the three frames the driver refused still have their tokens
    expect(pair.processTx(256)).toBe(3);
    expect(pair.txThrottled).toBe(false);
  });

  it.each([false, true])('stops reading the driver when RX has no tokens, and delivers again once the limit goes (mergeable %s)', (mergeable) => {
    const { mem, rx, driver, pair, rxStats, words } = limited({ rx: { ops: { size: 4, refillTimeMs: 10_000 } } }, mergeable);
    driver.frame = frame(100);
    let reads = 0;
    const receive = driver.receive.bind(driver);
    driver.receive = (b, m) => (reads++, receive(b, m));
    for (let i = 0; i < 10; i++) rx.add([{ addr: mem.alloc(2048), len: 2048, write: true }]);
    expect(pair.processRx(256)).toBe(4);
    expect(pair.rxThrottled).toBe(true);
    expect(rxStats[STAT.RATE_LIMITED]).toBe(1);
    const readsThen = reads;
    expect(pair.processRx(256)).toBe(0);
    expect(reads).toBe(readsThen); // the driver keeps its frames
    expect(rx.takeUsed()).toHaveLength(4);
    words.set({ rx: {} });
    pair.updateLimits();
    expect(pair.rxThrottled).toBe(false);
    expect(pair.processRx(256)).toBe(6);
  });

  it('without a limit has no wait to report', () => {
    const { pair } = setup();
    pair.updateLimits();
    expect(pair.limitWaitMs()).toBe(-1);
  });
});
