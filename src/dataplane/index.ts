// Main-thread handle on the dataplane threads of one device: start them with its queue handler and the
// queues the driver set up, read their counters, stop them (a wake eventfd: a thread blocked in
// epoll_wait does not honour Worker.terminate()). A thread that does not come back (stuck in a plugin
// driver's or handler's JavaScript) is ended with Worker.terminate() after a limit: `stop()` is
// bounded, and `terminate()` ends them at once.
import { Worker } from 'node:worker_threads';
import { native, ONE, EFD_NONBLOCK } from '../native.js';
import { releaseThreadSlot, stuckThreadMs } from '../viommu/table.js';
import { workerUrl } from '../worker-url.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_PAUSED, CONTROL_CLOSING, CONTROL_WORDS, THREAD_COUNTER, THREAD_COUNTER_WORDS } from './control.js';
import type { DataplaneWorkerData, WorkerUnit } from './worker.js';
import type { RingState } from '../virtio/virtqueue.js';

export type DataplaneConfig = Omit<DataplaneWorkerData, 'units' | 'wakeFd' | 'control' | 'counters' | 'threadIndex'>;

interface Thread {
  worker: Worker;
  wakeFd: number;
  control: Int32Array;
  counters: Float64Array;
  exited: Promise<void>;
  /** it has exited (a thread whose ring broke at its start ends by itself): nothing to pause */
  gone: boolean;
  /** descriptors the thread made (its epoll sets): closed here once it has exited */
  ownFds: number[];
  /** descriptors its handlers made (a driver's io_uring): theirs to close, here only if it was ended first */
  handlerFds: number[];
  /** its vIOMMU quiescence slot (table, slot), released here when it is ended before it could */
  slot?: [SharedArrayBuffer, number];
}

