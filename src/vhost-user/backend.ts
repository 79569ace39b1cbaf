// A vhost-user net backend: the frontend (QEMU, DPDK's virtio-user) owns the rings and the guest
// memory; this only fills in what tsvmm's own device fills in — the memory table, ring addresses,
// kick and call eventfds, features — and hands it to the same dataplane threads and drivers.
import { native, EFD_NONBLOCK } from '../native.js';
import { Dataplane, type DataplaneConfig } from '../dataplane/index.js';
import { RxFilter } from '../virtio-net/rx-filter.js';
import { newStatsBuffer, readStats, type QueueStats } from '../dataplane/stats.js';
import type { WorkerUnit, WorkerQueue } from '../dataplane/worker.js';
import type { NetDriver } from '../drivers/api.js';
import { F, bit, has, netFeatureOffer } from '../virtio-net/features.js';
import { netDataplane } from '../virtio-net/dataplane.js';
import { FrontendMemory } from './memory.js';
import { IommuTable, IommuReader, INPUT_END, MAP_READ, MAP_WRITE, sayWaitIsSlow, stuckThreadMs } from '../viommu/table.js';
import { guestView, dmaContiguous, type DmaAccess } from '../virtio/dma.js';
import { MAX_QUEUE_SIZE, decodeRingBase, encodeRingBase, type RingState } from '../virtio/virtqueue.js';
import { guestBytes } from '../virtio/guest-bytes.js';
import * as P from './protocol.js';
import * as V from './validate.js';

interface Vring {
  num: number;
  desc: number;
  avail: number;
  used: number;
  base: number;
  kickFd: number;
  callFd: number;
  enabled: boolean;
  /** guest-physical address to log used-ring writes at (VHOST_VRING_F_LOG), if the frontend gave one */
  logGpa: number | undefined;
}

/** the frontend's dirty log, mapped (LOG_SHMFD) */
interface MappedLog {
  buffer: SharedArrayBuffer;
  address: bigint;
  offset: number;
  size: number;
}

export interface BackendOptions {
  queuePairs: number;
  busyPollUs?: number;
  /** a line for the operator on events worth knowing (dirty logging switched on or off) */
  log?: (line: string) => void;
}

export interface Handled {
  reply?: Uint8Array;
  /** the frontend broke the protocol: close the connection */
  close?: string;
}

/** VHOST_F_LOG_ALL: log every write into guest memory (live migration) */
export const F_LOG_ALL = 26;
/** the IOTLB's single domain and endpoint in the translation table */
const IOTLB_DOMAIN = 0;
/** Did an IOTLB change after `generation` touch `iova`? (`changes` is oldest first) */
function changedSince(changes: Array<{ start: number; end: number; generation: number }>, iova: number, generation: number): boolean {
  for (let i = changes.length - 1; i >= 0 && changes[i].generation > generation; i--) {
    if (changes[i].start <= iova && changes[i].end >= iova) return true;
  }
  return false;
}

/** TSVMM_DEBUG_VRING=1: one stderr line per control message and ring (re)start (where each ring
 *  stands, and the last used entries with their buffers), for chasing a frontend's ring-state problems */
const trace = process.env.TSVMM_DEBUG_VRING ? (s: string) => process.stderr.write(`vring: ${s}\n`) : undefined;

/** (tracing) the guest-physical addresses of the pages whose bits are set in a log bitmap */
function pagesIn(bits: Uint8Array): string {
  const out: string[] = [];
  for (let p = 0; p < bits.length * 8; p++) if (bits[p >> 3] & (1 << (p & 7))) out.push((p * 4096).toString(16));
  return out.join(' ');
}

/** problems kept in `errors` (the latest) */
const ERRORS_KEPT = 64;
/** IOTLB changes remembered to recognise stale misses (more than a ring's worth in flight) */
const CHANGES_KEPT = 1024;
/** vhost_vring_addr.flags bit: log_guest_addr is valid */
const VRING_F_LOG = 1;
/** a bit per 4 KiB page: 1 GiB of log covers 32 TiB of guest memory */
const MAX_LOG = 1 << 30;

