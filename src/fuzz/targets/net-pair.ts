// Target "net-pair": the virtqueue (split or packed, VIRTIO_F_RING_PACKED chosen per case) and the net
// engine (NetQueuePair) driven by a scripted guest driver on freshly placed RX and TX rings, with random
// negotiated features, buffer layouts, frames from a scripted packet driver whose wire drops what it
// does not take or pushes back (wouldBlock), and (in hostile cases) a driver that corrupts its own rings.
//
// Invariants, every case: no exception escapes; nothing is written outside the buffers and rings the
// guest gave (guards around RAM, a snapshot diff inside it). For a well-behaved driver also: no ring
// breaks; every used entry names a chain in flight with no more bytes than it had; a frame delivered
// is whole, byte for byte, with num_buffers right; a frame transmitted is what the guest wrote; every
// TX chain comes back. The coupling to the engine is this file only.
import fc from 'fast-check';
import { createQueue } from '../../virtio/queues.js';
import { NetQueuePair } from '../../virtio-net/net-pair.js';
import { RxFilter } from '../../virtio-net/rx-filter.js';
import { newStatsBuffer } from '../../dataplane/stats.js';
import { META_WORDS, type DriverQueue, type PacketBatch } from '../../drivers/api.js';
import { ScriptedMemory, ScriptedRing, cutInto, RAM_A, RAM_B, GPA_B, type Desc, type DriverRing, type InFlight } from '../guest.js';
import { ScriptedPackedRing } from '../guest-packed.js';
import { check, concat, type FuzzTarget } from '../target.js';

const HDR = 12;

interface Frame {
  id: number;
  len: number;
  meta: number[];
}

/** A packet driver under script: frames to receive, a number of packets to accept on transmit. */
class ScriptedDriver implements DriverQueue {
  readonly pollFd = -1;
  drops = 0;
  frames: Frame[] = [];
  accept = 0;
  /** frames written into guest buffers, by the order receive() took them (what was written, of how many) */
  received: Array<{ frame: Frame; written: number }> = [];
  sent: Uint8Array[] = [];
  problem: string | undefined;
  /** the wire tells when it is full (transmit sets wouldBlock when it takes fewer): backpressure */
  blocks = false;
  wouldBlock = false;
  constructor(private readonly u8: Uint8Array) {}

  transmit(b: PacketBatch): number {
    const n = Math.min(b.count, this.accept);
    for (let p = 0; p < b.count; p++) {
      let total = 0;
      const bytes: number[] = [];
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const off = b.iov[t + 1];
        const l = b.iov[t + 2];
        if (b.iov[t] !== 0 || off < 0 || off + l > this.u8.length) this.problem ??= `TX segment ${off}+${l} outside the memory buffer`;
        else if (p < n) for (let k = 0; k < l; k++) bytes.push(this.u8[off + k]);
        total += l;
      }
      if (total !== b.len[p]) this.problem ??= `TX packet of ${b.len[p]} bytes has segments of ${total}`;
      if (p < n) this.sent.push(Uint8Array.from(bytes));
    }
    this.accept -= n;
    this.wouldBlock = this.blocks && n < b.count;
    return n;
  }

  /** frames into packets [0, count) while it has them, as a batching driver (tap with io_uring) does */
  receive(b: PacketBatch): number {
    let got = 0;
    for (; got < b.count && this.frames.length > 0; got++) {
      const f = this.frames.shift()!;
      let at = 0;
      for (let t = 3 * b.iovStart[got]; t < 3 * b.iovStart[got + 1] && at < f.len; t += 3) {
        const off = b.iov[t + 1];
        const n = Math.min(f.len - at, b.iov[t + 2]);
        for (let k = 0; k < n; k++) this.u8[off + k] = frameByte(f, at + k);
        at += n;
      }
      b.len[got] = at;
      for (let k = 0; k < META_WORDS; k++) b.meta[got * META_WORDS + k] = f.meta[k] ?? 0;
      this.received.push({ frame: f, written: at });
    }
    return got;
  }

  close(): void {}
}

/** the same driver, telling the length of the next frame (as the null and AF_XDP drivers can) */
class KnowingDriver extends ScriptedDriver {
  nextLength(): number {
    return this.frames.length > 0 ? this.frames[0].len : 0;
  }
}

/** byte k of a frame: a broadcast destination (the filter takes it), then a pattern unique to the frame */
function frameByte(f: Frame, k: number): number {
  return k < 6 ? 0xff : (f.id * 131 + k * 7) & 0xff;
}

