// The queue layout the driver negotiated: packed with VIRTIO_F_RING_PACKED, else split.
import type { GuestView } from './dma.js';
import { PackedQueue } from './packed-queue.js';
import { SplitQueue } from './split-queue.js';
import type { BrokenReason, QueueConfig, QueueFeatures, Virtqueue } from './virtqueue.js';

/** Validate the driver's ring placement for the negotiated layout: the queue, or why it cannot be used. */
export function createQueue(mem: GuestView, cfg: QueueConfig, features: QueueFeatures, maxSize: number): Virtqueue | BrokenReason {
  return features.packed ? PackedQueue.create(mem, cfg, features, maxSize) : SplitQueue.create(mem, cfg, features, maxSize);
}
