// The receive side of a queue pair when the guest negotiated RSS or hash reports and several pairs are
// in use: frames are read from the pair's driver queue into a staging buffer of this thread's own,
// classified and hashed (rss-hash.ts), and handed to the pair the indirection table names through the
// hand-over rings (rss-ring.ts; this pair's own frames go through its own ring too). Each pair then
// copies the frames waiting for it into its RX ring, with the hash and its type in the header
// (virtio_net_hdr_v1_hash) when hash reports are on. Frames thus cost one copy more than without RSS.
// (With one pair there is nowhere to steer: net-rx.ts delivers and hashes the frames itself.)
import type { GuestView } from '../virtio/dma.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { META_WORDS, newPacketBatch, type DriverQueue, type PacketBatch } from '../drivers/api.js';
import { native, ONE } from '../native.js';
import { STAT } from '../dataplane/stats.js';
import { RateGate } from '../dataplane/rate-gate.js';
import { NET_HDR_HASH_LEN, NET_HDR_LEN, writeHashFields, writeRxHeader } from './net-header.js';
import { RX_BATCH } from './rx-batch.js';
import { signal } from './net-rx.js';
import type { PairOptions } from './net-pair.js';
import { HandoverRings, type HandoverRecord } from './rss-ring.js';
import { RSS_MODE } from './rss-state.js';
import { HASH_REPORT } from './rss-classify.js';
import { RssHasher } from './rss-hash.js';

const ETH_HLEN = 14;

/** What a pair's thread needs for steering (structured-cloneable but the classes made from it). */
export interface SteerOptions {
  /** this pair's index, and the pairs in use */
  pair: number;
  pairs: number;
  rings: SharedArrayBuffer;
  /** each pair's wake eventfd (written after frames were handed to it) */
  wakeFds: number[];
  rss: SharedArrayBuffer;
  /** VIRTIO_NET_F_HASH_REPORT: headers are NET_HDR_HASH_LEN bytes and carry the hash */
  hashReport: boolean;
}

export class SteeredRx {
  private readonly rings: HandoverRings;
  private readonly hasher: RssHasher;
  /** the staging buffer: RX_BATCH slots of `slot` bytes, a driver batch over them */
  private readonly staging: SharedArrayBuffer;
  private readonly stagingU8: Uint8Array;
  private readonly slot: number;
  private readonly batch: PacketBatch;
  private readonly hdrLen: number;
  private readonly hdr: Uint8Array;
  private readonly hdrView: DataView;
  /** the chains one frame takes (mergeable: several), their heads and room */
  private readonly heads: Uint16Array;
  private readonly caps: Float64Array;
  /** the segments of those chains (offset, length) */
  private segOff: Float64Array;
  private segLen: Float64Array;
  private readonly bytes: GuestBytes;
  private readonly me: number;
  private readonly pairs: number;
  /** pairs frames were handed to in this call (1: to be woken) */
  private readonly woken: Uint8Array;

  constructor(
    mem: GuestView,
    /** guest memory as drivers get it (GuestBytes.plain) */
    private readonly memBuffer: ArrayBuffer,
    private readonly rxq: Virtqueue,
    private readonly pair: { readonly driver: DriverQueue },
    private readonly o: PairOptions,
    private readonly s: SteerOptions,
  ) {
    this.bytes = mem.bytes;
    this.me = s.pair;
    this.pairs = s.pairs;
    this.woken = new Uint8Array(s.pairs);
    this.rings = new HandoverRings(s.rings, s.pairs, o.maxRxFrame);
    this.hasher = new RssHasher(s.rss);
    this.hdrLen = s.hashReport ? NET_HDR_HASH_LEN : NET_HDR_LEN;
    this.hdr = new Uint8Array(this.hdrLen);
    this.hdrView = new DataView(this.hdr.buffer);
    // one byte more than the largest frame: a frame that fills its slot may have been cut
    this.slot = (o.maxRxFrame + 1 + 7) & ~7;
    this.staging = new SharedArrayBuffer(RX_BATCH * this.slot);
    this.stagingU8 = new Uint8Array(this.staging);
    this.batch = newPacketBatch(RX_BATCH, RX_BATCH);
    for (let i = 0; i < RX_BATCH; i++) {
      this.batch.iov[3 * i] = 0;
      this.batch.iov[3 * i + 1] = i * this.slot;
      this.batch.iov[3 * i + 2] = this.slot;
      this.batch.iovStart[i] = i;
    }
    this.batch.iovStart[RX_BATCH] = RX_BATCH;
    const chains = o.mergeable ? Math.min(rxq.size, Math.ceil((o.maxRxFrame + this.hdrLen) / 64) + 1) : 1;
    this.heads = new Uint16Array(chains);
    this.caps = new Float64Array(chains);
    this.segOff = new Float64Array(64);
    this.segLen = new Float64Array(64);
    this.gate = new RateGate(o.rxStats);
  }

