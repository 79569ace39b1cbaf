// One virtio-net queue pair on a dataplane thread: guest TX ring → driver, driver → guest RX ring
// (the receive side in net-rx.ts). All virtio knowledge on the data path is here (header translation
// in net-header.ts); the driver sees packets as buffer lists with neutral metadata.
import type { GuestView } from '../virtio/dma.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import { ChainBatch } from '../virtio/chain-batch.js';
import { MAX_GSO_FRAME, NET_HDR_HASH_LEN, NET_HDR_LEN, parseTxHeader, type TxPolicy } from './net-header.js';
import { META_WORDS, newPacketBatch, type DriverQueue, type PacketBatch } from '../drivers/api.js';
import { STAT } from '../dataplane/stats.js';
import type { RxFilter } from './rx-filter.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { NetRx, signal } from './net-rx.js';
import { DIR, type RateLimitWords } from '../dataplane/rate-limit-shared.js';
import type { DirectionLimiter } from '../dataplane/token-bucket.js';
import type { Coalescer } from './coalesce.js';
import { SteeredRx, type SteerOptions } from './rss-rx.js';
import { segmentsAfter } from './segments.js';

/** Packets per driver call on transmit (Linux vhost-net's batch). */
export const TX_BATCH = 64;
/** largest frame a guest may hand us: 64 KiB of GSO payload plus headers */
export const MAX_TX_FRAME = MAX_GSO_FRAME;

export interface PairOptions {
  mergeable: boolean;
  /** largest frame the guest can receive (its buffers must hold it, or with MRG_RXBUF several do) */
  maxRxFrame: number;
  txPolicy: TxPolicy;
  rxCallFd: number;
  txCallFd: number;
  rxStats: Float64Array;
  txStats: Float64Array;
  filter: RxFilter;
  /** while migrating: every byte written into guest buffers is logged */
  log?: DirtyLog;
  /** the device's rate limits (read once per pass; this pair keeps its own buckets) */
  rateLimits?: RateLimitWords;
  /** notification coalescing of each queue (coalesce.ts; without: an interrupt as soon as the ring asks) */
  rxCoalesce?: Coalescer;
  txCoalesce?: Coalescer;
  /** RSS or hash reports negotiated: with several pairs in use the receive side steers (rss-rx.ts); with
   * one, NetRx delivers its frames itself (with hash reports, hashed) */
  steer?: SteerOptions;
}

export class NetQueuePair {
  private readonly txBatch: PacketBatch;
  private readonly txHeads: Uint16Array;
  /** the chains a TX pass took from the ring */
  private readonly txChains: ChainBatch;
  private readonly hdr = new Uint8Array(NET_HDR_LEN);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private readonly bytes: GuestBytes;
  /** the receive side */
  private readonly rx: NetRx | SteeredRx;
  /** the guest's header on TX (virtio_net_hdr_v1_hash with hash reports: its hash fields unread) */
  private readonly txHdrLen: number;
  /** guest memory as drivers get it: this thread's non-shared view (GuestBytes.plain: copies are memcpy) */
  private readonly driverMem: ArrayBuffer;

  /** `memBuffer`: guest memory, the buffer `mem` views */
  constructor(
    private readonly mem: GuestView,
    memBuffer: SharedArrayBuffer,
    readonly rxq: Virtqueue,
    readonly txq: Virtqueue,
    readonly driver: DriverQueue,
    private readonly o: PairOptions,
  ) {
    this.bytes = mem.bytes;
    this.driverMem = mem.bytes.plain;
    const maxChain = txq.chain.offsets.length;
    // room for a whole batch of typical packets, and for one packet of the longest chain
    this.txBatch = newPacketBatch(TX_BATCH, Math.max(TX_BATCH * 8, maxChain + 1));
    this.txHeads = new Uint16Array(TX_BATCH);
    this.txChains = new ChainBatch(TX_BATCH, Math.max(TX_BATCH * 4, maxChain));
    this.rx = o.steer && o.steer.pairs > 1 ? new SteeredRx(mem, this.driverMem, rxq, this, o, o.steer) : new NetRx(mem, this.driverMem, rxq, this, o);
    this.txHdrLen = o.steer?.hashReport ? NET_HDR_HASH_LEN : NET_HDR_LEN;
  }

  // ---- rate limits

  /** TX's buckets; undefined without a limit (then the data path pays one branch per frame) */
  private txLimit: DirectionLimiter | undefined;
  private txVersion = 0;
  private rxVersion = 0;
  /** while TX waits for tokens: when it may try again (performance.now() ms); 0 when it does not wait */
  private txUntil = 0;
  /** when TX's wait began */
  private txSince = 0;

