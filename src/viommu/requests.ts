// The virtio-iommu request queue's work, apart from the device model so it can run on its own thread:
// ATTACH, DETACH, MAP, UNMAP, PROBE against the shared table, with the spec's statuses, and a batch's
// completions published only once no dataplane thread can still use what it unmapped.
import type { SplitQueue } from '../virtio/queue.js';
import { IommuTable, INPUT_END, ENDPOINT_BYPASS, ENDPOINT_NONE, MAP_READ, MAP_WRITE, MAP_MMIO } from './table.js';

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

export class IommuRequests {
  /** domains attached in bypass mode (ATTACH_F_BYPASS): no mappings allowed in them */
  private readonly domainBypass = new Set<number>();
  /** endpoint → bypass domain it is attached to (the table only says "bypass") */
  private readonly bypassOwner = new Map<number, number>();

  constructor(
    private readonly table: IommuTable,
    private readonly endpoints: readonly number[],
    /** STATE words (an Int32Array over shared memory) */
    private readonly state: Int32Array,
  ) {}

  private get bypassUnattached(): boolean {
    return this.state[STATE.BYPASS] === 1 && this.state[STATE.BYPASS_CONFIG] === 1;
  }

  /**
   * Handle every request available on `q` (guest memory `u8`), then publish the completions: after one
   * wait for the dataplane threads to be past the batch's last UNMAP (or ATTACH/DETACH) — a guest that
   * batches its unmaps pays for one quiescence, not one per request.
   */
  drain(q: SplitQueue, u8: Uint8Array): number {
    const done: Array<{ head: number; len: number; status: number; out: Array<[number, number]>; reply: Uint8Array }> = [];
    let waitFor = 0;
    while (q.pop()) {
      const c = q.chain;
      const head = c.head;
      // the request: the readable buffers, gathered; the reply: the writable ones
      if (c.readableBytes < 4 || c.readableBytes > 128 || c.writableBytes < 4) {
        done.push({ head, len: 0, status: -1, out: [], reply: new Uint8Array(0) });
        continue;
      }
      const req = new Uint8Array(c.readableBytes);
      for (let i = 0, at = 0; i < c.readable; i++) {
        req.set(u8.subarray(c.offsets[i], c.offsets[i] + c.lens[i]), at);
        at += c.lens[i];
      }
      const out: Array<[number, number]> = [];
      for (let i = c.readable; i < c.count; i++) out.push([c.offsets[i], c.lens[i]]);
      const writable = c.writableBytes;
      const reply = new Uint8Array(writable);
      const type = req[0];
      const needs = REQ_LEN[type];
      let status: number;
      if (needs === undefined) status = S.UNSUPP;
      else if (req.length < needs || (type === T.PROBE ? writable < PROBE_SIZE + 4 : writable < 4)) status = S.INVAL;
      else {
        const r = this.request(type, new DataView(req.buffer), reply);
        status = r.status;
        if (r.waitFor !== undefined) waitFor = Math.max(waitFor, r.waitFor);
      }
      if (type >= 1 && type <= 5) Atomics.add(this.state, STATE.HANDLED + type - 1, 1);
      done.push({ head, len: writable, status, out, reply });
    }
    // the guest may reuse unmapped memory once it sees OK: first, every thread must be past the batch
    const quiet = waitFor === 0 || this.table.quiescentSync(waitFor);
    for (const d of done) {
      if (d.status >= 0) {
        d.reply[d.len - 4] = quiet ? d.status : S.DEVERR;
        let at = 0;
        for (const [off, len] of d.out) {
          u8.set(d.reply.subarray(at, at + len), off);
          at += len;
        }
      }
      q.addUsed(d.head, d.len);
    }
    q.flush();
    return done.length;
  }

