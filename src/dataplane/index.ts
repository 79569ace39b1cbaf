// Main-thread handle on the dataplane threads of one device: start them with the queues the driver set
// up, read their counters, stop them (a wake eventfd: a thread blocked in epoll_wait does not honour
// Worker.terminate()).
import { Worker } from 'node:worker_threads';
import { native, ONE, EFD_NONBLOCK } from '../native.js';
import { workerUrl } from '../worker-url.js';
import { CONTROL_STOP, CONTROL_PAUSE, CONTROL_PAUSED, CONTROL_WORDS } from './control.js';
import type { DataplaneWorkerData, WorkerPair } from './worker.js';
import type { RingState } from '../virtio/virtqueue.js';

export type DataplaneConfig = Omit<DataplaneWorkerData, 'pairs' | 'wakeFd' | 'control' | 'threadIndex'>;

interface Thread {
  worker: Worker;
  wakeFd: number;
  control: Int32Array;
  exited: Promise<void>;
}

/** A file path the worker (plain Node, compiled JavaScript) can import. */
export function runtimeModulePath(p: string): string {
  return p.endsWith('.ts') ? p.replace(/\/src\//, '/dist/').replace(/\.ts$/, '.js') : p;
}

export class Dataplane {
  private threads: Thread[] = [];
  /** where each queue (by its index) stood when its thread last stopped */
  readonly ringStates = new Map<number, RingState>();

  constructor(private readonly onBroken: (reason: string) => void) {}

  /** One thread per entry of `groups` (each a list of queue pairs it serves). */
  async start(cfg: DataplaneConfig, groups: WorkerPair[][]): Promise<void> {
    await Promise.all(groups.map((pairs, i) => this.spawn(cfg, pairs, i)));
  }

  private spawn(cfg: DataplaneConfig, pairs: WorkerPair[], index: number): Promise<void> {
    const wakeFd = native.eventfd(0, EFD_NONBLOCK);
    const control = new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4));
    const data: DataplaneWorkerData = { ...cfg, driverModule: runtimeModulePath(cfg.driverModule), pairs, wakeFd, control, threadIndex: index };
    const worker = new Worker(workerUrl('./worker.js', import.meta.url), { workerData: data, name: `dataplane${index}` });
    const exited = new Promise<void>((r) => worker.once('exit', () => r()));
    this.threads.push({ worker, wakeFd, control, exited });
    return new Promise((resolve, reject) => {
      worker.on('message', (m: { type: string; reason?: string; message?: string; states?: Array<[number, RingState]> }) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'ring-states') for (const [i, st] of m.states ?? []) this.ringStates.set(i, st);
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

  /** Hold every thread off the queues (for a snapshot or migration); resolves once all have stopped. */
  async pause(): Promise<void> {
    for (const t of this.threads) {
      Atomics.store(t.control, CONTROL_PAUSE, 1);
      native.write(t.wakeFd, ONE);
    }
    for (const t of this.threads) {
      while (!Atomics.load(t.control, CONTROL_PAUSED)) {
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
    for (const t of this.threads) {
      Atomics.store(t.control, CONTROL_PAUSE, 0);
      native.write(t.wakeFd, ONE);
    }
  }

  /** Stop every thread; resolves once none can touch guest memory. */
  async stop(): Promise<void> {
    const threads = this.threads.splice(0);
    for (const t of threads) {
      Atomics.store(t.control, CONTROL_STOP, 1);
      native.write(t.wakeFd, ONE);
    }
    await Promise.all(threads.map((t) => t.exited));
    for (const t of threads) native.close(t.wakeFd);
  }
}