const bufSizes = (min: number) => fc.array(fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 1600 })), { minLength: 1, maxLength: 4 }).filter((a) => a.reduce((s, x) => s + x, 0) >= min);

const opArb = fc.oneof(
  { weight: 4, arbitrary: fc.record({ k: fc.constant('addRx' as const), sizes: bufSizes(0), indirect: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('addTx' as const), frame: fc.integer({ min: 0, max: 1600 }), cuts: fc.array(fc.integer({ min: 0, max: 1612 }), { maxLength: 3 }), hdr: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 10, maxLength: 10 }), plainHdr: fc.boolean(), indirect: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('rx' as const), budget: fc.integer({ min: 1, max: 8 }), frames: fc.array(fc.record({ len: fc.integer({ min: 0, max: 1600 }), meta: fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 6 }) }), { maxLength: 3 }) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('tx' as const), budget: fc.integer({ min: 1, max: 80 }), accept: fc.integer({ min: 0, max: 70 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('poke' as const), rx: fc.boolean(), where: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('jump' as const), rx: fc.boolean(), by: fc.integer({ min: 1, max: 0xffff }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('wild' as const), rx: fc.boolean(), bufs: fc.array(fc.record({ addr: fc.integer({ min: 0, max: 0x10000 }), len: fc.integer({ min: 0, max: 0x10000 }), write: fc.boolean() }), { minLength: 1, maxLength: 4 }), indirect: fc.boolean() }) },
);

export const netPairCase = fc.record({
  /** VIRTIO_F_RING_PACKED: both rings packed */
  packed: fc.boolean(),
  /** added to a packed ring's size (packed sizes need not be powers of two) */
  skew: fc.nat(3),
  mergeable: fc.boolean(),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  inOrder: fc.boolean(),
  /** TX offloads negotiated: csum, tso4, tso6, ecn */
  offloads: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  /** log2 of each ring's size */
  rxLog: fc.integer({ min: 0, max: 6 }),
  txLog: fc.integer({ min: 0, max: 6 }),
  mtu: fc.oneof(fc.constant(1500), fc.integer({ min: 68, max: 1500 })),
  knowsLength: fc.boolean(),
  /** the wire pushes back (the packets it does not take stay in the ring) rather than dropping them */
  blocks: fc.boolean(),
  hostile: fc.boolean(),
  ops: fc.array(opArb, { maxLength: 14 }),
});
export type NetPairCase = typeof netPairCase extends fc.Arbitrary<infer T> ? T : never;

/** where the script puts buffers: after the rings in region A, then region B */
class Placer {
  private a: number;
  private b = GPA_B;
  constructor(start: number) {
    this.a = start;
  }
  take(len: number): number | undefined {
    if (this.a + len <= RAM_A) return (this.a += len) - len;
    if (this.b + len <= GPA_B + RAM_B) return (this.b += len) - len;
    return undefined;
  }
}

export class NetPairTarget implements FuzzTarget {
  readonly name = 'net-pair';
  readonly about = 'a scripted driver on fresh RX/TX rings with random features, buffers and frames';
  readonly weight = 9;
  readonly counts = { cases: 0, rings: 0, packedRings: 0, passes: 0, framesDelivered: 0, framesSent: 0, ringsBroken: 0 };
  private readonly m = new ScriptedMemory();

  property(): fc.IRawProperty<[NetPairCase]> {
    return fc.property(netPairCase, (c) => this.run(c));
  }

