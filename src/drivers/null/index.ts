// null driver, for benchmarks: discards what the guest transmits and generates what it receives,
// touching every byte as a real backend does when it copies frames to and from its own buffers (DPDK's
// vhost library copies into mbufs), so comparisons with it are fair. Options: size=BYTES (generated
// frames, default 64), rx=0 to generate nothing, loop=1 to receive (copies of) what was transmitted
// instead — the backend half of the io-forwarding loopback benchmark, as DPDK's vhost testpmd in io mode.
// Generated frames are broadcasts with a pattern, and a frame counter in bytes 14..17 (so successive
// frames differ, as real traffic does: what lands in a buffer is never what was there).
import { fileURLToPath } from 'node:url';
import { native } from '../../native.js';
import { UserError } from '../../errors.js';
import { META_WORDS, NO_OFFLOADS, type DriverQueue, type NetDriver, type PacketBatch } from '../api.js';

interface NullInit {
  size: number;
  rx: boolean;
  loop: boolean;
}

/** loop mode: frames held between transmit and receive (more wait in the guest's ring: wouldBlock) */
const LOOP_SLOTS = 512;
const LOOP_SLOT_BYTES = 9018;
/** the longest byte array made over guest memory (larger memory: copies through native.copy) */
const MAX_BYTE_ARRAY = 2 ** 31;
/**
 * Copies up to this many bytes are typed-array copies; longer ones go through native.copy (memmove).
 * V8 copies into or out of a SharedArrayBuffer byte by byte (relaxed atomics), which beats the addon
 * call's fixed cost only for short copies: measured with bench/engine-micro.mjs, 64-byte frames gain,
 * 1514-byte frames lose 3x.
 */
const SHORT_COPY = 256;

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
  private readonly frame: Uint8Array;
  /** loop mode: a ring of held frames */
  private readonly held?: Uint8Array;
  private readonly heldLen = new Uint32Array(LOOP_SLOTS);
  private heldHead = 0;
  private heldCount = 0;

  constructor(private readonly init: NullInit) {
    this.frame = new Uint8Array(init.size);
    this.frame.fill(0xff, 0, 6); // broadcast
    this.frame.set([0x02, 0, 0, 0, 0, 1], 6);
    this.frame[12] = 0x88;
    this.frame[13] = 0xb5;
    for (let i = 14; i < init.size; i++) this.frame[i] = i & 0xff;
    if (init.loop) this.held = new Uint8Array(LOOP_SLOTS * LOOP_SLOT_BYTES);
  }

  transmit(b: PacketBatch, mem: SharedArrayBuffer): number {
    // (a short copy is a typed-array copy through a view of the segment, as guest memory may be
    // larger than one typed array can be: SHORT_COPY)
    if (this.held) return this.hold(b, mem);
    // every frame is copied out of guest memory, as DPDK's vhost copies into an mbuf (a memcpy)
    const mbuf = this.mbuf;
    for (let p = 0; p < b.count; p++) {
      let at = 0;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const n = Math.min(b.iov[t + 2], mbuf.length - at);
        if (n <= SHORT_COPY) mbuf.set(new Uint8Array(mem, b.iov[t + 1], n), at);
        else native.copy(mbuf, at, mem, b.iov[t + 1], n);
        at += n;
      }
      this.sink = (this.sink + mbuf[0]) | 0;
    }
    return b.count;
  }

  /** loop mode: copy frames into the held ring, as many as fit */
  private hold(b: PacketBatch, mem: SharedArrayBuffer): number {
    const held = this.held!;
    this.wouldBlock = this.heldCount + b.count > LOOP_SLOTS;
    let p = 0;
    for (; p < b.count && this.heldCount < LOOP_SLOTS; p++) {
      const slot = (this.heldHead + this.heldCount) % LOOP_SLOTS;
      let at = slot * LOOP_SLOT_BYTES;
      const end = at + LOOP_SLOT_BYTES;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const n = Math.min(b.iov[t + 2], end - at);
        if (n <= SHORT_COPY) held.set(new Uint8Array(mem, b.iov[t + 1], n), at);
        else native.copy(held, at, mem, b.iov[t + 1], n);
        at += n;
      }
      this.heldLen[slot] = at - slot * LOOP_SLOT_BYTES;
      this.heldCount++;
    }
    return p;
  }

  /** loop mode: the oldest held frames into the guest's buffers, one per packet */
  private unhold(b: PacketBatch, mem: SharedArrayBuffer): number {
    const held = this.held!;
    const u8 = this.bytes(mem);
    let p = 0;
    for (; p < b.count && this.heldCount > 0; p++) {
      const slot = this.heldHead;
      let at = slot * LOOP_SLOT_BYTES;
      let left = this.heldLen[slot];
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const off = b.iov[t + 1];
        const n = Math.min(left, b.iov[t + 2]);
        if (u8 !== undefined && n <= SHORT_COPY) u8.set(held.subarray(at, at + n), off);
        else native.copy(mem, off, held, at, n);
        at += n;
        left -= n;
      }
      b.len[p] = this.heldLen[slot] - left;
      noMeta(b.meta, p);
      this.heldHead = (this.heldHead + 1) % LOOP_SLOTS;
      this.heldCount--;
    }
    return p;
  }

  /** guest memory as one byte array, where it is small enough to be one (else copies use native.copy) */
  private memU8: Uint8Array | undefined;
  private memOf: SharedArrayBuffer | undefined;
  private bytes(mem: SharedArrayBuffer): Uint8Array | undefined {
    if (mem !== this.memOf) {
      this.memOf = mem;
      this.memU8 = mem.byteLength <= MAX_BYTE_ARRAY ? new Uint8Array(mem) : undefined;
    }
    return this.memU8;
  }

  nextLength(): number {
    if (this.held) return this.heldCount > 0 ? this.heldLen[this.heldHead] : 0;
    return this.init.rx ? this.init.size : 0;
  }

  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    if (this.held) return this.unhold(b, mem);
    if (!this.init.rx) return 0;
    const f = this.frame;
    const u8 = this.bytes(mem);
    for (let p = 0; p < b.count; p++) {
      const n = ++this.generated;
      f[14] = n;
      f[15] = n >>> 8;
      f[16] = n >>> 16;
      f[17] = n >>> 24;
      let left = this.init.size;
      let at = 0;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const n = Math.min(left, b.iov[t + 2]);
        // (a short frame whole into one segment, the common case: a typed-array copy, no view made)
        if (u8 !== undefined && n === f.length && n <= SHORT_COPY) u8.set(f, b.iov[t + 1]);
        else native.copy(mem, b.iov[t + 1], f, at, n);
        at += n;
        left -= n;
      }
      b.len[p] = at;
      noMeta(b.meta, p);
    }
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
