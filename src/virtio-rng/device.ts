// virtio-rng device model (main thread; virtio 1.x §5.4): an entropy source with one request queue and
// no configuration space. Its queue is served by a dataplane thread with the rng queue handler
// (queue-handler.ts): the guest's kicks reach that thread through the queue's ioeventfd.
import { fileURLToPath } from 'node:url';
import { writeSync } from 'node:fs';
import type { GuestMemory } from '../vmm/memory.js';
import { Dataplane, type DataplaneConfig } from '../dataplane/index.js';
import { newStatsBuffer, readStats, type QueueStats } from '../dataplane/stats.js';
import { DMA_WRITE } from '../virtio/dma.js';
import { RING_START, type QueueFeatures, type RingState } from '../virtio/virtqueue.js';
import type { Fields, StateValue } from '../state/fields.js';
import { VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, bit, has, type Activation, type ActiveQueue, type VirtioDevice } from '../virtio/device.js';
import type { DirtyLogArea } from '../virtio/dirty-log.js';
import { IommuReader, stuckThreadMs, type IommuTable } from '../viommu/table.js';
import { workerUrl } from '../worker-url.js';

export const VIRTIO_ID_RNG = 4;
/** the queue handler the rng thread loads */
export const RNG_HANDLER_MODULE = fileURLToPath(workerUrl('./queue-handler.js', import.meta.url));


export interface RngDeviceOptions {
  queueSize?: number;
  /** offer packed rings (VIRTIO_F_RING_PACKED) as well as split ones; false: split only (default true) */
  packed?: boolean;
  busyPollUs?: number;
  /** behind the vIOMMU: its table and this device's endpoint id (PCI requester id) */
  iommu?: { table: IommuTable; endpoint: number };
}

/**
 * The transport features the device offers (it has no feature bits of its own): its handler works on
 * either ring layout, so packed is offered unless asked not to; IN_ORDER is not (the queues do not
 * implement it).
 */
export function rngFeatureOffer(o: { iommu: boolean; packed: boolean }): bigint {
  let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
  if (o.packed) f |= bit(VIRTIO_F_RING_PACKED);
  return o.iommu ? f | bit(VIRTIO_F_ACCESS_PLATFORM) : f;
}

export function rngQueueFeatures(f: bigint): Required<QueueFeatures> {
  return { eventIdx: has(f, VIRTIO_F_EVENT_IDX), indirect: has(f, VIRTIO_F_INDIRECT_DESC), packed: has(f, VIRTIO_F_RING_PACKED), inOrder: has(f, VIRTIO_F_IN_ORDER) };
}

