// virtio-pci's common configuration structure (virtio 1.x §4.1.4.3) as a register file: the feature
// windows, the configuration vector, device status and generation, and the selected queue's
// registers, with what the driver may and may not change. What a write means beyond its register (a
// status change, a vector to rewire) is the transport's (virtio-pci.ts), told through CommonHooks.
import { STATUS } from '../../virtio/device.js';
import type { QueueRegs } from './virtio-pci-state.js';

/** the structure's length in the BAR */
export const COMMON_LEN = 0x38;
export const NO_VECTOR = 0xffff;

/** What the register file needs of its device and transport. */
export interface CommonHooks {
  /** the device's features, queues and largest queue size */
  readonly features: bigint;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  /** MSI-X vectors the function has */
  readonly vectors: number;
  /** the driver wrote device_status (the transport decides what it takes) */
  writeStatus(value: number): void;
  /** the configuration vector or a queue's changed */
  vectorsChanged(): void;
}

function u64Write(old: number, offsetInField: number, size: number, value: number): number {
  // 32-bit halves of a 64-bit field (drivers write them separately, §4.1.3.1)
  const lo = offsetInField === 0 ? (size >= 4 ? value >>> 0 : old % 2 ** 32) : old % 2 ** 32;
  const hi = offsetInField === 4 ? value >>> 0 : Math.floor(old / 2 ** 32);
  return hi * 2 ** 32 + lo;
}

function half(v: number, offsetInField: number): number {
  return offsetInField === 0 ? v % 2 ** 32 : Math.floor(v / 2 ** 32);
}

export class CommonConfig {
  dfSelect = 0;
  gfSelect = 0;
  driverFeatures = 0n;
  msixConfig = NO_VECTOR;
  status = 0;
  generation = 0;
  queueSelect = 0;
  readonly queues: QueueRegs[];

  constructor(private readonly h: CommonHooks) {
    this.queues = Array.from({ length: h.numQueues }, () => this.freshQueue());
  }

  private freshQueue(): QueueRegs {
    return { size: this.h.maxQueueSize, msixVector: NO_VECTOR, enable: 0, desc: 0, avail: 0, used: 0 };
  }

  /** Every register as out of reset. */
  clear(): void {
    this.status = 0;
    this.driverFeatures = 0n;
    this.dfSelect = this.gfSelect = 0;
    this.msixConfig = NO_VECTOR;
    this.queueSelect = 0;
    this.queues.forEach((_, i) => (this.queues[i] = this.freshQueue()));
  }

  private q(): QueueRegs | undefined {
    return this.queues[this.queueSelect];
  }

  read(off: number, size: number): number {
    const q = this.q();
    switch (off) {
      case 0x00:
        return this.dfSelect;
      case 0x04:
        return this.dfSelect < 2 ? Number((this.h.features >> BigInt(32 * this.dfSelect)) & 0xffffffffn) : 0;
      case 0x08:
        return this.gfSelect;
      case 0x0c:
        return this.gfSelect < 2 ? Number((this.driverFeatures >> BigInt(32 * this.gfSelect)) & 0xffffffffn) : 0;
      case 0x10:
        return this.msixConfig;
      case 0x12:
        return this.h.numQueues;
      case 0x14:
        return size === 1 ? this.status : this.status | (this.generation << 8);
      case 0x15:
        return this.generation;
      case 0x16:
        return this.queueSelect;
      case 0x18:
        return q ? q.size : 0;
      case 0x1a:
        return q ? q.msixVector : NO_VECTOR;
      case 0x1c:
        return q ? q.enable : 0;
      case 0x1e:
        return q ? this.queueSelect : 0; // queue_notify_off: queue i notifies at i * multiplier
      case 0x20:
      case 0x24:
        return q ? half(q.desc, off - 0x20) : 0;
      case 0x28:
      case 0x2c:
        return q ? half(q.avail, off - 0x28) : 0;
      case 0x30:
      case 0x34:
        return q ? half(q.used, off - 0x30) : 0;
    }
    return 0;
  }

  write(off: number, size: number, value: number): void {
    const q = this.q();
    // queue registers may change only while the queue is disabled and the device not live
    const queueWritable = q !== undefined && !q.enable && !(this.status & STATUS.DRIVER_OK);
    switch (off) {
      case 0x00:
        this.dfSelect = value >>> 0;
        return;
      case 0x08:
        this.gfSelect = value >>> 0;
        return;
      case 0x0c: {
        if (this.gfSelect > 1 || this.status & STATUS.FEATURES_OK) return;
        const shift = BigInt(32 * this.gfSelect);
        this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value >>> 0) << shift);
        return;
      }
      case 0x10:
        // as for a queue's vector: one we do not have reads back as NO_VECTOR (§4.1.5.1.2)
        this.msixConfig = (value & 0xffff) < this.h.vectors ? value & 0xffff : NO_VECTOR;
        this.h.vectorsChanged();
        return;
      case 0x14:
        this.h.writeStatus(value & 0xff);
        return;
      case 0x16:
        this.queueSelect = value & 0xffff;
        return;
      case 0x18:
        // the driver may only reduce the size the device offers (§4.1.4.3): more is held to that maximum
        if (queueWritable) q!.size = Math.min(value & 0xffff, this.h.maxQueueSize);
        return;
      case 0x1a:
        // a vector we do not have reads back as NO_VECTOR, telling the driver it failed (§4.1.5.1.2)
        if (q) q.msixVector = (value & 0xffff) < this.h.vectors ? value & 0xffff : NO_VECTOR;
        this.h.vectorsChanged();
        return;
      case 0x1c:
        if (q && (value & 1) && !(this.status & STATUS.DRIVER_OK)) q.enable = 1;
        return;
      case 0x20:
      case 0x24:
        if (queueWritable) q!.desc = u64Write(q!.desc, off - 0x20, size, value);
        return;
      case 0x28:
      case 0x2c:
        if (queueWritable) q!.avail = u64Write(q!.avail, off - 0x28, size, value);
        return;
      case 0x30:
      case 0x34:
        if (queueWritable) q!.used = u64Write(q!.used, off - 0x30, size, value);
        return;
    }
  }
}
