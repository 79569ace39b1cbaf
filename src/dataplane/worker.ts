// A dataplane thread: serves the queues of one device's units (a unit: the queues one handler serves
// together, src/dataplane/handler.ts). It knows no device: it creates the rings, sleeps in epoll on
// their kick eventfds (KVM ioeventfds: the guest's notifications arrive without a vCPU exit), the
// handlers' fds and a wake eventfd; works in passes with a per-pass budget per unit so one cannot
// starve another; busy-polls for a bounded time when asked, yielding to epoll when idle. What a queue's
// buffers mean is its handler's business (loaded by module path).
import { parentPort, workerData } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { native, ONE, EPOLL_CTL_ADD } from '../native.js';
import { MemoryTable, type MemoryTableData } from '../vmm/memory.js';
import { guestView, type GuestView } from '../virtio/dma.js';
import { createQueue } from '../virtio/queues.js';
import { MAX_QUEUE_SIZE, type QueueConfig, type QueueFeatures, type RingState, type Virtqueue } from '../virtio/virtqueue.js';
import { DirtyLog, type DirtyLogArea } from '../virtio/dirty-log.js';
import { IommuReader } from '../viommu/table.js';
import { STAT, STAT_WORDS } from './stats.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_PAUSED, CONTROL_CLOSING, THREAD_COUNTER } from './control.js';
import { EPOLLIN, type HandlerModule, type OpenHandler, type QueueHandler } from './handler.js';

export interface WorkerQueue extends QueueConfig {
  /** the queue's number in its device: the key of its ring state when the thread stops */
  index: number;
  kickFd: number;
  callFd: number;
  /** index of this queue's counters in the stats buffer */
  statsSlot: number;
  /** ring position to start from (RING_START on activation; where the ring stood when threads restart) */
  start: RingState;
  /** where the rings are logged when dirty logging is on (vhost's log_guest_addr; default: `desc`, `used`) */
  ringLogGpa?: { desc: number; used: number };
}

/** The queues one handler serves together, and its own structured-cloneable data. */
export interface WorkerUnit {
  queues: WorkerQueue[];
  init: unknown;
}

export interface DataplaneWorkerData {
  memory: SharedArrayBuffer;
  table: MemoryTableData;
  units: WorkerUnit[];
  /** the device's queue-handler module (a file path) and its structured-cloneable configuration */
  handlerModule: string;
  handlerConfig: unknown;
  /** the ring layout and checks the negotiated features ask for */
  queueFeatures: Required<QueueFeatures>;
  stats: SharedArrayBuffer;
  wakeFd: number;
  control: Int32Array;
  /** the thread's own counters (Float64; THREAD_COUNTER in control.ts), read by the main thread */
  counters: SharedArrayBuffer;
  /** busy-poll this long (µs) before sleeping; 0 = always sleep when idle */
  busyPollUs: number;
  /** dirty-page log (live migration): every write into guest memory sets its page's bit */
  dirtyLog?: DirtyLogArea;
  /** behind the vIOMMU: its table, this device's endpoint id, and a quiescence slot per thread */
  /** missesWait: a failed translation stalls the queue (an IOTLB miss the frontend will fill), and
   * missFd is written so whoever asks the frontend knows at once */
  iommu?: { buffer: SharedArrayBuffer; endpoint: number; slots: number[]; missesWait?: boolean; missFd?: number };
  /** which of the device's threads this is */
  threadIndex: number;
}

/** how long a queue stalled on an IOTLB miss waits for the update before it tries again (ms) */
const STALL_RETRY_MS = 200;
/** work items (packets, requests) per unit per pass */
export const PASS_BUDGET = 256;
/** passes per wake-up before the thread looks at its fds again */
const MAX_PASSES = 64;
const EPOLL_CTL_MOD = 3;

const d = workerData as DataplaneWorkerData;
const port = parentPort!;

/** One handler on this thread, with its queues and the events its fds are watched for now. */
interface Unit {
  handler: QueueHandler;
  queues: Virtqueue[];
  /** per fd of the handler: the events it is watched for now, and its epoll token */
  watching: number[];
  tokens: number[];
  brokenReported: boolean;
}

/** What an epoll token names: the wake eventfd, a queue's kick, or a handler's fd. */
type Source = { kind: 'wake' } | { kind: 'kick'; fd: number; stats: Float64Array } | { kind: 'fd'; unit: Unit; k: number };

async function main(): Promise<void> {
  const iommu = d.iommu && new IommuReader(d.iommu.buffer, d.iommu.endpoint, d.iommu.slots[d.threadIndex]);
  // however this thread ends (its stop, a broken ring at the start, an exception), it holds no
  // translation afterwards: an UNMAP waits for it as long as it takes (ended from outside, when stuck,
  // it cannot say so: the main thread releases its slot once it has exited)
  try {
    await serve(iommu);
  } finally {
    iommu?.idle();
    // where each ring stands, for the next start and vhost-user's GET_VRING_BASE: after a stop every
    // chain taken was used or given back (after an exception it is still the best there is)
    port.postMessage({ type: 'ring-states', states: served.map(([index, q]) => [index, q.getState()]) });
  }
}

