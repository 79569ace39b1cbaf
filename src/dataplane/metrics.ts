// Live metrics of devices and their queues, in one shape for the VM and the vhost-user backend: what the
// API socket serves (JSON or Prometheus text) and what `tsvmm ctl get metrics` prints. Read from the
// dataplane's shared counters (stats.ts) while traffic runs; a reading may be a few frames stale.
import { STAT, STAT_WORDS, dropsByCause, type DropCause } from './stats.js';

export interface QueueMetrics {
  /** the queue's name in its device: rx0, tx0, rx1, ... or requests */
  queue: string;
  frames: number;
  bytes: number;
  /** frames dropped (see the device's driver counters for the driver's own reasons) */
  drops: number;
  /** the drops by cause: filtered, tooBig, malformed (RX and TX), wire (TX) */
  dropsByCause: Record<DropCause, number>;
  /** guest (or frontend) notifications taken */
  kicks: number;
  /** interrupts (call eventfd writes) sent */
  interrupts: number;
  /** driver calls (a batch of frames each) */
  batches: number;
  /** TX: times the driver's wire was full and the queue waited */
  waits: number;
  /** times the queue stopped because its rate limit had no tokens left (its frames wait), and for how long (ms) */
  rateLimited: number;
  rateLimitedMs: number;
}

export interface DeviceMetrics {
  /** the id the API names it by (PATCH /net/{id}) */
  id: string;
  kind: 'net' | 'rng';
  queues: QueueMetrics[];
  /** passes of its dataplane threads' loops that looked at the rings without sleeping (busy-poll=USEC) */
  busyPollSpins?: number;
  /** why the device stopped serving its rings (it needs a reset), when it did */
  broken?: string | null;
  /** dataplane threads ended because they did not stop within the stuck-thread limit */
  stuckThreads?: number;
  /** the driver's own counters (the tap driver's io_uring queues and fallbacks, ...) */
  driver?: Record<string, number>;
}

export interface Metrics {
  devices: DeviceMetrics[];
  /** the vIOMMU (vm) or the frontend's IOTLB (vhost-user) */
  iommu?: Record<string, number>;
  /** vhost-user: frontend connections served and problems seen */
  vhostUser?: { connections?: number; errors: string[] };
  /** a VM's live migration, out or in, as it goes and once it ended (src/vmm/migration/status.ts keeps it) */
  migration?: MigrationMetrics;
}

export interface MigrationMetrics {
  direction: 'out' | 'in';
  url: string;
  /** listening: a destination waiting for its source; active: pages moving; completed: the guest runs
   * on the destination; failed: it did not (a source runs on) */
  state: 'listening' | 'active' | 'completed' | 'failed';
  /** the source's pass (0: the first copy of all memory), pages sent or received, pages still to send */
  pass: number;
  pages: number;
  pagesLeft: number;
  /** bytes per second so far (the source's) */
  bytesPerSec: number;
  /** the source is paused for its last pages */
  stopped: boolean;
  /** once completed: how long the guest was held, and the whole migration (ms; the source's) */
  downtimeMs?: number;
  totalMs?: number;
  error?: string;
}

/** One queue's counters from a stats buffer (newStatsBuffer) slot. */
export function queueMetrics(buf: SharedArrayBuffer, slot: number, queue: string): QueueMetrics {
  const s = new Float64Array(buf, slot * STAT_WORDS * 8, STAT_WORDS);
  return { queue, frames: s[STAT.PACKETS], bytes: s[STAT.BYTES], drops: s[STAT.DROPS], dropsByCause: dropsByCause(s), kicks: s[STAT.KICKS], interrupts: s[STAT.INTERRUPTS], batches: s[STAT.BATCHES], waits: s[STAT.WAITS], rateLimited: s[STAT.RATE_LIMITED], rateLimitedMs: s[STAT.RATE_LIMITED_MS] };
}

/** The queues of a net device's `pairs` queue pairs (stats slots 2p: rx, 2p+1: tx). */
export function netQueueMetrics(buf: SharedArrayBuffer, pairs: number): QueueMetrics[] {
  const out: QueueMetrics[] = [];
  for (let p = 0; p < pairs; p++) out.push(queueMetrics(buf, 2 * p, `rx${p}`), queueMetrics(buf, 2 * p + 1, `tx${p}`));
  return out;
}
