// The receive side of a virtio-net queue pair (NetQueuePair): frames from the driver into the guest's
// RX ring, in batches of frames per driver call: without MRG_RXBUF one chain each (rx-batch.ts), with
// it as many chains as a frame takes (rx-merge.ts). The driver writes each frame straight into the
// guest's buffers. With hash reports and no other pair to steer to (one pair in use) the header is
// virtio_net_hdr_v1_hash, each frame hashed where it lies (rss-hash.ts); with several, rss-rx.ts.
import type { GuestView } from '../virtio/dma.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { ChainBatch } from '../virtio/chain-batch.js';
import { NET_HDR_HASH_LEN, NET_HDR_LEN } from './net-header.js';
import type { DriverQueue } from '../drivers/api.js';
import { native, ONE } from '../native.js';
import { STAT } from '../dataplane/stats.js';
import { RX_BATCH, RxSlots, giveBack, ETH_HLEN } from './rx-batch.js';
import { MergeSlots } from './rx-merge.js';
import type { PairOptions } from './net-pair.js';
import { RateGate } from '../dataplane/rate-gate.js';
import type { Coalescer } from './coalesce.js';
import { RssHasher } from './rss-hash.js';

/**
 * Interrupt the guest through `fd` if the queue says it wants one for what was published. With
 * notification coalescing (`coal`), `used` packets were published since the last call, and the
 * interrupt waits until the coalescer's count or time is reached (the queue handler keeps its time).
 */
export function signal(q: Virtqueue, fd: number, st: Float64Array, coal?: Coalescer, used = 0): void {
  const asked = fd >= 0 && q.needsInterrupt();
  if (coal === undefined ? asked : coal.note(used, asked)) {
    native.write(fd, ONE);
    st[STAT.INTERRUPTS]++;
  }
}


export class NetRx {
  /** with MRG_RXBUF: a batch of frames, each over as many chains as it takes */
  private readonly merge: MergeSlots;
  /** the most chains one frame may take (chains of 64 bytes or more for the largest frame) */
  private readonly chainsPerFrame: number;
  private readonly bytes: GuestBytes;
  /** without MRG_RXBUF: a batch of chains, one frame each */
  private readonly slots: RxSlots;
  /** the chains taken from the ring for a batch */
  private readonly chains: ChainBatch;
  /** the virtio-net header's length: NET_HDR_LEN, or NET_HDR_HASH_LEN with hash reports */
  private readonly hdrLen: number;
  /** with hash reports: each frame's hash and report type, for its header */
  private readonly hasher: RssHasher | undefined;

  constructor(
    mem: GuestView,
    /** guest memory as drivers get it (GuestBytes.plain) */
    private readonly memBuffer: ArrayBuffer,
    private readonly rxq: Virtqueue,
    /** the pair: its driver queue, read at each call */
    private readonly pair: { readonly driver: DriverQueue },
    private readonly o: PairOptions,
  ) {
    this.bytes = mem.bytes;
    const hashReport = o.steer?.hashReport === true;
    this.hdrLen = hashReport ? NET_HDR_HASH_LEN : NET_HDR_LEN;
    this.hasher = hashReport ? new RssHasher(o.steer!.rss) : undefined;
    // MRG_RXBUF: a frame takes chains while they hold less than it needs, at most chainsPerFrame.
    // Pieces: every piece that takes frame bytes holds one or more, so all the chains of a slot but
    // its last give fewer pieces than the largest frame has bytes; the last at most a chain's pieces.
    // The batch holds one such slot and room for a batch of typical ones.
    const chainPieces = rxq.chain.offsets.length;
    this.chainsPerFrame = Math.min(rxq.size, Math.ceil(o.maxRxFrame / 64) + 1);
    const slotPieces = Math.min(this.chainsPerFrame * chainPieces, o.maxRxFrame + this.hdrLen + chainPieces);
    this.merge = new MergeSlots(o.mergeable ? rxq.size : 1, o.mergeable ? slotPieces + RX_BATCH * 4 : 1, this.hdrLen);
    this.slots = new RxSlots(o.mergeable ? 1 : chainPieces, this.hdrLen);
    this.chains = new ChainBatch(RX_BATCH, Math.max(RX_BATCH * 4, chainPieces));
    this.gate = new RateGate(o.rxStats);
  }

