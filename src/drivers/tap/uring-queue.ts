// A tap queue that moves batches through an io_uring: one READV or WRITEV request per frame, straight
// between the kernel and guest memory, and one system call per batch. A batch of one frame takes the
// plain readv/writev of TapQueue (the same one system call, without the ring's bookkeeping).
//
// Order and backpressure are the contract of TapQueue: a batch's writes are linked (IOSQE_IO_LINK:
// each starts only once the one before has completed, and a failure cancels those after it), so when
// the tap refuses a frame for now (EAGAIN) no later frame has gone, and the ones not taken stay in
// the guest's ring, in order. Every request asks not to wait (RWF_NOWAIT, or the fd's O_NONBLOCK
// where the file has no NOWAIT support): a full or empty tap completes it at once with EAGAIN, so
// waiting for a batch never waits for the wire.
import { native } from '../../native.js';
import { copyPacket, type PacketBatch } from '../api.js';
import * as T from './tun.js';
import { TapQueue, MAX_SEGMENTS, EAGAIN, writeTapHeader, readTapHeader, receivedLength } from './queue.js';
import { openUring, OP_READV, OP_WRITEV, RWF_NOWAIT, SQE_FIXED_FILE, SQE_IO_LINK, type Uring } from './uring.js';

/** requests per ring: a whole TX batch of the dataplane (64) and as many receives */
export const RING_ENTRIES = 128;
/** struct iovec the requests of one submission may point at (each frame takes at most MAX_SEGMENTS + 1) */
const IOVECS = 4096;
/** bytes of header room per request (a tap header is 12; 16 keeps each aligned) */
export const HDR_STRIDE = 16;
const SIZEOF_IOVEC = 16;
const EINVAL = 22;
const EOPNOTSUPP = 95;

/**
 * A queue on tap queue fd `fd` (opened O_NONBLOCK) through a ring of its own, or why there is none
 * (the kernel refused io_uring, or the tap behaves in a way this queue does not expect).
 */
export function openUringQueue(fd: number): UringTapQueue | string {
  const ring = openUring(RING_ENTRIES);
  if (typeof ring === 'string') return `io_uring_setup: ${ring}`;
  try {
    const q = new UringTapQueue(fd, ring);
    // Does the tap take RWF_NOWAIT? Asked with a write of nothing, which has no effect: the flag is
    // checked first (EOPNOTSUPP: the file has no NOWAIT support, and its O_NONBLOCK then makes
    // requests fail instead of wait), then the tap refuses a write shorter than its header (EINVAL).
    const r = q.probe(RWF_NOWAIT);
    if (r === -EINVAL) q.rwFlags = RWF_NOWAIT;
    if (r === -EINVAL || r === -EOPNOTSUPP) return q;
    ring.close();
    return `a write of nothing returned ${r} (EINVAL or EOPNOTSUPP expected)`;
  } catch (e) {
    ring.close();
    return e instanceof Error ? e.message : String(e);
  }
}

export class UringTapQueue extends TapQueue {
  /** headers of the frames in flight, one per request */
  private readonly hdrs = new ArrayBuffer(RING_ENTRIES * HDR_STRIDE);
  private readonly hdrsView = new DataView(this.hdrs);
  /** the requests' iovec arrays: the kernel reads them, so they hold real addresses (fillIovecs) */
  private readonly iovecs = new ArrayBuffer(IOVECS * SIZEOF_IOVEC);
  private readonly iovecsAddr: number;
  /** each request's result, by its index in the submission */
  private readonly res = new Int32Array(RING_ENTRIES);
  /** bytes the segments of each receive request hold */
  private readonly rooms = new Float64Array(RING_ENTRIES);

  /** RWF_NOWAIT, or 0 where the fd's O_NONBLOCK already makes requests fail instead of wait */
  rwFlags = 0;
  /** the fd requests name, and their SQE flags: the ring's registered file 0, or the fd itself */
  private readonly sqeFd: number;
  private readonly sqeFlags: number;
  /** requests per submission: what the ring and the arrays above hold */
  private readonly slots: number;
  /** where frames received through io_uring are counted (the driver's shared counters) */
  counted: { words: Int32Array; rxFrames: number } | undefined;

  constructor(
    pollFd: number,
    private readonly ring: Uring,
  ) {
    super(pollFd);
    this.iovecsAddr = Number(native.addressOf(this.iovecs));
    this.slots = Math.min(ring.entries, RING_ENTRIES);
    const fixed = ring.registerFile(pollFd);
    this.sqeFd = fixed ? 0 : pollFd;
    this.sqeFlags = fixed ? SQE_FIXED_FILE : 0;
  }

  /** The result of an empty write with these flags. */
  probe(rwFlags: number): number {
    this.ring.prep(0, OP_WRITEV, this.sqeFd, this.iovecsAddr, 0, rwFlags, this.sqeFlags, 0);
    this.ring.submitAndWait(1, this.res);
    return this.res[0];
  }

  /** the ring's fd, opened on this thread */
  get ownFds(): readonly number[] {
    return [this.ring.fd];
  }