  /** One request (its readable part in `v`); the reply's leading bytes (PROBE properties) into `reply`. */
  request(type: number, v: DataView, reply: Uint8Array): { status: number; waitFor?: number } {
    const known = (e: number) => this.endpoints.includes(e);
    const domainOk = (d: number) => d >= 0 && d < 2 ** DOMAIN_BITS;
    switch (type) {
      case T.ATTACH: {
        const domain = v.getUint32(4, true);
        const endpoint = v.getUint32(8, true);
        const flags = v.getUint32(12, true);
        if (!known(endpoint)) return { status: S.NOENT };
        if (!domainOk(domain)) return { status: S.RANGE };
        if (flags & ~ATTACH_F_BYPASS || (flags & ATTACH_F_BYPASS && !this.state[STATE.BYPASS_CONFIG])) return { status: S.INVAL };
        const bypass = (flags & ATTACH_F_BYPASS) !== 0;
        // a domain is either a bypass domain or a mapping one, for every endpoint in it
        if (bypass !== this.domainBypass.has(domain) && this.domainInUse(domain)) return { status: S.INVAL };
        const previous = this.attachedDomain(endpoint);
        if (bypass) this.domainBypass.add(domain);
        this.table.setEndpoint(endpoint, bypass ? ENDPOINT_BYPASS : domain);
        this.bypassOwner.set(endpoint, bypass ? domain : -1);
        if (previous >= 0 && previous !== domain) this.forgetIfUnused(previous);
        // moving an endpoint changes its translations: like an UNMAP, wait until the threads are past it
        return { status: S.OK, waitFor: this.table.generation };
      }
      case T.DETACH: {
        const domain = v.getUint32(4, true);
        const endpoint = v.getUint32(8, true);
        if (!known(endpoint)) return { status: S.NOENT };
        if (this.attachedDomain(endpoint) !== domain) return { status: S.INVAL };
        this.table.setEndpoint(endpoint, this.bypassUnattached ? ENDPOINT_BYPASS : ENDPOINT_NONE);
        this.bypassOwner.set(endpoint, -1);
        this.forgetIfUnused(domain);
        return { status: S.OK, waitFor: this.table.generation };
      }
      case T.MAP: {
        const domain = v.getUint32(4, true);
        const start = Number(v.getBigUint64(8, true));
        const end = Number(v.getBigUint64(16, true));
        const phys = Number(v.getBigUint64(24, true));
        const flags = v.getUint32(32, true);
        if (!this.domainInUse(domain)) return { status: S.NOENT };
        if (this.domainBypass.has(domain)) return { status: S.INVAL };
        if (flags & ~(MAP_READ | MAP_WRITE | MAP_MMIO) || flags & MAP_MMIO) return { status: S.INVAL };
        if (end < start || end > INPUT_END || start % 4096 || (end + 1) % 4096 || phys % 4096) return { status: S.RANGE };
        return { status: this.table.map(domain, start, end, phys, flags) ? S.OK : S.INVAL };
      }
      case T.UNMAP: {
        const domain = v.getUint32(4, true);
        const start = Number(v.getBigUint64(8, true));
        const end = Number(v.getBigUint64(16, true));
        if (!this.domainInUse(domain)) return { status: S.NOENT };
        if (end < start) return { status: S.INVAL };
        const n = this.table.unmap(domain, start, Math.min(end, INPUT_END));
        if (n < 0) return { status: S.RANGE };
        return { status: S.OK, waitFor: this.table.generation };
      }
      case T.PROBE: {
        const endpoint = v.getUint32(4, true);
        if (!known(endpoint)) return { status: S.NOENT };
        // one property: the MSI doorbell window is reserved (interrupts, not DMA)
        const p = new DataView(reply.buffer);
        p.setUint16(0, PROBE_T_RESV_MEM, true);
        p.setUint16(2, 20, true);
        p.setUint8(4, RESV_MEM_T_MSI);
        p.setBigUint64(8, BigInt(MSI_START), true);
        p.setBigUint64(16, BigInt(MSI_END), true);
        return { status: S.OK };
      }
    }
    return { status: S.UNSUPP };
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