  /** Does the frame whose first `len` bytes (its destination MAC at least) are at buffer offset `off` pass the RX filter? */
  private accepts(off: number, len: number): boolean {
    const w = this.bytes.window(off);
    return this.o.filter.accepts(w.u8, off - w.base, len);
  }

  /** set by process(): the ring ran out of buffers (wait for an RX kick rather than the driver) */
  starved = false;
  /** entries that were available (and not enough) when the ring starved */
  starvedPending = 0;
  /** set by process(): the driver had nothing to receive although there were buffers */
  dry = false;

  /** the rate limit (its buckets undefined without one: one branch per driver call then) */
  readonly gate: RateGate;

  /** the lengths of the frames waiting in the driver, as far as it knows them (waiting()) */
  private readonly lengths = new Uint32Array(RX_BATCH);

  /**
   * How many frames the driver has waiting whose lengths it knows (into this.lengths): 0 when nothing
   * waits, -1 when it cannot tell (nextLengths, else nextLength for the first).
   */
  private waiting(driver: DriverQueue): number {
    if (driver.nextLengths) return driver.nextLengths(this.lengths, RX_BATCH);
    if (!driver.nextLength) return -1;
    const next = driver.nextLength();
    if (next > 0) this.lengths[0] = next;
    return next > 0 ? 1 : next;
  }

  /** Receive up to `budget` frames into the RX ring. Returns frames delivered. */
  process(budget: number): number {
    this.starved = false;
    this.dry = false;
    if (this.gate.limit !== undefined && !this.gate.open(performance.now())) return 0;
    this.hasher?.refresh();
    const delivered = this.o.mergeable ? this.rxMergeable(budget) : this.rxBatched(budget);
    this.rxq.flush();
    signal(this.rxq, this.o.rxCallFd, this.o.rxStats, this.o.rxCoalesce, delivered);
    // a broken ring has no buffers to offer: reported as starved, so the driver's fd is not watched
    if (this.rxq.broken) this.starved = true;
    return delivered;
  }

  /**
   * Without MRG_RXBUF: up to RX_BATCH chains popped, offered to the driver in one receive() call, the
   * frames that arrived completed in pop order and published once per batch. Chains that got no
   * frame are the last popped and go back (rewind); a frame dropped inside a batch (runt, cut, not
   * for us) gives its chain to the next frame of the batch (RxSlots.move), so that holds too.
   * A ring that breaks on a chain of the batch stops there: the chains before it were checked, and
   * take the frames the driver has for them (as if the batch had been that long); nothing more.
   */
  private rxBatched(budget: number): number {
    const q = this.rxq;
    const s = this.slots;
    const b = s.batch;
    const st = this.o.rxStats;
    const driver = this.pair.driver;
    const log = this.o.log;
    const lim = this.gate.limit;
    let delivered = 0;
    for (let attempts = 0; attempts < budget && !q.broken; ) {
      const next = driver.nextLength ? driver.nextLength() : -1;
      if (next === 0) {
        this.dry = true;
        break;
      }
      let want = Math.min(RX_BATCH, budget - attempts);
      if (lim !== undefined) {
        want = this.gate.framesAllowed(next, want);
        if (want === 0) break;
      }
      const count = s.take(q, this.chains, want, this.o.maxRxFrame + this.hdrLen);
      if (count === 0) {
        this.starved = true;
        this.starvedPending = 0;
        break;
      }
      b.count = count;
      const got = Math.min(driver.receive(b, this.memBuffer), count);
      st[STAT.BATCHES]++;
      if (got <= 0) {
        q.rewind(count);
        this.dry = true;
        break;
      }
      attempts += got;
      // the driver wrote into guest memory whatever happens to the frames next: log it all
      if (log !== undefined) s.markAll(log);
      const k = this.keep(got, next);
      const bytes = s.complete(q, k, this.bytes, log, this.hasher);
      q.rewind(count - k);
      q.flush();
      delivered += k;
      st[STAT.PACKETS] += k;
      st[STAT.BYTES] += bytes;
      lim?.take(k, bytes);
      // (fewer than offered: the driver may have nothing more, or take one frame per call: the next
      // call says which)
    }
    return delivered;
  }

