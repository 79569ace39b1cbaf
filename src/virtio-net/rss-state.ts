// RSS and hash-report state: set by the control queue (VIRTIO_NET_CTRL_MQ_RSS_CONFIG, HASH_CONFIG) on
// the main thread, read by every dataplane thread. It lives in shared words under a sequence count
// (odd while the main thread writes): a thread copies it once per pass when the count moved, and takes
// the copy only if the count did not move meanwhile, so it never steers with half of an update.
import { RSS_KEY_SIZE } from './toeplitz.js';
import { SUPPORTED_HASH_TYPES } from './rss-classify.js';

/** the device's rss_max_indirection_table_length (QEMU's VIRTIO_NET_RSS_MAX_TABLE_LEN) */
export const RSS_MAX_TABLE = 128;
/** the device's rss_max_key_size */
export const RSS_MAX_KEY = RSS_KEY_SIZE;

/** off: no hash; hash: hashes reported, frames stay on the queue that read them; steer: RSS */
export const RSS_MODE = { OFF: 0, HASH: 1, STEER: 2 } as const;

export interface RssConfig {
  mode: number;
  hashTypes: number;
  /** queue-pair index per entry; its length is a power of two ≤ RSS_MAX_TABLE (1 without steering) */
  table: Uint16Array;
  /** the pair that takes frames no hash was computed for */
  unclassified: number;
  key: Uint8Array;
}

export const RSS_OFF: RssConfig = { mode: RSS_MODE.OFF, hashTypes: 0, table: new Uint16Array(1), unclassified: 0, key: new Uint8Array(0) };

const W_SEQ = 0;
const W_MODE = 1;
const W_TYPES = 2;
const W_TABLE_LEN = 3;
const W_UNCLASSIFIED = 4;
const W_KEY_LEN = 5;
const WORDS = 6;
const KEY_OFF = WORDS * 4;
const TABLE_OFF = KEY_OFF + RSS_MAX_KEY;
export const RSS_STATE_BYTES = TABLE_OFF + 2 * RSS_MAX_TABLE;

export class RssWords {
  private readonly words: Int32Array;
  private readonly bytes: Uint8Array;
  private readonly table: Uint16Array;

  /** Without `buffer`, a new state, off; with it, a view of the state another thread made. */
  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(RSS_STATE_BYTES);
    this.words = new Int32Array(this.buffer, 0, WORDS);
    this.bytes = new Uint8Array(this.buffer);
    this.table = new Uint16Array(this.buffer, TABLE_OFF, RSS_MAX_TABLE);
    if (!buffer) this.set(RSS_OFF);
  }
  readonly buffer: SharedArrayBuffer;

  /** (main thread) Replace the state with `c` (validated by the caller). */
  set(c: RssConfig): void {
    const w = this.words;
    Atomics.add(w, W_SEQ, 1);
    Atomics.store(w, W_MODE, c.mode);
    Atomics.store(w, W_TYPES, c.hashTypes);
    Atomics.store(w, W_TABLE_LEN, c.table.length);
    Atomics.store(w, W_UNCLASSIFIED, c.unclassified);
    Atomics.store(w, W_KEY_LEN, c.key.length);
    this.bytes.fill(0, KEY_OFF, KEY_OFF + RSS_MAX_KEY);
    this.bytes.set(c.key, KEY_OFF);
    this.table.set(c.table);
    Atomics.add(w, W_SEQ, 1);
  }

  /** the sequence count: it moved since a reader's copy when the state changed */
  get seq(): number {
    return Atomics.load(this.words, W_SEQ);
  }

  /**
   * (dataplane thread) A consistent copy into `out` (its table and key arrays full size, reused), or
   * false while the main thread writes or when it wrote meanwhile (try again on the next pass).
   * `out.table` holds tableLen entries; the length is returned in `out.mode`'s companion fields.
   */
  read(out: RssSnapshot): boolean {
    const w = this.words;
    const s = Atomics.load(w, W_SEQ);
    if (s & 1) return false;
    out.mode = Atomics.load(w, W_MODE);
    out.hashTypes = Atomics.load(w, W_TYPES);
    out.tableLen = Atomics.load(w, W_TABLE_LEN);
    out.unclassified = Atomics.load(w, W_UNCLASSIFIED);
    out.keyLen = Atomics.load(w, W_KEY_LEN);
    out.key.set(this.bytes.subarray(KEY_OFF, KEY_OFF + RSS_MAX_KEY));
    out.table.set(this.table);
    if (Atomics.load(w, W_SEQ) !== s) return false;
    out.seq = s;
    return true;
  }

  /** the state as the guest set it (for the device's saved state and tests) */
  get(): RssConfig {
    const s = newRssSnapshot();
    while (!this.read(s));
    return { mode: s.mode, hashTypes: s.hashTypes, table: s.table.slice(0, s.tableLen), unclassified: s.unclassified, key: s.key.slice(0, s.keyLen) };
  }
}