  /** Take the limits the main thread changed since the last pass (new buckets, full, start at once). */
  updateLimits(): void {
    const w = this.o.rateLimits;
    if (w === undefined) return;
    const tv = w.version(DIR.TX);
    if (tv !== this.txVersion) {
      const l = w.limiter(DIR.TX, tv, performance.now());
      if (l !== null) {
        this.txVersion = tv;
        this.txLimit = l;
        if (this.txUntil !== 0) this.o.txStats[STAT.RATE_LIMITED_MS] += performance.now() - this.txSince;
        this.txUntil = 0;
      }
    }
    const rv = w.version(DIR.RX);
    if (rv !== this.rxVersion) {
      const l = w.limiter(DIR.RX, rv, performance.now());
      if (l !== null) {
        this.rxVersion = rv;
        this.rx.gate.set(l);
      }
    }
  }

  /** TX waits for its rate limit's tokens (its chains stay in the ring, its kicks need not wake us) */
  get txThrottled(): boolean {
    return this.txUntil !== 0;
  }

  /** RX waits for its rate limit's tokens (the driver is not read) */
  get rxThrottled(): boolean {
    return this.rx.gate.until !== 0;
  }

  /** ms until a direction waiting for tokens may try again (0: now), or -1 when none waits. */
  limitWaitMs(): number {
    const tx = this.txUntil;
    const rx = this.rx.gate.until;
    if (tx === 0 && rx === 0) return -1;
    const first = tx === 0 ? rx : rx === 0 ? tx : Math.min(tx, rx);
    return Math.max(0, first - performance.now());
  }

  // ---- guest → wire

  /**
   * The driver could take no more (`wouldBlock`): what it did not take went back to the ring, and
   * processTx does nothing until the thread clears this (the driver's fd became writable).
   */
  txBlocked = false;

  /** Move up to `budget` packets from the TX ring to the driver. Returns packets taken from the ring. */
  processTx(budget: number): number {
    if (this.txBlocked) return 0;
    const q = this.txq;
    const b = this.txBatch;
    const st = this.o.txStats;
    const lim = this.txLimit;
    let now = 0;
    if (lim !== undefined) {
      now = performance.now();
      if (this.txUntil !== 0) {
        if (now < this.txUntil) return 0;
        st[STAT.RATE_LIMITED_MS] += now - this.txSince;
        this.txUntil = 0;
      }
      lim.refill(now);
    }
    const segments = b.iov.length / 3;
    const cb = this.txChains;
    const hdrLen = this.txHdrLen;
    let done = 0;
    while (done < budget && !q.broken && this.txUntil === 0) {
      b.count = 0;
      cb.reset();
      const popped = q.popBatch(cb, Math.min(TX_BATCH, budget - done));
      if (popped === 0) break;
      let iovUsed = 0;
      let i = 0;
      for (; i < popped; i++) {
        const p0 = cb.first[i];
        const pieces = cb.first[i + 1] - p0;
        const readable = cb.readable[i];
        if (b.count > 0 && iovUsed + pieces > segments) break;
        const len = cb.readableBytes[i] - hdrLen;
        // a TX chain is device-readable only and holds a header and a frame of sane size (alone it
        // always fits: the array holds the longest chain)
        const bad = readable < pieces || len < 14 || len > MAX_TX_FRAME || pieces > segments;
        const slot = b.count;
        if (bad || !this.parseHeader(cb.offsets, cb.lens, p0, pieces, len, slot)) {
          // a chain to drop ends the batch before it: the chains a batch took from the ring are then
          // exactly its packets, so those the driver leaves can go back in order
          if (b.count > 0) break;
          done++;
          this.dropTx(cb.heads[i]);
          continue;
        }
        // over the rate limit: the chain goes back and waits in the ring until tokens return
        if (lim !== undefined) {
          if (!lim.allows(len)) {
            this.txSince = now;
            this.txUntil = now + Math.max(lim.msUntil(len), 0.001);
            st[STAT.RATE_LIMITED]++;
            break;
          }
          lim.take(1, len);
        }
        done++;
        // the frame: the readable buffers after the header
        b.iovStart[slot] = iovUsed;
        if (pieces === 1) {
          // (the common chain, one buffer: the frame is the rest of it, at least 14 bytes)
          b.iov[3 * iovUsed] = 0;
          b.iov[3 * iovUsed + 1] = cb.offsets[p0] + hdrLen;
          b.iov[3 * iovUsed + 2] = len;
          iovUsed++;
        } else iovUsed = segmentsAfter(cb.offsets, cb.lens, p0, p0 + readable, hdrLen, b.iov, iovUsed);
        b.iovStart[slot + 1] = iovUsed;
        b.len[slot] = len;
        this.txHeads[slot] = cb.heads[i];
        b.count++;
      }
      // (the chains after a cut go back, in order)
      if (i < popped) q.rewind(popped - i);
      // (every chain taken was dropped: take the next ones)
      if (b.count === 0) continue;
      const before = this.driver.drops;
      const sent = this.driver.transmit(b, this.driverMem);
      // the wire is full for now: what it did not take stays the guest's, in the ring, in order, and
      // the thread waits until the driver can take more (as vhost-net and Cloud Hypervisor do on EAGAIN)
      const blocked = sent < b.count && this.driver.wouldBlock === true;
      const taken = blocked ? sent : b.count;
      let bytes = 0;
      for (let i = 0; i < taken; i++) {
        q.addUsed(this.txHeads[i], 0);
        if (i < sent) bytes += b.len[i];
      }
      if (blocked) {
        // (the frames going back were not sent: their tokens too)
        if (lim !== undefined) for (let i = taken; i < b.count; i++) lim.giveBack(1, b.len[i]);
        q.rewind(b.count - taken);
        done -= b.count - taken;
        this.txBlocked = true;
        st[STAT.WAITS]++;
      }
      // otherwise what the driver did not take is dropped, as a full NIC queue drops
      const wireDrops = taken - sent + (this.driver.drops - before);
      st[STAT.DROPS] += wireDrops;
      st[STAT.DROPS_WIRE] += wireDrops;
      st[STAT.PACKETS] += sent;
      st[STAT.BYTES] += bytes;
      st[STAT.BATCHES]++;
      q.flush();
      signal(q, this.o.txCallFd, st, this.o.txCoalesce, taken);
      if (blocked || this.txUntil !== 0) break;
    }
    q.flush();
    return done;
  }

