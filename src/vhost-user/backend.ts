// A vhost-user net backend: the frontend (QEMU, DPDK's virtio-user) owns the rings and the guest
// memory; this only fills in what tsvmm's own device fills in — the memory table, ring addresses,
// kick and call eventfds, features — and hands it to the same dataplane threads and drivers.
import { native, EFD_NONBLOCK } from '../native.js';
import { Dataplane, type DataplaneConfig } from '../dataplane/index.js';
import { RxFilter } from '../virtio-net/rx-filter.js';
import { newStatsBuffer, readStats, type QueueStats } from '../dataplane/stats.js';
import { netQueueMetrics, type Metrics } from '../dataplane/metrics.js';
import type { WorkerUnit, WorkerQueue } from '../dataplane/worker.js';
import type { NetDriver } from '../drivers/api.js';
import { F, bit, has, netFeatureOffer } from '../virtio-net/features.js';
import { netDataplane } from '../virtio-net/dataplane.js';
import { parseNetRateLimits, type NetRateLimits } from '../dataplane/rate-limit.js';
import { RateLimitWords } from '../dataplane/rate-limit-shared.js';
import { FrontendMemory } from './memory.js';
import { MAP_READ, MAP_WRITE, stuckThreadMs } from '../viommu/table.js';
import type { DmaAccess } from '../virtio/dma.js';
import { decodeRingBase, encodeRingBase, type RingState } from '../virtio/virtqueue.js';
import { HANDLERS, ringProblem, unknownRequest, type BackendCore, type Handled } from './handlers.js';
import { Iotlb } from './iotlb.js';
import { F_LOG_ALL, pagesIn, releaseLog, type MappedLog } from './log.js';
import { closeFd, freshRing, packedStart, ringAreas, ringDump, ringOffset, usedIndex, type Vring } from './rings.js';
import * as P from './protocol.js';

export { F_LOG_ALL } from './log.js';
export type { Handled } from './handlers.js';

export interface BackendOptions {
  queuePairs: number;
  busyPollUs?: number;
  /** offer packed rings (VIRTIO_F_RING_PACKED) besides split ones (default true); the frontend chooses */
  packed?: boolean;
  /** offer mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF; default true) */
  mergeable?: boolean;
  /** rate limits from the start (setRateLimit changes them later) */
  rateLimit?: NetRateLimits;
  /** a line for the operator on events worth knowing (dirty logging switched on or off) */
  log?: (line: string) => void;
}

/** TSVMM_DEBUG_VRING=1: one stderr line per control message and ring (re)start (where each ring
 *  stands, and the last used entries with their buffers), for chasing a frontend's ring-state problems */
const trace = process.env.TSVMM_DEBUG_VRING ? (s: string) => process.stderr.write(`vring: ${s}\n`) : undefined;

/** problems kept in `errors` (the latest) */
const ERRORS_KEPT = 64;
/**
 * One frontend connection's backend. The request handlers (handlers.ts) read and change the connection
 * state through BackendCore; this runs the dataplane threads for the pairs whose rings are ready.
 */
export class VhostUserBackend implements BackendCore {
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  acked = 0n;
  ackedProtocol = 0n;
  memory: FrontendMemory | undefined;
  log: MappedLog | undefined;
  logFd = -1;
  backendFd = -1;
  /**
   * With ACCESS_PLATFORM: the frontend's IOTLB, read by the dataplane threads directly; a miss is sent
   * to the frontend, and the queue that missed waits for the update.
   */
  private iotlb?: Iotlb;
  readonly vrings: Vring[];
  private readonly running = new Map<number, Dataplane>();
  private readonly filter = new RxFilter();
  /** the rate limits the dataplane threads read (each queue pair has its own buckets); kept over
   * frontend connections */
  private readonly rateLimits = new RateLimitWords();
  readonly stats: SharedArrayBuffer;
  /**
   * problems the dataplane reported (a broken ring, a ring outside the memory), over the backend's
   * life: the latest ERRORS_KEPT, a repeat of the last one not added again (a frontend repeating a
   * message must not grow this without bound)
   */
  readonly errors: string[] = [];
  /** IOTLB traffic over the backend's life: misses asked, updates and invalidations received */
  readonly iotlbCounts = { misses: 0, updates: 0, invalidations: 0 };
  /** dataplane threads ended because they kept a request or a stop waiting past the stuck-thread limit */
  stuckThreads = 0;
  /** an eventfd the dataplane threads write when they need the frontend asked something (IOTLB misses) */
  readonly eventFd = native.eventfd(0, EFD_NONBLOCK);

