// Per-queue counters, written by the dataplane thread that owns the queue and read by anyone (the main
// thread, the CLI, benchmarks) while traffic runs. One writer per slot; readers may see a counter a few
// packets stale, never a torn one that matters (Float64 slots, written whole).

export const STAT = {
  PACKETS: 0, BYTES: 1, DROPS: 2, KICKS: 3, INTERRUPTS: 4, BATCHES: 5, WAITS: 6, RATE_LIMITED: 7, RATE_LIMITED_MS: 8,
  // DROPS split by cause (each drop counts in DROPS and in one of these)
  DROPS_FILTERED: 9, DROPS_TOO_BIG: 10, DROPS_MALFORMED: 11, DROPS_WIRE: 12,
} as const;
export const STAT_WORDS = 13;

/** Why frames were dropped, and the counter of each. */
export const DROP_CAUSES = {
  /** RX: not for the guest (its MAC filter, or the link is down) */
  filtered: STAT.DROPS_FILTERED,
  /** RX: larger than the guest's buffers could hold (never delivered cut) */
  tooBig: STAT.DROPS_TOO_BIG,
  /** RX: shorter than an Ethernet header; TX: a chain or header the device refuses */
  malformed: STAT.DROPS_MALFORMED,
  /** TX: not put on the wire by the driver (its queue was full, or its own reasons); RX with RSS: the
   * hand-over ring towards the pair the frame was steered to was full */
  wire: STAT.DROPS_WIRE,
} as const;
export type DropCause = keyof typeof DROP_CAUSES;

/** The drop counters by cause of one queue's stats slot. */
export function dropsByCause(s: Float64Array): Record<DropCause, number> {
  return { filtered: s[DROP_CAUSES.filtered], tooBig: s[DROP_CAUSES.tooBig], malformed: s[DROP_CAUSES.malformed], wire: s[DROP_CAUSES.wire] };
}

export interface QueueStats {
  packets: number;
  bytes: number;
  drops: number;
  dropsByCause: Record<DropCause, number>;
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
    dropsByCause: dropsByCause(s),
    kicks: s[STAT.KICKS],
    interrupts: s[STAT.INTERRUPTS],
    waits: s[STAT.WAITS],
    rateLimited: s[STAT.RATE_LIMITED],
    rateLimitedMs: s[STAT.RATE_LIMITED_MS],
    meanBatch: s[STAT.BATCHES] ? s[STAT.PACKETS] / s[STAT.BATCHES] : 0,
  };
}