export class VirtioRng implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_RNG;
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = 0;
  readonly stats = newStatsBuffer(1);
  private readonly dataplane: Dataplane;
  private active?: Activation;
  private restarting: Promise<void> = Promise.resolve();
  private dirtyLog?: DirtyLogArea;
  /** behind the vIOMMU: the thread's quiescence slot, and a reader (its own slot) for the rings' log addresses */
  private readonly iommuSlot?: number;
  private readonly reader?: IommuReader;
  /** dataplane threads ended because they kept an UNMAP or a stop waiting past the stuck-thread limit */
  stuckThreads = 0;

  constructor(
    private readonly memory: GuestMemory,
    private readonly opts: RngDeviceOptions = {},
  ) {
    this.maxQueueSize = opts.queueSize ?? 256;
    this.features = rngFeatureOffer({ iommu: !!opts.iommu, packed: opts.packed ?? true });
    if (opts.iommu) {
      this.iommuSlot = opts.iommu.table.newThreadSlot();
      this.reader = new IommuReader(opts.iommu.table.buffer, opts.iommu.endpoint, opts.iommu.table.newThreadSlot());
    }
    this.dataplane = new Dataplane((reason) => this.active?.needsReset(reason));
  }

  /** the requests served and bytes given, live */
  queueStats(): QueueStats {
    return readStats(this.stats, 0);
  }

  readConfig(): number {
    return 0;
  }

  writeConfig(): void {}

  private get translated(): boolean {
    return !!this.opts.iommu && !!this.active && has(this.active.features, VIRTIO_F_ACCESS_PLATFORM);
  }

  async activate(a: Activation): Promise<void> {
    this.active = a;
    const prev = this.restarting;
    this.restarting = prev.then(() => this.start(false));
    await this.restarting;
  }

  /** Start the thread; a restart (a dirty log came or went) resumes the ring where it stood. */
  private async start(resume: boolean): Promise<void> {
    const a = this.active;
    const q = a?.queues.find((x) => x.index === 0);
    if (!a || !q) return;
    if (!resume) this.dataplane.ringStates.clear();
    const start = this.dataplane.ringStates.get(0) ?? q.start ?? RING_START;
    const cfg: DataplaneConfig = {
      memory: this.memory.buffer,
      table: this.memory.table.toJSON(),
      handlerModule: RNG_HANDLER_MODULE,
      handlerConfig: undefined,
      queueFeatures: rngQueueFeatures(a.features),
      stats: this.stats,
      busyPollUs: this.opts.busyPollUs ?? 0,
      dirtyLog: this.dirtyLog,
      iommu: this.translated ? { buffer: this.opts.iommu!.table.buffer, endpoint: this.opts.iommu!.endpoint, slots: [this.iommuSlot!] } : undefined,
    };
    await this.dataplane.start(cfg, [[{ queues: [{ ...q, statsSlot: 0, start, ringLogGpa: this.ringLogGpa(q) }], init: undefined }]]);
  }

  /** Where the ring is in the dirty log (indexed by guest-physical page): behind the vIOMMU its IOVA translated. */
  private ringLogGpa(q: ActiveQueue): { desc: number; used: number } {
    const r = this.reader;
    if (!r || !this.translated) return { desc: q.desc, used: q.used };
    r.enter();
    const gpa = (addr: number) => (r.translate(addr, 1, DMA_WRITE, false) ? r.hit.gpa : addr);
    const at = { desc: gpa(q.desc), used: gpa(q.used) };
    r.idle();
    return at;
  }

  /** Log every write the thread makes into guest memory in `log` (undefined: stop); it restarts to take it. */
  async setDirtyLog(log: DirtyLogArea | undefined): Promise<void> {
    this.dirtyLog = log;
    if (!this.active) return;
    this.restarting = this.restart(this.restarting);
    await this.restarting;
  }

  private async restart(prev: Promise<void>): Promise<void> {
    await prev.catch(() => undefined);
    this.stopped(await this.dataplane.stop());
    await this.start(true);
  }

  pause(): Promise<void> {
    return this.dataplane.pause();
  }

  resume(): void {
    this.dataplane.resume();
  }

  private stopped(ended: number): void {
    if (ended === 0) return;
    this.stuckThreads += ended;
    writeSync(2, `tsvmm: rng: its dataplane thread did not stop within ${stuckThreadMs()} ms (TSVMM_STUCK_THREAD_MS): it was ended\n`);
    this.active?.needsReset('a dataplane thread was stuck and had to be ended');
  }

  /** The vIOMMU waited `ms` for quiescence `slot`: if it is our thread's, it is ended and the device needs a reset. */
  async endStuckThread(slot: number, ms: number): Promise<void> {
    if (!this.dataplane.slots.includes(slot)) return;
    await this.dataplane.terminate();
    this.stuckThreads++;
    writeSync(2, `tsvmm: rng: its dataplane thread kept an UNMAP waiting ${ms} ms (past TSVMM_STUCK_THREAD_MS): it was ended, the device needs a reset\n`);
    this.active?.needsReset('a dataplane thread was stuck during an UNMAP and was ended');
  }

  // ---- device state (src/vmm/state/): no configuration, only where its ring stands

  /** Stop the thread (the ring's position kept) until unquiesce(). */
  async quiesce(): Promise<void> {
    const stop = async (prev: Promise<void>) => {
      await prev.catch(() => undefined);
      this.stopped(await this.dataplane.stop());
    };
    this.restarting = stop(this.restarting);
    await this.restarting;
  }

  async unquiesce(): Promise<void> {
    const prev = this.restarting;
    this.restarting = prev.catch(() => undefined).then(() => this.start(true));
    await this.restarting;
  }

  ringState(index: number): RingState | undefined {
    return this.dataplane.ringStates.get(index) ?? this.active?.queues.find((q) => q.index === index)?.start;
  }

  saveState(): StateValue {
    return {};
  }

  restoreState(f: Fields): void {
    f.done();
  }

  async reset(): Promise<void> {
    await this.restarting.catch(() => undefined);
    this.stopped(await this.dataplane.stop());
    this.active = undefined;
  }
}