export class VhostUserBackend {
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  private acked = 0n;
  private ackedProtocol = 0n;
  private memory?: FrontendMemory;
  private log?: MappedLog;
  private logFd = -1;
  /** the channel for requests to the frontend (IOTLB misses) */
  private backendFd = -1;
  /**
   * With ACCESS_PLATFORM: the frontend's IOTLB (IOVA → guest-physical, with permissions), in the same
   * shared table the vIOMMU uses, read by the dataplane threads directly; a miss is sent to the
   * frontend, and the queue that missed waits for the update.
   */
  private iotlb?: {
    table: IommuTable;
    reader: IommuReader;
    slots: number[];
    missesSeen: number;
    timer: NodeJS.Timeout;
    asked: Map<number, number>;
    /** the latest UPDATE/INVALIDATE ranges and the table generation after each (oldest first) */
    changes: Array<{ start: number; end: number; generation: number }>;
  };
  private readonly vrings: Vring[];
  private readonly running = new Map<number, Dataplane>();
  private readonly filter = new RxFilter();
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
  /** why the connection ends after the request being handled (a thread was stuck during it) */
  private endAfter?: string;
  private readonly slowInvalidation = sayWaitIsSlow('vhost-user IOTLB invalidation');
  /** an eventfd the dataplane threads write when they need the frontend asked something (IOTLB misses) */
  readonly eventFd = native.eventfd(0, EFD_NONBLOCK);

  constructor(
    private readonly driver: NetDriver,
    private readonly opts: BackendOptions,
  ) {
    // the net device's offer (from what the driver honours) and what the vhost-user protocol adds
    let f = netFeatureOffer(driver.caps, opts.queuePairs) | bit(P.F_PROTOCOL_FEATURES) | bit(F_LOG_ALL) | bit(F.ACCESS_PLATFORM);
    this.features = f;
    this.protocolFeatures = [P.PROTOCOL_F.MQ, P.PROTOCOL_F.REPLY_ACK, P.PROTOCOL_F.LOG_SHMFD, P.PROTOCOL_F.BACKEND_REQ].reduce((a, b) => a | (1n << BigInt(b)), 0n);
    this.vrings = Array.from({ length: 2 * opts.queuePairs }, () => this.freshRing());
    this.filter.reset(new Uint8Array(6));
    this.stats = newStatsBuffer(2 * opts.queuePairs);
  }

  private freshRing(): Vring {
    return { num: 0, desc: 0, avail: 0, used: 0, base: 0, kickFd: -1, callFd: -1, enabled: false, logGpa: undefined };
  }

  queueStats(pair: number): { rx: QueueStats; tx: QueueStats } {
    return { rx: readStats(this.stats, 2 * pair), tx: readStats(this.stats, 2 * pair + 1) };
  }

  get activePairs(): number {
    return this.running.size;
  }

  /**
   * One message; replies per the protocol (and REPLY_ACK when asked). Whatever goes wrong is the
   * connection's end, never an exception; descriptors the message brought and nothing kept are closed.
   */
  async handle(m: P.Message): Promise<Handled> {
    try {
      if (m.fds.length > 0 && !P.TAKES_FDS.has(m.request)) return { close: `request ${m.request} came with ${m.fds.length} descriptors and takes none` };
      return await this.dispatch(m);
    } catch (e) {
      return { close: `request ${m.request}: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}` };
    } finally {
      for (const fd of m.fds.splice(0)) native.close(fd);
    }
  }

