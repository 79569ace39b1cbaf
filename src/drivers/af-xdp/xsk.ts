// One AF_XDP socket bound to one interface queue, as a driver queue on a dataplane thread.
//
// The four rings and the UMEM (the packet buffers the kernel reads and writes) are mapped into this
// thread and used as typed arrays: moving a batch costs no system call, except the wake-ups the kernel
// asks for (need_wakeup): one sendto() per transmitted batch in copy mode, a poll() when the fill ring
// runs dry. Frames are copied between guest memory and the UMEM (copy mode needs the UMEM anyway, and
// guest buffers are not UMEM chunks).
//
// UMEM: FRAMES chunks of CHUNK bytes; the first half circulates through the fill and RX rings (receive),
// the second half is a free list for transmit, returned through the completion ring.
import { native, PROT_READ, PROT_WRITE, MAP_SHARED } from '../../native.js';
import { CopyList } from '../copy-list.js';
import { META_WORDS, type DriverQueue, type PacketBatch } from '../api.js';
import * as A from './abi.js';
import { setQueueSocket, errnoName } from './xdp-program.js';

export const CHUNK = 2048;
const FRAMES = 4096;
const RING = 2048; // entries in each ring (a power of two)
const MAP_POPULATE = 0x8000;

export type XskMode = 'copy' | 'zerocopy' | 'auto';

export interface XskOptions {
  ifname: string;
  ifindex: number;
  queue: number;
  mapFd: number;
  mode: XskMode;
  busyPollUs: number;
}

/** What a dataplane thread needs to use a socket set up by openXsk (structured-cloneable). */
export interface XskInit {
  fd: number;
  /** the UMEM: shared memory, registered with the socket on the main thread */
  umem: SharedArrayBuffer;
  mode: 'copy' | 'zerocopy';
  /**
   * Chunk ownership that must outlive a dataplane thread (threads restart, e.g. when the guest
   * changes its queue count): [0] rings primed (by openXsk), [1] free transmit chunks, then the free list.
   */
  state: SharedArrayBuffer;
}

function sockopt(fd: number, opt: number, v: ArrayBufferView, what: string): void {
  const r = native.setsockopt(fd, A.SOL_XDP, opt, v);
  if (r < 0) throw new Error(`AF_XDP ${what}: ${errnoName(-r)}`);
}

/**
 * On the main thread (privileges, clear errors before any thread starts): the socket, its UMEM (a
 * memfd shared with the dataplane thread), ring sizes, the bind to the interface queue in the mode
 * asked for, busy polling, and the XSKMAP entry that steers the queue's frames to it.
 */
export function openXsk(o: XskOptions): XskInit {
  const fd = native.socket(A.AF_XDP, A.SOCK_RAW, 0);
  const memfd = native.memfdCreate('tsvmm-xsk-umem', 0);
  try {
    native.ftruncate(memfd, FRAMES * CHUNK);
    const umem = native.mmapShared(memfd, FRAMES * CHUNK);
    const reg = new DataView(new ArrayBuffer(A.SIZEOF_UMEM_REG));
    reg.setBigUint64(0, umem.address, true);
    reg.setBigUint64(8, BigInt(FRAMES * CHUNK), true);
    reg.setUint32(16, CHUNK, true);
    sockopt(fd, A.XDP_UMEM_REG, reg, 'registering the UMEM');
    for (const opt of [A.XDP_UMEM_FILL_RING, A.XDP_UMEM_COMPLETION_RING, A.XDP_RX_RING, A.XDP_TX_RING]) sockopt(fd, opt, new Int32Array([RING]), 'sizing the rings');
    const mode = bind(fd, o);
    if (o.busyPollUs > 0) {
      // the kernel polls the device from our sendto/poll calls instead of waiting for its interrupt
      for (const [opt, v, name] of [[A.SO_PREFER_BUSY_POLL, 1, 'SO_PREFER_BUSY_POLL'], [A.SO_BUSY_POLL, o.busyPollUs, 'SO_BUSY_POLL'], [A.SO_BUSY_POLL_BUDGET, 64, 'SO_BUSY_POLL_BUDGET']] as const) {
        const r = native.setsockopt(fd, A.SOL_SOCKET, opt, new Int32Array([v]));
        if (r < 0) throw new XskBindError(`${o.ifname}: busy-poll: ${name} refused (${errnoName(-r)})`);
      }
    }
    const state = primeRings(fd);
    const m = setQueueSocket(o.mapFd, o.queue, fd);
    if (m < 0) throw new Error(`steering queue ${o.queue} to its socket: ${errnoName(-m)}`);
    return { fd, umem: umem.buffer, mode, state };
  } catch (e) {
    native.close(fd);
    throw e;
  } finally {
    native.close(memfd);
  }
}

