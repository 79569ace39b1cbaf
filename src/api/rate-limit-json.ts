// The rate limiter fields of PATCH /net/{id} in Firecracker's JSON shape (rx_rate_limiter,
// tx_rate_limiter: {bandwidth, ops} buckets of {size, one_time_burst, refill_time}), mapped onto the
// library's NetRateLimits and checked by its parseNetRateLimits. As in Firecracker, a bucket whose size
// or refill_time is 0 is no limit; an empty limiter `{}` removes both of its direction's limits.
import { parseNetRateLimits, type NetRateLimits } from '../dataplane/rate-limit.js';

/** Firecracker's names of the two limiters, and the direction each limits. */
export const LIMITER_FIELDS = { rx_rate_limiter: 'rx', tx_rate_limiter: 'tx' } as const;

/**
 * The limits a request's `rx_rate_limiter` / `tx_rate_limiter` fields ask for (fields absent: that
 * direction is left as it is), or undefined when it has neither. Throws an Error whose message is one
 * line naming the bad field.
 */
export function rateLimitsFromJson(body: Record<string, unknown>): NetRateLimits | undefined {
  const out: Record<string, unknown> = {};
  for (const [field, dir] of Object.entries(LIMITER_FIELDS)) {
    if (body[field] !== undefined) out[dir] = limiter(body[field], field);
  }
  if (Object.keys(out).length === 0) return undefined;
  // (the library's own check: ranges, integers; its messages name the library's fields: renamed back)
  try {
    return parseNetRateLimits(out);
  } catch (e) {
    const m = (e as Error).message.replace(/^(rx|tx)\./, '$1_rate_limiter.').replace(/\.refillTimeMs\b/, '.refill_time').replace(/\.oneTimeBurst\b/, '.one_time_burst');
    throw new Error(m);
  }
}

function limiter(v: unknown, where: string): Record<string, unknown> {
  const o = object(v, where);
  const limits: Record<string, unknown> = {};
  for (const key of Object.keys(o)) {
    if (key !== 'bandwidth' && key !== 'ops') throw new Error(`${where}: unknown field "${key}" (bandwidth, ops)`);
    limits[key] = o[key] === null ? null : bucket(o[key], `${where}.${key}`);
  }
  return limits;
}

/** A Firecracker token bucket as the library's (null: no limit). */
function bucket(v: unknown, where: string): Record<string, unknown> | null {
  const b = object(v, where);
  for (const key of Object.keys(b)) {
    if (!['size', 'one_time_burst', 'refill_time'].includes(key)) throw new Error(`${where}: unknown field "${key}" (size, one_time_burst, refill_time)`);
  }
  if (b.size === undefined || b.refill_time === undefined) throw new Error(`${where}: size and refill_time are required`);
  if (b.size === 0 || b.refill_time === 0) return null;
  // (values are checked by parseNetRateLimits; renamed here only)
  return { size: b.size, refillTimeMs: b.refill_time, ...(b.one_time_burst !== undefined ? { oneTimeBurst: b.one_time_burst } : {}) };
}

function object(v: unknown, where: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: expected an object`);
  return v as Record<string, unknown>;
}