  run(c: NetPairCase): void {
    const m = this.m;
    m.reset();
    this.counts.cases++;
    this.counts.rings += 2;
    const ring = (log: number, at: number): DriverRing => (c.packed ? new ScriptedPackedRing(m, (1 << log) + c.skew, at, c.eventIdx, c.inOrder) : new ScriptedRing(m, 1 << log, at, c.eventIdx, c.inOrder));
    const rxRing = ring(c.rxLog, 0);
    const txRing = ring(c.txLog, rxRing.end);
    if (c.packed) this.counts.packedRings += 2;
    const placer = new Placer(txRing.end);
    const { rxq, txq, driver, pair } = this.openPair(c, rxRing, txRing);
    const maxRxFrame = c.mtu + 18;
    /** TX chains by head: the frame the guest wrote (after its header), if it is one the device may send */
    const txFrames = new Map<number, Uint8Array>();
    let frameId = 0;
    const hostile = c.hostile;
    // the device is called with the memory as the script left it; afterwards only the bytes the guest
    // gave may differ
    const device = (call: () => void) => {
      m.clearWritable();
      rxRing.allowFromTable();
      txRing.allowFromTable();
      m.snapshot();
      call();
      this.counts.passes++;
      const bad = m.diff();
      check(!bad, () => bad!);
      check(!driver.problem, () => driver.problem!);
      if (!hostile) {
        check(!rxq.broken && !txq.broken, () => `a well-behaved driver's ring broke: rx ${rxq.broken ?? 'fine'}, tx ${txq.broken ?? 'fine'}`);
        this.checkRx(rxRing, driver, c.mergeable);
        this.checkTx(txRing, driver, txFrames);
      }
    };
    for (const op of c.ops) {
      if (op.k === 'addRx') this.addRx(c, rxRing, placer, op);
      else if (op.k === 'addTx') this.addTx(c, txRing, placer, op, txFrames);
      else if (op.k === 'rx') {
        for (const f of op.frames) driver.frames.push({ id: ++frameId, len: Math.min(f.len, maxRxFrame), meta: f.meta });
        device(() => this.counts.framesDelivered += pair.processRx(op.budget));
      } else if (op.k === 'tx') {
        driver.accept = op.accept;
        // (the thread's event loop: the driver's fd became writable)
        pair.txBlocked = false;
        device(() => pair.processTx(op.budget));
      } else if (hostile) {
        const ring = op.rx ? rxRing : txRing;
        if (op.k === 'poke') ring.poke(op.where, op.value);
        else if (op.k === 'jump') ring.jumpAvail(op.by);
        else ring.add(op.bufs, op.indirect ? op.bufs[0].addr & ~15 : undefined);
      }
    }
    // the end of a session: what the guest queued for transmission all comes back
    driver.accept = 1 << 20;
    pair.txBlocked = false;
    device(() => pair.processTx(1 << 20));
    if (!hostile) check(txRing.inFlight.size === 0, () => `${txRing.inFlight.size} TX chains never came back`);
    if (rxq.broken || txq.broken) this.counts.ringsBroken++;
  }

  /** The queues over the case's rings, a scripted packet driver, and the engine between them. */
  private openPair(c: NetPairCase, rxRing: DriverRing, txRing: DriverRing) {
    const m = this.m;
    const features = { eventIdx: c.eventIdx, indirect: c.indirect, packed: c.packed === true };
    const rxq = createQueue(m.view, { size: rxRing.size, desc: rxRing.desc, avail: rxRing.avail, used: rxRing.used }, features, 32768);
    const txq = createQueue(m.view, { size: txRing.size, desc: txRing.desc, avail: txRing.avail, used: txRing.used }, features, 32768);
    check(typeof rxq !== 'string' && typeof txq !== 'string', () => `well-placed rings refused: ${rxq} ${txq}`);
    const driver = c.knowsLength ? new KnowingDriver(m.u8) : new ScriptedDriver(m.u8);
    driver.blocks = c.blocks === true;
    const filter = new RxFilter();
    filter.reset(Uint8Array.of(2, 0, 0, 0, 0, 1));
    const [csum, tso4, tso6, ecn] = c.offloads;
    const pair = new NetQueuePair(m.view, m.buffer, rxq, txq, driver, {
      mergeable: c.mergeable,
      maxRxFrame: c.mtu + 18,
      txPolicy: { csum, tso4: csum && tso4, tso6: csum && tso6, ecn: csum && ecn, uso: csum && tso6 },
      rxCallFd: -1,
      txCallFd: -1,
      rxStats: new Float64Array(newStatsBuffer(1)),
      txStats: new Float64Array(newStatsBuffer(1)),
      filter,
    });
    return { rxq, txq, driver, pair };
  }

  private addRx(c: NetPairCase, ring: DriverRing, placer: Placer, op: { sizes: number[]; indirect: boolean }): void {
    // a well-behaved driver's receive buffers hold a header (and without MRG_RXBUF an Ethernet header)
    const total = op.sizes.reduce((s, x) => s + x, 0);
    if (!c.hostile && total < (c.mergeable ? HDR : HDR + 14)) return;
    const bufs = this.place(placer, op.sizes, true);
    // (a chain, indirect or not, is no longer than the queue: §2.7.5.3.1)
    if (!bufs || bufs.length > ring.size) return;
    const table = op.indirect && c.indirect ? placer.take(16 * bufs.length + 16) : undefined;
    ring.add(bufs, table === undefined ? undefined : table + ((16 - (table % 16)) % 16));
  }