  /**
   * Without MRG_RXBUF: of the `got` frames the driver delivered (the first announced `next` bytes long
   * if next > 0), drop those to drop and move the others down over the slots left free. Returns frames
   * kept: slots [0, k).
   */
  private keep(got: number, next: number): number {
    const s = this.slots;
    const b = s.batch;
    const st = this.o.rxStats;
    const hdrLen = this.hdrLen;
    const largest = this.o.maxRxFrame + hdrLen;
    // (the filter is read once per batch: a frame seeing a change one frame late is harmless)
    const all = this.o.filter.passesAll();
    let k = 0;
    for (let i = 0; i < got; i++) {
      const len = b.len[i];
      const cap = s.cap[i];
      // (the destination MAC and a VLAN tag are checked where they lie whole in the first segment,
      // which is every layout drivers use; a first segment under 6 bytes skips the filter rather than gather)
      // A chain smaller than the largest frame may take a frame cut to fit (the driver reports what
      // it copied): one shorter than the length announced was cut, and one that fills the chain
      // exactly, its length unknown, may have been. Dropped, as vhost-net drops a frame its buffers
      // cannot hold, never delivered cut.
      const cut = cap < largest && (next > 0 && i === 0 ? len < next : len + hdrLen >= cap);
      const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + hdrLen > cap ? STAT.DROPS_TOO_BIG : !all && s.firstLength(i) >= 6 && !this.accepts(s.firstOffset(i), Math.min(s.firstLength(i), len)) ? STAT.DROPS_FILTERED : 0;
      if (drop !== 0) {
        st[STAT.DROPS]++;
        st[drop]++;
        continue;
      }
      // (into a slot's segments markAll logged)
      if (i !== k) s.move(this.memBuffer, i, k, len);
      k++;
    }
    return k;
  }