/** the queues this thread serves, by their index in the device */
const served: Array<[number, Virtqueue]> = [];

const statsOf = (slot: number) => new Float64Array(d.stats, slot * STAT_WORDS * 8, STAT_WORDS);

/** Create every unit's rings and open its handler; undefined (and said) when a ring cannot be used. */
function openUnits(mem: GuestView, log: DirtyLog | undefined, open: OpenHandler): Unit[] | undefined {
  const units: Unit[] = [];
  for (const u of d.units) {
    const queues: Virtqueue[] = [];
    for (const wq of u.queues) {
      // (the transport holds a guest's sizes to its device's maximum; this is the protocol's)
      const q = createQueue(mem, wq, d.queueFeatures, MAX_QUEUE_SIZE);
      if (typeof q === 'string') {
        port.postMessage({ type: 'broken', reason: q });
        return undefined;
      }
      served.push([wq.index, q]);
      q.setState(wq.start);
      q.missesWait = !!d.iommu?.missesWait;
      q.setDirtyLog(log, wq.ringLogGpa ?? wq);
      queues.push(q);
    }
    const handler = open({
      mem,
      memory: d.memory,
      queues,
      indices: u.queues.map((q) => q.index),
      callFds: u.queues.map((q) => q.callFd),
      stats: u.queues.map((q) => statsOf(q.statsSlot)),
      log,
      init: u.init,
    });
    units.push({ handler, queues, watching: handler.fds.map(() => 0), tokens: handler.fds.map(() => -1), brokenReported: false });
  }
  return units;
}

async function serve(iommu: IommuReader | undefined): Promise<void> {
  const mem = guestView(d.memory, new MemoryTable(d.table.regions), iommu);
  const mod = (await import(pathToFileURL(d.handlerModule).href)) as HandlerModule;
  const open = await mod.prepare(d.handlerConfig);
  // translations from here on (the rings first): published only now, so that an UNMAP does not wait
  // for the handler's modules to load (over a second in the nested harness)
  iommu?.enter();
  const log = d.dirtyLog && new DirtyLog(d.dirtyLog, mem.table.regions);
  const units = openUnits(mem, log, open);
  if (!units) return;
  const ep = native.epollCreate();
  const sources = register(ep, units);
  // while paused, only the wake eventfd can wake us
  const wakeOnly = native.epollCreate();
  native.epollCtl(wakeOnly, EPOLL_CTL_ADD, d.wakeFd, EPOLLIN, 0);
  // (our epoll descriptors are closed by the main thread once we have exited, however we end; the
  // handlers' own ones by the handlers, or by the main thread if we are ended before we close them)
  port.postMessage({ type: 'ready', fds: [ep, wakeOnly], handlerFds: units.flatMap((u) => u.handler.ownFds ?? []) });
  loop(ep, wakeOnly, sources, units, iommu);
  Atomics.store(d.control, CONTROL_CLOSING, 1);
  for (const u of units) u.handler.close();
}

/** Put the wake eventfd, every kick and every handler fd in the epoll set; token i names sources[i]. */
function register(ep: number, units: Unit[]): Source[] {
  const sources: Source[] = [{ kind: 'wake' }];
  native.epollCtl(ep, EPOLL_CTL_ADD, d.wakeFd, EPOLLIN, 0);
  units.forEach((u, i) => {
    for (const wq of d.units[i].queues) {
      if (wq.kickFd < 0) continue;
      native.epollCtl(ep, EPOLL_CTL_ADD, wq.kickFd, EPOLLIN, sources.length);
      sources.push({ kind: 'kick', fd: wq.kickFd, stats: statsOf(wq.statsSlot) });
    }
    u.handler.fds.forEach((fd, k) => {
      if (fd < 0) return;
      u.watching[k] = u.handler.events(k);
      u.tokens[k] = sources.length;
      native.epollCtl(ep, EPOLL_CTL_ADD, fd, u.watching[k], sources.length);
      sources.push({ kind: 'fd', unit: u, k });
    });
  });
  return sources;
}

/** Watch each of the unit's fds for what its handler wants now. */
function arm(ep: number, u: Unit): void {
  const fds = u.handler.fds;
  for (let k = 0; k < fds.length; k++) {
    const want = u.handler.events(k);
    if (fds[k] < 0 || u.watching[k] === want) continue;
    native.epollCtl(ep, EPOLL_CTL_MOD, fds[k], want, u.tokens[k]);
    u.watching[k] = want;
  }
}

/** Queues stalled on an IOTLB miss are signalled once; a broken queue is reported once per unit. */
function check(u: Unit): void {
  for (const q of u.queues) {
    if (q.stalled && !q.stallSignalled && d.iommu?.missFd !== undefined) {
      q.stallSignalled = true;
      native.write(d.iommu.missFd, ONE);
    }
    if (q.broken && !u.brokenReported) {
      u.brokenReported = true;
      port.postMessage({ type: 'broken', reason: q.broken });
    }
  }
}