  constructor(
    private readonly driver: NetDriver,
    private readonly opts: BackendOptions,
  ) {
    // the net device's offer (from what the driver honours) and what the vhost-user protocol adds
    // (VIRTIO_NET_F_MTU with the MTU protocol feature: a frontend whose device has an MTU set tells us
    // with NET_SET_MTU, refused above what the driver's wire carries). Neither RSS nor HASH_REPORT: the
    // frontend owns the control queue and no vhost-user message carries their configuration to a
    // backend (QEMU 7.2 steers RSS with eBPF on a tap peer only; DPDK's vhost library has neither).
    let f = netFeatureOffer(driver.caps, opts.queuePairs, { packed: opts.packed ?? true, mergeable: opts.mergeable }) | bit(F.MTU) | bit(P.F_PROTOCOL_FEATURES) | bit(F_LOG_ALL) | bit(F.ACCESS_PLATFORM);
    this.features = f;
    this.protocolFeatures = [P.PROTOCOL_F.MQ, P.PROTOCOL_F.REPLY_ACK, P.PROTOCOL_F.MTU, P.PROTOCOL_F.LOG_SHMFD, P.PROTOCOL_F.BACKEND_REQ].reduce((a, b) => a | (1n << BigInt(b)), 0n);
    this.mtu = driver.caps.mtu;
    this.vrings = Array.from({ length: 2 * opts.queuePairs }, freshRing);
    this.filter.reset(new Uint8Array(6));
    if (opts.rateLimit) this.rateLimits.set(parseNetRateLimits(opts.rateLimit));
    this.stats = newStatsBuffer(2 * opts.queuePairs);
  }

  /**
   * Set the rate limits of each queue pair (as VirtioNet.setRateLimit): a direction given is replaced,
   * one absent stays; running threads take them on their next pass. Throws (one line) if malformed.
   */
  setRateLimit(limits: NetRateLimits): void {
    this.rateLimits.set(parseNetRateLimits(limits));
    for (const dp of this.running.values()) dp.wake();
  }

  /** the rate limits in force */
  get rateLimit(): NetRateLimits {
    return this.rateLimits.get();
  }

  /** the device's MTU: the frontend's (NET_SET_MTU), else the driver's wire */
  mtu: number;

  /** the largest MTU NET_SET_MTU takes: what the driver's wire carries */
  get maxMtu(): number {
    return this.driver.caps.mtu;
  }

  /** The frontend's MTU (checked by the handler): the threads size receive for it from their restart. */
  async setMtu(mtu: number): Promise<void> {
    if (mtu === this.mtu) return;
    this.mtu = mtu;
    this.say(`vhost-user: MTU ${mtu}`);
    if (this.running.size > 0) await this.applyFeatures(this.acked);
  }

  get queuePairs(): number {
    return this.opts.queuePairs;
  }

  get hasIotlb(): boolean {
    return this.iotlb !== undefined;
  }

  queueStats(pair: number): { rx: QueueStats; tx: QueueStats } {
    return { rx: readStats(this.stats, 2 * pair), tx: readStats(this.stats, 2 * pair + 1) };
  }

  get activePairs(): number {
    return this.running.size;
  }

  /** between pause() and resume(): pairs (re)started meanwhile start held too */
  private held = false;

  get paused(): boolean {
    return this.held;
  }

  /** Hold every dataplane thread off the rings (the frontend's frames wait there) until resume(). */
  async pause(): Promise<void> {
    this.held = true;
    await Promise.all([...this.running.values()].map((dp) => dp.pause()));
  }

  resume(): void {
    this.held = false;
    for (const dp of this.running.values()) dp.resume();
  }

  /** The device's queues and counters, live. */
  metrics(): Metrics {
    const queues = netQueueMetrics(this.stats, this.opts.queuePairs);
    const driver = this.driver.counters?.();
    return { devices: [{ id: '0', kind: 'net', queues, busyPollSpins: this.busyPollSpins, stuckThreads: this.stuckThreads, ...(driver ? { driver } : {}) }], iommu: { ...this.iotlbCounts }, vhostUser: { errors: [...this.errors] } };
  }

