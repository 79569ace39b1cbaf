// The seam between a dataplane thread and a device: the thread (worker.ts) owns the rings' life (it
// creates each Virtqueue, gives it its start state, dirty log and IOMMU mode, reports its state when it
// stops, reads kicks, watches for stalls and breakage), the epoll set, the budgets, busy-polling,
// pause/stop and vIOMMU quiescence; a device supplies queue handlers that do its queues' work.
//
// A handler module is an ES module loaded by path on each thread (as drivers are: src/drivers/api.ts
// `module`), exporting `prepare(config)` → a function opening one handler per unit. A unit is the
// queues one handler serves together (virtio-net: an RX/TX pair; virtio-rng: its request queue).
import type { GuestView } from '../virtio/dma.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import type { Virtqueue } from '../virtio/virtqueue.js';

export const EPOLLIN = 1;
export const EPOLLOUT = 4;
export const EPOLLERR = 8;
export const EPOLLHUP = 16;

/** What one handler is given on its thread. */
export interface HandlerContext {
  /** guest memory as queues see it (windows, guest-physical map, IOMMU) */
  mem: GuestView;
  /** the guest-memory SharedArrayBuffer itself (for readv/writev and native.copy) */
  memory: SharedArrayBuffer;
  /** the unit's queues, in the order the device listed them */
  queues: Virtqueue[];
  /** each queue's number in its device */
  indices: number[];
  /** per queue: the eventfd that interrupts the guest, or -1 */
  callFds: number[];
  /** per queue: its counters (STAT in stats.ts; the thread counts kicks, the handler the rest) */
  stats: Float64Array[];
  /** while dirty logging: every byte the handler writes into guest buffers is marked here */
  log?: DirtyLog;
  /** the unit's own structured-cloneable data (virtio-net: its driver queue's init) */
  init: unknown;
}

/**
 * One device's work on some queues, on a dataplane thread. Nothing here may block: a guest's UNMAP, an
 * IOTLB invalidation and a stop wait for the thread to come back between passes.
 */
export interface QueueHandler {
  /** descriptors besides the queues' kicks that can bring work (a driver's), fixed for the handler's life */
  readonly fds: readonly number[];
  /** the events `fds[k]` is to be watched for now (EPOLLIN | EPOLLOUT; 0: none); asked after each pass */
  events(k: number): number;
  /** `fds[k]` reported `events` */
  onEvent(k: number, events: number): void;
  /**
   * The thread is about to look for events. Unless `polling` (it will look again at once), it sleeps
   * afterwards unless work is pending: ask for kicks on the queues that should wake it (then look at
   * them again: the guest may have added buffers before it saw the request). Returns 0 when work is
   * pending, -1 when the handler can wait for an event, or a number of ms after which the thread is to
   * call it again without one (a retry nothing can signal).
   */
  beforeWait(polling: boolean): number;
  /** Do up to `budget` items of work on each queue; returns the work done (0: nothing to do). */
  process(budget: number): number;
  /** descriptors the handler (or its driver) opened on this thread and close() closes; a thread ended
   * before it could close its handlers (stuck) has them closed by the main thread */
  readonly ownFds?: readonly number[];
  close(): void;
}

export type OpenHandler = (ctx: HandlerContext) => QueueHandler;

/** The handler module's contract. `config`: the device's structured-cloneable handler configuration. */
export interface HandlerModule {
  /** Once per thread, before any ring is touched: load what the handlers need (e.g. a driver module). */
  prepare(config: unknown): OpenHandler | Promise<OpenHandler>;
}
