// The virtio-pci transport's registers as a state document holds them, and their checks on restore:
// what the driver programmed (status, features, queue registers, MSI-X table) and where each live
// queue's ring stands (RingState, from the device: its threads' last positions).
import { STATUS, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, has } from '../../virtio/device.js';
import type { RingState } from '../../virtio/virtqueue.js';
import { Fields, StateError, checkBytes, u64Bytes, type StateValue } from '../../state/fields.js';

/**
 * One queue's registers as the driver programs them. The transport does not know the ring layout (the
 * features decide it at DRIVER_OK): `desc` is queue_desc, the descriptor table (split) or ring (packed);
 * `avail` is queue_driver, the available ring or the driver event suppression area; `used` is
 * queue_device, the used ring or the device event suppression area. Sizes, alignments and placement
 * are checked for the negotiated layout when the queue is created (src/virtio/queues.ts): a split size
 * must be a power of two, a packed one need not be.
 */
export interface QueueRegs {
  size: number;
  msixVector: number;
  enable: number;
  desc: number;
  avail: number;
  used: number;
}

/** A queue's registers in a state document, and where its ring stood. */
export interface SavedQueue extends QueueRegs {
  /** where the ring stood (undefined: the queue was not live) */
  ring?: RingState;
}

export interface TransportState {
  status: number;
  generation: number;
  dfSelect: number;
  gfSelect: number;
  driverFeatures: bigint;
  msixConfig: number;
  queueSelect: number;
  isr: number;
  brokenReason?: string;
  /** the MSI-X table's words (4 per vector) */
  msixTable: Uint32Array;
  queues: SavedQueue[];
}

/** What the transport restoring checks a document against: the device it was built with. */
export interface TransportShape {
  features: bigint;
  numQueues: number;
  maxQueueSize: number;
  vectors: number;
}

const NO_VECTOR = 0xffff;
/** a device address (guest-physical or IOVA) as the transport keeps it: a safe integer */
const MAX_ADDR = Number.MAX_SAFE_INTEGER;

export function encodeTransport(s: TransportState, device: StateValue): StateValue {
  return {
    status: s.status,
    generation: s.generation,
    dfSelect: s.dfSelect,
    gfSelect: s.gfSelect,
    driverFeatures: u64Bytes(s.driverFeatures),
    msixConfig: s.msixConfig,
    queueSelect: s.queueSelect,
    isr: s.isr,
    brokenReason: s.brokenReason ?? null,
    msixTable: new Uint8Array(s.msixTable.buffer.slice(s.msixTable.byteOffset, s.msixTable.byteOffset + s.msixTable.byteLength)),
    queues: s.queues.map((q) => ({
      size: q.size,
      msixVector: q.msixVector,
      enable: q.enable,
      desc: q.desc,
      avail: q.avail,
      used: q.used,
      ring: q.ring ? { nextAvail: q.ring.nextAvail, nextUsed: q.ring.nextUsed, availWrap: q.ring.availWrap, usedWrap: q.ring.usedWrap } : null,
    })),
    device,
  };
}

/** The transport's fields of `f`, checked against the device (`device` is left for the device to read). */
export function readTransport(f: Fields, shape: TransportShape): TransportState {
  const status = f.uint('status', 0xff);
  const driverFeatures = f.u64('driverFeatures');
  const live = (status & STATUS.DRIVER_OK) !== 0;
  if (status & STATUS.FEATURES_OK && ((driverFeatures & ~shape.features) !== 0n || !has(driverFeatures, VIRTIO_F_VERSION_1)))
    throw new StateError(`${f.path}.driverFeatures: 0x${driverFeatures.toString(16)} accepted, but this device offers 0x${shape.features.toString(16)}`);
  if (live && !(status & STATUS.FEATURES_OK)) throw new StateError(`${f.path}.status: DRIVER_OK without FEATURES_OK`);
  const packed = has(driverFeatures, VIRTIO_F_RING_PACKED);
  const brokenReason = f.any('brokenReason');
  if (brokenReason !== null && (typeof brokenReason !== 'string' || brokenReason.length > 512)) throw new StateError(`${f.path}.brokenReason: not a string or nil`);
  const table = checkBytes(f.any('msixTable'), `${f.path}.msixTable`, shape.vectors * 16);
  const queues = f.list('queues', shape.numQueues, (v, path) => readQueue(new Fields(v, path), shape, live, packed));
  if (queues.length !== shape.numQueues) throw new StateError(`${f.path}.queues: ${queues.length} saved, this device has ${shape.numQueues}`);
  return {
    status,
    driverFeatures,
    generation: f.uint('generation', 0xff),
    dfSelect: f.uint('dfSelect', 0xffffffff),
    gfSelect: f.uint('gfSelect', 0xffffffff),
    msixConfig: f.uint('msixConfig', 0xffff),
    queueSelect: f.uint('queueSelect', 0xffff),
    isr: f.uint('isr', 3),
    brokenReason: brokenReason ?? undefined,
    msixTable: new Uint32Array(table.slice().buffer),
    queues,
  };
}

function readQueue(q: Fields, shape: TransportShape, live: boolean, packed: boolean): SavedQueue {
  const size = q.uint('size', shape.maxQueueSize);
  const msixVector = q.uint('msixVector', 0xffff);
  if (msixVector !== NO_VECTOR && msixVector >= shape.vectors) throw new StateError(`${q.path}.msixVector: ${msixVector}, this device has ${shape.vectors} vectors`);
  const enable = q.uint('enable', 1);
  const saved: SavedQueue = { size, msixVector, enable, desc: q.uint('desc', MAX_ADDR), avail: q.uint('avail', MAX_ADDR), used: q.uint('used', MAX_ADDR) };
  saved.ring = q.optional('ring', (r) => {
    // a packed ring's positions are slots of the ring; a split ring's free-running 16-bit indices
    const max = packed ? Math.max(size - 1, 0) : 0xffff;
    const s: RingState = { nextAvail: r.uint('nextAvail', max), nextUsed: r.uint('nextUsed', max), availWrap: r.bool('availWrap'), usedWrap: r.bool('usedWrap') };
    r.done();
    return s;
  });
  if (saved.ring && !(live && enable)) throw new StateError(`${q.path}.ring: a position for a queue that is not live`);
  q.done();
  return saved;
}
