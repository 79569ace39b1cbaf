// virtio-iommu (virtio 1.2 §5.13, <linux/virtio_iommu.h>): the guest's requests — ATTACH, DETACH,
// MAP, UNMAP, PROBE — change the shared translation table (table.ts) that the dataplane threads read.
// Requests are few next to packets and arrive on a vCPU exit: they are handled here, on the main
// thread. An UNMAP's status is written only once no dataplane thread can still use the mapping.
// Faults the threads recorded are reported to the guest on the event queue.
import type { GuestMemory } from '../vmm/memory.js';
import { native } from '../native.js';
import { SplitQueue, guestView, type GuestView } from '../virtio/queue.js';
import { VIRTIO_F_VERSION_1, type Activation, type ActiveQueue, type VirtioDevice } from '../virtio/device.js';
import { IommuTable, INPUT_END, ENDPOINT_BYPASS, ENDPOINT_NONE, MAP_READ, MAP_WRITE, MAP_MMIO } from './table.js';

export const VIRTIO_ID_IOMMU = 23;

export const IOMMU_F = { INPUT_RANGE: 0, DOMAIN_RANGE: 1, MAP_UNMAP: 2, BYPASS: 3, PROBE: 4, MMIO: 5, BYPASS_CONFIG: 6 } as const;
export const T = { ATTACH: 1, DETACH: 2, MAP: 3, UNMAP: 4, PROBE: 5 } as const;
export const S = { OK: 0, IOERR: 1, UNSUPP: 2, DEVERR: 3, INVAL: 4, RANGE: 5, NOENT: 6, FAULT: 7, NOMEM: 8 } as const;
const ATTACH_F_BYPASS = 1;
const PROBE_T_RESV_MEM = 1;
const RESV_MEM_T_MSI = 1;
const FAULT_R_MAPPING = 2;
const FAULT_F_ADDRESS = 0x100;

/** bytes of the readable part of each request (head included) */
const REQ_LEN: Record<number, number> = { [T.ATTACH]: 20, [T.DETACH]: 20, [T.MAP]: 36, [T.UNMAP]: 28, [T.PROBE]: 72 };
/** properties buffer of a PROBE reply */
export const PROBE_SIZE = 512;
/** domain ids the guest may use */
export const DOMAIN_BITS = 16;
/** the x86 MSI doorbell window: device writes there are interrupts, never translated (PROBE says so) */
const MSI_START = 0xfee00000;
const MSI_END = 0xfeefffff;
const ONE = new BigUint64Array([1n]);

const bit = (n: number) => 1n << BigInt(n);

export interface IommuOptions {
  /** endpoint ids (PCI requester ids: bus << 8 | device << 3 | function) this IOMMU translates for */
  endpoints: number[];
}

