// The virtio-iommu request queue's work, apart from the device model so it can run on its own thread:
// ATTACH, DETACH, MAP, UNMAP, PROBE against the shared table, with the spec's statuses, and a batch's
// completions published only once no dataplane thread can still use what it unmapped.
import type { DirtyLog } from '../virtio/dirty-log.js';
import type { Virtqueue } from '../virtio/virtqueue.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import { IommuTable, INPUT_END, ENDPOINT_BYPASS, ENDPOINT_NONE, MAP_READ, MAP_WRITE, MAP_MMIO, type SlowWait, type StuckPolicy } from './table.js';

export const T = { ATTACH: 1, DETACH: 2, MAP: 3, UNMAP: 4, PROBE: 5 } as const;
export const S = { OK: 0, IOERR: 1, UNSUPP: 2, DEVERR: 3, INVAL: 4, RANGE: 5, NOENT: 6, FAULT: 7, NOMEM: 8 } as const;
const ATTACH_F_BYPASS = 1;
const PROBE_T_RESV_MEM = 1;
const RESV_MEM_T_MSI = 1;
/** bytes of the readable part of each request (head included) */
const REQ_LEN: Record<number, number> = { [T.ATTACH]: 20, [T.DETACH]: 20, [T.MAP]: 36, [T.UNMAP]: 28, [T.PROBE]: 72 };
/** properties buffer of a PROBE reply */
export const PROBE_SIZE = 512;
/** domain ids the guest may use */
export const DOMAIN_BITS = 16;
/** the x86 MSI doorbell window: device writes there are interrupts, never translated (PROBE says so) */
const MSI_START = 0xfee00000;
const MSI_END = 0xfeefffff;

/** Words shared between the device model (main thread) and wherever requests are handled. */
export const STATE = {
  /** config `bypass`: unattached endpoints pass DMA through */
  BYPASS: 0,
  /** the driver negotiated BYPASS_CONFIG (ATTACH_F_BYPASS allowed) */
  BYPASS_CONFIG: 1,
  /** requests handled, by type (1..5) */
  HANDLED: 2,
  WORDS: 8,
} as const;

/** requests one drain handles at most before publishing (the largest queue a driver may set up) */
const BATCH_MAX = 1024;

const domainOk = (d: number) => d >= 0 && d < 2 ** DOMAIN_BITS;

/** A u64 request field as a double (the values that matter, IOVAs and addresses, fit in 53 bits). */
const u64 = (v: DataView, at: number) => v.getUint32(at, true) + v.getUint32(at + 4, true) * 4294967296;

export class IommuRequests {
  /** domains attached in bypass mode (ATTACH_F_BYPASS): no mappings allowed in them */
  private readonly domainBypass = new Set<number>();
  /** endpoint → bypass domain it is attached to (the table only says "bypass") */
  private readonly bypassOwner = new Map<number, number>();
  // A guest in strict mode sends a MAP and an UNMAP per packet: a batch is handled in storage made
  // once, no allocation per request.
  private readonly req = new Uint8Array(128);
  private readonly reqView = new DataView(this.req.buffer);
  /** the reply's leading bytes (a PROBE's properties; zeros for the others) */
  private readonly reply = new Uint8Array(PROBE_SIZE);
  private readonly heads = new Uint16Array(BATCH_MAX);
  private readonly lens = new Uint32Array(BATCH_MAX);
  /** set by request(): the table generation the batch's completion must wait for (0: none) */
  private waitFor = 0;

  constructor(
    private readonly table: IommuTable,
    private readonly endpoints: readonly number[],
    /** STATE words (an Int32Array over shared memory) */
    private readonly state: Int32Array,
    /** told of a quiescence wait past a second (a loaded host, or a stuck dataplane thread) */
    private readonly onSlowWait?: SlowWait,
    /** told of a dataplane thread behind past the stuck-thread limit (whoever owns it ends it) */
    private readonly stuck?: StuckPolicy,
  ) {}