  private dropTx(head: number): void {
    this.txq.addUsed(head, 0);
    this.o.txStats[STAT.DROPS]++;
    this.o.txStats[STAT.DROPS_MALFORMED]++;
  }

  /**
   * Parse the header of the chain whose buffers are pieces [p0, p0 + count) (its first NET_HDR_LEN
   * readable bytes) into slot's metadata: where the first buffer holds it whole (every driver's
   * layout), read in place in guest memory (each byte once: parseTxHeader reads its fields into
   * locals); else gathered first. False: drop the packet.
   */
  private parseHeader(offsets: Float64Array, lens: Uint32Array, p0: number, count: number, len: number, slot: number): boolean {
    if (lens[p0] >= NET_HDR_LEN) {
      const w = this.bytes.window(offsets[p0]);
      return parseTxHeader(w.dv, offsets[p0] - w.base, len, this.o.txPolicy, this.txBatch.meta, slot * META_WORDS);
    }
    this.gather(offsets, lens, p0, count);
    return parseTxHeader(this.hdrView, 0, len, this.o.txPolicy, this.txBatch.meta, slot * META_WORDS);
  }

  /** Copy the first NET_HDR_LEN readable bytes of pieces [p0, p0 + count) (the header may straddle buffers) into this.hdr. */
  private gather(offsets: Float64Array, lens: Uint32Array, p0: number, count: number): void {
    const hdr = this.hdr;
    let at = 0;
    for (let i = p0; i < p0 + count && at < NET_HDR_LEN; i++) {
      if (lens[i] === 0) continue;
      const w = this.bytes.window(offsets[i]);
      const off = offsets[i] - w.base;
      const n = Math.min(NET_HDR_LEN - at, lens[i]);
      for (let k = 0; k < n; k++) hdr[at + k] = w.u8[off + k];
      at += n;
    }
  }

  // ---- wire → guest

  /** Receive up to `budget` frames into the RX ring. Returns frames delivered. */
  processRx(budget: number): number {
    return this.rx.process(budget);
  }
  /** the ring ran out of buffers (wait for an RX kick rather than the driver) */
  get starved(): boolean {
    return this.rx.starved;
  }
  /** entries that were available (and not enough) when the ring starved */
  get starvedPending(): number {
    return this.rx.starvedPending;
  }
  /** the driver had nothing to receive although there were buffers */
  get dry(): boolean {
    return this.rx.dry;
  }
  /** with steering: frames other pairs handed to this one wait */
  get handedOver(): boolean {
    return this.rx instanceof SteeredRx && this.rx.handedOver;
  }
}
