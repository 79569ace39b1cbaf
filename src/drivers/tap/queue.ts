// A tap queue on the dataplane thread: readv/writev between the kernel and guest memory, one system
// call per frame. (uring-queue.ts batches the same through an io_uring.)
import { writeSync } from 'node:fs';
import { native } from '../../native.js';
import { META, META_WORDS, META_NEEDS_CSUM, META_CSUM_VALID, type DriverQueue, type PacketBatch } from '../api.js';
import * as T from './tun.js';

/** segments of a packet one readv/writev takes: the kernel's 1024 (UIO_MAXIOV), less our header */
export const MAX_SEGMENTS = 1023;

/** Write the tap header for packet i of b (its metadata) at byte `at` of h. */
export function writeTapHeader(h: DataView, at: number, b: PacketBatch, i: number): void {
  const m = i * META_WORDS;
  const needsCsum = (b.meta[m + META.FLAGS] & META_NEEDS_CSUM) !== 0;
  h.setUint8(at, needsCsum ? T.TAP_HDR_F_NEEDS_CSUM : 0);
  h.setUint8(at + 1, b.meta[m + META.GSO_TYPE]);
  h.setUint16(at + 2, b.meta[m + META.HDR_LEN], true);
  h.setUint16(at + 4, b.meta[m + META.GSO_SIZE], true);
  h.setUint16(at + 6, needsCsum ? b.meta[m + META.CSUM_START] : 0, true);
  h.setUint16(at + 8, needsCsum ? b.meta[m + META.CSUM_OFFSET] : 0, true);
  h.setUint16(at + 10, 0, true);
}

/** Packet i's metadata from the tap header at byte `at` of h. */
export function readTapHeader(h: DataView, at: number, b: PacketBatch, i: number): void {
  const m = i * META_WORDS;
  const flags = h.getUint8(at);
  b.meta[m + META.FLAGS] = (flags & T.TAP_HDR_F_NEEDS_CSUM ? META_NEEDS_CSUM : 0) | (flags & T.TAP_HDR_F_DATA_VALID ? META_CSUM_VALID : 0);
  b.meta[m + META.GSO_TYPE] = h.getUint8(at + 1);
  b.meta[m + META.HDR_LEN] = h.getUint16(at + 2, true);
  b.meta[m + META.GSO_SIZE] = h.getUint16(at + 4, true);
  b.meta[m + META.CSUM_START] = h.getUint16(at + 6, true);
  b.meta[m + META.CSUM_OFFSET] = h.getUint16(at + 8, true);
}

/** Worker side: one tap queue fd, a system call per frame. */
export class TapQueue implements DriverQueue {
  drops = 0;
  wouldBlock = false;
  private readonly hdr = new ArrayBuffer(T.TAP_HDR_LEN);
  private readonly hdrView = new DataView(this.hdr);
  /** one packet's segments as readv/writev take them: our header, then the packet's */
  protected readonly iov = new Float64Array(3 * (MAX_SEGMENTS + 1));

  constructor(readonly pollFd: number) {
    // the first segment of every packet is a header (in this.hdr here; a subclass may point it elsewhere)
    this.iov[0] = 1;
    this.iov[1] = 0;
    this.iov[2] = T.TAP_HDR_LEN;
  }

  /** Packet i's segments after the header segment (a plain copy: no per-packet allocation); -1: too many. */
  protected segments(b: PacketBatch, i: number): number {
    const from = 3 * b.iovStart[i];
    const to = 3 * b.iovStart[i + 1];
    if (to - from > 3 * MAX_SEGMENTS) return -1;
    const iov = this.iov;
    const src = b.iov;
    for (let k = from, j = 3; k < to; k++, j++) iov[j] = src[k];
    return (to - from) / 3 + 1;
  }

  transmit(b: PacketBatch, mem: ArrayBufferLike): number {
    this.wouldBlock = false;
    for (let i = 0; i < b.count; i++) {
      writeTapHeader(this.hdrView, 0, b, i);
      const n = this.segments(b, i);
      if (n < 0) {
        this.drops++;
        continue;
      }
      const r = native.writev(this.pollFd, this.iov, n, mem, this.hdr);
      if (r === -EINTR) {
        i--; // (a signal came first: the frame is written again)
        continue;
      }
      if (r === -EAGAIN) {
        // the frames written before still hold the queue's send buffer (they wait in a qdisc or a
        // bridge port's queue); the tap's fd becomes writable once they are gone
        this.wouldBlock = true;
        return i;
      }
      // the kernel refused this packet (bad offload metadata, link down, a detached queue): dropped and
      // counted, as the io_uring queue does with a write that fails
      if (r < 0) this.refused(-r);
    }
    return b.count;
  }

  private reported = false;

  protected refused(errno: number): void {
    this.drops++;
    if (this.reported) return;
    // once per queue: a refused packet is data-path information the operator can act on
    this.reported = true;
    const why = errno === 5 ? 'EIO: is the tap interface up?' : errno === 22 ? 'EINVAL: the kernel rejected the packet or its offload header' : errno === EBADFD ? 'EBADFD: the queue is detached from its interface' : `errno ${errno}`;
    // (fd 2 directly: a dataplane thread never returns to its event loop, which a worker's process.stderr
    // needs for every write after its first)
    writeSync(2, `tsvmm: tap queue fd ${this.pollFd}: a packet was refused (${why}); counting drops\n`);
  }

  /** bytes the segments receiveSegments() copied can hold */
  protected room = 0;

  /**
   * Packet i's first MAX_SEGMENTS segments after the header segment (more cannot go to one readv);
   * sets `room`. Returns the segment count, header included.
   */
  protected receiveSegments(b: PacketBatch, i: number): number {
    const from = 3 * b.iovStart[i];
    const to = Math.min(3 * b.iovStart[i + 1], from + 3 * MAX_SEGMENTS);
    const iov = this.iov;
    const src = b.iov;
    let room = 0;
    for (let k = from, j = 3; k < to; k += 3, j += 3) {
      iov[j] = src[k];
      iov[j + 1] = src[k + 1];
      iov[j + 2] = src[k + 2];
      room += src[k + 2];
    }
    this.room = room;
    return (to - from) / 3 + 1;
  }

  receive(b: PacketBatch, mem: ArrayBufferLike): number {
    for (let i = 0; i < b.count; i++) {
      const n = this.receiveSegments(b, i);
      const r = native.readv(this.pollFd, this.iov, n, mem, this.hdr);
      if (r === -EAGAIN || r === -EINTR) return i;
      // (as the io_uring queue: a tap that cannot be read is not one the data path can go on with)
      if (r < 0) throw new Error(`tap readv: errno ${-r}`);
      b.len[i] = receivedLength(b, i, r - T.TAP_HDR_LEN, this.room);
      readTapHeader(this.hdrView, 0, b, i);
    }
    return b.count;
  }

  close(): void {
    // the fd belongs to the NetDriver on the main thread, which closes it
  }
}

export const EAGAIN = 11;
const EINTR = 4;
const EBADFD = 77;

/**
 * The length to report for packet i, `len` frame bytes read into segments that hold `room`. The tap
 * cuts a frame to the segments it is given and returns what it copied: when the packet had more
 * segments than readv took, a frame that filled those may have been cut, and is reported empty (the
 * dataplane drops it, and the buffers stay the guest's).
 */
export function receivedLength(b: PacketBatch, i: number, len: number, room: number): number {
  if (len < 0) return 0;
  return b.iovStart[i + 1] - b.iovStart[i] > MAX_SEGMENTS && len >= room ? 0 : len;
}