  private get bypassUnattached(): boolean {
    return this.state[STATE.BYPASS] === 1 && this.state[STATE.BYPASS_CONFIG] === 1;
  }

  /**
   * Handle every request available on `q` (guest memory `bytes`), then publish the completions: after one
   * wait for the dataplane threads to be past the batch's last UNMAP (or ATTACH/DETACH) — a guest that
   * batches its unmaps pays for one quiescence, not one per request. Replies are written as each
   * request is handled; the guest reads them only once the used index moves, after that wait. Returns
   * the requests handled.
   */
  drain(q: Virtqueue, bytes: GuestBytes, log?: DirtyLog): number {
    let n = 0;
    let waitFor = 0;
    while (n < BATCH_MAX && q.pop()) {
      const c = q.chain;
      this.heads[n] = c.head;
      // the request: the readable buffers, gathered; the reply: the writable ones
      if (c.readableBytes < 4 || c.readableBytes > this.req.length || c.writableBytes < 4) {
        this.lens[n] = 0;
        n++;
        continue;
      }
      for (let i = 0, at = 0; i < c.readable; i++) {
        bytes.copyOut(c.offsets[i], this.req, at, c.lens[i]);
        at += c.lens[i];
      }
      const writable = c.writableBytes;
      const type = this.req[0];
      const needs = REQ_LEN[type];
      const isProbe = type === T.PROBE;
      if (isProbe) this.reply.fill(0);
      let status: number;
      this.waitFor = 0;
      if (needs === undefined) status = S.UNSUPP;
      else if (c.readableBytes < needs || (isProbe ? writable < PROBE_SIZE + 4 : writable < 4)) status = S.INVAL;
      else {
        status = this.request(type, this.reqView, this.reply);
        if (this.waitFor > waitFor) waitFor = this.waitFor;
      }
      if (type >= 1 && type <= 5) Atomics.add(this.state, STATE.HANDLED + type - 1, 1);
      // the writable buffers: the reply's leading bytes (zeros but for a PROBE's properties), then the
      // tail: status and three reserved bytes
      let at = 0;
      for (let i = c.readable; i < c.count; i++) {
        const off = c.offsets[i];
        for (let k = 0; k < c.lens[i]; k++, at++) {
          const tail = at - (writable - 4);
          bytes.setU8(off + k, tail < 0 ? (isProbe && at < PROBE_SIZE ? this.reply[at] : 0) : tail === 0 ? status : 0);
        }
        log?.markOffset(off, c.lens[i]);
      }
      this.lens[n++] = writable;
    }
    // the guest may reuse unmapped memory once it sees the completion: first, every thread must be
    // past the batch, however long that takes
    if (waitFor !== 0) this.table.quiescentSync(waitFor, this.onSlowWait, 1000, this.stuck);
    for (let i = 0; i < n; i++) q.addUsed(this.heads[i], this.lens[i]);
    q.flush();
    return n;
  }

  private known(endpoint: number): boolean {
    return this.endpoints.includes(endpoint);
  }