  starved = false;
  starvedPending = 0;
  dry = false;
  /** the rate limit of delivery into the RX ring (reading the driver is bounded by the hand-over rings) */
  readonly gate: RateGate;

  /** Frames wait for this pair in a hand-over ring. */
  get handedOver(): boolean {
    return this.rings.pending(this.me);
  }

  /** Frames waiting for this pair into its RX ring, then a batch from the driver handed out, then again. */
  process(budget: number): number {
    this.starved = false;
    this.dry = false;
    this.hasher.refresh();
    // (while it waits for tokens the driver is still read into the rings; drain() delivers nothing)
    if (this.gate.limit !== undefined) this.gate.open(performance.now());
    let delivered = this.drain(budget);
    let work = delivered;
    if (!this.starved && !this.rxq.broken) {
      work += this.read(Math.min(RX_BATCH, budget));
      const more = this.drain(budget);
      delivered += more;
      work += more;
    }
    this.rxq.flush();
    // (the device's notification coalescing holds this ring's interrupt as on the unsteered path)
    signal(this.rxq, this.o.rxCallFd, this.o.rxStats, this.o.rxCoalesce, delivered);
    if (this.rxq.broken) this.starved = true;
    return work;
  }

  /**
   * One driver batch into the staging buffer, each frame handed to its pair. Returns frames read. A
   * batch is no larger than every ring from this pair can take; a ring towards a pair whose guest takes
   * nothing limits it to one frame (what is for that pair then drops, the rest goes on), this pair's
   * own ring to nothing (its frames wait for its RX buffers).
   */
  private read(max: number): number {
    const r = this.rings;
    const frame = this.o.maxRxFrame;
    let n = Math.min(max, r.room(this.me, this.me, frame));
    for (let to = 0; to < this.pairs && n > 1; to++) if (to !== this.me) n = Math.min(n, Math.max(1, r.room(this.me, to, frame)));
    if (n === 0) return 0;
    const b = this.batch;
    b.count = n;
    const got = Math.min(this.pair.driver.receive(b, this.staging), n);
    const st = this.o.rxStats;
    st[STAT.BATCHES]++;
    if (got <= 0) {
      this.dry = true;
      return 0;
    }
    const hasher = this.hasher;
    const snap = hasher.snap;
    for (let i = 0; i < got; i++) {
      const len = b.len[i];
      const at = i * this.slot;
      const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : len > this.o.maxRxFrame ? STAT.DROPS_TOO_BIG : !this.o.filter.accepts(this.stagingU8, at, len) ? STAT.DROPS_FILTERED : 0;
      if (drop !== 0) {
        st[STAT.DROPS]++;
        st[drop]++;
        continue;
      }
      const report = hasher.classify(this.stagingU8, at, len);
      const hash = hasher.value;
      let to = this.me;
      if (snap.mode === RSS_MODE.STEER) {
        to = report !== HASH_REPORT.NONE ? snap.table[hash & (snap.tableLen - 1)] : snap.unclassified;
        // (the table names pairs the device has; one not in use now keeps the frame here)
        if (to >= this.pairs) to = this.me;
      }
      if (!this.rings.push(this.me, to, this.staging, at, len, hash, report, b.meta, i * META_WORDS)) {
        // the pair's ring is full (its guest takes no frames): dropped as a full NIC queue drops
        st[STAT.DROPS]++;
        st[STAT.DROPS_WIRE]++;
        continue;
      }
      if (to !== this.me) this.woken[to] = 1;
    }
    for (let p = 0; p < this.pairs; p++) {
      if (this.woken[p] === 0) continue;
      this.woken[p] = 0;
      native.write(this.s.wakeFds[p], ONE);
    }
    return got;
  }