  /**
   * With MRG_RXBUF: up to RX_BATCH frames per driver call, each offered as many chains as the largest
   * frame takes (those whose length the driver announced: as many as they take), published once per batch. A
   * slot the ring cannot fill is not offered (its chains go back): a frame is never read into less room
   * than it may need, so none is ever published in part. Frames that took fewer chains than offered, or
   * were dropped, leave their chains to the next frames (MergeSlots.move); the chains left over go back
   * in order.
   */
  private rxMergeable(budget: number): number {
    const q = this.rxq;
    const m = this.merge;
    const b = m.batch;
    const st = this.o.rxStats;
    const hdrLen = this.hdrLen;
    const largest = this.o.maxRxFrame + hdrLen;
    const driver = this.pair.driver;
    const log = this.o.log;
    const lim = this.gate.limit;
    let delivered = 0;
    const lengths = this.lengths;
    for (let attempts = 0; attempts < budget && !q.broken; ) {
      // room for each frame that is waiting as long as the driver can tell its length, else for the largest
      const known = this.waiting(driver);
      if (known === 0) {
        this.dry = true;
        break;
      }
      const next = known > 0 ? lengths[0] : -1;
      let want = Math.min(RX_BATCH, budget - attempts);
      if (lim !== undefined) {
        want = this.gate.framesAllowed(next, want);
        if (want === 0) break;
      }
      m.reset();
      let need = known > 0 ? Math.min(largest, next + hdrLen) : largest;
      // (chains are taken a batch at a time: as many as the frames want if each takes one, the
      // common case; a frame that takes several takes the next batch's too)
      const cb = this.chains;
      for (let more = true; more && m.count < want && !q.broken; ) {
        cb.reset();
        const popped = q.popBatch(cb, Math.min(cb.chains, want - m.count));
        if (popped === 0) break;
        let i = 0;
        for (; i < popped; i++) {
          // (virtio 1.x 5.1.6.3.1: with MRG_RXBUF each buffer holds at least the header; any chain may
          // become the first of a frame here)
          const bad = cb.readable[i] > 0 ? 'device-readable receive buffer' : cb.writableBytes[i] < hdrLen ? 'receive buffer too small for the header' : undefined;
          if (bad !== undefined) {
            q.markBroken(bad);
            i++;
            break;
          }
          if (!m.add(cb, i)) break;
          if (m.open >= need) {
            m.close();
            need = m.count < known ? Math.min(largest, lengths[m.count] + hdrLen) : largest;
            if (m.count >= want) {
              i++;
              break;
            }
          } else if (m.openChains >= this.chainsPerFrame) {
            i++;
            break;
          }
        }
        more = i === popped && m.openChains < this.chainsPerFrame;
        giveBack(q, popped, i);
      }
      const partial = m.openChains;
      // a broken ring takes no more frames; the slots before the bad chain are still offered
      q.rewind(partial);
      m.dropOpen();
      const count = m.count;
      if (count === 0) {
        if (!q.broken) {
          this.starved = true;
          this.starvedPending = partial;
        }
        break;
      }
      b.count = count;
      const got = Math.min(driver.receive(b, this.memBuffer), count);
      st[STAT.BATCHES]++;
      if (got <= 0) {
        q.rewind(m.chains);
        this.dry = true;
        break;
      }
      attempts += got;
      // the driver wrote into guest memory whatever happens to the frames next: log it all
      if (log !== undefined) m.markAll(log);
      const placed = this.place(got, known);
      q.rewind(m.chains - placed.chains);
      q.flush();
      delivered += placed.frames;
      st[STAT.PACKETS] += placed.frames;
      st[STAT.BYTES] += placed.bytes;
      lim?.take(placed.frames, placed.bytes);
    }
    return delivered;
  }

  /**
   * Complete the `got` frames of a merge batch (the first `known` of them announced: this.lengths), in
   * order, into the first chains popped: drop those to
   * drop, move the others down over chains left free, record their chains used and write their headers.
   * Returns frames kept, their bytes, and the chains they took (one object, reused).
   */
  private place(got: number, known: number): typeof this.placed {
    const m = this.merge;
    const b = m.batch;
    const st = this.o.rxStats;
    const log = this.o.log;
    const hdrLen = this.hdrLen;
    const hasher = this.hasher;
    let d = 0;
    let frames = 0;
    let bytes = 0;
    const all = this.o.filter.passesAll();
    for (let i = 0; i < got; i++) {
      const len = b.len[i];
      // (the destination MAC is checked where it lies whole in the first segment, which is every
      // layout drivers use; a first segment under 6 bytes skips the filter rather than gather)
      // A frame shorter than the length announced was cut: dropped, never delivered cut.
      const cut = i < known && len < this.lengths[i];
      const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + hdrLen > m.cap[i] ? STAT.DROPS_TOO_BIG : !all && m.firstLength(i) >= 6 && !this.accepts(m.firstOffset(i), Math.min(m.firstLength(i), len)) ? STAT.DROPS_FILTERED : 0;
      if (drop !== 0) {
        st[STAT.DROPS]++;
        st[drop]++;
        continue;
      }
      // (hashed where the driver put it, slot i's segments)
      const report = hasher === undefined ? 0 : hasher.classifyPacket(this.bytes, b, i, len);
      if (m.firstChain(i) !== d) m.move(this.memBuffer, i, d, len, log);
      const total = len + hdrLen;
      const n = m.chainsFor(d, total);
      m.addUsed(this.rxq, d, n, total);
      m.writeHeader(this.bytes, i, d, n, log, hasher === undefined ? 0 : hasher.value, report);
      d += n;
      frames++;
      bytes += len;
    }
    const p = this.placed;
    p.frames = frames;
    p.bytes = bytes;
    p.chains = d;
    return p;
  }
  private readonly placed = { frames: 0, bytes: 0, chains: 0 };
}
