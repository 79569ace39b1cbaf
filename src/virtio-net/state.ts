// virtio-net's own part of a state document, checked against the device it is restored into: the
// configuration space (what the host chose — pairs offered, MTU, speed, duplex — must be this
// device's; the MAC and link are the guest's and the host's doing), the RX filter bytes (its VLAN
// table included), the pairs in use, the receive offloads on, each queue's notification coalescing,
// the RSS / hash-report state, and the rate limits in force (the host's, setRateLimit's included: like
// the link, they come back as they were, whatever the restoring configuration says).
import { StateError, type Fields, type StateValue } from '../state/fields.js';
import { MAX_BUCKET_TOKENS, MAX_REFILL_MS, type DirectionLimits, type NetRateLimits, type TokenBucketConfig } from '../dataplane/rate-limit.js';
import { NET_STATUS_ANNOUNCE, NET_STATUS_LINK_UP } from './config-space.js';
import { RSS_MAX_KEY, RSS_MAX_TABLE, rssConfigProblem, type RssConfig } from './rss-state.js';

export interface NetState {
  config: Uint8Array;
  filter: Uint8Array;
  pairs: number;
  offloads: bigint;
  /** per RX and TX queue: le32 max_packets, le32 max_usecs (coalesce.ts) */
  coalesce: Uint8Array;
  rss: RssConfig;
  /** both directions, each bucket given or absent (restored exactly: `{}` removes a direction's limits) */
  rateLimits: Required<NetRateLimits>;
}

/** The rate limits as a document holds them: per direction both buckets, nil where there is none. */
export function saveRateLimits(l: NetRateLimits): StateValue {
  const bucket = (b: TokenBucketConfig | null | undefined): StateValue => (b ? { size: b.size, oneTimeBurst: b.oneTimeBurst ?? 0, refillTimeMs: b.refillTimeMs } : null);
  const dir = (d: DirectionLimits | undefined): StateValue => ({ bandwidth: bucket(d?.bandwidth), ops: bucket(d?.ops) });
  return { rx: dir(l.rx), tx: dir(l.tx) };
}

/** The rate limits of a document, checked as setRateLimit checks them. */
export function readRateLimits(f: Fields): Required<NetRateLimits> {
  const dir = (d: Fields): DirectionLimits => {
    const out: DirectionLimits = {};
    for (const kind of ['bandwidth', 'ops'] as const) {
      const b = d.optional(kind, (b) => b);
      if (!b) continue;
      const size = b.uint('size', MAX_BUCKET_TOKENS);
      const oneTimeBurst = b.uint('oneTimeBurst', MAX_BUCKET_TOKENS);
      const refillTimeMs = b.uint('refillTimeMs', MAX_REFILL_MS);
      b.done();
      if (size === 0 || refillTimeMs === 0) throw new StateError(`${b.path}: a bucket of size ${size} refilled in ${refillTimeMs} ms`);
      out[kind] = { size, oneTimeBurst, refillTimeMs };
    }
    d.done();
    return out;
  };
  const l = { rx: dir(f.obj('rx')), tx: dir(f.obj('tx')) };
  f.done();
  return l;
}

/** The RSS state as a document holds it (the table as little-endian u16 bytes). */
export function saveRss(c: RssConfig): StateValue {
  const table = new Uint8Array(2 * c.table.length);
  c.table.forEach((q, i) => new DataView(table.buffer).setUint16(2 * i, q, true));
  return { mode: c.mode, hashTypes: c.hashTypes, table, unclassified: c.unclassified, key: c.key.slice() };
}

/** The RSS state of a document, checked as the control commands check it (`pairs`: the pairs offered). */
export function readRss(f: Fields, pairs: number): RssConfig {
  const t = f.bytes('table', { min: 2, max: 2 * RSS_MAX_TABLE, multiple: 2 });
  const c: RssConfig = {
    mode: f.uint('mode', 2),
    hashTypes: f.uint('hashTypes', 0xffffffff),
    table: Uint16Array.from({ length: t.length / 2 }, (_, i) => t[2 * i] | (t[2 * i + 1] << 8)),
    unclassified: f.uint('unclassified', 0xffff),
    key: f.bytes('key', { min: 0, max: RSS_MAX_KEY }).slice(),
  };
  f.done();
  const bad = rssConfigProblem(c, pairs);
  if (bad) throw new StateError(`${f.path}: ${bad}`);
  return c;
}

/** `device`: its configuration space now, the pairs it offers, the offload bits a driver may turn on. */
export function readNetState(f: Fields, device: { config: Uint8Array; queuePairs: number; offloads: bigint }): NetState {
  const here = device.config;
  const s: NetState = {
    config: f.bytes('config', here.length),
    filter: f.bytes('filter', { min: 0, max: 4096 }),
    pairs: f.uint('activePairs', device.queuePairs),
    offloads: f.u64('offloads'),
    coalesce: f.bytes('coalesce', 16 * device.queuePairs),
    rss: readRss(f.obj('rss'), device.queuePairs),
    rateLimits: readRateLimits(f.obj('rateLimits')),
  };
  f.done();
  const c = s.config;
  for (let i = 8; i < here.length; i++) if (c[i] !== here[i]) throw new StateError(`${f.path}.config: byte ${i} is ${c[i]}, this device has ${here[i]} (queue pairs, MTU, speed or duplex differ)`);
  if (c[0] & 1) throw new StateError(`${f.path}.config: a multicast MAC`);
  if (c[7] !== 0 || c[6] & ~(NET_STATUS_LINK_UP | NET_STATUS_ANNOUNCE)) throw new StateError(`${f.path}.config: status 0x${(c[6] | (c[7] << 8)).toString(16)}`);
  if (s.pairs < 1) throw new StateError(`${f.path}.activePairs: 0`);
  if (s.offloads & ~device.offloads) throw new StateError(`${f.path}.offloads: 0x${s.offloads.toString(16)} has bits that are no receive offload`);
  return s;
}