  /** Frames handed to this pair into its RX ring, up to `budget`. Returns frames delivered. */
  private drain(budget: number): number {
    const r = this.rings;
    const st = this.o.rxStats;
    const gate = this.gate;
    const lim = gate.limit;
    let done = 0;
    for (let from = 0; from < this.pairs; from++) {
      while (done < budget && r.peek(from, this.me)) {
        const rec = r.record;
        if (lim !== undefined && (gate.until !== 0 || !gate.allows(rec.len))) return done;
        const res = this.deliver(rec);
        if (res < 0) return done;
        r.consume(from, this.me);
        if (res === 0) continue;
        done++;
        st[STAT.PACKETS]++;
        st[STAT.BYTES] += rec.len;
        lim?.take(1, rec.len);
      }
    }
    return done;
  }

  /** Copy one frame into the RX ring: 1 delivered, 0 dropped (too big for the guest's buffer), -1 no buffers or a broken ring (it waits). */
  private deliver(rec: HandoverRecord): number {
    const q = this.rxq;
    const need = this.hdrLen + rec.len;
    const mergeable = this.o.mergeable;
    let chains = 0;
    let cap = 0;
    let segs = 0;
    while (cap < need && chains < this.heads.length && q.pop()) {
      const c = q.chain;
      if (c.readable > 0) q.markBroken('device-readable receive buffer');
      else if (chains === 0 && c.writableBytes < this.hdrLen) q.markBroken('receive buffer too small for the header');
      else if (!mergeable && c.writableBytes < this.hdrLen + ETH_HLEN) q.markBroken('receive buffer too small for any frame');
      if (q.broken) return -1;
      this.heads[chains] = c.head;
      this.caps[chains] = c.writableBytes;
      if (segs + c.count > this.segOff.length) this.growSegments(segs + c.count);
      for (let i = 0; i < c.count; i++) {
        this.segOff[segs] = c.offsets[i];
        this.segLen[segs++] = c.lens[i];
      }
      cap += c.writableBytes;
      chains++;
      if (!mergeable) break;
    }
    if (chains === 0 || (mergeable && cap < need)) {
      q.rewind(chains);
      this.starved = true;
      this.starvedPending = chains;
      return -1;
    }
    if (cap < need) {
      // one chain too small for this frame: the chain stays the guest's for the next one
      q.rewind(chains);
      this.o.rxStats[STAT.DROPS]++;
      this.o.rxStats[STAT.DROPS_TOO_BIG]++;
      return 0;
    }
    let left = need;
    let used = 0;
    while (left > 0) {
      const n = Math.min(left, this.caps[used]);
      q.addUsed(this.heads[used], n);
      left -= n;
      used++;
    }
    q.rewind(chains - used);
    writeRxHeader(this.hdrView, 0, rec.meta, 0, used);
    if (this.hdrLen === NET_HDR_HASH_LEN) writeHashFields(this.hdrView, NET_HDR_LEN, rec.report === HASH_REPORT.NONE ? 0 : rec.hash, rec.report);
    this.scatter(rec, segs, need);
    return 1;
  }

  /** Write the header, then the frame, over the first segments until `total` bytes are placed. */
  private scatter(rec: HandoverRecord, segs: number, total: number): void {
    const log = this.o.log;
    let placed = 0;
    for (let k = 0; k < segs && placed < total; k++) {
      let off = this.segOff[k];
      let room = Math.min(this.segLen[k], total - placed);
      if (room === 0) continue;
      log?.markOffset(off, room);
      // header bytes first (it may be spread over buffers: any layout is legal)
      if (placed < this.hdrLen) {
        const n = Math.min(room, this.hdrLen - placed);
        const w = this.bytes.window(off);
        for (let j = 0, l = off - w.base; j < n; j++) w.u8[l + j] = this.hdr[placed + j];
        placed += n;
        off += n;
        room -= n;
      }
      if (room > 0) {
        native.copy(this.memBuffer, off, this.rings.buffer, rec.offset + placed - this.hdrLen, room);
        placed += room;
      }
    }
  }

  private growSegments(n: number): void {
    const off = new Float64Array(2 * n);
    const len = new Float64Array(2 * n);
    off.set(this.segOff);
    len.set(this.segLen);
    this.segOff = off;
    this.segLen = len;
  }
}
