// virtio-net's control queue ring on the main thread: made at activation, served on the vCPU exit of
// its notification (its address has no ioeventfd; commands in control.ts), its used ring and acks
// marked in the dirty log while there is one. Behind the vIOMMU it owns the main thread's view of
// guest memory: its translations are taken only while a kick is handled (an UNMAP need not wait for
// this thread otherwise), and it says where a ring's IOVA lies for the dirty log.
import type { GuestMemory } from '../vmm/memory.js';
import { guestView, DMA_WRITE, type GuestView } from '../virtio/dma.js';
import { createQueue } from '../virtio/queues.js';
import type { QueueFeatures, RingState, Virtqueue } from '../virtio/virtqueue.js';
import type { ActiveQueue } from '../virtio/device.js';
import { DirtyLog, type DirtyLogArea } from '../virtio/dirty-log.js';
import { IommuReader, type IommuTable } from '../viommu/table.js';
import { native, ONE } from '../native.js';
import { serveControlQueue, type ControlReply } from './control.js';

export type ControlHandler = (cls: number, cmd: number, data: Uint8Array, reply: ControlReply) => number;

export class NetControlQueue {
  private readonly plainView: GuestView;
  /** guest memory as this thread sees it: through the vIOMMU while the driver negotiated ACCESS_PLATFORM */
  private view: GuestView;
  /** the driver's addresses are IOVAs (it negotiated ACCESS_PLATFORM behind the vIOMMU) */
  private translated = false;
  /** this thread's vIOMMU reader (its quiescence slot) */
  private readonly reader?: IommuReader;
  private q?: Virtqueue;
  private active?: ActiveQueue;
  private log?: DirtyLog;

  constructor(
    private readonly memory: GuestMemory,
    iommu: { table: IommuTable; endpoint: number } | undefined,
    private readonly handle: ControlHandler,
  ) {
    this.plainView = this.view = guestView(memory.buffer, memory.table);
    // (a quiescence slot of its own: this thread translates only while it handles a kick)
    if (iommu) this.reader = new IommuReader(iommu.table.buffer, iommu.endpoint, iommu.table.newThreadSlot());
  }

  /**
   * The driver went live: `translated` says whether its addresses are IOVAs; `queue` is the control
   * queue it enabled (undefined: none, or the feature not negotiated). Returns why the ring cannot be
   * used, or undefined; commands already waiting are served.
   */
  activate(translated: boolean, queue: ActiveQueue | undefined, features: QueueFeatures, maxSize: number, needsReset: (reason: string) => void): string | undefined {
    this.translated = translated && this.reader !== undefined;
    this.view = this.translated ? guestView(this.memory.buffer, this.memory.table, this.reader) : this.plainView;
    if (!queue) return undefined;
    this.reader?.enter();
    const q = createQueue(this.view, queue, features, maxSize);
    this.reader?.idle();
    if (typeof q === 'string') return `control queue: ${q}`;
    if (queue.start) q.setState(queue.start);
    this.q = q;
    this.active = queue;
    this.logUsed();
    this.kick(needsReset);
    return undefined;
  }

  /** Serve the commands on the ring (the queue's notification exit). */
  kick(needsReset: (reason: string) => void): void {
    const q = this.q;
    if (!q) return;
    // behind the vIOMMU: the mappings may have changed since the last command (the ring's too)
    if (this.translated && this.reader!.enter()) q.remapRings();
    serveControlQueue(q, this.view.bytes, this.log, this.handle);
    if (q.broken) needsReset(`control queue: ${q.broken}`);
    if (this.active && this.active.callFd >= 0 && q.needsInterrupt()) native.write(this.active.callFd, ONE);
    // (this thread holds no translation between kicks: an UNMAP need not wait for it)
    this.reader?.idle();
  }

  /** Mark this thread's writes (acks, the used ring) in `log` from now on; undefined stops. */
  setDirtyLog(log: DirtyLogArea | undefined): void {
    this.log = log && new DirtyLog(log, this.memory.table.regions);
    this.logUsed();
  }

  private logUsed(): void {
    if (this.q && this.active) this.q.setDirtyLog(this.log, this.ringLogGpa(this.active));
  }

  /** Where queue `q`'s rings are in the dirty log, which is indexed by guest-physical page: behind the vIOMMU their IOVAs are translated. */
  ringLogGpa(q: ActiveQueue): { desc: number; used: number } {
    return { desc: this.logGpa(q.desc), used: this.logGpa(q.used) };
  }

  private logGpa(addr: number): number {
    const io = this.view.iommu;
    return io && io.translate(addr, 1, DMA_WRITE, false) ? io.hit.gpa : addr;
  }

  /** where the ring stands */
  get ringState(): RingState | undefined {
    return this.q?.getState();
  }

  reset(): void {
    this.translated = false;
    this.view = this.plainView;
    this.q = undefined;
    this.active = undefined;
  }
}