  private addTx(c: NetPairCase, ring: DriverRing, placer: Placer, op: { frame: number; cuts: number[]; hdr: number[]; plainHdr: boolean; indirect: boolean }, txFrames: Map<number, Uint8Array>): void {
    const frame = this.txBytes(op.frame, op.plainHdr ? undefined : op.hdr);
    const bufs = this.place(placer, cutInto(frame.length, op.cuts), false);
    if (!bufs || bufs.length > ring.size) return;
    let at = 0;
    for (const d of bufs) {
      this.m.u8.set(frame.subarray(at, at + d.len), this.m.off(d.addr, d.len));
      at += d.len;
    }
    const table = op.indirect && c.indirect ? placer.take(16 * bufs.length + 16) : undefined;
    // (the frame the guest wrote, after its header: whatever reaches the driver must be one of these)
    if (ring.add(bufs, table === undefined ? undefined : table + ((16 - (table % 16)) % 16))) txFrames.set([...ring.inFlight.keys()].pop()!, frame.subarray(HDR));
  }

  /** buffers of these sizes, placed; undefined when memory ran out */
  private place(placer: Placer, sizes: number[], write: boolean): Desc[] | undefined {
    const out: Desc[] = [];
    for (const len of sizes) {
      const addr = placer.take(len);
      if (addr === undefined) return undefined;
      out.push({ addr, len, write });
    }
    return out;
  }

  /** a TX packet: header (plain, or the script's bytes), then `len` frame bytes */
  private txBytes(len: number, hdr?: number[]): Uint8Array {
    const b = new Uint8Array(HDR + len);
    if (hdr) b.set(hdr);
    for (let k = 0; k < len; k++) b[HDR + k] = (k * 13 + len) & 0xff;
    return b;
  }

  /** RX used entries: each frame whole, in the order received, with num_buffers = its chains */
  private checkRx(ring: DriverRing, driver: ScriptedDriver, mergeable: boolean): void {
    const used = ring.reclaim();
    check(!ring.bad, () => `RX: ${ring.bad}`);
    let i = 0;
    while (i < used.length) {
      const first = used[i];
      const bytes = gather(this.m, first.chain, first.len);
      const numBuffers = bytes[10] | (bytes[11] << 8);
      check(numBuffers >= 1 && (mergeable || numBuffers === 1) && i + numBuffers <= used.length, () => `RX header says num_buffers ${numBuffers} (${used.length - i} used entries left, mergeable ${mergeable})`);
      const parts = [bytes.subarray(HDR)];
      for (let k = 1; k < numBuffers; k++) parts.push(gather(this.m, used[i + k].chain, used[i + k].len));
      const got = concat(parts);
      // the frame delivered must be the next one the driver wrote whole (cut ones are dropped)
      let r = driver.received.shift();
      while (r && r.written < r.frame.len) r = driver.received.shift();
      while (r && (r.frame.len < 14 || r.frame.len !== got.length)) r = driver.received.shift();
      check(r, () => `RX: a ${got.length}-byte frame was delivered that the driver never received whole`);
      for (let k = 0; k < got.length; k++) check(got[k] === frameByte(r.frame, k), () => `RX: byte ${k} of frame ${r.frame.id} (${r.frame.len} bytes) delivered as ${got[k]}, not ${frameByte(r.frame, k)}`);
      i += numBuffers;
    }
  }

  /** TX used entries: every frame the driver took is one the guest wrote in a chain now used */
  private checkTx(ring: DriverRing, driver: ScriptedDriver, frames: Map<number, Uint8Array>): void {
    const used = ring.reclaim();
    check(!ring.bad, () => `TX: ${ring.bad}`);
    const written: Uint8Array[] = [];
    for (const u of used) {
      const f = frames.get(u.chain.head);
      frames.delete(u.chain.head);
      if (f) written.push(f);
    }
    this.counts.framesSent += driver.sent.length;
    for (const s of driver.sent) {
      check(s.length >= 14, () => `TX: a frame of ${s.length} bytes reached the driver`);
      const idx = written.findIndex((w) => w.length === s.length && w.every((x, k) => x === s[k]));
      check(idx >= 0, () => `TX: the driver got a ${s.length}-byte frame that no chain completed in this pass holds`);
      written.splice(idx, 1);
    }
    driver.sent.length = 0;
  }
}

function gather(m: ScriptedMemory, chain: InFlight, len: number): Uint8Array {
  const out = new Uint8Array(len);
  let at = 0;
  for (const d of chain.bufs) {
    if (!d.write || at >= len) continue;
    const n = Math.min(d.len, len - at);
    out.set(m.u8.subarray(m.off(d.addr, n), m.off(d.addr, n) + n), at);
    at += n;
  }
  return out;
}
