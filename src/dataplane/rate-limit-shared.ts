// A net device's rate limits as the main thread sets them and its dataplane threads read them: a few
// shared words per direction under a sequence count (odd while the main thread writes). Each queue
// pair keeps its own buckets (token-bucket.ts), built afresh (full, with the burst) when its
// direction's limits change; the threads look for a change once per pass, never per frame.
import type { DirectionLimits, NetRateLimits, TokenBucketConfig } from './rate-limit.js';
import { DirectionLimiter, TokenBucket } from './token-bucket.js';

/** rx (towards the guest), tx (from the guest) */
export const DIR = { RX: 0, TX: 1 } as const;
/** per direction, per bucket (bytes, then frames): size (0: none), one-time burst, refill time (ms) */
const BUCKET_WORDS = 3;
const DIR_WORDS = 2 * BUCKET_WORDS;
const SEQ_BYTES = 8;
export const RATE_LIMIT_BYTES = SEQ_BYTES + 2 * DIR_WORDS * 8;

export class RateLimitWords {
  readonly seq: Int32Array;
  readonly words: Float64Array;
  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(RATE_LIMIT_BYTES)) {
    this.seq = new Int32Array(buffer, 0, 2);
    this.words = new Float64Array(buffer, SEQ_BYTES, 2 * DIR_WORDS);
  }

  /** Main thread: apply `limits` (already checked by parseNetRateLimits); an absent direction stays. */
  set(limits: NetRateLimits): void {
    if (limits.rx) this.write(DIR.RX, limits.rx);
    if (limits.tx) this.write(DIR.TX, limits.tx);
  }

  /** the limits in force, in the shape setRateLimit takes */
  get(): NetRateLimits {
    return { rx: this.readDirection(DIR.RX), tx: this.readDirection(DIR.TX) };
  }

  private write(dir: number, l: DirectionLimits): void {
    Atomics.add(this.seq, dir, 1);
    const at = dir * DIR_WORDS;
    writeBucket(this.words, at, l.bandwidth);
    writeBucket(this.words, at + BUCKET_WORDS, l.ops);
    Atomics.add(this.seq, dir, 1);
  }

  private readDirection(dir: number): DirectionLimits {
    const at = dir * DIR_WORDS;
    const out: DirectionLimits = {};
    const bw = readBucket(this.words, at);
    const ops = readBucket(this.words, at + BUCKET_WORDS);
    if (bw) out.bandwidth = bw;
    if (ops) out.ops = ops;
    return out;
  }

  /** Dataplane thread: the sequence count of `dir` now (odd: being written, look again later). */
  version(dir: number): number {
    return Atomics.load(this.seq, dir);
  }

  /** Dataplane thread: buckets for `dir` as written at `version` (undefined: no limit), or null if the
   * limits changed while they were read (try again on the next pass). */
  limiter(dir: number, version: number, now: number): DirectionLimiter | undefined | null {
    if (version & 1) return null;
    const at = dir * DIR_WORDS;
    const bytes = bucketAt(this.words, at, now);
    const frames = bucketAt(this.words, at + BUCKET_WORDS, now);
    if (Atomics.load(this.seq, dir) !== version) return null;
    return bytes || frames ? new DirectionLimiter(bytes, frames) : undefined;
  }
}

function writeBucket(w: Float64Array, at: number, b: TokenBucketConfig | null | undefined): void {
  w[at] = b ? b.size : 0;
  w[at + 1] = b ? (b.oneTimeBurst ?? 0) : 0;
  w[at + 2] = b ? b.refillTimeMs : 0;
}

function readBucket(w: Float64Array, at: number): TokenBucketConfig | undefined {
  return w[at] > 0 ? { size: w[at], oneTimeBurst: w[at + 1], refillTimeMs: w[at + 2] } : undefined;
}

function bucketAt(w: Float64Array, at: number, now: number): TokenBucket | undefined {
  const size = w[at];
  const refill = w[at + 2];
  // (the words come from parseNetRateLimits; a torn read is caught by the sequence count, and a size
  // or refill time that is not positive is no bucket rather than a division by zero)
  return size > 0 && refill > 0 ? new TokenBucket(size, w[at + 1], refill, now) : undefined;
}
