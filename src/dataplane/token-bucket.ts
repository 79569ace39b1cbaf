// Token buckets of a rate limit (rate-limit.ts has their configuration), with Firecracker's semantics:
// a bucket holds up to `size` tokens and refills linearly from empty to full in `refillTimeMs`; a
// one-time burst is spent before the bucket and never refilled; an operation larger than the bucket
// (a 64 KiB GSO frame against a 10 KiB bucket) passes once the bucket is full and leaves a debt the
// refill pays off before anything else passes, so the long-run rate holds for every size.
// Pure: time is given by the caller (ms from a monotonic clock, performance.now() on the threads).

/** rounding slack of the float refill arithmetic: a wait computed to the token is not a token short */
const EPSILON = 1e-6;

export class TokenBucket {
  /** tokens in the bucket; negative while an over-size operation's debt is paid off */
  private budget: number;
  /** what is left of the one-time burst */
  private burst: number;
  private last: number;

  constructor(
    readonly size: number,
    oneTimeBurst: number,
    readonly refillTimeMs: number,
    now: number,
  ) {
    this.budget = size;
    this.burst = oneTimeBurst;
    this.last = now;
  }

  /** tokens an operation could take now (the burst and the bucket), for tests and reports */
  get available(): number {
    return this.burst + this.budget;
  }

  /** Add what the time since the last refill gives, up to `size`. */
  refill(now: number): void {
    const dt = now - this.last;
    if (dt <= 0) return;
    this.last = now;
    const b = this.budget + (dt * this.size) / this.refillTimeMs;
    this.budget = b < this.size ? b : this.size;
  }

  /** May an operation of `tokens` pass now (after refill)? */
  allows(tokens: number): boolean {
    return tokens <= this.burst + this.budget + EPSILON || (tokens > this.size && this.budget >= this.size - EPSILON);
  }

  /** Take `tokens` (after allows() said yes): the burst first, then the bucket, into debt if over-size. */
  take(tokens: number): void {
    const fromBurst = tokens < this.burst ? tokens : this.burst;
    this.burst -= fromBurst;
    this.budget -= tokens - fromBurst;
  }

  /** Give back tokens taken for an operation that did not happen after all (up to `size`). */
  giveBack(tokens: number): void {
    const b = this.budget + tokens;
    this.budget = b < this.size ? b : this.size;
  }

  /** ms until an operation of `tokens` may pass (0: now), counted from the last refill. */
  msUntil(tokens: number): number {
    if (this.allows(tokens)) return 0;
    const need = tokens > this.size ? this.size : tokens - this.burst;
    return ((need - this.budget) * this.refillTimeMs) / this.size;
  }
}

/** The buckets of one direction of a net queue pair: bytes and frames; an absent bucket is unlimited. */
export class DirectionLimiter {
  constructor(
    readonly bytes: TokenBucket | undefined,
    readonly frames: TokenBucket | undefined,
  ) {}

  refill(now: number): void {
    this.bytes?.refill(now);
    this.frames?.refill(now);
  }

  /** May a frame of `len` bytes pass now? */
  allows(len: number): boolean {
    return (this.bytes === undefined || this.bytes.allows(len)) && (this.frames === undefined || this.frames.allows(1));
  }

  take(frames: number, bytes: number): void {
    this.bytes?.take(bytes);
    this.frames?.take(frames);
  }

  giveBack(frames: number, bytes: number): void {
    this.bytes?.giveBack(bytes);
    this.frames?.giveBack(frames);
  }

  /**
   * How many frames may pass now, each `len` bytes long (0: unknown, counted as one frame's worth of
   * whatever the byte bucket holds): at least 1 when allows(len), else 0; `max` when nothing limits.
   */
  framesAllowed(len: number, max: number): number {
    if (!this.allows(len > 0 ? len : 1)) return 0;
    let n = max;
    if (this.frames !== undefined) n = Math.min(n, Math.max(1, Math.floor(this.frames.available + EPSILON)));
    if (this.bytes !== undefined) n = Math.min(n, len > 0 ? Math.max(1, Math.floor((this.bytes.available + EPSILON) / len)) : 1);
    return n;
  }

  /** ms until a frame of `len` bytes may pass. */
  msUntil(len: number): number {
    return Math.max(this.bytes?.msUntil(len) ?? 0, this.frames?.msUntil(1) ?? 0);
  }
}
