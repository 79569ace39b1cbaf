// An io_uring (linux/io_uring.h) for one tap queue, used by the dataplane thread that owns the queue.
//
// The submission and completion rings are mapped into this thread and read and written here directly;
// the kernel is entered once per batch. Every batch is submitted and waited for whole within one
// driver call: no request outlives the call, so none can refer to guest memory after the dataplane
// has given the buffers back (to the guest, or to an unmap).
import { native, PROT_READ, PROT_WRITE, MAP_SHARED } from '../../native.js';

export const OP_READV = 1;
export const OP_WRITEV = 2;
/** the next SQE starts only once this one completed in full; a failure cancels the rest of the chain */
export const SQE_IO_LINK = 1 << 2;
/** the SQE's fd is an index into the files registered with registerFile */
export const SQE_FIXED_FILE = 1 << 0;
/** per request: return EAGAIN instead of waiting for the file (for files that support it: FMODE_NOWAIT) */
export const RWF_NOWAIT = 8;

const SETUP_SINGLE_ISSUER = 1 << 12;
const SETUP_DEFER_TASKRUN = 1 << 13;
const FEAT_SINGLE_MMAP = 1;
const OFF_SQ_RING = 0;
const OFF_CQ_RING = 0x8000000;
const OFF_SQES = 0x10000000;
const ENTER_GETEVENTS = 1;
const REGISTER_FILES = 2;
const MAP_POPULATE = 0x8000;
const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;
const EINVAL = 22;
/** entering the kernel again after EINTR/EAGAIN/EBUSY: more than this many in a row is a broken ring */
const MAX_RETRIES = 10_000;

/** words of one SQE (64 bytes) and one CQE (16 bytes) */
const SQE_WORDS = 16;
const CQE_WORDS = 4;

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 12: 'ENOMEM', 22: 'EINVAL', 24: 'EMFILE', 38: 'ENOSYS' };

/** A ring, or why the kernel would not give one (an errno name). */
export function openUring(entries: number): Uring | string {
  const params = new Uint32Array(30); // struct io_uring_params, 120 bytes
  let fd = -EINVAL;
  // task work (a linked request's start) runs only when this thread enters to wait: it does for every
  // batch, and nothing else interrupts it (6.1); older kernels refuse the flags, and get a plain ring
  for (const flags of [SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN, 0]) {
    params.fill(0);
    params[2] = flags;
    fd = native.ioUringSetup(entries, params);
    if (fd !== -EINVAL) break;
  }
  if (fd < 0) return ERRNO_NAMES[-fd] ?? `errno ${-fd}`;
  try {
    return new Uring(fd, params);
  } catch (e) {
    native.close(fd);
    return e instanceof Error ? e.message : String(e);
  }
}

export class Uring {
  readonly entries: number;
  private readonly sq: Uint32Array;
  private readonly cq: Uint32Array;
  private readonly sqes: Uint32Array;
  /** word indexes in sq / cq */
  private readonly sqTail: number;
  private readonly sqMask: number;
  private readonly cqHead: number;
  private readonly cqTail: number;
  private readonly cqMask: number;
  private readonly cqes: number;
  private tail: number;
  private closed = false;

  constructor(
    readonly fd: number,
    p: Uint32Array,
  ) {
    const sqEntries = p[0];
    const cqEntries = p[1];
    const features = p[5];
    // struct io_sqring_offsets at byte 40, struct io_cqring_offsets at byte 80
    const so = 10;
    const co = 20;
    const sqSize = p[so + 6] + sqEntries * 4;
    const cqSize = p[co + 5] + cqEntries * 16;
    const prot = PROT_READ | PROT_WRITE;
    const single = (features & FEAT_SINGLE_MMAP) !== 0;
    const sqMap = native.mmap(fd, single ? Math.max(sqSize, cqSize) : sqSize, prot, MAP_SHARED | MAP_POPULATE, OFF_SQ_RING);
    const cqMap = single ? sqMap : native.mmap(fd, cqSize, prot, MAP_SHARED | MAP_POPULATE, OFF_CQ_RING);
    this.sq = new Uint32Array(sqMap);
    this.cq = new Uint32Array(cqMap);
    this.sqes = new Uint32Array(native.mmap(fd, sqEntries * 64, prot, MAP_SHARED | MAP_POPULATE, OFF_SQES));
    this.entries = sqEntries;
    this.sqTail = p[so + 1] / 4;
    this.sqMask = this.sq[p[so + 2] / 4];
    this.cqHead = p[co] / 4;
    this.cqTail = p[co + 1] / 4;
    this.cqMask = this.cq[p[co + 2] / 4];
    this.cqes = p[co + 5] / 4;
    // the SQ array names the SQE of each ring slot: slot k is SQE k, for good
    const array = p[so + 6] / 4;
    for (let k = 0; k < sqEntries; k++) this.sq[array + k] = k;
    this.tail = Atomics.load(this.sq, this.sqTail);
  }

