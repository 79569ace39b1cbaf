// virtio-iommu (virtio 1.2 §5.13, <linux/virtio_iommu.h>): the guest's requests — ATTACH, DETACH,
// MAP, UNMAP, PROBE — change the shared translation table (table.ts) that the dataplane threads read
// (requests.ts has the rules). With `thread` (what the VMM uses) the request queue is served by its own
// thread behind an ioeventfd, as the net queues are: a guest mapping and unmapping per packet (strict
// mode) then costs no vCPU exit per batch. Without it, requests are handled here on the notification's
// exit (unit tests drive it so). Faults the dataplane threads recorded go to the guest on the event queue.
import { Worker } from 'node:worker_threads';
import type { GuestMemory } from '../vmm/memory.js';
import { native, ONE, EFD_NONBLOCK } from '../native.js';
import { workerUrl } from '../worker-url.js';
import { guestView, type GuestView } from '../virtio/dma.js';
import { createQueue } from '../virtio/queues.js';
import type { RingState, Virtqueue } from '../virtio/virtqueue.js';
import type { Fields, StateValue } from '../state/fields.js';
import { restoreTable, saveTable } from './state.js';
import { VIRTIO_F_VERSION_1, bit, type Activation, type ActiveQueue, type VirtioDevice } from '../virtio/device.js';
import { IommuTable, INPUT_END, ENDPOINT_BYPASS, ENDPOINT_NONE, MAP_WRITE, sayWaitIsSlow } from './table.js';
import { IommuRequests, STATE, PROBE_SIZE, DOMAIN_BITS, handledCounts } from './requests.js';
import type { RequestWorkerData } from './request-worker.js';
import { CONTROL_LOG, CONTROL_STOP, CONTROL_WORDS, type LogMessage } from './request-control.js';
import { DirtyLog, type DirtyLogArea } from '../virtio/dirty-log.js';

export { T, S, PROBE_SIZE } from './requests.js';

export const VIRTIO_ID_IOMMU = 23;
export const IOMMU_F = { INPUT_RANGE: 0, DOMAIN_RANGE: 1, MAP_UNMAP: 2, BYPASS: 3, PROBE: 4, MMIO: 5, BYPASS_CONFIG: 6 } as const;
const FAULT_R_MAPPING = 2;
const FAULT_F_ADDRESS = 0x100;

export interface IommuOptions {
  /** endpoint ids (PCI requester ids: bus << 8 | device << 3 | function) this IOMMU translates for */
  endpoints: number[];
  /** serve the request queue from its own thread (ioeventfd), not on vCPU exits */
  thread?: boolean;
}