  /** busy-poll spins of every pair's threads over the backend's life */
  get busyPollSpins(): number {
    let n = this.spinsOfRetired;
    for (const dp of [...this.running.values(), ...this.retiring]) n += dp.busyPollSpins;
    return n;
  }

  private spinsOfRetired = 0;
  /** pairs' dataplanes being stopped: still counted until they are gone */
  private readonly retiring = new Set<Dataplane>();

  private async retire<T>(dp: Dataplane, stopping: Promise<T>): Promise<T> {
    this.retiring.add(dp);
    try {
      return await stopping;
    } finally {
      this.spinsOfRetired += dp.busyPollSpins;
      this.retiring.delete(dp);
    }
  }

  /**
   * One message; replies per the protocol (and REPLY_ACK when asked). Whatever goes wrong is the
   * connection's end, never an exception; descriptors the message brought and nothing kept are closed.
   */
  async handle(m: P.Message): Promise<Handled> {
    try {
      if (m.fds.length > 0 && !P.TAKES_FDS.has(m.request)) return { close: `request ${m.request} came with ${m.fds.length} descriptors and takes none` };
      const p = m.payload;
      trace?.(`message ${m.request} ${p.byteLength >= 8 ? p.getBigUint64(0, true).toString(16) : ''} (pairs running: ${this.running.size})`);
      return await (HANDLERS.get(m.request) ?? unknownRequest)(this, m);
    } catch (e) {
      return { close: `request ${m.request}: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}` };
    } finally {
      for (const fd of m.fds.splice(0)) native.close(fd);
    }
  }

  say(line: string): void {
    this.opts.log?.(line);
  }

  async applyFeatures(f: bigint): Promise<void> {
    // running threads were started with the old features (e.g. LOG_ALL switched on for migration)
    const wasRunning = this.running.size > 0;
    await this.stopAll();
    if (has(f, F_LOG_ALL) !== has(this.acked, F_LOG_ALL)) this.say(`vhost-user: dirty logging ${has(f, F_LOG_ALL) ? 'on' : 'off'}`);
    if (has(f, F.RING_PACKED) !== has(this.acked, F.RING_PACKED)) this.say(`vhost-user: ${has(f, F.RING_PACKED) ? 'packed' : 'split'} rings`);
    this.acked = f;
    this.setIotlb(has(f, F.ACCESS_PLATFORM));
    if (wasRunning) await this.startReady();
  }

  /** The threads log into the new area from their restart on. */
  async setLog(log: MappedLog): Promise<void> {
    await this.stopAll();
    releaseLog(this.log);
    this.log = log;
  }

  traceStopped = trace
    ? (i: number, r: Vring): void => {
        trace(`ring ${i} stopped at ${r.base}; ${this.ringDump(r)}`);
        if (this.written && this.log) {
          trace(`pages written while logging: ${pagesIn(new Uint8Array(this.written))}`);
          trace(`pages in the frontend's log not yet collected: ${pagesIn(new Uint8Array(this.log.buffer, this.log.offset, this.log.size))}`);
        }
      }
    : undefined;

  /** (tracing) every page logged over the connection, kept (the frontend clears its log as it reads) */
  private written?: SharedArrayBuffer;
  private writtenLog(): SharedArrayBuffer | undefined {
    if (!trace || !this.log) return undefined;
    if (this.written?.byteLength !== this.log.size) this.written = new SharedArrayBuffer(this.log.size);
    return this.written;
  }

  /** ACCESS_PLATFORM switched on or off: the IOTLB exists exactly while it is negotiated. */
  private setIotlb(on: boolean): void {
    if (on && !this.iotlb) this.iotlb = new Iotlb(this.opts.queuePairs, () => this.backendFd, this.iotlbCounts);
    else if (!on && this.iotlb) {
      this.iotlb.stop();
      this.iotlb = undefined;
    }
  }

