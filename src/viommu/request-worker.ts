// The virtio-iommu request thread: sleeps in epoll on the request queue's ioeventfd (the guest's
// notification never leaves the kernel as a vCPU exit) and a wake eventfd; handles each batch of
// requests against the shared table (requests.ts), waiting with Atomics.wait for the dataplane threads
// where an UNMAP needs it; interrupts the guest through the queue's irqfd when asked.
import { parentPort, workerData, receiveMessageOnPort } from 'node:worker_threads';
import { native, ONE, EPOLLIN, EPOLL_CTL_ADD } from '../native.js';
import { MemoryTable, type MemoryRegion } from '../vmm/memory.js';
import { guestView } from '../virtio/dma.js';
import { createQueue } from '../virtio/queues.js';
import type { QueueConfig, RingState } from '../virtio/virtqueue.js';
import { IommuTable, sayWaitIsSlow, stuckThreadMs } from './table.js';
import { IommuRequests } from './requests.js';
import { DirtyLog } from '../virtio/dirty-log.js';
import { CONTROL_LOG, CONTROL_STOP, type LogMessage } from './request-control.js';

export interface RequestWorkerData {
  memory: SharedArrayBuffer;
  regions: MemoryRegion[];
  table: SharedArrayBuffer;
  state: SharedArrayBuffer;
  endpoints: number[];
  queue: QueueConfig;
  /** where the ring starts (a restored device; else its beginning) */
  start?: RingState;
  kickFd: number;
  callFd: number;
  wakeFd: number;
  /** CONTROL_WORDS words (request-control.ts) */
  control: Int32Array;
}

const d = workerData as RequestWorkerData;
/**
 * After a request, the thread keeps looking at the queue this long (µs) with the guest's
 * notifications off, as vhost-net's busy-poll does: a guest that maps and unmaps per packet (Linux in
 * strict mode sends each request alone and spins until it completes) then issues requests without a
 * vCPU exit each. Once quiet that long, notifications go back on and the thread sleeps.
 */
const POLL_US = 200;
const port = parentPort!;

function main(): void {
  const view = guestView(d.memory, new MemoryTable(d.regions));
  const q = createQueue(view, d.queue, { eventIdx: false, indirect: false }, 256);
  if (typeof q === 'string') {
    port.postMessage({ type: 'broken', reason: q });
    port.postMessage({ type: 'ready' });
    return;
  }
  if (d.start) q.setState(d.start);
  let log: DirtyLog | undefined;
  /** the device changed the dirty log (a message waits on the port): take it, then say so */
  const takeLog = () => {
    const m = receiveMessageOnPort(port)?.message as LogMessage | undefined;
    const l = m?.dirtyLog;
    log = l && new DirtyLog(l, d.regions);
    q.setDirtyLog(log, d.queue);
    Atomics.store(d.control, CONTROL_LOG, 0);
    Atomics.notify(d.control, CONTROL_LOG);
  };
  // a dataplane thread stuck past the limit is the main thread's to end (it owns the workers): asked
  // here, and the wait goes on until that thread has exited and its slot is released
  const stuck = { limitMs: stuckThreadMs(), onStuck: (thread: number, ms: number) => port.postMessage({ type: 'stuck', thread, ms }) };
  const requests = new IommuRequests(new IommuTable(d.table), d.endpoints, new Int32Array(d.state), sayWaitIsSlow('virtio-iommu'), stuck);
  const ep = native.epollCreate();
  native.epollCtl(ep, EPOLL_CTL_ADD, d.kickFd, EPOLLIN, 1);
  native.epollCtl(ep, EPOLL_CTL_ADD, d.wakeFd, EPOLLIN, 0);
  const events = new Uint32Array(3 * 4);
  const counter = new BigUint64Array(1);
  port.postMessage({ type: 'ready' });
  let reported = false;
  // (performance.now: a double; hrtime.bigint would allocate a BigInt per look while polling)
  const pollMs = POLL_US / 1000;
  let lastWork = -Infinity;
  while (!Atomics.load(d.control, CONTROL_STOP)) {
    if (Atomics.load(d.control, CONTROL_LOG)) takeLog();
    // requests the guest queued before we slept are handled first; then wait for the next kick
    if (requests.drain(q, view.bytes, log) > 0) lastWork = performance.now();
    if (q.broken && !reported) {
      reported = true;
      port.postMessage({ type: 'broken', reason: q.broken });
    }
    if (d.callFd >= 0 && q.needsInterrupt()) native.write(d.callFd, ONE);
    if (q.broken) lastWork = -Infinity;
    if (performance.now() - lastWork < pollMs) {
      q.setKicks(false);
      continue;
    }
    // quiet: notifications on, and one more look (a request added before the guest saw the change
    // would otherwise wait for a notification that never comes)
    q.setKicks(true);
    if (q.pending() > 0) continue;
    const n = native.epollWait(ep, events, -1);
    for (let k = 0; k < n; k++) native.read(events[3 * k + 1] === 1 ? d.kickFd : d.wakeFd, counter);
  }
  native.close(ep);
  // where the ring stands, for a restart (device state): every request taken was completed
  port.postMessage({ type: 'ring-state', state: q.getState() });
}

main();
