// What a virtio device model provides to a transport (virtio-pci here; vhost-user feeds the same
// dataplane by other means), and what the transport hands it when the driver sets DRIVER_OK.
import type { QueueConfig, RingState } from './virtqueue.js';
import type { Fields, StateValue } from '../state/fields.js';

export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
/** the device's addresses go through the platform's IOMMU (they are IOVAs) */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;

/** feature bit n as a mask */
export const bit = (n: number): bigint => 1n << BigInt(n);
/** whether feature bit n is set in `features` */
export const has = (features: bigint, n: number): boolean => (features & bit(n)) !== 0n;

export interface ActiveQueue extends QueueConfig {
  index: number;
  /** eventfd the guest's notifications arrive on (a KVM ioeventfd), or -1 when the transport calls kick() */
  kickFd: number;
  /** eventfd that interrupts the guest for this queue (a KVM irqfd), or -1 for none */
  callFd: number;
  /** where the ring starts (a restored device: where it stood when saved); default its beginning */
  start?: RingState;
}

export interface Activation {
  features: bigint;
  queues: ActiveQueue[];
  /** the device found the driver misbehaving: the transport sets DEVICE_NEEDS_RESET and tells the driver */
  needsReset(reason: string): void;
  /** raise the configuration-change interrupt (e.g. link status) */
  configChanged(): void;
}

export interface VirtioDevice {
  /** virtio device id (1 = network) */
  readonly deviceType: number;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  /** everything offered, transport bits included */
  readonly features: bigint;
  readonly configSize: number;
  readConfig(offset: number, size: number): number;
  writeConfig(offset: number, size: number, value: number): void;
  /** queues whose notifications the transport must deliver by calling kick() instead of an ioeventfd */
  kickedByExit?(queue: number): boolean;
  kick?(queue: number): void;
  /** The driver set DRIVER_OK. May be async (threads to start); errors mark the device broken. */
  activate(a: Activation): Promise<void>;
  /** Device reset (status 0): stop using every queue; resolves when nothing touches guest memory. */
  reset(): Promise<void>;

  // ---- device state (src/vmm/state/): a device without saveState cannot be saved while live
  /** Stop touching the rings (threads stopped, each ring's position kept) until unquiesce(). */
  quiesce?(): Promise<void>;
  /** Serve the rings again from where they stood. */
  unquiesce?(): Promise<void>;
  /** Where live queue `index` stands; while quiesced. */
  ringState?(index: number): RingState | undefined;
  /** The device's own state (configuration, filters, its main-thread queues' positions); while quiesced. */
  saveState?(): StateValue;
  /** Take saved state into this fresh device, before the transport activates it (StateError on a bad field). */
  restoreState?(state: Fields): void;
}
