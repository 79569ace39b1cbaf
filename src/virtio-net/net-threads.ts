// virtio-net's dataplane threads as the device (device.ts, main thread) runs them: which queue pairs go
// to which thread, what the threads share (the handler's configuration, and with RSS or hash reports
// the steering rings and wake eventfds), and the order of starts and stops. Every change — activation,
// a new number of pairs, a dirty log coming or going, a quiesce for a snapshot, a reset — waits for the
// one before it, and a restart resumes each ring where its stopped thread left it. A thread that does
// not stop within the stuck-thread limit is ended, and the device needs a reset.
import { writeSync } from 'node:fs';
import type { GuestMemory } from '../vmm/memory.js';
import { RING_START, type RingState } from '../virtio/virtqueue.js';
import type { Activation, ActiveQueue } from '../virtio/device.js';
import type { NetDriver } from '../drivers/api.js';
import { Dataplane } from '../dataplane/index.js';
import type { WorkerUnit } from '../dataplane/worker.js';
import type { DirtyLogArea } from '../virtio/dirty-log.js';
import { stuckThreadMs, type IommuTable } from '../viommu/table.js';
import type { NetHandlerConfig } from './queue-handler.js';
import { F, has } from './features.js';
import { netDataplane } from './dataplane.js';
import { newHandoverBuffer, newWakeFds, closeWakeFds } from './rss-ring.js';

/** What the threads start with, as the device stands at that moment. */
export interface NetStart {
  activation: Activation;
  /** queue pairs in use */
  pairs: number;
  /** the shared words the threads read: RX filter, rate limits, coalescing, RSS state */
  words: { filter: SharedArrayBuffer; rateLimits: SharedArrayBuffer; coalesce: SharedArrayBuffer; rss: SharedArrayBuffer };
  mtu: number;
  dirtyLog?: DirtyLogArea;
  /** the driver negotiated ACCESS_PLATFORM: ring and buffer addresses are IOVAs */
  translated: boolean;
  /** where a queue's rings are in the dirty log (guest-physical) */
  ringLogGpa(q: ActiveQueue): { desc: number; used: number };
}

export interface NetThreadsOptions {
  memory: GuestMemory;
  driver: NetDriver;
  /** queue pairs the device offers (one vIOMMU quiescence slot each: the most threads it runs) */
  queuePairs: number;
  threads?: number;
  busyPollUs?: number;
  /** the queues' counters (stats.ts), two slots per pair */
  stats: SharedArrayBuffer;
  iommu?: { table: IommuTable; endpoint: number };
  /** names the device in messages */
  name: string;
  needsReset(reason: string): void;
  /** the device as the threads start now; undefined: it is not active */
  startWith(): NetStart | undefined;
}

export class NetThreads {
  private readonly dataplane: Dataplane;
  /** the running threads' steering wake eventfds (closed once they stopped) */
  private wakeFds: number[] = [];
  /** the last change of threads: each waits for the one before */
  private changing: Promise<void> = Promise.resolve();
  private readonly iommuSlots: number[];
  /** most threads run at once (for tests and reports) */
  started = 0;
  /** threads ended because they kept an UNMAP or a stop waiting past the stuck-thread limit */
  stuck = 0;

  constructor(private readonly o: NetThreadsOptions) {
    this.dataplane = new Dataplane((reason) => o.needsReset(reason));
    this.iommuSlots = o.iommu ? Array.from({ length: o.queuePairs }, () => o.iommu!.table.newThreadSlot()) : [];
  }

  /** Start threads for the pairs in use, each ring at its start (activation) or, `resume`, where it stood. */
  start(resume: boolean): Promise<void> {
    return this.then(() => this.startNow(resume));
  }

  /** Stop the threads and start them again (new pairs, a dirty log), each ring where it stood. */
  restart(): Promise<void> {
    return this.then(async () => {
      this.stopped(await this.dataplane.stop());
      await this.startNow(true);
    });
  }

  /** Stop the threads, each ring's position kept (a quiesce, a reset). */
  stop(): Promise<void> {
    return this.then(async () => this.stopped(await this.dataplane.stop()));
  }

  /** Run `step` after the change in progress (whether or not that one failed); the step's own failure is the caller's. */
  private then(step: () => Promise<void>): Promise<void> {
    this.changing = this.changing.catch(() => undefined).then(step);
    return this.changing;
  }