/** A thread's copy of the RSS state. */
export interface RssSnapshot {
  seq: number;
  mode: number;
  hashTypes: number;
  tableLen: number;
  unclassified: number;
  keyLen: number;
  key: Uint8Array;
  table: Uint16Array;
}

export function newRssSnapshot(): RssSnapshot {
  return { seq: -1, mode: RSS_MODE.OFF, hashTypes: 0, tableLen: 1, unclassified: 0, keyLen: 0, key: new Uint8Array(RSS_MAX_KEY), table: new Uint16Array(RSS_MAX_TABLE) };
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/**
 * Why `c` cannot be this device's RSS state (queue pairs `pairs` offered), or undefined: the checks the
 * control commands and a restored document share.
 */
export function rssConfigProblem(c: RssConfig, pairs: number): string | undefined {
  if (c.mode !== RSS_MODE.OFF && c.mode !== RSS_MODE.HASH && c.mode !== RSS_MODE.STEER) return `mode ${c.mode}`;
  if (c.hashTypes & ~SUPPORTED_HASH_TYPES) return `hash types 0x${c.hashTypes.toString(16)} beyond the supported 0x${SUPPORTED_HASH_TYPES.toString(16)}`;
  if (!isPow2(c.table.length) || c.table.length > RSS_MAX_TABLE) return `indirection table of ${c.table.length} entries (a power of two up to ${RSS_MAX_TABLE})`;
  for (let i = 0; i < c.table.length; i++) if (c.table[i] >= pairs) return `indirection table entry ${i} names queue ${c.table[i]}, the device has ${pairs}`;
  if (c.unclassified >= pairs) return `unclassified queue ${c.unclassified}, the device has ${pairs}`;
  if (c.key.length > RSS_MAX_KEY) return `key of ${c.key.length} bytes (at most ${RSS_MAX_KEY})`;
  if (c.hashTypes !== 0 && c.key.length === 0) return 'hash types without a key';
  return undefined;
}

/**
 * VIRTIO_NET_CTRL_MQ_RSS_CONFIG's body (struct virtio_net_rss_config) or, `steer` false, HASH_CONFIG's
 * (struct virtio_net_hash_config), little-endian; `pairs`: the pairs the device offers. Returns the
 * state and the queue pairs the command puts in use (RSS: max_tx_vq, and every receive queue it names;
 * HASH_CONFIG: undefined, no change), or a reason to refuse it.
 */
export function parseRssCommand(data: Uint8Array, steer: boolean, pairs: number): { config: RssConfig; pairs?: number } | string {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.length < 13) return `${data.length} bytes`;
  const hashTypes = dv.getUint32(0, true);
  let at: number;
  let table: Uint16Array;
  let unclassified = 0;
  let txPairs: number | undefined;
  if (steer) {
    const len = dv.getUint16(4, true) + 1;
    unclassified = dv.getUint16(6, true);
    if (!isPow2(len) || len > RSS_MAX_TABLE) return `indirection table of ${len} entries`;
    at = 8 + 2 * len;
    if (data.length < at + 3) return `${data.length} bytes for a table of ${len}`;
    table = new Uint16Array(len);
    for (let i = 0; i < len; i++) table[i] = dv.getUint16(8 + 2 * i, true);
    txPairs = dv.getUint16(at, true);
    at += 2;
    if (txPairs < 1 || txPairs > pairs) return `max_tx_vq ${txPairs}, the device has ${pairs} pairs`;
  } else {
    // (hash_types, then four reserved le16 words as in virtio_net_rss_config)
    table = new Uint16Array(1);
    at = 12;
  }
  const keyLen = data[at++];
  // (bytes after the key are ignored, as QEMU does: Linux sends its trailer struct padded to 2 bytes)
  if (data.length < at + keyLen) return `${data.length} bytes, a key of ${keyLen} makes ${at + keyLen}`;
  // (no hash types and no key turns hashing off, as QEMU does; RSS with a key but no hash types sends
  // every frame to the unclassified queue)
  const off = hashTypes === 0 && (keyLen === 0 || !steer);
  const config: RssConfig = { mode: off ? RSS_MODE.OFF : steer ? RSS_MODE.STEER : RSS_MODE.HASH, hashTypes, table, unclassified, key: data.slice(at, at + keyLen) };
  const bad = rssConfigProblem(config, pairs);
  if (bad) return bad;
  if (txPairs === undefined) return { config };
  let used = Math.max(txPairs, unclassified + 1);
  for (const q of table) used = Math.max(used, q + 1);
  return { config, pairs: used };
}
