// Stand-ins for a net driver in unit tests: a driver queue that receives the frames a test queued and
// takes whatever it is given to transmit (subclass it to record more), and a driver that has only
// capabilities (for device models whose threads never start).
import type { DriverQueue, NetDriver, Offloads, PacketBatch } from '../../src/drivers/api.js';
import { NO_OFFLOADS } from '../../src/drivers/api.js';
import { receiveFrame } from './virtq-driver.js';

export class FrameQueue implements DriverQueue {
  readonly pollFd = -1;
  drops = 0;
  /** frames to receive, in order, one per call; none left: receive() returns 0 */
  readonly frames: Uint8Array[] = [];
  /** with `knowsLength`: the next frame's length, told beforehand (as AF_XDP and null do; tap cannot) */
  nextLength?: () => number;
  constructor(knowsLength = false) {
    if (knowsLength) this.nextLength = () => this.frames[0]?.length ?? 0;
  }
  transmit(b: PacketBatch, _mem: SharedArrayBuffer): number {
    return b.count;
  }
  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    const f = this.frames.shift();
    return f ? receiveFrame(b, mem, f) : 0;
  }
  close(): void {}
}

/**
 * A driver with capabilities only (its module does not exist: nothing may start its queues): one pair,
 * MTU 1500 and no offloads unless given; `onGuestOffloads` sees what the device lets it hand the guest.
 */
export function capsOnlyDriver(o: { queuePairs?: number; mtu?: number; offloads?: Partial<Offloads>; onGuestOffloads?: NetDriver['setGuestOffloads'] } = {}): NetDriver {
  return {
    name: 'caps-only',
    caps: { queuePairs: o.queuePairs ?? 1, mtu: o.mtu ?? 1500, offloads: { ...NO_OFFLOADS, ...o.offloads } },
    module: '/nonexistent.mjs',
    queueInit: () => undefined,
    setGuestOffloads: o.onGuestOffloads ?? (() => undefined),
    close: () => undefined,
  };
}