  private async startNow(resume: boolean): Promise<void> {
    const s = this.o.startWith();
    if (!s) return;
    const a = s.activation;
    if (!resume) this.dataplane.ringStates.clear();
    const start = (q: ActiveQueue): RingState => this.dataplane.ringStates.get(q.index) ?? q.start ?? RING_START;
    const byIndex = new Map(a.queues.map((q) => [q.index, { ...q, start: start(q), ringLogGpa: s.ringLogGpa(q) }]));
    const pairs: WorkerUnit[] = [];
    for (let p = 0; p < s.pairs; p++) {
      const rx = byIndex.get(2 * p);
      const tx = byIndex.get(2 * p + 1);
      if (!rx || !tx) continue; // a pair the driver did not enable is not served
      pairs.push({ queues: [{ ...rx, statsSlot: 2 * p }, { ...tx, statsSlot: 2 * p + 1 }], init: { pair: p, driver: this.o.driver.queueInit(p) } });
    }
    if (pairs.length === 0) return;
    const threads = Math.min(this.o.threads ?? pairs.length, pairs.length);
    const groups: WorkerUnit[][] = Array.from({ length: threads }, () => []);
    pairs.forEach((p, i) => groups[i % threads].push(p));
    this.started = Math.max(this.started, threads);
    const w = s.words;
    const net = netDataplane(a.features, this.o.driver, w.filter, w.rateLimits, s.mtu, w.coalesce);
    if (has(a.features, F.RSS) || has(a.features, F.HASH_REPORT)) {
      const cfg = net.handlerConfig as NetHandlerConfig;
      this.wakeFds = newWakeFds(s.pairs);
      cfg.steer = { pairs: s.pairs, rings: newHandoverBuffer(s.pairs, cfg.maxRxFrame), wakeFds: this.wakeFds, rss: w.rss, hashReport: has(a.features, F.HASH_REPORT) };
    }
    const iommu = this.o.iommu;
    await this.dataplane.start(
      {
        memory: this.o.memory.buffer,
        table: this.o.memory.table.toJSON(),
        ...net,
        stats: this.o.stats,
        busyPollUs: this.o.busyPollUs ?? 0,
        dirtyLog: s.dirtyLog,
        iommu: s.translated && iommu ? { buffer: iommu.table.buffer, endpoint: iommu.endpoint, slots: this.iommuSlots } : undefined,
      },
      groups,
    );
  }

  /** where queue `index` stood when its thread last stopped */
  ringState(index: number): RingState | undefined {
    return this.dataplane.ringStates.get(index);
  }

  /** `ended` threads did not stop within the limit and were ended: the device can no longer run */
  private stopped(ended: number): void {
    // (the threads that watched the steering eventfds are gone)
    closeWakeFds(this.wakeFds);
    this.wakeFds = [];
    if (ended === 0) return;
    this.stuck += ended;
    writeSync(2, `tsvmm: net ${this.o.name}: a dataplane thread did not stop within ${stuckThreadMs()} ms (TSVMM_STUCK_THREAD_MS): it was ended\n`);
    this.o.needsReset('a dataplane thread was stuck and had to be ended');
  }

  /**
   * The vIOMMU has waited `ms` for the thread with quiescence `slot` to leave the old mappings: if it
   * is one of ours, every thread is ended (once they have exited they hold nothing, and the UNMAP
   * completes) and the device needs a reset. Resolves once they have exited.
   */
  async endStuckThread(slot: number, ms: number): Promise<void> {
    if (!this.dataplane.slots.includes(slot)) return;
    await this.dataplane.terminate();
    this.stuck++;
    writeSync(2, `tsvmm: net ${this.o.name}: a dataplane thread kept an UNMAP waiting ${ms} ms (past TSVMM_STUCK_THREAD_MS): the device's threads were ended, it needs a reset\n`);
    this.o.needsReset('a dataplane thread was stuck during an UNMAP and was ended');
  }

  /** Hold the threads off the rings (guest memory stays as it is) until resume(). */
  pause(): Promise<void> {
    return this.dataplane.pause();
  }

  resume(): void {
    this.dataplane.resume();
  }

  /** Wake every thread (a thread asleep until tokens return, or with no timeout, looks now). */
  wake(): void {
    this.dataplane.wake();
  }

  /** busy-poll spins of the threads (busyPollUs) */
  get busyPollSpins(): number {
    return this.dataplane.busyPollSpins;
  }
}
