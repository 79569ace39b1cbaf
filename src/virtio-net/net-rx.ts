// The receive side of a virtio-net queue pair (NetQueuePair): frames from the driver into the guest's
// RX ring. Without MRG_RXBUF in batches of chains (one frame each, rx-batch.ts); with it one frame per
// driver call over as many chains as the frame takes.
import type { GuestView } from '../virtio/dma.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { NET_HDR_LEN, writeRxHeader } from './net-header.js';
import { newPacketBatch, type DriverQueue, type PacketBatch } from '../drivers/api.js';
import { native, ONE } from '../native.js';
import { STAT } from '../dataplane/stats.js';
import { RX_BATCH, RxSlots, layOutChain } from './rx-batch.js';
import type { PairOptions } from './net-pair.js';
import type { DirectionLimiter } from '../dataplane/token-bucket.js';
import type { Coalescer } from './coalesce.js';

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
  /** with MRG_RXBUF: one packet, over up to rxHeads.length chains */
  private readonly rxBatch: PacketBatch;
  private readonly rxHeads: Uint16Array;
  /** bytes each popped RX chain can take */
  private readonly rxCap: Float64Array;
  private readonly hdr = new Uint8Array(NET_HDR_LEN);
  /** where the RX header goes: up to NET_HDR_LEN pieces (offset, length) in the first chain */
  private readonly hdrAt = new Float64Array(NET_HDR_LEN);
  private readonly hdrLen = new Uint8Array(NET_HDR_LEN);
  private readonly bytes: GuestBytes;
  /** without MRG_RXBUF: a batch of chains, one frame each */
  private readonly slots: RxSlots;

  constructor(
    mem: GuestView,
    private readonly memBuffer: SharedArrayBuffer,
    private readonly rxq: Virtqueue,
    /** the pair: its driver queue, read at each call */
    private readonly pair: { readonly driver: DriverQueue },
    private readonly o: PairOptions,
  ) {
    this.bytes = mem.bytes;
    // MRG_RXBUF: one packet per driver call, spread over as many chains as it allows. Its segments:
    // every piece that takes frame bytes holds one or more, and chains are taken only while they hold
    // less than the largest frame, so all the chains but the last give fewer than maxRxFrame pieces
    const rxChains = o.mergeable ? Math.min(rxq.size, Math.ceil(o.maxRxFrame / 64) + 1) : 1;
    const chainPieces = rxq.chain.offsets.length;
    const rxSegments = o.mergeable ? Math.min(rxChains * chainPieces, o.maxRxFrame + chainPieces) : 1;
    this.rxBatch = newPacketBatch(1, rxSegments + 1);
    this.slots = new RxSlots(o.mergeable ? 1 : chainPieces);
    this.rxHeads = new Uint16Array(rxChains);
    this.rxCap = new Float64Array(rxChains);
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

  /** the rate limit's buckets; undefined without a limit (one branch per driver call then) */
  private limit: DirectionLimiter | undefined;
  /** while waiting for tokens: when to try again (performance.now() ms); 0 when not waiting */
  until = 0;
  private since = 0;
  /** when the buckets were last refilled (this call's time) */
  private now = 0;

  setLimit(l: DirectionLimiter | undefined): void {
    if (this.until !== 0) this.o.rxStats[STAT.RATE_LIMITED_MS] += performance.now() - this.since;
    this.until = 0;
    this.limit = l;
  }

  /** How many frames (of `next` bytes, 0 or less: unknown) the limit lets through now, at most `max`;
   * none: the direction waits for tokens (the driver keeps its frames). */
  private allowance(lim: DirectionLimiter, next: number, max: number): number {
    const n = lim.framesAllowed(next, max);
    if (n === 0) {
      this.since = this.now;
      this.until = this.now + Math.max(lim.msUntil(next > 0 ? next : 1), 0.001);
      this.o.rxStats[STAT.RATE_LIMITED]++;
    }
    return n;
  }

  /** Receive up to `budget` frames into the RX ring. Returns frames delivered. */
  process(budget: number): number {
    this.starved = false;
    this.dry = false;
    const lim = this.limit;
    if (lim !== undefined) {
      const now = (this.now = performance.now());
      if (this.until !== 0) {
        if (now < this.until) return 0;
        this.o.rxStats[STAT.RATE_LIMITED_MS] += now - this.since;
        this.until = 0;
      }
      lim.refill(now);
    }
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
    const largest = this.o.maxRxFrame + NET_HDR_LEN;
    const driver = this.pair.driver;
    const log = this.o.log;
    const lim = this.limit;
    let delivered = 0;
    for (let attempts = 0; attempts < budget && !q.broken; ) {
      const next = driver.nextLength ? driver.nextLength() : -1;
      if (next === 0) {
        this.dry = true;
        break;
      }
      let want = Math.min(RX_BATCH, budget - attempts);
      if (lim !== undefined) {
        want = this.allowance(lim, next, want);
        if (want === 0) break;
      }
      s.reset();
      while (s.count < want && q.pop()) {
        const c = q.chain;
        if (c.readable > 0) q.markBroken('device-readable receive buffer');
        else if (c.writableBytes < NET_HDR_LEN) q.markBroken('receive buffer too small for the header');
        // one chain takes one whole frame: one that holds no Ethernet header never can
        else if (c.writableBytes < NET_HDR_LEN + ETH_HLEN) q.markBroken('receive buffer too small for any frame');
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
        const cut = cap < largest && (next > 0 && i === 0 ? len < next : len + NET_HDR_LEN >= cap);
        const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + NET_HDR_LEN > cap ? STAT.DROPS_TOO_BIG : s.firstLength(i) >= 6 && !this.accepts(s.firstOffset(i), Math.min(s.firstLength(i), len)) ? STAT.DROPS_FILTERED : 0;
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
      for (let i = 0; i < k; i++) {
        q.addUsed(s.heads[i], b.len[i] + NET_HDR_LEN);
        s.writeHeader(this.bytes, i, log);
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

  /** With MRG_RXBUF: one frame per driver call, over as many chains as it takes. */
  private rxMergeable(budget: number): number {
    const q = this.rxq;
    const b = this.rxBatch;
    const st = this.o.rxStats;
    const largest = this.o.maxRxFrame + NET_HDR_LEN;
    const driver = this.pair.driver;
    const lim = this.limit;
    let delivered = 0;
    for (let attempts = 0; attempts < budget && !q.broken; attempts++) {
      // room for the frame that is waiting when the driver can tell its length, else for the largest
      const next = driver.nextLength ? driver.nextLength() : -1;
      if (next === 0) {
        this.dry = true;
        break;
      }
      if (lim !== undefined && this.allowance(lim, next, 1) === 0) break;
      const need = next > 0 ? Math.min(largest, next + NET_HDR_LEN) : largest;
      // buffers for one frame: one chain, or with MRG_RXBUF as many as `need` takes
      let chains = 0;
      let cap = 0;
      let iovUsed = 0;
      let hdrPieces = 0;
      while (cap < need && chains < this.rxHeads.length && q.pop()) {
        const c = q.chain;
        if (c.readable > 0) q.markBroken('device-readable receive buffer');
        else if (chains === 0 && c.writableBytes < NET_HDR_LEN) q.markBroken('receive buffer too small for the header');
        // without MRG_RXBUF one chain takes one whole frame: one that holds no Ethernet header never can
        else if (!this.o.mergeable && c.writableBytes < NET_HDR_LEN + ETH_HLEN) q.markBroken('receive buffer too small for any frame');
        if (q.broken) break;
        this.rxHeads[chains] = c.head;
        this.rxCap[chains] = c.writableBytes;
        // the first NET_HDR_LEN bytes of the first chain are header space (written once the frame is
        // in, and possibly spread over several buffers: any layout is legal); the rest takes the frame
        const at = layOutChain(c, chains === 0 ? NET_HDR_LEN : 0, this.hdrAt, this.hdrLen, hdrPieces, b.iov, iovUsed);
        hdrPieces = at.hdr;
        iovUsed = at.iov;
        cap += c.writableBytes;
        chains++;
        if (!this.o.mergeable) break;
      }
      // a broken ring takes no more frames; what was delivered before is still published below
      if (q.broken) break;
      // Never read a frame we may not be able to place: the tap truncates to the buffers it is given.
      // With MRG_RXBUF wait for enough buffers for `need` (the largest frame, or the known next one); a
      // single chain must be big enough by itself (the spec asks drivers for 1526-byte buffers then),
      // else frames that don't fit drop.
      if (chains === 0 || (this.o.mergeable && cap < need)) {
        q.rewind(chains);
        this.starved = true;
        this.starvedPending = chains;
        break;
      }
      b.iovStart[0] = 0;
      b.iovStart[1] = iovUsed;
      b.count = 1;
      const got = iovUsed > 0 ? driver.receive(b, this.memBuffer) : 0;
      if (got === 0) {
        q.rewind(chains);
        this.dry = true;
        break;
      }
      const len = b.len[0];
      // the driver wrote into guest memory whatever happens to the frame next: log it all
      if (this.o.log !== undefined) this.logWritten(b.iov, iovUsed, len);
      // (the destination MAC and a VLAN tag are checked where they lie whole in the first segment, which
      // is every layout drivers use; a first segment under 6 bytes skips the filter rather than gather)
      // Without MRG_RXBUF a chain smaller than the largest frame may take a frame cut to fit (the driver
      // reports what it copied): a frame shorter than the length announced was cut, and one that fills
      // the chain exactly, its length unknown, may have been. It is dropped, as vhost-net drops a frame
      // its buffers cannot hold, never delivered cut.
      const cut = next > 0 ? len < next : !this.o.mergeable && cap < largest && len + NET_HDR_LEN >= cap;
      const drop = len < ETH_HLEN ? STAT.DROPS_MALFORMED : cut || len + NET_HDR_LEN > cap ? STAT.DROPS_TOO_BIG : b.iov[2] >= 6 && !this.accepts(b.iov[1], Math.min(b.iov[2], len)) ? STAT.DROPS_FILTERED : 0;
      if (drop !== 0) {
        // a runt, a frame larger than the buffers (cut), or not for us: the buffers stay the guest's
        // for the next frame
        q.rewind(chains);
        st[STAT.DROPS]++;
        st[drop]++;
        continue;
      }
      // the chains the frame (with its header) filled, and the bytes in each
      let left = len + NET_HDR_LEN;
      let used = 0;
      while (left > 0) {
        const n = Math.min(left, this.rxCap[used]);
        q.addUsed(this.rxHeads[used], n);
        left -= n;
        used++;
      }
      q.rewind(chains - used);
      writeRxHeader(this.hdr, 0, b.meta, 0, used);
      for (let k = 0, at = 0; k < hdrPieces; k++) {
        const dst = this.hdrAt[k];
        const w = this.bytes.window(dst);
        for (let j = 0, l = dst - w.base; j < this.hdrLen[k]; j++) w.u8[l + j] = this.hdr[at++];
        this.o.log?.markOffset(dst, this.hdrLen[k]);
      }
      delivered++;
      st[STAT.PACKETS]++;
      st[STAT.BYTES] += len;
      lim?.take(1, len);
      st[STAT.BATCHES]++;
    }
    return delivered;
  }

  /** Log the first `len` bytes of the segments iov[0..count). */
  private logWritten(iov: Float64Array, count: number, len: number): void {
    for (let k = 0; k < count && len > 0; k++) {
      const n = Math.min(len, iov[3 * k + 2]);
      this.o.log!.markOffset(iov[3 * k + 1], n);
      len -= n;
    }
  }}
