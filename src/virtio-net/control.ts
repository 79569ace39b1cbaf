// virtio-net's control queue (virtio 1.x §5.1.6.5): its commands taken off the ring, checked against
// what the driver negotiated, and turned into calls on the device; each answered with an ack byte.
// Runs on the main thread, on the vCPU exit of the queue's notification (the slow path).
import type { Virtqueue } from '../virtio/virtqueue.js';
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { DirtyLog } from '../virtio/dirty-log.js';
import { RX_MODE, type RxFilter } from './rx-filter.js';
import { F, bit, has } from './features.js';
import { coalesceCommand, type CoalesceTarget } from './coalesce.js';
import { RSS_OFF, parseRssCommand, type RssConfig } from './rss-state.js';

const CTRL = { RX: 0, MAC: 1, VLAN: 2, ANNOUNCE: 3, MQ: 4, GUEST_OFFLOADS: 5, NOTF_COAL: 6 } as const;
const CTRL_VLAN_ADD = 0;
const CTRL_VLAN_DEL = 1;
const CTRL_ANNOUNCE_ACK = 0;
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
export const GUEST_OFFLOAD_MASK = [F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN, F.GUEST_USO4, F.GUEST_USO6].reduce((a, b) => a | bit(b), 0n);

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
  /** the driver has announced itself: VIRTIO_NET_S_ANNOUNCE is cleared */
  announced(): void;
  /** notification coalescing's parameters and which queues are enabled (coalesce.ts) */
  readonly coalesce: CoalesceTarget;
  /** the RSS / hash-report state (rss-state.ts) */
  setRss(c: RssConfig): void;
  /** why an RSS or hash command was refused (TSVMM_DEBUG_CTRL=1 prints it) */
  refused?(why: string): void;
}

/** What a command answers besides its ack (VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET's parameters), set by netControl. */
export interface ControlReply {
  bytes?: Uint8Array;
}

/** One control command (class, command, its data); returns the ack byte, and any answer in `reply`. */
export function netControl(t: NetControlTarget, cls: number, cmd: number, data: Uint8Array, reply: ControlReply = {}): number {
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
  if (cls === CTRL.VLAN && (cmd === CTRL_VLAN_ADD || cmd === CTRL_VLAN_DEL) && has(features, F.CTRL_VLAN)) {
    // a le16 id, 12 bits (setVlan refuses more)
    if (data.length !== 2) return ACK_ERR;
    return t.filter.setVlan(data[0] | (data[1] << 8), cmd === CTRL_VLAN_ADD) ? ACK_OK : ACK_ERR;
  }
  if (cls === CTRL.GUEST_OFFLOADS && cmd === CTRL_GUEST_OFFLOADS_SET && has(features, F.CTRL_GUEST_OFFLOADS)) {
    if (data.length !== 8) return ACK_ERR;
    const want = new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true);
    // only offloads it negotiated (§5.1.6.5.6.2), and never any other bit
    if (want & ~guestOffloads(features)) return ACK_ERR;
    t.setGuestOffloads(want);
    return ACK_OK;
  }
  if (cls === CTRL.ANNOUNCE && cmd === CTRL_ANNOUNCE_ACK && has(features, F.GUEST_ANNOUNCE)) {
    if (data.length !== 0) return ACK_ERR;
    t.announced();
    return ACK_OK;
  }
  if (cls === CTRL.NOTF_COAL && has(features, F.NOTF_COAL)) return coalesceCommand(t.coalesce, cmd, data, reply) ? ACK_OK : ACK_ERR;
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
 * while it is handled), handled, and answered in its last writable byte, after the command's reply (if
 * it has one) in the writable bytes before it; a reply they cannot hold turns the ack into an error. A
 * chain too short or too long to be a command is returned unanswered. The used ring is flushed and
 * kicks re-enabled at the end.
 */
export function serveControlQueue(q: Virtqueue, mem: GuestBytes, log: DirtyLog | undefined, handle: (cls: number, cmd: number, data: Uint8Array, reply: ControlReply) => number): void {
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
    const reply: ControlReply = {};
    let ack = handle(cmd[0], cmd[1], cmd.subarray(2), reply);
    // the ack is the last writable byte
    const last = c.count - 1;
    if (c.lens[last] === 0) {
      q.addUsed(c.head, 0);
      continue;
    }
    const r = reply.bytes;
    let written = 0;
    if (r !== undefined && ack === ACK_OK) {
      if (c.writableBytes < r.length + 1) ack = ACK_ERR;
      else written = writeReply(c.offsets, c.lens, c.readable, c.count, r, mem, log);
    }
    mem.setU8(c.offsets[last] + c.lens[last] - 1, ack);
    log?.markOffset(c.offsets[last] + c.lens[last] - 1, 1);
    q.addUsed(c.head, written + 1);
  }
  q.flush();
  // ask for the next command's notification (EVENT_IDX: avail_event past what we took)
  q.setKicks(true);
}

/** Write `r` into the writable buffers (those from index `first` to `count`) from their start; returns its length. */
function writeReply(offsets: Float64Array, lens: Uint32Array, first: number, count: number, r: Uint8Array, mem: GuestBytes, log: DirtyLog | undefined): number {
  let at = 0;
  for (let i = first; i < count && at < r.length; i++) {
    const n = Math.min(lens[i], r.length - at);
    mem.copyIn(offsets[i], r, at, n);
    log?.markOffset(offsets[i], n);
    at += n;
  }
  return r.length;
}