  /**
   * One request (its readable part in `v`); a PROBE's properties into `reply`. Returns the status; a
   * request whose completion must wait for the dataplane threads sets `waitFor`.
   */
  request(type: number, v: DataView, reply: Uint8Array): number {
    switch (type) {
      case T.ATTACH: {
        const domain = v.getUint32(4, true);
        const endpoint = v.getUint32(8, true);
        const flags = v.getUint32(12, true);
        if (!this.known(endpoint)) return S.NOENT;
        if (!domainOk(domain)) return S.RANGE;
        if (flags & ~ATTACH_F_BYPASS || (flags & ATTACH_F_BYPASS && !this.state[STATE.BYPASS_CONFIG])) return S.INVAL;
        const bypass = (flags & ATTACH_F_BYPASS) !== 0;
        // a domain is either a bypass domain or a mapping one, for every endpoint in it
        if (bypass !== this.domainBypass.has(domain) && this.domainInUse(domain)) return S.INVAL;
        const previous = this.attachedDomain(endpoint);
        if (bypass) this.domainBypass.add(domain);
        this.table.setEndpoint(endpoint, bypass ? ENDPOINT_BYPASS : domain);
        this.bypassOwner.set(endpoint, bypass ? domain : -1);
        if (previous >= 0 && previous !== domain) this.forgetIfUnused(previous);
        // moving an endpoint changes its translations: like an UNMAP, wait until the threads are past it
        this.waitFor = this.table.generation;
        return S.OK;
      }
      case T.DETACH: {
        const domain = v.getUint32(4, true);
        const endpoint = v.getUint32(8, true);
        if (!this.known(endpoint)) return S.NOENT;
        if (this.attachedDomain(endpoint) !== domain) return S.INVAL;
        this.table.setEndpoint(endpoint, this.bypassUnattached ? ENDPOINT_BYPASS : ENDPOINT_NONE);
        this.bypassOwner.set(endpoint, -1);
        this.forgetIfUnused(domain);
        this.waitFor = this.table.generation;
        return S.OK;
      }
      case T.MAP: {
        const domain = v.getUint32(4, true);
        const start = u64(v, 8);
        const end = u64(v, 16);
        const phys = u64(v, 24);
        const flags = v.getUint32(32, true);
        if (!this.domainInUse(domain)) return S.NOENT;
        if (this.domainBypass.has(domain)) return S.INVAL;
        if (flags & ~(MAP_READ | MAP_WRITE | MAP_MMIO) || flags & MAP_MMIO) return S.INVAL;
        if (end < start || end > INPUT_END || start % 4096 || (end + 1) % 4096 || phys % 4096 || phys > Number.MAX_SAFE_INTEGER) return S.RANGE;
        return this.table.map(domain, start, end, phys, flags) ? S.OK : S.INVAL;
      }
      case T.UNMAP: {
        const domain = v.getUint32(4, true);
        const start = u64(v, 8);
        const end = u64(v, 16);
        if (!this.domainInUse(domain)) return S.NOENT;
        if (end < start) return S.INVAL;
        const n = this.table.unmap(domain, start, Math.min(end, INPUT_END));
        if (n < 0) return S.RANGE;
        this.waitFor = this.table.generation;
        return S.OK;
      }
      case T.PROBE: {
        const endpoint = v.getUint32(4, true);
        if (!this.known(endpoint)) return S.NOENT;
        // one property: the MSI doorbell window is reserved (interrupts, not DMA)
        const p = new DataView(reply.buffer, reply.byteOffset);
        p.setUint16(0, PROBE_T_RESV_MEM, true);
        p.setUint16(2, 20, true);
        p.setUint8(4, RESV_MEM_T_MSI);
        p.setBigUint64(8, BigInt(MSI_START), true);
        p.setBigUint64(16, BigInt(MSI_END), true);
        return S.OK;
      }
    }
    return S.UNSUPP;
  }

  /** the domain an endpoint is attached to (bypass domains included), or -1 */
  private attachedDomain(endpoint: number): number {
    const d = this.table.endpointDomain(endpoint);
    if (d >= 0) return d;
    return this.bypassOwner.get(endpoint) ?? -1;
  }

  private domainInUse(domain: number): boolean {
    return this.endpoints.some((e) => this.attachedDomain(e) === domain);
  }

  /** A domain with no endpoint left is gone, with its mappings (virtio-iommu §5.13.6.4). */
  private forgetIfUnused(domain: number): void {
    if (this.domainInUse(domain)) return;
    this.table.dropDomain(domain);
    this.domainBypass.delete(domain);
  }
}

/** How many requests of each type were handled, from the STATE words. */
export function handledCounts(state: Int32Array): Record<string, number> {
  const out: Record<string, number> = {};
  for (let t = 1; t <= 5; t++) if (state[STATE.HANDLED + t - 1]) out[String(t)] = state[STATE.HANDLED + t - 1];
  return out;
}