  override close(): void {
    this.ring.close();
  }

  override transmit(b: PacketBatch, mem: ArrayBufferLike): number {
    if (b.count < 2) return super.transmit(b, mem);
    this.wouldBlock = false;
    const ring = this.ring;
    const res = this.res;
    let i = 0;
    while (i < b.count) {
      const n = this.prepWrites(b, i, mem);
      if (n === 0) {
        // frame i cannot go: more segments than one writev takes, or a buffer outside guest memory
        this.drops++;
        i++;
        continue;
      }
      ring.submitAndWait(n, res);
      let k = 0;
      while (k < n && res[k] >= 0) k++;
      if (k === n) {
        i += n;
        continue;
      }
      if (res[k] === -EAGAIN) {
        // (the requests after k were cancelled: their frames stay the guest's, in order)
        this.wouldBlock = true;
        return i + k;
      }
      // the kernel refused frame i + k (bad offload metadata, link down); the ones after it were cancelled
      this.refused(-res[k]);
      i += k + 1;
    }
    return b.count;
  }

  /**
   * Prepare linked writes for frames i, i+1, ... while the ring and the iovec table have room; a
   * frame that cannot go ends the chain before it. Returns how many were prepared.
   */
  private prepWrites(b: PacketBatch, i: number, mem: ArrayBufferLike): number {
    const ring = this.ring;
    const iov = this.iov;
    let n = 0;
    let at = 0;
    for (; i + n < b.count && n < this.slots; n++) {
      const segs = this.segments(b, i + n);
      if (segs < 0 || at + segs > IOVECS) break;
      writeTapHeader(this.hdrsView, n * HDR_STRIDE, b, i + n);
      iov[1] = n * HDR_STRIDE;
      if (native.fillIovecs(this.iovecs, at, iov, segs, mem, this.hdrs) < 0) break;
      ring.prep(n, OP_WRITEV, this.sqeFd, this.iovecsAddr + at * SIZEOF_IOVEC, segs, this.rwFlags, this.sqeFlags | SQE_IO_LINK, n);
      at += segs;
    }
    if (n > 0) ring.unlink(n - 1);
    iov[1] = 0; // (TapQueue's own header, for a batch of one)
    return n;
  }

  override receive(b: PacketBatch, mem: ArrayBufferLike): number {
    if (b.count < 2) return super.receive(b, mem);
    const n = this.prepReads(b, mem);
    if (n === 0) return 0;
    const res = this.res;
    this.ring.submitAndWait(n, res);
    const got = collectReads(b, mem, n, res, this.rooms, this.hdrsView);
    if (got > 0 && this.counted) Atomics.add(this.counted.words, this.counted.rxFrames, got);
    return got;
  }

  /** Prepare a read for packets 0, 1, ... while the ring and the iovec table have room. Returns how many. */
  private prepReads(b: PacketBatch, mem: ArrayBufferLike): number {
    const ring = this.ring;
    const iov = this.iov;
    const limit = Math.min(b.count, this.slots);
    let n = 0;
    let at = 0;
    for (; n < limit; n++) {
      const segs = this.receiveSegments(b, n);
      if (at + segs > IOVECS) break;
      iov[1] = n * HDR_STRIDE;
      if (native.fillIovecs(this.iovecs, at, iov, segs, mem, this.hdrs) < 0) break;
      this.rooms[n] = this.room;
      ring.prep(n, OP_READV, this.sqeFd, this.iovecsAddr + at * SIZEOF_IOVEC, segs, this.rwFlags, this.sqeFlags, n);
      at += segs;
    }
    iov[1] = 0; // (TapQueue's own header, for a batch of one)
    return n;
  }
}

/**
 * The results of `n` reads into packets [0, n) of b (res: bytes with the tap header, or -errno;
 * rooms: bytes each packet's segments held; view: the tap header of read s at s * HDR_STRIDE) as the
 * batch's packets [0, got): returns got. Reads complete in order, but one that found the tap empty
 * (EAGAIN) may be followed by one that found a frame that arrived meanwhile: that frame moves down
 * into the first packet left empty, so that packets [0, got) are the frames in the order they came.
 */
export function collectReads(b: PacketBatch, mem: ArrayBufferLike, n: number, res: Int32Array, rooms: Float64Array, view: DataView): number {
  const hdrs = view.buffer as ArrayBuffer;
  let got = 0;
  for (let s = 0; s < n; s++) {
    const r = res[s];
    if (r === -EAGAIN) continue;
    if (r < 0) throw new Error(`tap readv (io_uring): errno ${-r}`);
    let len = receivedLength(b, s, r - T.TAP_HDR_LEN, rooms[s]);
    if (s !== got) {
      native.copy(hdrs, got * HDR_STRIDE, hdrs, s * HDR_STRIDE, T.TAP_HDR_LEN);
      len = copyPacket(b, s, got, len, mem, hdrs, native.copy, MAX_SEGMENTS); // the segments the reads took
    }
    b.len[got] = len;
    readTapHeader(view, got * HDR_STRIDE, b, got);
    got++;
  }
  return got;
}