  /**
   * Fill the SQE `i` places after the tail (i < entries): `op` on `fd` with `iovCount` struct iovec at
   * address `iovAddr`, from the file's position; `userData` comes back in the completion.
   */
  prep(i: number, op: number, fd: number, iovAddr: number, iovCount: number, rwFlags: number, sqeFlags: number, userData: number): void {
    const s = this.sqes;
    const w = ((this.tail + i) & this.sqMask) * SQE_WORDS;
    s[w] = op | (sqeFlags << 8);
    s[w + 1] = fd;
    // off = -1: the current position (a tap has none)
    s[w + 2] = 0xffffffff;
    s[w + 3] = 0xffffffff;
    s[w + 4] = iovAddr >>> 0;
    s[w + 5] = Math.floor(iovAddr / 0x100000000);
    s[w + 6] = iovCount;
    s[w + 7] = rwFlags;
    s[w + 8] = userData;
    s[w + 9] = 0;
    for (let k = 10; k < SQE_WORDS; k++) s[w + k] = 0;
  }

  /**
   * Register `fd` as the ring's file 0: requests naming it with SQE_FIXED_FILE skip looking the fd up
   * and counting a reference to its file each. False when the kernel would not.
   */
  registerFile(fd: number): boolean {
    return native.ioUringRegister(this.fd, REGISTER_FILES, new Int32Array([fd]), 1) === 0;
  }

  /** Clear IOSQE_IO_LINK on the SQE `i` places after the tail: its chain ends there. */
  unlink(i: number): void {
    this.sqes[((this.tail + i) & this.sqMask) * SQE_WORDS] &= ~(SQE_IO_LINK << 8);
  }

  /**
   * Submit the `n` SQEs prepared after the tail and wait until all have completed: res[userData] is
   * each one's result (bytes, or -errno). Returns when every request is finished, or throws when the
   * kernel keeps refusing to enter (the ring is then unusable).
   */
  submitAndWait(n: number, res: Int32Array): void {
    if (this.closed) throw new Error('io_uring: ring closed');
    this.tail = (this.tail + n) >>> 0;
    Atomics.store(this.sq, this.sqTail, this.tail);
    let submitted = 0;
    let seen = 0;
    let retries = 0;
    while (seen < n) {
      const r = native.ioUringEnter(this.fd, n - submitted, n - seen, ENTER_GETEVENTS);
      if (r >= 0) submitted += r;
      else if ((r !== -EINTR && r !== -EAGAIN && r !== -EBUSY) || ++retries > MAX_RETRIES) throw new Error(`io_uring_enter: errno ${-r}`);
      seen += this.reap(res);
    }
  }

  /** Move the completions waiting in the CQ into res; returns how many. */
  private reap(res: Int32Array): number {
    const cq = this.cq;
    let head = Atomics.load(cq, this.cqHead);
    const tail = Atomics.load(cq, this.cqTail);
    let n = 0;
    for (; head !== tail; head = (head + 1) >>> 0, n++) {
      const c = this.cqes + (head & this.cqMask) * CQE_WORDS;
      const ud = cq[c];
      if (ud < res.length) res[ud] = cq[c + 2] | 0;
    }
    Atomics.store(cq, this.cqHead, head);
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // the mappings stay until collected; the ring goes once they and the fd are gone
    native.close(this.fd);
  }
}
