// null driver, for benchmarks: discards what the guest transmits and generates what it receives,
// touching every byte as a real backend does when it copies frames to and from its own buffers (DPDK's
// vhost library copies into mbufs), so comparisons with it are fair. Options: size=BYTES (generated
// frames, default 64), rx=0 to generate nothing, loop=1 to receive (copies of) what was transmitted
// instead — the backend half of the io-forwarding loopback benchmark, as DPDK's vhost testpmd in io mode.
// Generated frames are broadcasts with a pattern, and a frame counter in bytes 14..17 (so successive
// frames differ, as real traffic does: what lands in a buffer is never what was there).
import { fileURLToPath } from 'node:url';
import { UserError } from '../../errors.js';
import { CopyList } from '../copy-list.js';
import { META_WORDS, NO_OFFLOADS, type DriverQueue, type NetDriver, type PacketBatch } from '../api.js';

interface NullInit {
  size: number;
  rx: boolean;
  loop: boolean;
}

/** loop mode: frames held between transmit and receive (more wait in the guest's ring: wouldBlock) */
const LOOP_SLOTS = 512;
const LOOP_SLOT_BYTES = 9018;
/** generated frames staged per batch (a batch of more runs its copies every GEN_SLOTS frames) */
const GEN_SLOTS = 64;

/** the option keys create() reads (the registry refuses others) */
export const options = ['size', 'rx', 'loop'];

export function create(options: Record<string, string>): NetDriver {
  const size = Number(options.size ?? '64');
  if (!Number.isInteger(size) || size < 60 || size > 9000) throw new UserError('--net null: size must be 60..9000');
  const queues = Number(options.queues ?? '1');
  return {
    name: 'null',
    caps: { queuePairs: queues, mtu: 9000, offloads: NO_OFFLOADS },
    module: fileURLToPath(import.meta.url),
    queueInit: (): NullInit => ({ size, rx: options.rx !== '0', loop: options.loop === '1' }),
    setGuestOffloads() {},
    close() {},
  };
}

class NullQueue implements DriverQueue {
  readonly pollFd = -1;
  drops = 0;
  /** loop mode: the held ring is full (receive drains it; with no fd, the dataplane tries again soon) */
  wouldBlock = false;
  /** frames generated so far (written into each) */
  private generated = 0;
  /** where transmitted frames are copied to (one frame at a time: the copy is the work) */
  private readonly mbuf = new Uint8Array(LOOP_SLOT_BYTES);
  /** keeps a byte of each copy, so the copies have an observable result */
  sink = 0;
  /** generated frames: GEN_SLOTS copies of the frame, each with its own counter (a batch's sources) */
  private readonly frames: Uint8Array;
  private readonly copies = new CopyList();
  /** loop mode: a ring of held frames */
  private readonly held?: Uint8Array;
  private readonly heldLen = new Uint32Array(LOOP_SLOTS);
  private heldHead = 0;
  private heldCount = 0;

  constructor(private readonly init: NullInit) {
    const frame = new Uint8Array(init.size);
    frame.fill(0xff, 0, 6); // broadcast
    frame.set([0x02, 0, 0, 0, 0, 1], 6);
    frame[12] = 0x88;
    frame[13] = 0xb5;
    for (let i = 14; i < init.size; i++) frame[i] = i & 0xff;
    this.frames = new Uint8Array(GEN_SLOTS * init.size);
    for (let s = 0; s < GEN_SLOTS; s++) this.frames.set(frame, s * init.size);
    if (init.loop) this.held = new Uint8Array(LOOP_SLOTS * LOOP_SLOT_BYTES);
  }

