// The token bucket's arithmetic (time given by the test) and the shared words the main thread sets
// limits through.
import { describe, it, expect } from 'vitest';
import { DirectionLimiter, TokenBucket } from '../src/dataplane/token-bucket.js';
import { DIR, RateLimitWords } from '../src/dataplane/rate-limit-shared.js';

describe('TokenBucket', () => {
  it('starts full and refills linearly from empty to full in the refill time, never above its size', () => {
    const b = new TokenBucket(1000, 0, 100, 0);
    expect(b.allows(1000)).toBe(true);
    b.take(1000);
    expect(b.allows(1)).toBe(false);
    b.refill(25);
    expect(b.available).toBeCloseTo(250);
    expect(b.allows(250)).toBe(true);
    expect(b.allows(251)).toBe(false);
    b.refill(100);
    expect(b.available).toBeCloseTo(1000);
    b.refill(10_000);
    expect(b.available).toBe(1000);
  });

  it('says how long until an operation may pass, and it may then', () => {
    const b = new TokenBucket(1000, 0, 100, 0);
    b.take(1000);
    expect(b.msUntil(500)).toBeCloseTo(50);
    b.refill(50);
    expect(b.allows(500)).toBe(true);
    expect(b.msUntil(500)).toBe(0);
  });

  it('spends the one-time burst first and never refills it', () => {
    const b = new TokenBucket(10, 5, 100, 0);
    expect(b.available).toBe(15);
    expect(b.allows(15)).toBe(true);
    b.take(3); // from the burst alone
    expect(b.available).toBe(12);
    b.take(4); // the burst's last 2, then 2 from the bucket
    expect(b.available).toBe(8);
    b.refill(1000);
    expect(b.available).toBe(10);
  });

  it('lets an operation larger than the bucket through once the bucket is full, and the debt delays what follows', () => {
    const b = new TokenBucket(1000, 0, 100, 0);
    b.take(10);
    // not full: the over-size operation waits until it is
    expect(b.allows(3000)).toBe(false);
    expect(b.msUntil(3000)).toBeCloseTo(1);
    b.refill(1);
    expect(b.allows(3000)).toBe(true);
    b.take(3000);
    // 2000 tokens of debt at 10 tokens/ms: 200 ms before the bucket is empty again, 200.1 before one
    // token is back
    expect(b.msUntil(1)).toBeCloseTo(200.1);
    b.refill(150);
    expect(b.allows(1)).toBe(false);
    b.refill(201.2);
    expect(b.allows(1)).toBe(true);
  });

  it('over a long run grants size + burst + elapsed · rate tokens and no more, whatever the operation sizes', () => {
    const size = 5000;
    const burst = 700;
    const refill = 20;
    const b = new TokenBucket(size, burst, refill, 0);
    let t = 0;
    let granted = 0;
    const sizes = [60, 1514, 9000, 64, 65_000, 1, 300];
    for (let k = 0; k < 20_000; k++) {
      const len = sizes[k % sizes.length];
      b.refill(t);
      while (!b.allows(len)) {
        t += Math.max(b.msUntil(len), 0.001);
        b.refill(t);
      }
      b.take(len);
      granted += len;
    }
    expect(granted).toBeLessThanOrEqual(size + burst + (t * size) / refill + 1e-3);
    // the limiter waited only as long as it had to: within one largest operation of the bound
    expect(granted).toBeGreaterThan(size + burst + (t * size) / refill - 65_000 - size);
  });

  it('gives back what was taken for an operation that did not happen, up to its size', () => {
    const b = new TokenBucket(100, 0, 100, 0);
    b.take(60);
    b.giveBack(30);
    expect(b.available).toBe(70);
    b.giveBack(1000);
    expect(b.available).toBe(100);
  });
});

describe('DirectionLimiter', () => {
  it('passes a frame only when both buckets allow it, and says how many frames may pass', () => {
    const l = new DirectionLimiter(new TokenBucket(3000, 0, 1000, 0), new TokenBucket(5, 0, 1000, 0));
    expect(l.framesAllowed(1000, 64)).toBe(3); // bytes limit
    expect(l.framesAllowed(100, 64)).toBe(5); // frames limit
    expect(l.framesAllowed(-1, 64)).toBe(1); // length unknown: one at a time
    l.take(5, 500);
    expect(l.allows(100)).toBe(false);
    expect(l.framesAllowed(100, 64)).toBe(0);
    expect(l.msUntil(100)).toBeCloseTo(200); // a frame token takes 200 ms
    l.refill(200);
    expect(l.framesAllowed(100, 64)).toBe(1);
  });

  it('without buckets lets everything through', () => {
    const l = new DirectionLimiter(undefined, undefined);
    expect(l.allows(1e9)).toBe(true);
    expect(l.framesAllowed(1500, 64)).toBe(64);
    expect(l.msUntil(1e9)).toBe(0);
  });
});

describe('RateLimitWords', () => {
  it('carries limits to a reader, replaces a direction given, keeps one absent, removes one set to {}', () => {
    const w = new RateLimitWords();
    const reader = new RateLimitWords(w.buffer);
    expect(reader.limiter(DIR.TX, reader.version(DIR.TX), 0)).toBeUndefined();
    w.set({ tx: { ops: { size: 10, refillTimeMs: 100 } }, rx: { bandwidth: { size: 1000, oneTimeBurst: 50, refillTimeMs: 10 } } });
    const tx = reader.limiter(DIR.TX, reader.version(DIR.TX), 0);
    expect(tx?.frames?.size).toBe(10);
    expect(tx?.bytes).toBeUndefined();
    const rx = reader.limiter(DIR.RX, reader.version(DIR.RX), 0);
    expect(rx?.bytes?.available).toBe(1050);
    const rxVersion = reader.version(DIR.RX);
    w.set({ tx: {} });
    expect(reader.version(DIR.RX)).toBe(rxVersion);
    expect(reader.limiter(DIR.TX, reader.version(DIR.TX), 0)).toBeUndefined();
    expect(w.get()).toEqual({ rx: { bandwidth: { size: 1000, oneTimeBurst: 50, refillTimeMs: 10 } }, tx: {} });
  });

  it('refuses a version read while it was being written (odd) or that changed while the words were read', () => {
    const w = new RateLimitWords();
    w.set({ tx: { ops: { size: 10, refillTimeMs: 100 } } });
    const v = w.version(DIR.TX);
    expect(w.limiter(DIR.TX, v + 1, 0)).toBeNull();
    w.set({ tx: { ops: { size: 20, refillTimeMs: 100 } } });
    expect(w.limiter(DIR.TX, v, 0)).toBeNull();
  });
});
