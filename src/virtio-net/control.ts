// virtio-net's control queue (virtio 1.x §5.1.6.5): its commands taken off the ring, checked against
// what the driver negotiated, and turned into calls on the device; each answered with an ack byte.
// Runs on the main thread, on the vCPU exit of the queue's notification (the slow path).
import type { Virtqueue } from '../virtio/virtqueue.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { RX_MODE, type RxFilter } from './rx-filter.js';
import { F, bit, has } from './features.js';
import { RSS_OFF, parseRssCommand, type RssConfig } from './rss-state.js';

const CTRL = { RX: 0, MAC: 1, MQ: 4, GUEST_OFFLOADS: 5 } as const;
const CTRL_GUEST_OFFLOADS_SET = 0;
const CTRL_MAC_TABLE_SET = 0;
const CTRL_MAC_ADDR_SET = 1;
const CTRL_MQ_VQ_PAIRS_SET = 0;
const CTRL_MQ_RSS_CONFIG = 1;
const CTRL_MQ_HASH_CONFIG = 2;
const ACK_OK = 0;
const ACK_ERR = 1;
/** a command longer than this (the largest is a MAC table) is refused unread */
const CTRL_MAX_BYTES = 4096;

/** the receive offloads a driver may turn on and off (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET), as feature bits */
export const GUEST_OFFLOAD_MASK = [F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN].reduce((a, b) => a | bit(b), 0n);

/** The guest offloads among `features`. */
export function guestOffloads(features: bigint): bigint {
  return features & GUEST_OFFLOAD_MASK;
}

/** What the commands change in the device. */
export interface NetControlTarget {
  /** the features the driver negotiated */
  negotiated(): bigint;
  /** the queue pairs offered */
  readonly queuePairs: number;
  readonly filter: RxFilter;
  setMac(mac: Uint8Array): void;
  setGuestOffloads(bits: bigint): void;
  setPairs(n: number): void;
  /** the RSS / hash-report state (rss-state.ts) */
  setRss(c: RssConfig): void;
  /** why an RSS or hash command was refused (TSVMM_DEBUG_CTRL=1 prints it) */
  refused?(why: string): void;
}

/** One control command (class, command, its data); returns the ack byte. */
export function netControl(t: NetControlTarget, cls: number, cmd: number, data: Uint8Array): number {
  const features = t.negotiated();
  if (cls === CTRL.RX && has(features, F.CTRL_RX)) {
    if (cmd > RX_MODE.NOBCAST || data.length !== 1) return ACK_ERR;
    t.filter.setMode(cmd, data[0] !== 0);
    return ACK_OK;
  }
  if (cls === CTRL.MAC && cmd === CTRL_MAC_ADDR_SET && has(features, F.CTRL_MAC_ADDR)) {
    if (data.length !== 6 || data[0] & 1) return ACK_ERR;
    t.setMac(data);
    return ACK_OK;
  }
  if (cls === CTRL.MAC && cmd === CTRL_MAC_TABLE_SET && has(features, F.CTRL_RX)) return t.filter.setTablesCommand(data) ? ACK_OK : ACK_ERR;
  if (cls === CTRL.GUEST_OFFLOADS && cmd === CTRL_GUEST_OFFLOADS_SET && has(features, F.CTRL_GUEST_OFFLOADS)) {
    if (data.length !== 8) return ACK_ERR;
    const want = new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true);
    // only offloads it negotiated (§5.1.6.5.6.2), and never any other bit
    if (want & ~guestOffloads(features)) return ACK_ERR;
    t.setGuestOffloads(want);
    return ACK_OK;
  }
  if (cls === CTRL.MQ) return mqControl(t, features, cmd, data);
  return ACK_ERR;
}

/**
 * VIRTIO_NET_CTRL_MQ: the pairs in use, RSS (which also sets the pairs), hash reports. As in QEMU, every
 * MQ command turns RSS and hashing off first: a refused one leaves them off, VQ_PAIRS_SET too.
 */
function mqControl(t: NetControlTarget, features: bigint, cmd: number, data: Uint8Array): number {
  if (has(features, F.RSS) || has(features, F.HASH_REPORT)) t.setRss(RSS_OFF);
  if (cmd === CTRL_MQ_RSS_CONFIG || cmd === CTRL_MQ_HASH_CONFIG) {
    const steer = cmd === CTRL_MQ_RSS_CONFIG;
    if (!has(features, steer ? F.RSS : F.HASH_REPORT)) return t.refused?.(`${steer ? 'RSS' : 'HASH_REPORT'} not negotiated (features 0x${features.toString(16)})`), ACK_ERR;
    const r = parseRssCommand(data, steer, t.queuePairs);
    if (typeof r === 'string') return t.refused?.(`${steer ? 'RSS_CONFIG' : 'HASH_CONFIG'}: ${r}`), ACK_ERR;
    t.setRss(r.config);
    if (r.pairs !== undefined) t.setPairs(r.pairs);
    return ACK_OK;
  }
  if (cmd === CTRL_MQ_VQ_PAIRS_SET && has(features, F.MQ)) {
    if (data.length !== 2) return ACK_ERR;
    const n = data[0] | (data[1] << 8);
    if (n < 1 || n > t.queuePairs) return ACK_ERR;
    t.setPairs(n);
    return ACK_OK;
  }
  return ACK_ERR;
}

/**
 * Take every command the driver has made available: each is copied out (the driver cannot change it
 * while it is handled), handled, and answered in its last writable byte. A chain too short or too long
 * to be a command is returned unanswered. The used ring is flushed and kicks re-enabled at the end.
 */
export function serveControlQueue(q: Virtqueue, mem: GuestBytes, log: DirtyLog | undefined, handle: (cls: number, cmd: number, data: Uint8Array) => number): void {
  while (q.pop()) {
    const c = q.chain;
    if (c.writable < 1 || c.readableBytes < 2 || c.readableBytes > CTRL_MAX_BYTES) {
      q.addUsed(c.head, 0);
      continue;
    }
    const cmd = new Uint8Array(c.readableBytes);
    let at = 0;
    for (let i = 0; i < c.readable; i++) {
      mem.copyOut(c.offsets[i], cmd, at, c.lens[i]);
      at += c.lens[i];
    }
    const ack = handle(cmd[0], cmd[1], cmd.subarray(2));
    // the ack is the last writable byte
    const last = c.count - 1;
    if (c.lens[last] === 0) {
      q.addUsed(c.head, 0);
      continue;
    }
    mem.setU8(c.offsets[last] + c.lens[last] - 1, ack);
    log?.markOffset(c.offsets[last] + c.lens[last] - 1, 1);
    q.addUsed(c.head, 1);
  }
  q.flush();
  // ask for the next command's notification (EVENT_IDX: avail_event past what we took)
  q.setKicks(true);
}