  /** handle(): a handler keeps a descriptor by taking it out of m.fds */
  private async dispatch(m: P.Message): Promise<Handled> {
    const fail = (why: string): Handled => ({ close: why });
    const p = m.payload;
    const ack = (ok: boolean): Handled => {
      if (m.flags & P.FLAG_NEED_REPLY && this.ackedProtocol & (1n << BigInt(P.PROTOCOL_F.REPLY_ACK))) return { reply: P.encodeReply(m.request, P.u64Payload(ok ? 0n : 1n)) };
      return ok ? {} : { close: `request ${m.request} failed` };
    };
    const ring = (i: number) => (i >= 0 && i < this.vrings.length ? this.vrings[i] : undefined);
    trace?.(`message ${m.request} ${p.byteLength >= 8 ? p.getBigUint64(0, true).toString(16) : ''} (pairs running: ${this.running.size})`);
    switch (m.request) {
      case P.REQ.GET_FEATURES:
        return { reply: P.encodeReply(m.request, P.u64Payload(this.features)) };
      case P.REQ.SET_FEATURES:
      case P.REQ.SET_PROTOCOL_FEATURES: {
        const protocol = m.request === P.REQ.SET_PROTOCOL_FEATURES;
        if (p.byteLength < 8) return fail('short feature message');
        const f = p.getBigUint64(0, true);
        if (f & ~(protocol ? this.protocolFeatures : this.features)) return fail('features we did not offer');
        if (protocol) this.ackedProtocol = f;
        else if (f !== this.acked) {
          // running threads were started with the old features (e.g. LOG_ALL switched on for migration)
          const wasRunning = this.running.size > 0;
          await this.stopAll();
          if (has(f, F_LOG_ALL) !== has(this.acked, F_LOG_ALL)) this.opts.log?.(`vhost-user: dirty logging ${has(f, F_LOG_ALL) ? 'on' : 'off'}`);
          this.acked = f;
          this.setIotlb(has(f, F.ACCESS_PLATFORM));
          if (wasRunning) await this.startReady();
        }
        return ack(true);
      }
      case P.REQ.GET_PROTOCOL_FEATURES:
        return { reply: P.encodeReply(m.request, P.u64Payload(this.protocolFeatures)) };
      case P.REQ.GET_QUEUE_NUM:
        return { reply: P.encodeReply(m.request, P.u64Payload(BigInt(this.opts.queuePairs))) };
      case P.REQ.SET_OWNER:
        return ack(true);
      case P.REQ.RESET_OWNER:
        await this.stopAll();
        return ack(true);
      case P.REQ.SET_MEM_TABLE: {
        const regions = P.parseMemTable(p);
        if (!regions) return fail('malformed SET_MEM_TABLE');
        await this.stopAll();
        this.memory?.release();
        this.memory = undefined;
        // map() takes the descriptors over (and closes them), whatever it decides
        const mem = FrontendMemory.map(regions, m.fds.splice(0));
        if (typeof mem === 'string') return fail(`SET_MEM_TABLE: ${mem}`);
        this.memory = mem;
        await this.startReady();
        return ack(true);
      }
      case P.REQ.SET_VRING_NUM:
      case P.REQ.SET_VRING_BASE:
      case P.REQ.SET_VRING_ENABLE: {
        if (p.byteLength < 8) return fail('short vring state');
        const i = p.getUint32(0, true);
        const num = p.getUint32(4, true);
        const r = ring(i);
        if (!r) return fail(`ring ${i} does not exist`);
        if (m.request === P.REQ.SET_VRING_NUM) {
          if (num < 1 || num > MAX_QUEUE_SIZE || num & (num - 1)) return fail(`ring ${i}: bad size ${num}`);
          r.num = num;
        } else if (m.request === P.REQ.SET_VRING_BASE) r.base = has(this.acked, F.RING_PACKED) ? num : num & 0xffff; // (packed: both positions and their wrap counters)
        else {
          r.enabled = num === 1;
          if (!r.enabled) await this.stopPair(i >> 1);
        }
        await this.startReady();
        return ack(true);
      }
      case P.REQ.SET_VRING_ADDR: {
        const a = P.parseVringAddr(p);
        if (!a) return fail('malformed SET_VRING_ADDR');
        const r = ring(a.index);
        if (!r) return fail(`ring ${a.index} does not exist`);
        const misaligned = V.ringMisalignment(a);
        if (misaligned) return fail(`ring ${a.index}: ${misaligned}`);
        // a live ring moving (or starting to log) restarts its pair with the new addresses
        await this.stopPair(a.index >> 1);
        r.logGpa = a.flags & VRING_F_LOG ? a.log : undefined;
        r.desc = a.desc;
        r.avail = a.avail;
        r.used = a.used;
        await this.startReady();
        return ack(true);
      }
      case P.REQ.GET_VRING_BASE: {
        if (p.byteLength < 8) return fail('short GET_VRING_BASE');
        const i = p.getUint32(0, true);
        const r = ring(i);
        if (!r) return fail(`ring ${i} does not exist`);
        // the ring stops; its thread says where it stood (stopPair keeps it in r.base)
        await this.stopPair(i >> 1);
        const base = r.base;
        r.kickFd = this.closeFd(r.kickFd);
        r.callFd = this.closeFd(r.callFd);
        r.base = base;
        trace?.(`ring ${i} stopped at ${base}; ${this.ringDump(r)}`);
        if (trace && this.written && this.log) {
          trace(`pages written while logging: ${pagesIn(new Uint8Array(this.written))}`);
          trace(`pages in the frontend's log not yet collected: ${pagesIn(new Uint8Array(this.log.buffer, this.log.offset, this.log.size))}`);
        }
        return { reply: P.encodeReply(m.request, P.vringState(i, base)) };
      }
      case P.REQ.SET_VRING_KICK:
      case P.REQ.SET_VRING_CALL:
      case P.REQ.SET_VRING_ERR: {
        if (p.byteLength < 8) return fail('short vring fd message');
        const v = Number(p.getBigUint64(0, true));
        const r = ring(v & P.VRING_INDEX_MASK);
        const nofd = (v & P.VRING_NOFD) !== 0;
        if (!r || (!nofd && m.fds.length !== 1) || (nofd && m.fds.length !== 0)) return fail('bad vring fd message');
        // (SET_VRING_ERR's descriptor is not used: handle() closes it)
        if (m.request === P.REQ.SET_VRING_ERR) return ack(true);
        const kind = m.request === P.REQ.SET_VRING_KICK ? 'kick' : 'call';
        const unfit = nofd ? undefined : V.eventfdProblem(m.fds[0]);
        if (unfit) return fail(`ring ${v & P.VRING_INDEX_MASK}: the ${kind} descriptor is ${unfit}`);
        const fd = nofd ? -1 : m.fds.splice(0)[0];
        // a running pair's thread uses these descriptors: stop it before they change (frontends do
        // replace call fds on a live ring, e.g. QEMU when the guest switches interrupt modes)
        await this.stopPair((v & P.VRING_INDEX_MASK) >> 1);
        if (m.request === P.REQ.SET_VRING_KICK) {
          r.kickFd = this.closeFd(r.kickFd);
          r.kickFd = fd;
          // without PROTOCOL_FEATURES a ring is enabled by its kick fd (vhost-user.rst, "Starting and stopping rings")
          if (!(this.acked & bit(P.F_PROTOCOL_FEATURES))) r.enabled = true;
        } else {
          r.callFd = this.closeFd(r.callFd);
          r.callFd = fd;
        }
        await this.startReady();
        return ack(true);
      }
      case P.REQ.SET_LOG_BASE: {
        if (!(this.ackedProtocol & (1n << BigInt(P.PROTOCOL_F.LOG_SHMFD)))) return fail('dirty logging was not negotiated');
        if (p.byteLength < 16 || m.fds.length !== 1) return fail('malformed SET_LOG_BASE');
        const size = Number(p.getBigUint64(0, true));
        const offset = Number(p.getBigUint64(8, true));
        const fd = m.fds.splice(0)[0];
        let mapped: MappedLog | string;
        try {
          mapped = this.mapLog(fd, size, offset);
        } finally {
          native.close(fd);
        }
        if (typeof mapped === 'string') return fail(`SET_LOG_BASE: ${mapped}`);
        // the threads log into the new area from their restart on
        await this.stopAll();
        this.releaseLog();
        this.log = mapped;
        this.opts.log?.(`vhost-user: dirty log of ${size} bytes from the frontend (migration)${has(this.acked, F_LOG_ALL) ? '; logging' : ''}`);
        await this.startReady();
        // the frontend waits for this reply (whatever REPLY_ACK says): the log is in use once it comes
        return { reply: P.encodeReply(m.request, P.u64Payload(0n)) };
      }
      case P.REQ.SET_BACKEND_REQ_FD: {
        if (m.fds.length !== 1) return fail('SET_BACKEND_REQ_FD without its descriptor');
        this.backendFd = this.closeFd(this.backendFd);
        this.backendFd = m.fds.splice(0)[0];
        return ack(true);
      }
      case P.REQ.IOTLB_MSG: {
        const msg = P.parseIotlb(p);
        if (!msg) return fail('malformed IOTLB_MSG');
        if (!this.iotlb) return fail('IOTLB message without ACCESS_PLATFORM');
        const r = await this.iotlbMessage(msg);
        if (typeof r === 'string') return fail(`IOTLB_MSG: ${r}`);
        // (a thread stuck during the invalidation was ended: the request completes, then the connection)
        const done = ack(r);
        if (this.endAfter) done.close = this.endAfter;
        this.endAfter = undefined;
        return done;
      }
      case P.REQ.SET_LOG_FD: {
        // an eventfd the backend may signal after logging; writes land in the shared log synchronously,
        // so nothing needs signalling, but the descriptor is the frontend's to replace
        if (m.fds.length !== 1) return fail('SET_LOG_FD without its descriptor');
        this.logFd = this.closeFd(this.logFd);
        this.logFd = m.fds.splice(0)[0];
        return ack(true);
      }
      default:
        return ack(false);
    }
  }

