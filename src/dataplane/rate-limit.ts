// Rate limits of a net device's queues: token buckets per direction, one for bytes (bandwidth) and one
// for frames (operations), with Firecracker's semantics so that its users' numbers mean the same here.

/** One token bucket: `size` tokens, refilled linearly from empty to full in `refillTimeMs`; `oneTimeBurst`
 * extra tokens spent first and never refilled. */
export interface TokenBucketConfig {
  size: number;
  oneTimeBurst?: number;
  refillTimeMs: number;
}

/** The limits of one direction; an absent or null bucket is unlimited. */
export interface DirectionLimits {
  bandwidth?: TokenBucketConfig | null;
  ops?: TokenBucketConfig | null;
}

/** `rx`: frames towards the guest; `tx`: frames from the guest. An absent direction is left as it is by
 * setRateLimit; `{}` (both buckets absent) removes its limits. */
export interface NetRateLimits {
  rx?: DirectionLimits;
  tx?: DirectionLimits;
}

/** The largest accepted bucket size and burst (bytes or frames) and refill time: above these a number is a
 * mistake, not a limit (2^40 bytes is a terabyte; a refill time of a day). */
export const MAX_BUCKET_TOKENS = 2 ** 40;
export const MAX_REFILL_MS = 86_400_000;

/** Checks `v` (from a caller or an API request) is a NetRateLimits; throws an Error whose message is one
 * line naming the bad field. */
export function parseNetRateLimits(v: unknown): NetRateLimits {
  const out: NetRateLimits = {};
  const obj = expectObject(v, 'rate limits');
  for (const key of Object.keys(obj)) {
    if (key !== 'rx' && key !== 'tx') throw new Error(`rate limits: unknown field "${key}" (rx, tx)`);
    const dir = expectObject(obj[key], key);
    const limits: DirectionLimits = {};
    for (const kind of Object.keys(dir)) {
      if (kind !== 'bandwidth' && kind !== 'ops') throw new Error(`${key}: unknown field "${kind}" (bandwidth, ops)`);
      limits[kind] = dir[kind] === null ? null : parseBucket(dir[kind], `${key}.${kind}`);
    }
    out[key] = limits;
  }
  return out;
}

function parseBucket(v: unknown, where: string): TokenBucketConfig {
  const b = expectObject(v, where);
  for (const key of Object.keys(b)) {
    if (!['size', 'oneTimeBurst', 'refillTimeMs'].includes(key)) throw new Error(`${where}: unknown field "${key}" (size, oneTimeBurst, refillTimeMs)`);
  }
  const size = integer(b.size, `${where}.size`, 1, MAX_BUCKET_TOKENS);
  const refillTimeMs = integer(b.refillTimeMs, `${where}.refillTimeMs`, 1, MAX_REFILL_MS);
  const oneTimeBurst = b.oneTimeBurst === undefined ? 0 : integer(b.oneTimeBurst, `${where}.oneTimeBurst`, 0, MAX_BUCKET_TOKENS);
  return { size, oneTimeBurst, refillTimeMs };
}

function expectObject(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: expected an object`);
  return v as Record<string, unknown>;
}

function integer(v: unknown, where: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${where}: expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return v;
}
