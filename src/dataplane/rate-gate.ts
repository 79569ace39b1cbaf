// One direction of a queue pair under its rate limit, as its dataplane thread sees it: the buckets
// (token-bucket.ts; none without a limit) and the wait for tokens. A direction that finds no tokens
// stops until they return (`until`: the queue handler sleeps that long, leaves the queue's kicks off
// and the driver's fd unwatched) and counts it: RATE_LIMITED once per wait, RATE_LIMITED_MS the time
// it waited, counted when the wait ends (tokens back, or the limits changed).
import { STAT } from './stats.js';
import type { DirectionLimiter } from './token-bucket.js';

export class RateGate {
  /** the buckets; undefined without a limit (callers test this once per pass, then pay nothing per frame) */
  limit: DirectionLimiter | undefined;
  /** while waiting for tokens: when to try again (performance.now() ms); 0 when not waiting */
  until = 0;
  /** when the wait began */
  private since = 0;
  /** this pass's time (the buckets were refilled to it) */
  private now = 0;

  /** `stats`: the direction's queue statistics (STAT), where the waits are counted */
  constructor(private readonly stats: Float64Array) {}

  /** New buckets (full), or none; a wait in progress ends. */
  set(l: DirectionLimiter | undefined): void {
    if (this.until !== 0) this.stats[STAT.RATE_LIMITED_MS] += performance.now() - this.since;
    this.until = 0;
    this.limit = l;
  }

  /**
   * Start a pass at `now` (only with a limit): false while the wait for tokens goes on; else the wait,
   * if any, ends and the buckets are refilled to `now`.
   */
  open(now: number): boolean {
    this.now = now;
    if (this.until !== 0) {
      if (now < this.until) return false;
      this.stats[STAT.RATE_LIMITED_MS] += now - this.since;
      this.until = 0;
    }
    this.limit!.refill(now);
    return true;
  }

  /** May a frame of `len` bytes pass now? If not, the direction waits for the tokens it needs. */
  allows(len: number): boolean {
    const lim = this.limit!;
    if (lim.allows(len)) return true;
    this.wait(lim, len);
    return false;
  }

  /** How many frames (of `len` bytes, 0 or less: unknown) may pass now, at most `max`; 0: the direction waits. */
  framesAllowed(len: number, max: number): number {
    const lim = this.limit!;
    const n = lim.framesAllowed(len, max);
    if (n === 0) this.wait(lim, len > 0 ? len : 1);
    return n;
  }

  private wait(lim: DirectionLimiter, len: number): void {
    this.since = this.now;
    // (msUntil counts from the refill at this pass's time; a wait is never 0, or it would not be one)
    this.until = this.now + Math.max(lim.msUntil(len), 0.001);
    this.stats[STAT.RATE_LIMITED]++;
  }
}