function loop(ep: number, wakeOnly: number, sources: Source[], units: Unit[], iommu: IommuReader | undefined): void {
  const events = new Uint32Array(3 * 64);
  const counter = new BigUint64Array(1);
  const pauseIfAsked = () => {
    if (!Atomics.load(d.control, CONTROL_PAUSE)) return;
    iommu?.idle();
    Atomics.store(d.control, CONTROL_PAUSED, 1);
    Atomics.notify(d.control, CONTROL_PAUSED);
    while (Atomics.load(d.control, CONTROL_PAUSE) && !Atomics.load(d.control, CONTROL_STOP)) {
      if (native.epollWait(wakeOnly, events, -1) > 0) native.read(d.wakeFd, counter);
    }
    Atomics.store(d.control, CONTROL_PAUSED, 0);
  };
  // every queue this thread serves, once (the loop below must not build arrays per pass)
  const queues = units.flatMap((u) => u.queues);
  /** the IOMMU's mappings changed (or a stalled queue retries): translate the rings again */
  const remapAll = () => {
    for (const q of queues) q.remapRings();
  };
  /** when work was last found (ms; performance.now), taken when a spin first finds none */
  let lastWork = performance.now();
  /** the last spin found work: still polling, no clock read */
  let working = false;
  /** busy-polling now: while idle, the clock is read every 32nd spin (polling ends up to 31 spins late) */
  let polling = d.busyPollUs > 0;
  let idleSpins = 0;
  let spins = 0;
  const threadCounters = new Float64Array(d.counters);
  const busyMs = d.busyPollUs / 1000;
  for (;;) {
    pauseIfAsked();
    if (Atomics.load(d.control, CONTROL_STOP)) break;
    // while busy-polling, look without sleeping; afterwards the handlers ask for kicks and we sleep
    if (busyMs > 0 && !working && (++idleSpins & 31) === 0) polling = performance.now() - lastWork < busyMs;
    if (polling) threadCounters[THREAD_COUNTER.BUSY_POLL_SPINS]++;
    let anyPending = false;
    /** the soonest a handler asked to be called again without an event (ms; -1: none) */
    let retryMs = -1;
    for (const u of units) {
      const t = u.handler.beforeWait(polling);
      if (t === 0) anyPending = true;
      else if (t > 0 && (retryMs < 0 || t < retryMs)) retryMs = t;
      arm(ep, u);
    }
    // busy-polling looks at the rings directly; the fds (kicks are off, a handler's fd, stop/pause) are
    // looked at every 32nd spin only: an epoll_wait per spin would cost more than the work it finds
    const sleeping = !polling && !anyPending;
    // (about to sleep: we hold no translation, an UNMAP need not wait for us)
    if (sleeping) iommu?.idle();
    // a queue stalled on an IOTLB miss retries after a while even if no update came (the answer may
    // have been lost, or refused): it then misses again and the question is asked again
    let stalled = false;
    if (d.iommu?.missesWait) for (const q of queues) stalled ||= q.stalled;
    if (stalled && (retryMs < 0 || STALL_RETRY_MS < retryMs)) retryMs = STALL_RETRY_MS;
    const timeout = sleeping ? retryMs : 0;
    const n = polling && (++spins & 31) !== 0 ? 0 : native.epollWait(ep, events, timeout);
    const moved = iommu?.enter();
    if (moved || (stalled && n === 0)) remapAll();
    for (let k = 0; k < n; k++) {
      const s = sources[events[3 * k + 1]];
      if (s.kind === 'wake') native.read(d.wakeFd, counter);
      else if (s.kind === 'kick') {
        native.read(s.fd, counter);
        s.stats[STAT.KICKS]++;
      } else s.unit.handler.onEvent(s.k, events[3 * k]);
    }
    if (!polling && busyMs === 0) for (const q of queues) q.setKicks(false);
    const work = passes(ep, units, iommu, remapAll);
    // (the clock is read when work stops, not per spin: within a spin of when it was last found)
    if (work > 0) {
      working = true;
      polling = busyMs > 0;
      idleSpins = 0;
    } else if (working) {
      working = false;
      lastWork = performance.now();
    }
  }
}

/** Passes until every unit is idle or has used its budget; returns the work done. */
function passes(ep: number, units: Unit[], iommu: IommuReader | undefined, remapAll: () => void): number {
  let work = 0;
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    // each pass publishes the generation it works under: an UNMAP waiting for this thread
    // (quiescentSync) completes after one pass, not after all 64 of a busy period
    if (pass > 0 && iommu?.enter()) remapAll();
    let passWork = 0;
    for (const u of units) {
      passWork += u.handler.process(PASS_BUDGET);
      arm(ep, u);
      check(u);
    }
    work += passWork;
    if (passWork === 0) break;
  }
  return work;
}

main().then(
  () => port.postMessage({ type: 'stopped' }),
  (e: unknown) => port.postMessage({ type: 'error', message: (e as Error).stack ?? String(e) }),
);