  async iotlbMessage(msg: P.IotlbMsg): Promise<{ refused?: string; endAfter?: string }> {
    let endAfter: string | undefined;
    const r = await this.iotlb!.message(msg, this.memory, async (pair, limit) => {
      const dp = this.running.get(pair);
      if (!dp) return false;
      // its pair stops and the connection ends after the answer
      this.running.delete(pair);
      await this.retire(dp, dp.terminate());
      this.stuckThreads++;
      endAfter = `pair ${pair}: its dataplane thread kept an IOTLB invalidation waiting over ${limit} ms (TSVMM_STUCK_THREAD_MS): it was ended, the invalidation completed`;
      return true;
    });
    if (r !== true) return { refused: r, endAfter };
    // queues that waited for this retry (their threads see the table moved); rings may be ready now
    for (const dp of this.running.values()) dp.wake();
    await this.startReady();
    return { endAfter };
  }

  /** eventFd fired: a dataplane thread stalled on a miss. */
  onEvent(): void {
    native.read(this.eventFd, new BigUint64Array(1));
    this.iotlb?.sendMisses();
  }

  /**
   * Where a ring starts. Split: at its used index in memory — a frontend that reconnects to a new
   * backend may send base 0 (DPDK's virtio-user does) while its used ring says where the old backend
   * stopped; that is the true position (every chain the old one took was completed), as DPDK's vhost
   * library also concludes. Packed rings keep no index in memory: the frontend's base (packedStart).
   */
  private startState(r: Vring): RingState {
    if (has(this.acked, F.RING_PACKED)) {
      // (a size given after the base, or a base given before the switch to packed rings and not again)
      const problem = ringProblem(this.vrings.indexOf(r), r, this.acked);
      if (problem) throw new Error(problem);
      return packedStart(r.base);
    }
    return decodeRingBase(usedIndex(this.memory, this.iotlb, r), false);
  }

  /** Where the rings are logged: the used ring at the frontend's log address when it gave one. */
  private ringLogGpa(r: Vring, desc: number, used: number): { desc: number; used: number } {
    return { desc, used: r.logGpa ?? used };
  }

  private ringOffset(addr: number, len: number, access: DmaAccess): number {
    return ringOffset(this.memory!, this.iotlb, addr, len, access);
  }

  private ringDump(r: Vring): string {
    return has(this.acked, F.RING_PACKED) ? 'packed ring' : ringDump(this.memory, this.iotlb, r);
  }

  /** What GET_VRING_BASE answers for a ring: where it stopped, or the base it was given, in the
   * layout's encoding (both packed halves equal: where the ring would resume). */
  reportedBase(r: Vring): number {
    return has(this.acked, F.RING_PACKED) ? encodeRingBase(packedStart(r.base), true) : r.base & 0xffff;
  }

  private ready(r: Vring): boolean {
    return r.enabled && r.num > 0 && r.kickFd >= 0 && r.desc !== 0 && !!this.memory;
  }

  private workerQueue(r: Vring, slot: number): WorkerQueue | undefined {
    const mem = this.memory!;
    const bytes = ringAreas(r.num, has(this.acked, F.RING_PACKED));
    if (this.iotlb) {
      // rings by IOVA: the threads translate them; start only once the frontend has given them all
      const ok = [this.ringOffset(r.desc, bytes.desc, MAP_READ), this.ringOffset(r.avail, bytes.avail, MAP_READ), this.ringOffset(r.used, bytes.used, MAP_WRITE)].every((o) => o >= 0);
      if (!ok) return undefined;
      return { index: slot, size: r.num, desc: r.desc, avail: r.avail, used: r.used, kickFd: r.kickFd, callFd: r.callFd, statsSlot: slot, start: this.startState(r), ringLogGpa: this.ringLogGpa(r, r.desc, r.used) };
    }
    const desc = mem.vaToGpa(r.desc, bytes.desc);
    const avail = mem.vaToGpa(r.avail, bytes.avail);
    const used = mem.vaToGpa(r.used, bytes.used);
    if (desc < 0 || avail < 0 || used < 0) return undefined;
    const start = this.startState(r);
    trace?.(`ring starts at used ${start.nextUsed} (frontend base ${r.base}); ${this.ringDump(r)}`);
    return { index: slot, size: r.num, desc, avail, used, kickFd: r.kickFd, callFd: r.callFd, statsSlot: slot, start, ringLogGpa: this.ringLogGpa(r, desc, used) };
  }

  private noteError(line: string): void {
    if (this.errors.at(-1) === line) return;
    this.errors.push(line);
    if (this.errors.length > ERRORS_KEPT) this.errors.splice(0, this.errors.length - ERRORS_KEPT);
  }

