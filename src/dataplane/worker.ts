// A dataplane thread: serves one or more queue pairs. Sleeps in epoll on the queues' kick eventfds
// (KVM ioeventfds: the guest's notifications arrive without a vCPU exit), the drivers' fds and a wake
// eventfd; works in passes with a per-pass budget per queue so one cannot starve another; interrupts the
// guest by writing irqfds. Busy-polls for a bounded time when asked, yielding to epoll when idle.
import { parentPort, workerData } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { native, ONE, EPOLLIN, EPOLL_CTL_ADD } from '../native.js';
import { MemoryTable, type MemoryTableData } from '../vmm/memory.js';
import { guestView } from '../virtio/dma.js';
import { createQueue } from '../virtio/queues.js';
import { MAX_QUEUE_SIZE, type QueueConfig, type RingState, type Virtqueue } from '../virtio/virtqueue.js';
import { DirtyLog, type DirtyLogArea } from '../virtio/dirty-log.js';
import { IommuReader } from '../viommu/table.js';
import { NetQueuePair } from './net-pair.js';
import { RxFilter } from './rx-filter.js';
import { STAT, STAT_WORDS } from './stats.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_PAUSED } from './control.js';
import type { TxPolicy } from './net-header.js';
import type { DriverModule } from '../drivers/api.js';

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

export interface WorkerPair {
  rx: WorkerQueue;
  tx: WorkerQueue;
  driverInit: unknown;
}