  // Every frame is copied out of guest memory (transmit) or into it (receive), as DPDK's vhost copies
  // into and out of mbufs (a memcpy each): a batch's copies in one native call (CopyList).
  transmit(b: PacketBatch, mem: ArrayBufferLike): number {
    if (this.held) return this.hold(b, mem);
    const mbuf = this.mbuf;
    const copies = this.copies;
    for (let p = 0; p < b.count; p++) {
      let at = 0;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const n = Math.min(b.iov[t + 2], mbuf.length - at);
        copies.add(1, at, 0, b.iov[t + 1], n);
        at += n;
      }
    }
    copies.run(mem, mbuf);
    this.sink = (this.sink + mbuf[0]) | 0;
    return b.count;
  }

  /** loop mode: copy frames into the held ring, as many as fit */
  private hold(b: PacketBatch, mem: ArrayBufferLike): number {
    this.wouldBlock = this.heldCount + b.count > LOOP_SLOTS;
    let p = 0;
    for (; p < b.count && this.heldCount < LOOP_SLOTS; p++) {
      const slot = (this.heldHead + this.heldCount) % LOOP_SLOTS;
      let at = slot * LOOP_SLOT_BYTES;
      const end = at + LOOP_SLOT_BYTES;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const n = Math.min(b.iov[t + 2], end - at);
        this.copies.add(1, at, 0, b.iov[t + 1], n);
        at += n;
      }
      this.heldLen[slot] = at - slot * LOOP_SLOT_BYTES;
      this.heldCount++;
    }
    this.copies.run(mem, this.held!);
    return p;
  }

  /** loop mode: the oldest held frames into the guest's buffers, one per packet */
  private unhold(b: PacketBatch, mem: ArrayBufferLike): number {
    let p = 0;
    for (; p < b.count && this.heldCount > 0; p++) {
      const slot = this.heldHead;
      let at = slot * LOOP_SLOT_BYTES;
      let left = this.heldLen[slot];
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const n = Math.min(left, b.iov[t + 2]);
        this.copies.add(0, b.iov[t + 1], 1, at, n);
        at += n;
        left -= n;
      }
      b.len[p] = this.heldLen[slot] - left;
      noMeta(b.meta, p);
      this.heldHead = (this.heldHead + 1) % LOOP_SLOTS;
      this.heldCount--;
    }
    // (the held slots just given up are not written before this runs)
    this.copies.run(mem, this.held!);
    return p;
  }

  nextLength(): number {
    if (this.held) return this.heldCount > 0 ? this.heldLen[this.heldHead] : 0;
    return this.init.rx ? this.init.size : 0;
  }

  nextLengths(lengths: Uint32Array, max: number): number {
    if (this.held) {
      const n = Math.min(max, this.heldCount);
      for (let k = 0; k < n; k++) lengths[k] = this.heldLen[(this.heldHead + k) % LOOP_SLOTS];
      return n;
    }
    if (!this.init.rx) return 0;
    lengths.fill(this.init.size, 0, max);
    return max;
  }

  receive(b: PacketBatch, mem: ArrayBufferLike): number {
    if (this.held) return this.unhold(b, mem);
    if (!this.init.rx) return 0;
    const size = this.init.size;
    const frames = this.frames;
    for (let p = 0; p < b.count; p++) {
      // each frame of a batch from a staging slot of its own, its counter written there
      const slot = p % GEN_SLOTS;
      if (slot === 0 && p > 0) this.copies.run(mem, frames);
      const f = slot * size;
      const n = ++this.generated;
      frames[f + 14] = n;
      frames[f + 15] = n >>> 8;
      frames[f + 16] = n >>> 16;
      frames[f + 17] = n >>> 24;
      let left = size;
      let at = 0;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const k = Math.min(left, b.iov[t + 2]);
        this.copies.add(0, b.iov[t + 1], 1, f + at, k);
        at += k;
        left -= k;
      }
      b.len[p] = at;
      noMeta(b.meta, p);
    }
    this.copies.run(mem, frames);
    return b.count;
  }

  close(): void {}
}

/** Packet p's metadata: none (six stores: cheaper than a fill() call for so few words). */
function noMeta(meta: Int32Array, p: number): void {
  const m = p * META_WORDS;
  meta[m] = 0;
  meta[m + 1] = 0;
  meta[m + 2] = 0;
  meta[m + 3] = 0;
  meta[m + 4] = 0;
  meta[m + 5] = 0;
}

export function openQueue(init: unknown): DriverQueue {
  return new NullQueue(init as NullInit);
}