export class XskBindError extends Error {}

/**
 * Receive chunks go to the kernel (the fill ring) and transmit chunks to the free list before the
 * queue's frames are steered to the socket: frames that arrive while the dataplane thread is still
 * starting wait in the RX ring instead of being dropped for an empty fill ring.
 */
function primeRings(fd: number): SharedArrayBuffer {
  const fill = new Ring(fd, A.XDP_UMEM_PGOFF_FILL_RING, ringOffsets(fd), 64, 8);
  let prod = fill.producer[0];
  for (let i = 0; i < FRAMES / 2 && i < RING; i++, prod = (prod + 1) >>> 0) {
    fill.u32[(prod & (RING - 1)) * 2] = i * CHUNK;
    fill.u32[(prod & (RING - 1)) * 2 + 1] = 0;
  }
  Atomics.store(fill.producer, 0, prod);
  const sab = new SharedArrayBuffer(8 * (2 + FRAMES / 2));
  const state = new Float64Array(sab);
  let free = 0;
  for (let i = FRAMES / 2; i < FRAMES; i++) state[2 + free++] = i * CHUNK;
  state[0] = 1;
  state[1] = free;
  return sab;
}

/** xdp_mmap_offsets: rx, tx, fill, completion (32 bytes each) */
function ringOffsets(fd: number): DataView {
  const off = new DataView(new ArrayBuffer(A.SIZEOF_MMAP_OFFSETS));
  const r = native.getsockopt(fd, A.SOL_XDP, A.XDP_MMAP_OFFSETS, off);
  if (r < 0) throw new Error(`AF_XDP ring offsets: ${errnoName(-r)}`);
  return off;
}

function bind(fd: number, o: XskOptions): 'copy' | 'zerocopy' {
  const attempt = (flags: number) => {
    const sa = new DataView(new ArrayBuffer(A.SIZEOF_SOCKADDR_XDP));
    sa.setUint16(0, A.AF_XDP, true);
    sa.setUint16(2, flags | A.XDP_USE_NEED_WAKEUP, true);
    sa.setUint32(4, o.ifindex, true);
    sa.setUint32(8, o.queue, true);
    return native.bindRaw(fd, sa);
  };
  if (o.mode !== 'copy') {
    const r = attempt(A.XDP_ZEROCOPY);
    if (r === 0) return 'zerocopy';
    if (o.mode === 'zerocopy') throw new XskBindError(`${o.ifname}: its driver does not support zero-copy AF_XDP (${errnoName(-r)}); use mode=copy or mode=auto`);
  }
  const r = attempt(A.XDP_COPY);
  if (r < 0) throw new XskBindError(`${o.ifname} queue ${o.queue}: binding the AF_XDP socket failed (${errnoName(-r)})`);
  return 'copy';
}

/** A mapped ring: producer/consumer/flags words and the descriptor area. */
class Ring {
  readonly producer: Uint32Array;
  readonly consumer: Uint32Array;
  readonly flags: Uint32Array;
  readonly u32: Uint32Array;
  readonly map: ArrayBuffer;
  readonly descOff: number;
  constructor(fd: number, pgoff: number, off: DataView, at: number, descSize: number) {
    const o = (k: number) => Number(off.getBigUint64(at + 8 * k, true));
    this.descOff = o(2);
    this.map = native.mmap(fd, this.descOff + RING * descSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, pgoff);
    this.producer = new Uint32Array(this.map, o(0), 1);
    this.consumer = new Uint32Array(this.map, o(1), 1);
    this.flags = new Uint32Array(this.map, o(3), 1);
    this.u32 = new Uint32Array(this.map, this.descOff, (RING * descSize) / 4);
  }
  get needsWakeup(): boolean {
    return (Atomics.load(this.flags, 0) & A.XDP_RING_NEED_WAKEUP) !== 0;
  }
}

