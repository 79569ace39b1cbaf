// null driver, for benchmarks: discards what the guest transmits and generates what it receives,
// touching every byte as a real backend does when it copies frames to and from its own buffers (DPDK's
// vhost library copies into mbufs), so comparisons with it are fair. Options: size=BYTES (generated
// frames, default 64), rx=0 to generate nothing.
import { fileURLToPath } from 'node:url';
import { UserError } from '../../errors.js';
import { NO_OFFLOADS, type DriverQueue, type NetDriver, type PacketBatch } from '../api.js';

interface NullInit {
  size: number;
  rx: boolean;
}

export function create(options: Record<string, string>): NetDriver {
  const size = Number(options.size ?? '64');
  if (!Number.isInteger(size) || size < 60 || size > 9000) throw new UserError('--net null: size must be 60..9000');
  const queues = Number(options.queues ?? '1');
  return {
    name: 'null',
    caps: { queuePairs: queues, mtu: 9000, offloads: NO_OFFLOADS },
    module: fileURLToPath(import.meta.url),
    queueInit: (): NullInit => ({ size, rx: options.rx !== '0' }),
    setGuestOffloads() {},
    close() {},
  };
}

class NullQueue implements DriverQueue {
  readonly pollFd = -1;
  drops = 0;
  /** a running sum over every byte transmitted: the read is real, the result is kept */
  sink = 0;
  private readonly frame: Uint8Array;
  private u8?: Uint8Array;

  /** one view of the (fixed) memory buffer, made on first use */
  private view(mem: SharedArrayBuffer): Uint8Array {
    if (this.u8?.buffer !== mem) this.u8 = new Uint8Array(mem);
    return this.u8;
  }

  constructor(private readonly init: NullInit) {
    this.frame = new Uint8Array(init.size);
    this.frame.fill(0xff, 0, 6); // broadcast
    this.frame.set([0x02, 0, 0, 0, 0, 1], 6);
    this.frame[12] = 0x88;
    this.frame[13] = 0xb5;
    for (let i = 14; i < init.size; i++) this.frame[i] = i & 0xff;
  }

  transmit(b: PacketBatch, mem: SharedArrayBuffer): number {
    const u8 = this.view(mem);
    let s = this.sink;
    for (let t = 3 * b.iovStart[0]; t < 3 * b.iovStart[b.count]; t += 3) {
      const off = b.iov[t + 1];
      const end = off + b.iov[t + 2];
      for (let i = off; i < end; i++) s = (s + u8[i]) | 0;
    }
    this.sink = s;
    return b.count;
  }

  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    if (!this.init.rx) return 0;
    const u8 = this.view(mem);
    for (let p = 0; p < b.count; p++) {
      let left = this.init.size;
      let at = 0;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const n = Math.min(left, b.iov[t + 2]);
        if (at === 0 && n === this.frame.length) u8.set(this.frame, b.iov[t + 1]);
        else u8.set(this.frame.subarray(at, at + n), b.iov[t + 1]);
        at += n;
        left -= n;
      }
      b.len[p] = at;
      b.meta.fill(0, p * 6, p * 6 + 6);
    }
    return b.count;
  }

  close(): void {}
}

export function openQueue(init: unknown): DriverQueue {
  return new NullQueue(init as NullInit);
}