/** A file path the worker (plain Node, compiled JavaScript) can import. */
export function runtimeModulePath(p: string): string {
  return p.endsWith('.ts') ? p.replace(/\/src\//, '/dist/').replace(/\.ts$/, '.js') : p;
}

export class Dataplane {
  private threads: Thread[] = [];
  /** where each queue (by its index) stood when its thread last stopped */
  readonly ringStates = new Map<number, RingState>();
  /** between pause() and resume(): threads started meanwhile start held too */
  private held = false;

  constructor(private readonly onBroken: (reason: string) => void) {}

  /** One thread per entry of `groups` (each a list of the units it serves). */
  async start(cfg: DataplaneConfig, groups: WorkerUnit[][]): Promise<void> {
    await Promise.all(groups.map((units, i) => this.spawn(cfg, units, i)));
  }

  private spawn(cfg: DataplaneConfig, units: WorkerUnit[], index: number): Promise<void> {
    const wakeFd = native.eventfd(0, EFD_NONBLOCK);
    const control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
    if (this.held) control[CONTROL_PAUSE] = 1;
    const counters = new Float64Array(new SharedArrayBuffer(THREAD_COUNTER_WORDS * 8));
    const data: DataplaneWorkerData = { ...cfg, handlerModule: runtimeModulePath(cfg.handlerModule), units, wakeFd, control, counters: counters.buffer as SharedArrayBuffer, threadIndex: index };
    const worker = new Worker(workerUrl('./worker.js', import.meta.url), { workerData: data, name: `dataplane${index}` });
    const slot: [SharedArrayBuffer, number] | undefined = cfg.iommu && [cfg.iommu.buffer, cfg.iommu.slots[index]];
    const thread: Thread = { worker, wakeFd, control, counters, exited: Promise.resolve(), gone: false, ownFds: [], handlerFds: [], slot };
    thread.exited = new Promise<void>((r) =>
      worker.once('exit', () => {
        thread.gone = true;
        r();
      }),
    );
    this.threads.push(thread);
    return new Promise((resolve, reject) => {
      worker.on('message', (m: { type: string; reason?: string; message?: string; fds?: number[]; handlerFds?: number[]; states?: Array<[number, RingState]> }) => {
        if (m.type === 'ready') {
          thread.ownFds = m.fds ?? [];
          thread.handlerFds = m.handlerFds ?? [];
          resolve();
        } else if (m.type === 'ring-states') for (const [i, st] of m.states ?? []) this.ringStates.set(i, st);
        else if (m.type === 'broken') this.onBroken(m.reason ?? 'queue broken');
        else if (m.type === 'error') {
          reject(new Error(m.message));
          this.onBroken(`dataplane thread failed: ${m.message}`);
        }
      });
      worker.once('error', (e) => {
        reject(e);
        this.onBroken(`dataplane thread failed: ${e.message}`);
      });
      worker.once('exit', () => reject(new Error('dataplane thread exited during start-up')));
    });
  }

  /** Hold every thread off the queues (for a snapshot, a migration, the API's pause); resolves once all
   * have stopped (or ended, or resume() was called meanwhile). */
  async pause(): Promise<void> {
    this.held = true;
    for (const t of this.threads) {
      Atomics.store(t.control, CONTROL_PAUSE, 1);
      native.write(t.wakeFd, ONE);
    }
    for (const t of this.threads) {
      // (a resume() meanwhile wins: the pause is over before it was complete)
      while (!Atomics.load(t.control, CONTROL_PAUSED) && !t.gone && this.held) {
        const w = Atomics.waitAsync(t.control, CONTROL_PAUSED, 0, 1000);
        if (w.async) await w.value;
      }
    }
  }

  /** Wake every thread (something it waits for changed, e.g. an IOTLB update a queue missed). */
  wake(): void {
    for (const t of this.threads) native.write(t.wakeFd, ONE);
  }

  resume(): void {
    this.held = false;
    for (const t of this.threads) {
      Atomics.store(t.control, CONTROL_PAUSE, 0);
      native.write(t.wakeFd, ONE);
    }
  }

  /** busy-poll spins of this device's threads, those ended included */
  get busyPollSpins(): number {
    const spins = (n: number, t: Thread) => n + t.counters[THREAD_COUNTER.BUSY_POLL_SPINS];
    return [...this.ending].reduce(spins, this.threads.reduce(spins, this.spinsOfEnded));
  }

  /** spins of the threads that have ended; those stopping are in `ending` until they have */
  private spinsOfEnded = 0;
  private readonly ending = new Set<Thread>();

  /** `threads` are being stopped or ended: their counters stay counted, then are folded in once they have exited */
  private async ended(threads: Thread[], done: Promise<unknown>): Promise<void> {
    for (const t of threads) this.ending.add(t);
    await done.catch(() => undefined);
    for (const t of threads) {
      this.spinsOfEnded += t.counters[THREAD_COUNTER.BUSY_POLL_SPINS];
      this.ending.delete(t);
    }
  }

  /** the vIOMMU quiescence slots of the threads running */
  get slots(): number[] {
    return this.threads.flatMap((t) => (t.slot ? [t.slot[1]] : []));
  }

  /**
   * Stop every thread; resolves once none can touch guest memory, with how many had to be ended
   * because they did not stop within the stuck-thread limit (stuckThreadMs).
   */
  async stop(): Promise<number> {
    const threads = this.threads.splice(0);
    void this.ended(threads, Promise.all(threads.map((t) => t.exited)));
    for (const t of threads) {
      Atomics.store(t.control, CONTROL_STOP, 1);
      native.write(t.wakeFd, ONE);
    }
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<void>((r) => (timer = setTimeout(r, stuckThreadMs())));
    let ended = 0;
    await Promise.all(
      threads.map(async (t) => {
        let gone = false;
        await Promise.race([t.exited.then(() => (gone = true)), limit]);
        if (gone) return;
        ended++;
        await end(t);
      }),
    );
    clearTimeout(timer);
    for (const t of threads) release(t);
    return ended;
  }

  /** End every thread now (Worker.terminate()), whatever it is doing; resolves once all have exited. */
  async terminate(): Promise<void> {
    const threads = this.threads.splice(0);
    const done = Promise.all(threads.map(end));
    void this.ended(threads, done);
    await done;
    for (const t of threads) release(t);
  }
}

/**
 * End a thread that does not stop by itself and wait until it has exited: only then does it hold no
 * translation and touch no memory; what it would have released on its way out is released here.
 */
async function end(t: Thread): Promise<void> {
  await t.worker.terminate();
  await t.exited;
  if (t.slot) releaseThreadSlot(t.slot[0], t.slot[1]);
  // (a thread ended while closing its handlers may have closed some: those are left, as a number
  // closed twice could name another file by then)
  if (Atomics.load(t.control, CONTROL_CLOSING)) return;
  for (const fd of t.handlerFds.splice(0)) {
    try {
      native.close(fd);
    } catch {
      // (closed already: nothing of the thread's is left open)
    }
  }
}

/** A thread has exited: the descriptors it used go. */
function release(t: Thread): void {
  native.close(t.wakeFd);
  for (const fd of t.ownFds.splice(0)) native.close(fd);
}