export class XskQueue implements DriverQueue {
  readonly pollFd: number;
  drops = 0;
  /** 'copy' or 'zerocopy': what the kernel gave us */
  readonly mode: 'copy' | 'zerocopy';
  private readonly umem: Uint8Array;
  /** a call's frame copies, made at once (native.copyv) */
  private readonly copies = new CopyList();
  private readonly fill: Ring;
  private readonly comp: Ring;
  private readonly rx: Ring;
  private readonly tx: Ring;
  /** transmit chunks not in the kernel's hands (in shared state: see XskInit.state) */
  private readonly state: Float64Array;
  private readonly txFree: Float64Array;
  private txFreeCount: number;
  private txProd = 0;
  private rxCons = 0;
  private fillProd = 0;

  constructor(init: XskInit) {
    const fd = init.fd;
    this.pollFd = fd;
    this.mode = init.mode;
    this.umem = new Uint8Array(init.umem);
    const off = ringOffsets(fd);
    this.rx = new Ring(fd, A.XDP_PGOFF_RX_RING, off, 0, A.SIZEOF_XDP_DESC);
    this.tx = new Ring(fd, A.XDP_PGOFF_TX_RING, off, 32, A.SIZEOF_XDP_DESC);
    this.fill = new Ring(fd, A.XDP_UMEM_PGOFF_FILL_RING, off, 64, 8);
    this.comp = new Ring(fd, A.XDP_UMEM_PGOFF_COMPLETION_RING, off, 96, 8);
    // the rings' indices live in the mappings: a thread that takes over continues from them
    this.fillProd = this.fill.producer[0];
    this.rxCons = this.rx.consumer[0];
    this.txProd = this.tx.producer[0];
    this.state = new Float64Array(init.state, 0, 2);
    this.txFree = new Float64Array(init.state, 16, FRAMES / 2);
    this.txFreeCount = this.state[1];
  }

  private putFill(addr: number): void {
    const i = (this.fillProd & (RING - 1)) * 2;
    this.fill.u32[i] = addr;
    this.fill.u32[i + 1] = 0;
    this.fillProd = (this.fillProd + 1) >>> 0;
  }

  /** Take back transmit chunks the kernel is done with. */
  private reclaim(): void {
    const c = this.comp;
    let cons = c.consumer[0];
    const prod = Atomics.load(c.producer, 0);
    while (cons !== prod) {
      const i = (cons & (RING - 1)) * 2;
      this.txFree[this.txFreeCount++] = c.u32[i] + c.u32[i + 1] * 4294967296;
      cons = (cons + 1) >>> 0;
    }
    Atomics.store(c.consumer, 0, cons);
    this.state[1] = this.txFreeCount;
  }

  wouldBlock = false;