  /** Start every pair whose two rings are ready and not yet running. */
  async startReady(): Promise<void> {
    for (let pair = 0; pair < this.opts.queuePairs; pair++) {
      if (this.running.has(pair)) continue;
      const rx = this.vrings[2 * pair];
      const tx = this.vrings[2 * pair + 1];
      if (!this.ready(rx) || !this.ready(tx)) continue;
      const wrx = this.workerQueue(rx, 2 * pair);
      const wtx = this.workerQueue(tx, 2 * pair + 1);
      if (!wrx || !wtx) {
        // (behind the IOTLB: misses were sent, the update will start the pair)
        if (!this.iotlb) this.noteError(`pair ${pair}: ring outside the frontend's memory`);
        continue;
      }
      const wp: WorkerUnit = { queues: [wrx, wtx], init: { pair, driver: this.driver.queueInit(pair) } };
      await this.startPair(pair, wp);
    }
  }

  /**
   * Start a pair's thread. A thread that cannot start (a ring its queue code refuses, memory it cannot
   * view) throws, with the reason it gave: the connection ends. A ring that breaks later is said once.
   */
  private async startPair(pair: number, wp: WorkerUnit): Promise<void> {
    let started = false;
    let failure: string | undefined;
    const dp = new Dataplane((reason) => {
      const line = `pair ${pair}: ${reason.split('\n')[0]}`;
      this.noteError(line);
      if (started) this.opts.log?.(`vhost-user: ${line}`);
      else failure ??= line;
    });
    this.running.set(pair, dp);
    if (this.held) void dp.pause();
    try {
      await dp.start(this.dataplaneConfig(pair), [[wp]]);
      started = true;
    } catch (e) {
      this.running.delete(pair);
      await this.retire(dp, dp.stop());
      throw new Error(failure ?? `pair ${pair}: ${(e as Error).message.split('\n')[0]}`);
    }
  }

  private dataplaneConfig(pair: number): DataplaneConfig {
    const f = this.acked;
    const mem = this.memory!;
    return {
      memory: mem.buffer,
      table: mem.table.toJSON(),
      ...netDataplane(f, this.driver, this.filter.buffer, this.rateLimits.buffer, this.mtu),
      stats: this.stats,
      busyPollUs: this.opts.busyPollUs ?? 0,
      iommu: this.iotlb ? { buffer: this.iotlb.table.buffer, endpoint: 0, slots: [this.iotlb.slots[pair]], missesWait: true, missFd: this.eventFd } : undefined,
      // migration: the frontend switched LOG_ALL on and gave us its log
      dirtyLog: has(f, F_LOG_ALL) && this.log ? { buffer: this.log.buffer, offset: this.log.offset, size: this.log.size, copy: this.writtenLog() } : undefined,
    };
  }

  /** Stop a pair's thread; its rings' bases become where the thread left them. */
  async stopPair(pair: number): Promise<void> {
    const dp = this.running.get(pair);
    if (!dp) return;
    this.running.delete(pair);
    const ended = await this.retire(dp, dp.stop());
    if (ended > 0) {
      this.stuckThreads += ended;
      this.opts.log?.(`vhost-user: pair ${pair}: its dataplane thread did not stop within ${stuckThreadMs()} ms (TSVMM_STUCK_THREAD_MS): it was ended`);
    }
    const packed = has(this.acked, F.RING_PACKED);
    for (const [i, s] of dp.ringStates) if (this.vrings[i]) this.vrings[i].base = encodeRingBase(s, packed);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.running.keys()].map((p) => this.stopPair(p)));
  }

  /** The connection is gone: stop the threads, drop the frontend's memory and descriptors. */
  async close(): Promise<void> {
    await this.stopAll();
    for (const r of this.vrings) {
      closeFd(r.kickFd);
      closeFd(r.callFd);
    }
    this.vrings.forEach((_, i) => (this.vrings[i] = freshRing()));
    this.memory?.release();
    this.memory = undefined;
    releaseLog(this.log);
    this.log = undefined;
    this.logFd = closeFd(this.logFd);
    this.backendFd = closeFd(this.backendFd);
    this.setIotlb(false);
    this.acked = 0n;
    this.ackedProtocol = 0n;
  }
}
