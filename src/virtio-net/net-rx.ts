// The receive side of a virtio-net queue pair (NetQueuePair): frames from the driver into the guest's
// RX ring, in batches of frames per driver call: without MRG_RXBUF one chain each (rx-batch.ts), with
// it as many chains as a frame takes (rx-merge.ts). The driver writes each frame straight into the
// guest's buffers. With hash reports and no other pair to steer to (one pair in use) the header is
// virtio_net_hdr_v1_hash, each frame hashed where it lies (rss-hash.ts); with several, rss-rx.ts.
import type { GuestView } from '../virtio/dma.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { NET_HDR_HASH_LEN, NET_HDR_LEN } from './net-header.js';
import type { DriverQueue } from '../drivers/api.js';
import { native, ONE } from '../native.js';
import { STAT } from '../dataplane/stats.js';
import { RX_BATCH, RxSlots } from './rx-batch.js';
import { MergeSlots } from './rx-merge.js';
import type { PairOptions } from './net-pair.js';
import { RateGate } from '../dataplane/rate-gate.js';
import type { Coalescer } from './coalesce.js';
import { RssHasher } from './rss-hash.js';

/** the smallest frame there is: an Ethernet header */
const ETH_HLEN = 14;

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
  /** the virtio-net header's length: NET_HDR_LEN, or NET_HDR_HASH_LEN with hash reports */
  private readonly hdrLen: number;
  /** with hash reports: each frame's hash and report type, for its header */
  private readonly hasher: RssHasher | undefined;

  constructor(
    mem: GuestView,
    private readonly memBuffer: SharedArrayBuffer,
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
    const hdrLen = this.hdrLen;
    const largest = this.o.maxRxFrame + hdrLen;
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
      s.reset();
      while (s.count < want && q.pop()) {
        const c = q.chain;
        if (c.readable > 0) q.markBroken('device-readable receive buffer');
        else if (c.writableBytes < hdrLen) q.markBroken('receive buffer too small for the header');
        // one chain takes one whole frame: one that holds no Ethernet header never can
        else if (c.writableBytes < hdrLen + ETH_HLEN) q.markBroken('receive buffer too small for any frame');
        if (q.broken) break;
        // the driver is promised room for the largest frame in each packet of a batch of several: a
        // smaller chain (legal: frames that do not fit drop) goes alone, where a cut frame is detected
        const small = c.writableBytes < largest;
        if (s.count > 0 && (small || !s.fits(c))) {
          q.rewind(1);
          break;
        }
        s.add(c);
        if (small) break;
      }
      const count = s.count;
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
        const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + hdrLen > cap ? STAT.DROPS_TOO_BIG : s.firstLength(i) >= 6 && !this.accepts(s.firstOffset(i), Math.min(s.firstLength(i), len)) ? STAT.DROPS_FILTERED : 0;
        if (drop !== 0) {
          st[STAT.DROPS]++;
          st[drop]++;
          continue;
        }
        // (into a slot's segments markAll logged)
        if (i !== k) s.move(this.memBuffer, i, k, len);
        k++;
      }
      let bytes = 0;
      const hasher = this.hasher;
      for (let i = 0; i < k; i++) {
        q.addUsed(s.heads[i], b.len[i] + hdrLen);
        if (hasher === undefined) s.writeHeader(this.bytes, i, log);
        else {
          const report = hasher.classifyPacket(this.bytes, b, i, b.len[i]);
          s.writeHeader(this.bytes, i, log, hasher.value, report);
        }
        bytes += b.len[i];
      }
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
   * With MRG_RXBUF: up to RX_BATCH frames per driver call, each offered as many chains as the largest
   * frame takes (the first: as many as the frame the driver announced), published once per batch. A
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
    for (let attempts = 0; attempts < budget && !q.broken; ) {
      // room for the frame that is waiting when the driver can tell its length, else for the largest
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
      m.reset();
      let need = next > 0 ? Math.min(largest, next + hdrLen) : largest;
      while (m.count < want && q.pop()) {
        const c = q.chain;
        if (c.readable > 0) q.markBroken('device-readable receive buffer');
        // (virtio 1.x 5.1.6.3.1: with MRG_RXBUF each buffer holds at least the header; any chain may
        // become the first of a frame here)
        else if (c.writableBytes < hdrLen) q.markBroken('receive buffer too small for the header');
        if (q.broken) break;
        if (!m.add(c)) {
          q.rewind(1);
          break;
        }
        if (m.open >= need) {
          m.close();
          need = largest;
        } else if (m.openChains >= this.chainsPerFrame) break;
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
      const placed = this.place(got, next);
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
   * Complete the `got` frames of a merge batch, in order, into the first chains popped: drop those to
   * drop, move the others down over chains left free, record their chains used and write their headers.
   * Returns frames kept, their bytes, and the chains they took (one object, reused).
   */
  private place(got: number, next: number): typeof this.placed {
    const m = this.merge;
    const b = m.batch;
    const st = this.o.rxStats;
    const log = this.o.log;
    const hdrLen = this.hdrLen;
    const hasher = this.hasher;
    let d = 0;
    let frames = 0;
    let bytes = 0;
    for (let i = 0; i < got; i++) {
      const len = b.len[i];
      // (the destination MAC is checked where it lies whole in the first segment, which is every
      // layout drivers use; a first segment under 6 bytes skips the filter rather than gather)
      // A frame shorter than the length announced was cut: dropped, never delivered cut.
      const cut = i === 0 && next > 0 && len < next;
      const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + hdrLen > m.cap[i] ? STAT.DROPS_TOO_BIG : m.firstLength(i) >= 6 && !this.accepts(m.firstOffset(i), Math.min(m.firstLength(i), len)) ? STAT.DROPS_FILTERED : 0;
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