export class VirtioIommu implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_IOMMU;
  readonly numQueues = 2;
  readonly maxQueueSize = 256;
  readonly features =
    bit(VIRTIO_F_VERSION_1) | bit(IOMMU_F.INPUT_RANGE) | bit(IOMMU_F.DOMAIN_RANGE) | bit(IOMMU_F.MAP_UNMAP) | bit(IOMMU_F.PROBE) | bit(IOMMU_F.BYPASS_CONFIG);
  readonly configSize = 40;
  readonly table = new IommuTable();
  /** STATE words shared with the request handler, wherever it runs */
  private readonly state = new Int32Array(new SharedArrayBuffer(4 * STATE.WORDS));
  private readonly config = new Uint8Array(40);
  private readonly view: GuestView;
  private active?: Activation;
  private requests?: IommuRequests;
  private reqq?: Virtqueue;
  private eventq?: Virtqueue;
  private queues: ActiveQueue[] = [];
  private faultsReported = 0;
  private faultTimer?: NodeJS.Timeout;
  private worker?: { w: Worker; wakeFd: number; control: Int32Array; exited: Promise<void> };
  /**
   * The request thread has waited past the stuck-thread limit for the dataplane thread with this
   * quiescence slot (set by the VM: the thread's device ends it and releases the slot; until then the
   * request stays incomplete).
   */
  onStuckThread?: (slot: number, ms: number) => Promise<void>;
  /** the dirty-page log (Vm.enableDirtyLog): the request thread's and this thread's writes are marked */
  private dirtyLog?: DirtyLogArea;
  private mainLog?: DirtyLog;

  constructor(
    private readonly memory: Pick<GuestMemory, 'buffer' | 'table'>,
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
  }

  /** Translate for one more endpoint (a device plugged in behind this IOMMU, before the guest runs). */
  addEndpoint(endpoint: number): void {
    if (!this.opts.endpoints.includes(endpoint)) this.opts.endpoints.push(endpoint);
    this.table.setEndpoint(endpoint, ENDPOINT_NONE);
  }

  get endpoints(): readonly number[] {
    return this.opts.endpoints;
  }

  /** requests handled, by type (for tests and reports) */
  get handled(): Record<string, number> {
    return handledCounts(this.state);
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
      Atomics.store(this.state, STATE.BYPASS, value & 1);
      const unattached = this.state[STATE.BYPASS] && this.state[STATE.BYPASS_CONFIG] ? ENDPOINT_BYPASS : ENDPOINT_NONE;
      for (const e of this.opts.endpoints) if (this.table.endpointDomain(e) < 0) this.table.setEndpoint(e, unattached);
    }
  }

  kickedByExit(queue: number): boolean {
    // the event queue never needs its notifications; the request queue does unless a thread serves it
    return queue === 1 || !this.opts.thread;
  }

  async activate(a: Activation): Promise<void> {
    this.active = a;
    this.queues = a.queues;
    Atomics.store(this.state, STATE.BYPASS_CONFIG, a.features & bit(IOMMU_F.BYPASS_CONFIG) ? 1 : 0);
    const feats = { eventIdx: false, indirect: false };
    const rq = a.queues.find((q) => q.index === 0);
    const eq = a.queues.find((q) => q.index === 1);
    if (eq) {
      const q = createQueue(this.view, eq, feats, this.maxQueueSize);
      if (typeof q === 'string') return a.needsReset(`event queue: ${q}`);
      if (eq.start) q.setState(eq.start);
      this.eventq = q;
      q.setDirtyLog(this.mainLog, eq);
    }
    // faults are recorded by the dataplane threads; report them to the guest as they come
    this.faultTimer = setInterval(() => this.reportFaults(), 50);
    this.faultTimer.unref();
    if (!rq) return;
    if (this.opts.thread && rq.kickFd >= 0) return this.startThread(rq);
    const q = createQueue(this.view, rq, feats, this.maxQueueSize);
    if (typeof q === 'string') return a.needsReset(`request queue: ${q}`);
    if (rq.start) q.setState(rq.start);
    this.reqq = q;
    q.setDirtyLog(this.mainLog, rq);
    this.requests = new IommuRequests(this.table, this.opts.endpoints, this.state, sayWaitIsSlow('virtio-iommu'));
    this.kick(0);
  }

  /**
   * Mark every write into guest memory (replies, fault events, used rings) in `log` from now on
   * (undefined: stop). The request thread takes it between batches; resolves once it does.
   */
  async setDirtyLog(log: DirtyLogArea | undefined): Promise<void> {
    this.dirtyLog = log;
    this.mainLog = log && new DirtyLog(log, this.memory.table.regions);
    for (const [q, index] of [[this.reqq, 0], [this.eventq, 1]] as const) {
      const cfg = this.queues.find((x) => x.index === index);
      if (q && cfg) q.setDirtyLog(this.mainLog, cfg);
    }
    const t = this.worker;
    if (!t) return;
    const m: LogMessage = { dirtyLog: log };
    t.w.postMessage(m);
    Atomics.store(t.control, CONTROL_LOG, 1);
    native.write(t.wakeFd, ONE);
    let gone = false;
    void t.exited.then(() => (gone = true));
    while (Atomics.load(t.control, CONTROL_LOG) && !gone) {
      const w = Atomics.waitAsync(t.control, CONTROL_LOG, 1, 1000);
      if (w.async) await w.value;
    }
  }

  private async stopThread(): Promise<void> {
    const t = this.worker;
    this.worker = undefined;
    if (!t) return;
    Atomics.store(t.control, CONTROL_STOP, 1);
    native.write(t.wakeFd, ONE);
    await t.exited;
    native.close(t.wakeFd);
  }

  private async startThread(rq: ActiveQueue): Promise<void> {
    const wakeFd = native.eventfd(0, EFD_NONBLOCK);
    const control = new Int32Array(new SharedArrayBuffer(4 * CONTROL_WORDS));
    const data: RequestWorkerData = {
      memory: this.memory.buffer,
      regions: this.memory.table.toJSON().regions,
      table: this.table.buffer,
      state: this.state.buffer as SharedArrayBuffer,
      endpoints: [...this.opts.endpoints],
      queue: { size: rq.size, desc: rq.desc, avail: rq.avail, used: rq.used },
      start: rq.start,
      kickFd: rq.kickFd,
      callFd: rq.callFd,
      wakeFd,
      control,
    };
    const w = new Worker(workerUrl('./request-worker.js', import.meta.url), { workerData: data, name: 'viommu' });
    // a log set before the thread existed (a guest that activated the device after enableDirtyLog)
    if (this.dirtyLog) {
      const m: LogMessage = { dirtyLog: this.dirtyLog };
      w.postMessage(m);
      Atomics.store(control, CONTROL_LOG, 1);
    }
    const exited = new Promise<void>((r) => w.once('exit', () => r()));
    this.worker = { w, wakeFd, control, exited };
    await new Promise<void>((resolve, reject) => {
      w.on('message', (m: { type: string; reason?: string; thread?: number; ms?: number; state?: RingState }) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'broken') this.active?.needsReset(`request queue: ${m.reason}`);
        else if (m.type === 'stuck') void this.onStuckThread?.(m.thread!, m.ms!);
        else if (m.type === 'ring-state') this.reqRing = m.state;
      });
      w.once('error', (e) => {
        reject(e);
        this.active?.needsReset(`vIOMMU request thread failed: ${e.message}`);
      });
    });
  }

  // ---- device state (src/vmm/state/): the translation table, bypass, and where the queues stand

  /** where the request thread left the request queue when it last stopped */
  private reqRing?: RingState;

  /** Stop the request thread and the fault reports (each ring's position kept) until unquiesce(). */
  async quiesce(): Promise<void> {
    if (this.faultTimer) clearInterval(this.faultTimer);
    this.faultTimer = undefined;
    await this.stopThread();
  }

  async unquiesce(): Promise<void> {
    if (!this.active) return;
    this.faultTimer = setInterval(() => this.reportFaults(), 50);
    this.faultTimer.unref();
    const rq = this.queues.find((q) => q.index === 0);
    if (rq && this.opts.thread && rq.kickFd >= 0 && !this.worker) await this.startThread({ ...rq, start: this.reqRing ?? rq.start });
  }

  ringState(index: number): RingState | undefined {
    if (index === 1) return this.eventq?.getState();
    if (index !== 0) return undefined;
    return this.reqq?.getState() ?? this.reqRing ?? this.queues.find((q) => q.index === 0)?.start;
  }

  /** bypass and the translation table (endpoints' attachments, mappings) */
  saveState(): StateValue {
    return { bypass: this.config[36], table: saveTable(this.table, this.opts.endpoints) };
  }

  restoreState(f: Fields): void {
    const bypass = f.uint('bypass', 1);
    restoreTable(f.obj('table'), this.table, this.opts.endpoints);
    f.done();
    this.config[36] = bypass;
    Atomics.store(this.state, STATE.BYPASS, bypass);
  }

  async reset(): Promise<void> {
    this.reqRing = undefined;
    if (this.faultTimer) clearInterval(this.faultTimer);
    await this.stopThread();
    this.reqq = this.eventq = undefined;
    this.requests = undefined;
    this.active = undefined;
    // no domain, no mapping: every endpoint back to "no DMA" (bypass off after reset)
    this.table.clear();
    this.config[36] = 0;
    Atomics.store(this.state, STATE.BYPASS, 0);
  }

  kick(queue: number): void {
    if (queue !== 0 || !this.reqq || !this.requests) return;
    this.requests.drain(this.reqq, this.view.bytes, this.mainLog);
    if (this.reqq.broken) this.active?.needsReset(`request queue: ${this.reqq.broken}`);
    this.interrupt(0, this.reqq);
  }

  private interrupt(index: number, q: Virtqueue): void {
    const fd = this.queues.find((x) => x.index === index)?.callFd ?? -1;
    if (fd >= 0 && q.needsInterrupt()) native.write(fd, ONE);
  }

  /** Report faults the threads recorded since the last look, one event buffer each. */
  reportFaults(): void {
    const q = this.eventq;
    if (!q) return;
    const { next, faults: fresh } = this.table.faultsSince(this.faultsReported);
    this.faultsReported = next;
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
        this.view.bytes.copyIn(c.offsets[i], ev, at, n);
        this.mainLog?.markOffset(c.offsets[i], n);
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