export interface DataplaneWorkerData {
  memory: SharedArrayBuffer;
  table: MemoryTableData;
  pairs: WorkerPair[];
  driverModule: string;
  eventIdx: boolean;
  indirect: boolean;
  packed: boolean;
  inOrder: boolean;
  mergeable: boolean;
  maxRxFrame: number;
  txPolicy: TxPolicy;
  filter: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  wakeFd: number;
  control: Int32Array;
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
/** how long a queue whose driver would block, and has no fd to say when it can take more, waits (ms) */
const BLOCKED_RETRY_MS = 1;
/** packets per queue per pass */
export const PASS_BUDGET = 256;
const EPOLL_CTL_MOD = 3;
const EPOLLOUT = 4;
const EPOLLERR = 8;
const EPOLLHUP = 16;

const d = workerData as DataplaneWorkerData;
const port = parentPort!;

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

async function serve(iommu: IommuReader | undefined): Promise<void> {
  const mem = guestView(d.memory, new MemoryTable(d.table.regions), iommu);
  const driverMod = (await import(pathToFileURL(d.driverModule).href)) as DriverModule;
  // translations from here on (the rings first): published only now, so that an UNMAP does not wait
  // for the driver's module to load (over a second in the nested harness)
  iommu?.enter();
  const filter = new RxFilter(d.filter);
  const features = { eventIdx: d.eventIdx, indirect: d.indirect, packed: d.packed, inOrder: d.inOrder };
  const stats = (slot: number) => new Float64Array(d.stats, slot * STAT_WORDS * 8, STAT_WORDS);
  const log = d.dirtyLog && new DirtyLog(d.dirtyLog, mem.table.regions);

  const pairs: NetQueuePair[] = [];
  /** per pair: the TX and RX counters (kicks are counted here, the rest by NetQueuePair) */
  const kickStats: Array<[Float64Array, Float64Array]> = [];
  for (const p of d.pairs) {
    // (the transport holds a guest's sizes to its device's maximum; this is the protocol's)
    const rxq = createQueue(mem, p.rx, features, MAX_QUEUE_SIZE);
    const txq = createQueue(mem, p.tx, features, MAX_QUEUE_SIZE);
    if (typeof rxq === 'string' || typeof txq === 'string') {
      port.postMessage({ type: 'broken', reason: typeof rxq === 'string' ? rxq : txq });
      return;
    }
    kickStats.push([stats(p.tx.statsSlot), stats(p.rx.statsSlot)]);
    served.push([p.rx.index, rxq], [p.tx.index, txq]);
    rxq.setState(p.rx.start);
    txq.setState(p.tx.start);
    rxq.missesWait = txq.missesWait = !!d.iommu?.missesWait;
    rxq.setDirtyLog(log, p.rx.ringLogGpa ?? p.rx);
    txq.setDirtyLog(log, p.tx.ringLogGpa ?? p.tx);
    pairs.push(
      new NetQueuePair(mem, d.memory, rxq, txq, driverMod.openQueue(p.driverInit), {
        mergeable: d.mergeable,
        maxRxFrame: d.maxRxFrame,
        txPolicy: d.txPolicy,
        rxCallFd: p.rx.callFd,
        txCallFd: p.tx.callFd,
        rxStats: stats(p.rx.statsSlot),
        txStats: stats(p.tx.statsSlot),
        filter,
        log,
      }),
    );
  }

  // epoll data: 0 = wake; for pair i: 1 + 3i = TX kick, 2 + 3i = RX kick, 3 + 3i = driver readable/writable
  const ep = native.epollCreate();
  native.epollCtl(ep, EPOLL_CTL_ADD, d.wakeFd, EPOLLIN, 0);
  /** per pair: the events its driver's fd is watched for */
  const driverEvents: number[] = [];
  pairs.forEach((p, i) => {
    if (d.pairs[i].tx.kickFd >= 0) native.epollCtl(ep, EPOLL_CTL_ADD, d.pairs[i].tx.kickFd, EPOLLIN, 1 + 3 * i);
    if (d.pairs[i].rx.kickFd >= 0) native.epollCtl(ep, EPOLL_CTL_ADD, d.pairs[i].rx.kickFd, EPOLLIN, 2 + 3 * i);
    if (p.driver.pollFd >= 0) native.epollCtl(ep, EPOLL_CTL_ADD, p.driver.pollFd, EPOLLIN, 3 + 3 * i);
    driverEvents.push(EPOLLIN);
  });
  // A driver fd is watched for readable only while the RX ring has buffers (otherwise a level-triggered
  // readable fd would wake us for frames we cannot place), and for writable only while TX waits for
  // the driver to take more (a writable fd almost always is).
  const armDriver = (i: number, rx: boolean) => {
    const p = pairs[i];
    const want = (rx ? EPOLLIN : 0) | (p.txBlocked ? EPOLLOUT : 0);
    if (p.driver.pollFd < 0 || driverEvents[i] === want) return;
    native.epollCtl(ep, EPOLL_CTL_MOD, p.driver.pollFd, want, 3 + 3 * i);
    driverEvents[i] = want;
  };

  const events = new Uint32Array(3 * 64);
  const counter = new BigUint64Array(1);
  const brokenReported = new Set<number>();
  // while paused, only the wake eventfd can wake us
  const wakeOnly = native.epollCreate();
  native.epollCtl(wakeOnly, EPOLL_CTL_ADD, d.wakeFd, EPOLLIN, 0);
  // (our epoll descriptors are closed by the main thread once we have exited, however we end)
  port.postMessage({ type: 'ready', fds: [ep, wakeOnly] });
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
  const queues = pairs.flatMap((p) => [p.txq, p.rxq]);
  /** the IOMMU's mappings changed (or a stalled queue retries): translate the rings again */
  const remapAll = () => {
    for (const q of queues) q.remapRings();
  };
  let lastWork = process.hrtime.bigint();
  let spins = 0;
  const busyNs = BigInt(d.busyPollUs) * 1000n;
  for (;;) {
    pauseIfAsked();
    if (Atomics.load(d.control, CONTROL_STOP)) break;
    // while busy-polling, look without sleeping; afterwards ask for kicks and sleep
    const polling = busyNs > 0n && process.hrtime.bigint() - lastWork < busyNs;
    if (!polling) {
      for (const p of pairs) {
        // (a TX queue waiting for its driver is not looked at: its kicks would only wake us)
        p.txq.setKicks(!p.txBlocked);
        p.rxq.setKicks(true, p.starved);
      }
    }
    // kicks re-enabled: look once more, the guest may have added buffers before it saw the request
    // (a starved RX ring refilled in that window would otherwise wait for a kick that never comes)
    let anyPending = false;
    // (counting stops just past what matters: a packed ring counts by walking its descriptors)
    pairs.forEach((p, i) => {
      if (!p.txBlocked && p.txq.pending(1) > 0) anyPending = true;
      const seen = p.starved ? p.starvedPending : 0;
      if (p.rxq.pending(seen + 1) > seen) {
        armDriver(i, true);
        // a driver without an fd (one that generates frames) cannot wake us: receive buffers are work
        // now, unless it just had nothing to give — else a ring refilled in that window, or left
        // pending by the thread before a restart (whose kick that thread took), waits for a kick that
        // never comes
        if (p.driver.pollFd < 0 && !p.dry) anyPending = true;
      }
    });
    // busy-polling looks at the rings directly; the fds (kicks are off, a driver's fd, stop/pause) are
    // looked at every 32nd spin only: an epoll_wait per spin would cost more than the work it finds
    const sleeping = !polling && !anyPending;
    // (about to sleep: we hold no translation, an UNMAP need not wait for us)
    if (sleeping) iommu?.idle();
    // a queue stalled on an IOTLB miss retries after a while even if no update came (the answer may
    // have been lost, or refused): it then misses again and the question is asked again
    let stalled = false;
    if (d.iommu?.missesWait) for (const q of queues) stalled ||= q.stalled;
    // a TX queue whose driver has no fd to wait on tries again after a while
    let blindWait = false;
    for (const p of pairs) blindWait ||= p.txBlocked && p.driver.pollFd < 0;
    const timeout = !sleeping ? 0 : blindWait ? BLOCKED_RETRY_MS : stalled ? STALL_RETRY_MS : -1;
    const n = polling && (++spins & 31) !== 0 ? 0 : native.epollWait(ep, events, timeout);
    if (blindWait) for (const p of pairs) if (p.driver.pollFd < 0) p.txBlocked = false;
    const moved = iommu?.enter();
    if (moved || (stalled && n === 0)) remapAll();
    for (let k = 0; k < n; k++) {
      const tag = events[3 * k + 1];
      if (tag === 0) {
        native.read(d.wakeFd, counter);
        continue;
      }
      const i = Math.floor((tag - 1) / 3);
      const kind = (tag - 1) % 3;
      if (kind === 0 || kind === 1) {
        native.read(kind === 0 ? d.pairs[i].tx.kickFd : d.pairs[i].rx.kickFd, counter);
        kickStats[i][kind][STAT.KICKS]++;
      } else if (events[3 * k] & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        // the driver can take packets again (or its fd failed: transmit finds out and says so)
        pairs[i].txBlocked = false;
      }
    }
    if (!polling && busyNs === 0n) {
      for (const p of pairs) {
        p.txq.setKicks(false);
        p.rxq.setKicks(false);
      }
    }
    // passes until every queue is idle or has used its budget; then sleep again (or poll)
    let work = 0;
    for (let pass = 0; pass < 64; pass++) {
      // each pass publishes the generation it works under: an UNMAP waiting for this thread
      // (quiescentSync) completes after one pass, not after all 64 of a busy period
      if (pass > 0 && iommu?.enter()) remapAll();
      let passWork = 0;
      pairs.forEach((p, i) => {
        passWork += p.processTx(PASS_BUDGET);
        passWork += p.processRx(PASS_BUDGET);
        armDriver(i, !p.starved);
        for (let k = 2 * i; k < 2 * i + 2; k++) {
          const q = queues[k];
          if (q.stalled && !q.stallSignalled && d.iommu?.missFd !== undefined) {
            q.stallSignalled = true;
            native.write(d.iommu.missFd, ONE);
          }
          if (q.broken && !brokenReported.has(i)) {
            brokenReported.add(i);
            port.postMessage({ type: 'broken', reason: q.broken });
          }
        }
      });
      work += passWork;
      if (passWork === 0) break;
    }
    if (work > 0) lastWork = process.hrtime.bigint();
  }
  for (const p of pairs) p.driver.close();
}

main().then(
  () => port.postMessage({ type: 'stopped' }),
  (e: unknown) => port.postMessage({ type: 'error', message: (e as Error).stack ?? String(e) }),
);
