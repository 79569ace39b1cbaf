// Per-queue counters, written by the dataplane thread that owns the queue and read by anyone (the main
// thread, the CLI, benchmarks) while traffic runs. One writer per slot; readers may see a counter a few
// packets stale, never a torn one that matters (Float64 slots, written whole).

export const STAT = { PACKETS: 0, BYTES: 1, DROPS: 2, KICKS: 3, INTERRUPTS: 4, BATCHES: 5, WAITS: 6, RATE_LIMITED: 7, RATE_LIMITED_MS: 8 } as const;
export const STAT_WORDS = 9;

export interface QueueStats {
  packets: number;
  bytes: number;
  drops: number;
  kicks: number;
  interrupts: number;
  /** TX: times the driver could take no more (its wire was full) and the queue waited for it */
  waits: number;
  /** times the queue stopped taking frames because its rate limit had no tokens left (the frames wait) */
  rateLimited: number;
  /** time (ms) the queue spent waiting for its rate limit's tokens */
  rateLimitedMs: number;
  /** mean packets per driver call */
  meanBatch: number;
}

export function newStatsBuffer(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(queues * STAT_WORDS * 8);
}

export function readStats(buf: SharedArrayBuffer, queue: number): QueueStats {
  const s = new Float64Array(buf, queue * STAT_WORDS * 8, STAT_WORDS);
  return {
    packets: s[STAT.PACKETS],
    bytes: s[STAT.BYTES],
    drops: s[STAT.DROPS],
    kicks: s[STAT.KICKS],
    interrupts: s[STAT.INTERRUPTS],
    waits: s[STAT.WAITS],
    rateLimited: s[STAT.RATE_LIMITED],
    rateLimitedMs: s[STAT.RATE_LIMITED_MS],
    meanBatch: s[STAT.BATCHES] ? s[STAT.PACKETS] / s[STAT.BATCHES] : 0,
  };
}