  /** (tracing) every page logged over the connection, kept (the frontend clears its log as it reads) */
  private written?: SharedArrayBuffer;
  private writtenLog(): SharedArrayBuffer | undefined {
    if (!trace || !this.log) return undefined;
    if (this.written?.byteLength !== this.log.size) this.written = new SharedArrayBuffer(this.log.size);
    return this.written;
  }

  private mapLog(fd: number, size: number, offset: number): MappedLog | string {
    if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_LOG) return `log size ${size} out of range`;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > MAX_LOG) return `log offset ${offset} out of range`;
    // a log past the end of its file would fault (SIGBUS) the first time a thread set a bit there
    if (offset + size > native.fileSize(fd)) return 'log extends past the end of its file';
    try {
      const m = native.mmapShared(fd, offset + size);
      return { buffer: m.buffer, address: m.address, offset, size };
    } catch (e) {
      return (e as Error).message;
    }
  }

  private releaseLog(): void {
    if (this.log) native.remapAnonymous(this.log.address, this.log.offset + this.log.size);
    this.log = undefined;
  }

  private closeFd(fd: number): number {
    if (fd >= 0) native.close(fd);
    return -1;
  }

  /** ACCESS_PLATFORM switched on or off: the IOTLB table exists exactly while it is negotiated. */
  private setIotlb(on: boolean): void {
    if (on && !this.iotlb) {
      const table = new IommuTable();
      table.setEndpoint(0, IOTLB_DOMAIN);
      const reader = new IommuReader(table.buffer, 0, table.newThreadSlot());
      const slots = Array.from({ length: this.opts.queuePairs }, () => table.newThreadSlot());
      // misses the dataplane threads record go to the frontend when they signal eventFd (the server's
      // epoll wakes for it); a slow look now and then catches anything else
      const timer = setInterval(() => this.sendMisses(), 50);
      timer.unref();
      this.iotlb = { table, reader, slots, missesSeen: 0, timer, asked: new Map(), changes: [] };
    } else if (!on && this.iotlb) {
      clearInterval(this.iotlb.timer);
      this.iotlb = undefined;
    }
  }

  /** UPDATE: the frontend's virtual range becomes guest-physical pieces; INVALIDATE: entries go. */
  private async iotlbMessage(msg: P.IotlbMsg): Promise<boolean | string> {
    const t = this.iotlb!;
    if (process.env.TSVMM_DEBUG_IOTLB) process.stderr.write(`IOTLB ${msg.type === 2 ? 'UPDATE' : msg.type === 3 ? 'INVAL' : msg.type} iova=${msg.iova.toString(16)} size=${msg.size.toString(16)} perm=${msg.perm}\n`);
    if (msg.size <= 0) return 'empty range';
    const last = msg.last ?? BigInt(msg.iova) + BigInt(msg.size) - 1n;
    // the table holds IOVAs up to INPUT_END: an update beyond is refused; an invalidation reaching
    // beyond (QEMU's intel-iommu turns a guest's device-TLB "flush all" into one for 2^64 - 1 bytes)
    // covers what the table can hold
    if (msg.type === P.IOTLB.UPDATE && last > BigInt(INPUT_END)) return 'range out of bounds';
    if (msg.iova > INPUT_END) return true;
    const end = Number(last > BigInt(INPUT_END) ? BigInt(INPUT_END) : last);
    // (whatever we asked about in this range is answered, or to be asked afresh)
    for (const page of t.asked.keys()) if (page * 4096 <= end && page * 4096 + 4095 >= msg.iova) t.asked.delete(page);
    if (msg.type === P.IOTLB.UPDATE) {
      if (!this.memory) return 'update before the memory table';
      const perm = msg.perm & (MAP_READ | MAP_WRITE);
      t.table.invalidate(IOTLB_DOMAIN, msg.iova, end);
      // one table entry per frontend memory region the range crosses
      for (let done = 0; done < msg.size; ) {
        const at = msg.uaddr + done;
        const region = this.memory.regions.find((r) => at >= r.uaddr && at < r.uaddr + r.size);
        if (!region) return 'update outside the frontend memory';
        const n = Math.min(msg.size - done, region.uaddr + region.size - at);
        const [start, end, gpa] = [msg.iova + done, msg.iova + done + n - 1, region.gpa + (at - region.uaddr)];
        // the table is a cache of the frontend's IOTLB: full (a frontend that never invalidates),
        // it is emptied and refills by misses — nothing it held was revoked, so no thread need wait
        if (!t.table.map(IOTLB_DOMAIN, start, end, gpa, perm)) {
          t.table.dropDomain(IOTLB_DOMAIN);
          if (!t.table.map(IOTLB_DOMAIN, start, end, gpa, perm)) return 'update the table cannot hold';
        }
        done += n;
      }
    } else if (msg.type === P.IOTLB.INVALIDATE) {
      t.table.invalidate(IOTLB_DOMAIN, msg.iova, end);
      // the frontend may reuse the range once we answer: no thread may still hold a translation of it.
      // A thread that keeps us waiting past the limit is stuck (in its driver): it is ended, and once it
      // has exited it holds nothing; its pair stops and the connection ends after the answer
      const limit = stuckThreadMs();
      const behind = await t.table.quiescentAsync(t.table.generation, limit, this.slowInvalidation);
      for (const slot of behind) {
        const pair = t.slots.indexOf(slot);
        const dp = this.running.get(pair);
        // (not a thread of ours to end: wait for it as long as it takes)
        if (!dp) {
          t.table.quiescentSync(t.table.generation, this.slowInvalidation);
          continue;
        }
        this.running.delete(pair);
        await dp.terminate();
        this.stuckThreads++;
        this.endAfter = `pair ${pair}: its dataplane thread kept an IOTLB invalidation waiting over ${limit} ms (TSVMM_STUCK_THREAD_MS): it was ended, the invalidation completed`;
      }
    } else return `message type ${msg.type}`;
    if (msg.type === P.IOTLB.UPDATE) this.iotlbCounts.updates++;
    else this.iotlbCounts.invalidations++;
    t.changes.push({ start: msg.iova, end, generation: t.table.generation });
    if (t.changes.length > CHANGES_KEPT) t.changes.splice(0, t.changes.length - CHANGES_KEPT);
    // queues that waited for this retry (their threads see the table moved); rings may be ready now
    for (const dp of this.running.values()) dp.wake();
    await this.startReady();
    return true;
  }

  /** eventFd fired: a dataplane thread stalled on a miss. */
  onEvent(): void {
    native.read(this.eventFd, new BigUint64Array(1));
    this.sendMisses();
  }

  /** Ask the frontend for the translations the dataplane threads (or a ring) missed. */
  private sendMisses(extra: Array<{ iova: number; access: number }> = []): void {
    const t = this.iotlb;
    if (!t || this.backendFd < 0) return;
    const { next, faults: fresh } = t.table.faultsSince(t.missesSeen);
    t.missesSeen = next;
    const now = Date.now();
    for (const f of [...fresh.map((x) => ({ iova: x.address, access: x.access, generation: x.generation })), ...extra.map((x) => ({ ...x, generation: t.table.generation }))]) {
      // one question per page until it is answered: a thread retrying (woken by another update) must
      // not repeat it — by the time a repeat arrives the guest may have unmapped the page, and the
      // frontend would report a translation fault. Unanswered for 100 ms: ask again.
      const page = Math.floor(f.iova / 4096);
      if (now - (t.asked.get(page) ?? -Infinity) < 100) continue;
      // a fault recorded before an update or invalidation of its page and read after it is stale: the
      // thread has retried since (or will), and asking now could reach the frontend after the guest
      // unmapped the page (a translation failure there)
      if (changedSince(t.changes, f.iova, f.generation)) continue;
      if (t.reader.translate(f.iova, 1, f.access === MAP_WRITE ? MAP_WRITE : MAP_READ, false)) continue;
      t.asked.set(page, now);
      if (process.env.TSVMM_DEBUG_IOTLB) process.stderr.write(`IOTLB MISS iova=${f.iova.toString(16)} access=${f.access}\n`);
      this.iotlbCounts.misses++;
      native.sendmsg(this.backendFd, P.encodeIotlbRequest({ iova: f.iova, size: 0, uaddr: 0, perm: f.access === MAP_WRITE ? 2 : 1, type: P.IOTLB.MISS }));
    }
  }

  /** Offset in the shared buffer of a ring range (IOVA with ACCESS_PLATFORM, else frontend address). */
  private ringOffset(addr: number, len: number, access: DmaAccess): number {
    const mem = this.memory!;
    if (this.iotlb) {
      const off = dmaContiguous(guestView(mem.buffer, mem.table, this.iotlb.reader), addr, len, access);
      if (off < 0) this.sendMisses([{ iova: addr, access }]);
      return off;
    }
    const gpa = mem.vaToGpa(addr, len);
    return gpa < 0 ? -1 : mem.table.translate(gpa, len);
  }

  /**
   * Where a ring starts. Split: at its used index in memory — a frontend that reconnects to a new
   * backend may send base 0 (DPDK's virtio-user does) while its used ring says where the old backend
   * stopped; that is the true position (every chain the old one took was completed), as DPDK's vhost
   * library also concludes. Packed rings keep no index in memory: the frontend's base.
   */
  private startState(r: Vring): RingState {
    if (has(this.acked, F.RING_PACKED)) return decodeRingBase(r.base, true);
    return decodeRingBase(this.usedIndex(r), false);
  }

  /** Where the rings are logged: the used ring at the frontend's log address when it gave one. */
  private ringLogGpa(r: Vring, desc: number, used: number): { desc: number; used: number } {
    return { desc, used: r.logGpa ?? used };
  }

  private usedIndex(r: Vring): number {
    if (!this.memory) return r.base;
    const off = this.ringOffset(r.used + 2, 2, MAP_READ);
    return off < 0 ? r.base : guestBytes(this.memory.buffer).u16(off);
  }

  /** (tracing) the avail index and the last 24 used entries: index:head/len@buffer address */
  private ringDump(r: Vring): string {
    const mem = this.memory;
    if (!mem) return '';
    const g = guestBytes(mem.buffer);
    const a = this.ringOffset(r.avail + 2, 2, MAP_READ);
    const u = this.ringOffset(r.used, 4 + 8 * r.num, MAP_READ);
    const d = this.ringOffset(r.desc, 16 * r.num, MAP_READ);
    if (a < 0 || u < 0 || d < 0) return 'rings not translatable';
    const idx = g.u16(u + 2);
    const out: string[] = [];
    for (let k = idx - 24; k < idx; k++) {
      const slot = (k & 0xffff) % r.num;
      const head = g.u32(u + 4 + 8 * slot);
      const buf = head < r.num ? g.u64(d + 16 * head).toString(16) : '?';
      out.push(`${k & 0xffff}:${head}/${g.u32(u + 8 + 8 * slot)}@${buf}`);
    }
    return `avail ${g.u16(a)}, used ${out.join(' ')}`;
  }

  private ready(r: Vring): boolean {
    return r.enabled && r.num > 0 && r.kickFd >= 0 && r.desc !== 0 && !!this.memory;
  }

  private workerQueue(r: Vring, slot: number): WorkerQueue | undefined {
    const mem = this.memory!;
    if (this.iotlb) {
      // rings by IOVA: the threads translate them; start only once the frontend has given them all
      const ok = [this.ringOffset(r.desc, 16 * r.num, MAP_READ), this.ringOffset(r.avail, 6 + 2 * r.num, MAP_READ), this.ringOffset(r.used, 6 + 8 * r.num, MAP_WRITE)].every((o) => o >= 0);
      if (!ok) return undefined;
      return { index: slot, size: r.num, desc: r.desc, avail: r.avail, used: r.used, kickFd: r.kickFd, callFd: r.callFd, statsSlot: slot, start: this.startState(r), ringLogGpa: this.ringLogGpa(r, r.desc, r.used) };
    }
    const desc = mem.vaToGpa(r.desc, 16 * r.num);
    const avail = mem.vaToGpa(r.avail, 6 + 2 * r.num);
    const used = mem.vaToGpa(r.used, 6 + 8 * r.num);
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
  private async startReady(): Promise<void> {
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
      const wp: WorkerUnit = { queues: [wrx, wtx], init: this.driver.queueInit(pair) };
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
    try {
      await dp.start(this.dataplaneConfig(pair), [[wp]]);
      started = true;
    } catch (e) {
      this.running.delete(pair);
      await dp.stop();
      throw new Error(failure ?? `pair ${pair}: ${(e as Error).message.split('\n')[0]}`);
    }
  }

  private dataplaneConfig(pair: number): DataplaneConfig {
    const f = this.acked;
    const mem = this.memory!;
    return {
      memory: mem.buffer,
      table: mem.table.toJSON(),
      ...netDataplane(f, this.driver, this.filter.buffer),
      stats: this.stats,
      busyPollUs: this.opts.busyPollUs ?? 0,
      iommu: this.iotlb ? { buffer: this.iotlb.table.buffer, endpoint: 0, slots: [this.iotlb.slots[pair]], missesWait: true, missFd: this.eventFd } : undefined,
      // migration: the frontend switched LOG_ALL on and gave us its log
      dirtyLog: has(f, F_LOG_ALL) && this.log ? { buffer: this.log.buffer, offset: this.log.offset, size: this.log.size, copy: this.writtenLog() } : undefined,
    };
  }

  /** Stop a pair's thread; its rings' bases become where the thread left them. */
  private async stopPair(pair: number): Promise<void> {
    const dp = this.running.get(pair);
    if (!dp) return;
    this.running.delete(pair);
    const ended = await dp.stop();
    if (ended > 0) {
      this.stuckThreads += ended;
      this.opts.log?.(`vhost-user: pair ${pair}: its dataplane thread did not stop within ${stuckThreadMs()} ms (TSVMM_STUCK_THREAD_MS): it was ended`);
    }
    const packed = has(this.acked, F.RING_PACKED);
    for (const [i, s] of dp.ringStates) if (this.vrings[i]) this.vrings[i].base = encodeRingBase(s, packed);
  }

  private async stopAll(): Promise<void> {
    await Promise.all([...this.running.keys()].map((p) => this.stopPair(p)));
  }

  /** The connection is gone: stop the threads, drop the frontend's memory and descriptors. */
  async close(): Promise<void> {
    await this.stopAll();
    for (const r of this.vrings) {
      this.closeFd(r.kickFd);
      this.closeFd(r.callFd);
    }
    this.vrings.forEach((_, i) => (this.vrings[i] = this.freshRing()));
    this.memory?.release();
    this.memory = undefined;
    this.releaseLog();
    this.logFd = this.closeFd(this.logFd);
    this.backendFd = this.closeFd(this.backendFd);
    this.setIotlb(false);
    this.acked = 0n;
    this.ackedProtocol = 0n;
  }
}