  transmit(b: PacketBatch, mem: ArrayBufferLike): number {
    this.reclaim();
    const tx = this.tx;
    // room in the TX ring: the kernel's consumer index says what it took
    const room = RING - ((this.txProd - Atomics.load(tx.consumer, 0)) >>> 0);
    let sent = 0;
    for (let p = 0; p < b.count && sent < room && this.txFreeCount > 0; p++) {
      if (b.len[p] > CHUNK) {
        // larger than a UMEM chunk (the device does not offer TSO with this driver, but a guest may
        // still send a jumbo frame): the wire cannot carry it
        this.drops++;
        sent++;
        continue;
      }
      const addr = this.txFree[--this.txFreeCount];
      let at = addr;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1]; t += 3) {
        const n = b.iov[t + 2];
        this.copies.add(1, at, 0, b.iov[t + 1], n);
        at += n;
      }
      const d = (this.txProd & (RING - 1)) * 4;
      tx.u32[d] = addr;
      tx.u32[d + 1] = 0;
      tx.u32[d + 2] = at - addr;
      tx.u32[d + 3] = 0;
      this.txProd = (this.txProd + 1) >>> 0;
      sent++;
    }
    // the frames into their chunks, all at once, before the kernel may look at them
    this.copies.run(mem, this.umem);
    Atomics.store(tx.producer, 0, this.txProd);
    this.state[1] = this.txFreeCount;
    // the TX ring is full, or every transmit chunk is still the kernel's: the rest wait in the guest's
    // ring until the socket is writable (the kernel has taken some)
    this.wouldBlock = sent < b.count;
    // copy mode sends from sendto() itself, 32 frames per call (-EAGAIN: more to go); zero-copy
    // drivers only need the call when they sleep
    for (let tries = 0; tries < 16 && (this.mode === 'copy' || tx.needsWakeup); tries++) {
      const r = native.kick(this.pollFd, A.MSG_DONTWAIT);
      if (r >= 0 || (-r !== 11 && -r !== 105)) break; // EAGAIN / ENOBUFS: the kernel has more to send
      if (Atomics.load(tx.consumer, 0) === this.txProd) break;
    }
    return sent;
  }

  nextLength(): number {
    const rx = this.rx;
    if (this.rxCons === Atomics.load(rx.producer, 0)) {
      // nothing waiting; a driver that sleeps with an empty fill ring must be woken to refill it
      if (this.fill.needsWakeup) native.poll(this.pollFd, A.POLLIN, 0);
      return 0;
    }
    return rx.u32[(this.rxCons & (RING - 1)) * 4 + 2];
  }

  nextLengths(lengths: Uint32Array, max: number): number {
    if (this.nextLength() === 0) return 0;
    const rx = this.rx;
    const n = Math.min(max, (Atomics.load(rx.producer, 0) - this.rxCons) >>> 0);
    for (let k = 0; k < n; k++) lengths[k] = rx.u32[((this.rxCons + k) & (RING - 1)) * 4 + 2];
    return n;
  }

  /**
   * Frames waiting in the RX ring into packets [0, count), each chunk straight back to the fill ring;
   * both indices are published once per call. A frame the packet's buffers cannot hold whole is
   * consumed and reported empty (the dataplane drops it and keeps the buffers).
   */
  receive(b: PacketBatch, mem: ArrayBufferLike): number {
    if (this.nextLength() === 0) return 0;
    const rx = this.rx;
    const avail = (Atomics.load(rx.producer, 0) - this.rxCons) >>> 0;
    const n = Math.min(b.count, avail);
    for (let p = 0; p < n; p++) {
      const d = (this.rxCons & (RING - 1)) * 4;
      const addr = rx.u32[d] + rx.u32[d + 1] * 4294967296;
      const len = rx.u32[d + 2];
      let from = addr;
      let left = len;
      for (let t = 3 * b.iovStart[p]; t < 3 * b.iovStart[p + 1] && left > 0; t += 3) {
        const k = Math.min(left, b.iov[t + 2]);
        this.copies.add(0, b.iov[t + 1], 1, from, k);
        from += k;
        left -= k;
      }
      this.rxCons = (this.rxCons + 1) >>> 0;
      // the chunk goes straight back to the kernel (aligned mode: the chunk's start)
      this.putFill(addr - (addr % CHUNK));
      b.len[p] = left > 0 ? 0 : len;
      b.meta.fill(0, p * META_WORDS, (p + 1) * META_WORDS);
    }
    // the frames out of their chunks, all at once, before the chunks go back to the kernel
    this.copies.run(mem, this.umem);
    Atomics.store(rx.consumer, 0, this.rxCons);
    Atomics.store(this.fill.producer, 0, this.fillProd);
    return n;
  }

  close(): void {
    // the socket is the driver's (main thread): closing it there takes it out of the XSKMAP
  }
}