export class VirtioIommu implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_IOMMU;
  readonly numQueues = 2;
  readonly maxQueueSize = 256;
  readonly features =
    bit(VIRTIO_F_VERSION_1) | bit(IOMMU_F.INPUT_RANGE) | bit(IOMMU_F.DOMAIN_RANGE) | bit(IOMMU_F.MAP_UNMAP) | bit(IOMMU_F.PROBE) | bit(IOMMU_F.BYPASS_CONFIG);
  readonly configSize = 40;
  readonly table = new IommuTable();
  private readonly config = new Uint8Array(40);
  private readonly view: GuestView;
  private active?: Activation;
  private reqq?: SplitQueue;
  private eventq?: SplitQueue;
  private queues: ActiveQueue[] = [];
  private busy: Promise<void> = Promise.resolve();
  private again = false;
  private faultsReported = 0;
  private faultTimer?: NodeJS.Timeout;
  /** requests handled, by type (for tests and reports) */
  readonly handled = new Map<number, number>();

  constructor(
    memory: Pick<GuestMemory, 'buffer' | 'table'>,
    private readonly opts: IommuOptions,
  ) {
    this.view = guestView(memory.buffer, memory.table);
    const v = new DataView(this.config.buffer);
    v.setBigUint64(0, ~0xfffn & 0xffffffffffffffffn, true); // page_size_mask: 4 KiB and up
    v.setBigUint64(8, 0n, true); // input_range
    v.setBigUint64(16, BigInt(INPUT_END), true);
    v.setUint32(24, 0, true); // domain_range
    v.setUint32(28, 2 ** DOMAIN_BITS - 1, true);
    v.setUint32(32, PROBE_SIZE, true);
    this.config[36] = 0; // bypass: endpoints not attached to a domain do no DMA
    this.resetEndpoints();
  }

  /** Translate for one more endpoint (a device plugged in behind this IOMMU). */
  addEndpoint(endpoint: number): void {
    if (!this.opts.endpoints.includes(endpoint)) this.opts.endpoints.push(endpoint);
    this.table.setEndpoint(endpoint, ENDPOINT_NONE);
  }

  get endpoints(): readonly number[] {
    return this.opts.endpoints;
  }

  private get bypassUnattached(): boolean {
    return this.config[36] === 1 && (this.active ? (this.active.features & bit(IOMMU_F.BYPASS_CONFIG)) !== 0n : false);
  }

  private resetEndpoints(): void {
    for (const e of this.opts.endpoints) this.table.setEndpoint(e, ENDPOINT_NONE);
    this.domainBypass.clear();
    this.bypassOwner.clear();
  }

  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (this.config[offset + i] ?? 0);
    return v >>> 0;
  }

  writeConfig(offset: number, size: number, value: number): void {
    // only `bypass` is writable (BYPASS_CONFIG): what unattached endpoints do
    if (offset === 36 && size === 1) {
      this.config[36] = value & 1;
      const unattached = this.bypassUnattached ? ENDPOINT_BYPASS : ENDPOINT_NONE;
      for (const e of this.opts.endpoints) if (this.table.endpointDomain(e) < 0) this.table.setEndpoint(e, unattached);
    }
  }

  kickedByExit(): boolean {
    return true;
  }

  async activate(a: Activation): Promise<void> {
    this.active = a;
    this.queues = a.queues;
    const feats = { eventIdx: false, indirect: false };
    const rq = a.queues.find((q) => q.index === 0);
    const eq = a.queues.find((q) => q.index === 1);
    if (rq) {
      const q = SplitQueue.create(this.view, rq, feats, this.maxQueueSize);
      if (typeof q === 'string') return a.needsReset(`request queue: ${q}`);
      this.reqq = q;
    }
    if (eq) {
      const q = SplitQueue.create(this.view, eq, feats, this.maxQueueSize);
      if (typeof q === 'string') return a.needsReset(`event queue: ${q}`);
      this.eventq = q;
    }
    // faults are recorded by the dataplane threads; report them to the guest as they come
    this.faultTimer = setInterval(() => this.reportFaults(), 50);
    this.faultTimer.unref();
    this.kick(0);
  }

  async reset(): Promise<void> {
    if (this.faultTimer) clearInterval(this.faultTimer);
    await this.busy;
    this.reqq = this.eventq = undefined;
    this.active = undefined;
    for (const d of this.domains()) this.table.dropDomain(d);
    this.resetEndpoints();
    this.config[36] = 0;
  }

  private domains(): number[] {
    const ds = new Set<number>();
    for (const e of this.opts.endpoints) {
      const d = this.table.endpointDomain(e);
      if (d >= 0) ds.add(d);
    }
    return [...ds, ...this.domainBypass];
  }

  /** domains attached in bypass mode (ATTACH_F_BYPASS): no mappings allowed in them */
  private readonly domainBypass = new Set<number>();

  kick(queue: number): void {
    if (queue !== 0) return;
    // one pass at a time (an UNMAP may wait for the dataplane); a kick meanwhile runs another pass
    this.again = true;
    this.busy = this.busy.then(async () => {
      while (this.again) {
        this.again = false;
        await this.drain();
      }
    });
  }

  private async drain(): Promise<void> {
    const q = this.reqq;
    if (!q) return;
    const u8 = this.view.u8;
    // The whole batch the guest queued is applied to the table first; its completions are published
    // after one wait for the dataplane threads to be past the batch's last UNMAP (or ATTACH/DETACH):
    // a guest batching its unmaps pays for one quiescence, not one per request.
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
      this.handled.set(type, (this.handled.get(type) ?? 0) + 1);
      done.push({ head, len: writable, status, out, reply });
    }
    // the guest may reuse unmapped memory once it sees OK: first, every thread must be past the batch
    const quiet = waitFor === 0 || (await this.table.quiescent(waitFor));
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
    if (q.broken) this.active?.needsReset(`request queue: ${q.broken}`);
    this.interrupt(0, q);
  }

  private interrupt(index: number, q: SplitQueue): void {
    const fd = this.queues.find((x) => x.index === index)?.callFd ?? -1;
    if (fd >= 0 && q.needsInterrupt()) native.write(fd, ONE);
  }

  /** One request (its readable part in `v`); the reply's leading bytes (PROBE properties) into `reply`. */
  private request(type: number, v: DataView, reply: Uint8Array): { status: number; waitFor?: number } {
    const known = (e: number) => this.opts.endpoints.includes(e);
    const domainOk = (d: number) => d >= 0 && d < 2 ** DOMAIN_BITS;
    switch (type) {
      case T.ATTACH: {
        const domain = v.getUint32(4, true);
        const endpoint = v.getUint32(8, true);
        const flags = v.getUint32(12, true);
        if (!known(endpoint)) return { status: S.NOENT };
        if (!domainOk(domain)) return { status: S.RANGE };
        if (flags & ~ATTACH_F_BYPASS || (flags & ATTACH_F_BYPASS && !(this.active!.features & bit(IOMMU_F.BYPASS_CONFIG)))) return { status: S.INVAL };
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

  /** endpoint → bypass domain it is attached to (the table only says "bypass") */
  private readonly bypassOwner = new Map<number, number>();

  private domainInUse(domain: number): boolean {
    return this.opts.endpoints.some((e) => this.attachedDomain(e) === domain);
  }

  /** A domain with no endpoint left is gone, with its mappings (virtio-iommu §5.13.6.4). */
  private forgetIfUnused(domain: number): void {
    if (this.domainInUse(domain)) return;
    this.table.dropDomain(domain);
    this.domainBypass.delete(domain);
  }

  /** Report faults the threads recorded since the last look, one event buffer each. */
  reportFaults(): void {
    const q = this.eventq;
    if (!q) return;
    const { total, recent } = this.table.faults();
    const fresh = recent.slice(Math.max(0, recent.length - (total - this.faultsReported)));
    this.faultsReported = total;
    let sent = 0;
    for (const f of fresh) {
      if (!q.pop()) break;
      const c = q.chain;
      if (c.readable > 0 || c.writableBytes < 24) {
        q.addUsed(c.head, 0);
        continue;
      }
      const ev = new Uint8Array(24);
      const v = new DataView(ev.buffer);
      ev[0] = FAULT_R_MAPPING;
      v.setUint32(4, (f.access === MAP_WRITE ? 2 : 1) | FAULT_F_ADDRESS, true);
      v.setUint32(8, f.endpoint, true);
      v.setBigUint64(16, BigInt(f.address), true);
      for (let i = 0, at = 0; i < c.count && at < 24; i++) {
        const n = Math.min(c.lens[i], 24 - at);
        this.view.u8.set(ev.subarray(at, at + n), c.offsets[i]);
        at += n;
      }
      q.addUsed(c.head, 24);
      sent++;
    }
    if (sent) {
      q.flush();
      this.interrupt(1, q);
    }
  }
}
