// Typed access to the native syscall shim (native/tsvmm.cc). Loaded once per thread (workers too).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export interface Native {
  open(path: string, flags: number): number;
  close(fd: number): void;
  /**
   * arg: a number/bigint passed by value, or a buffer passed by pointer. `name` labels the error.
   * EINTR is retried unless `interruptible` (KVM_RUN, which a kick interrupts on purpose).
   */
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView | ArrayBuffer, name?: string, interruptible?: boolean): number;
  /** Bytes moved, or -errno for EAGAIN/EINTR. */
  read(fd: number, buf: ArrayBufferView | ArrayBuffer): number;
  write(fd: number, buf: ArrayBufferView | ArrayBuffer): number;
  /**
   * iov: [buffer index (0 = buf0, 1 = buf1), offset, length] triples, bounds-checked natively.
   * Returns bytes, or -errno for any failure (what each errno means is the caller's to decide).
   */
  readv(fd: number, iov: Float64Array, count: number, buf0: SharedArrayBuffer | ArrayBuffer, buf1?: SharedArrayBuffer | ArrayBuffer): number;
  writev(fd: number, iov: Float64Array, count: number, buf0: SharedArrayBuffer | ArrayBuffer, buf1?: SharedArrayBuffer | ArrayBuffer): number;
  socket(domain: number, type: number, protocol: number): number;
  bindUnix(fd: number, path: string): void;
  /** 0, or -errno */
  connectUnix(fd: number, path: string): number;
  listen(fd: number, backlog: number): void;
  /** a new fd, or -errno (EAGAIN when nobody is waiting on a non-blocking socket) */
  accept(fd: number): number;
  /** bytes (0: the peer closed) or -errno; descriptors received go to fdsOut, -1 terminated */
  recvmsg(fd: number, buf: ArrayBufferView | ArrayBuffer, fdsOut: Int32Array): number;
  /** bytes or -errno; `fds` travel as SCM_RIGHTS */
  sendmsg(fd: number, buf: ArrayBufferView | ArrayBuffer, fds?: number[]): number;
  /** an inaccessible reservation as one SharedArrayBuffer, to map other memory into (mmapFixed) */
  reserveShared(length: number): { buffer: SharedArrayBuffer; address: bigint };
  mmapFixed(address: bigint, length: number, fd: number, offset: number | bigint): void;
  /** st_size of what fd refers to */
  fileSize(fd: number): number;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, size: number | bigint): void;
  /** MAP_SHARED, or with `priv` MAP_PRIVATE (copy-on-write: writes stay in this process, whose threads all see them) */
  mmapShared(fd: number, length: number, offset?: number, priv?: boolean): { buffer: SharedArrayBuffer; address: bigint };
  /**
   * A non-shared ArrayBuffer over the bytes of `sab` (this thread's object; it keeps sab's memory alive):
   * TypedArray copies over it are memcpy, where over a SharedArrayBuffer V8 copies byte by byte.
   */
  plainView(sab: SharedArrayBuffer): ArrayBuffer;
  /** the new offset, or -errno (SEEK_DATA or SEEK_HOLE past the last data: -ENXIO) */
  lseek(fd: number, offset: number, whence: number): number;
  mmap(fd: number, length: number, prot: number, flags: number, offset: number): ArrayBuffer;
  /** Replace [address, address+length) with anonymous zero pages: releases the file behind a mapping early. */
  remapAnonymous(address: bigint, length: number): void;
  addressOf(buf: ArrayBufferView | ArrayBuffer): bigint;
  eventfd(initval: number, flags: number): number;
  epollCreate(): number;
  epollCtl(epfd: number, op: number, fd: number, events: number, data: number): void;
  /** out: 3 Uint32 words per event (events, data lo, data hi). Returns count; 0 on EINTR. */
  epollWait(epfd: number, out: Uint32Array, timeoutMs: number): number;
  threadSelf(): bigint;
  threadKill(thread: bigint, signo: number): void;
  signalNoop(signo: number): void;
  unblockSignal(signo: number): void;
  /** memmove between two buffers (any kind, shared ones included), bounds-checked */
  copy(dst: ArrayBufferView | ArrayBufferLike, dstOffset: number, src: ArrayBufferView | ArrayBufferLike, srcOffset: number, length: number): void;
  /**
   * `count` memmoves in one call: list holds [dst buffer, dst offset, src buffer, src offset, length]
   * quintuples, buffer 0 being buf0 and 1 buf1; throws at the first range outside its buffer.
   */
  copyv(list: Float64Array, count: number, buf0: ArrayBufferView | ArrayBufferLike, buf1?: ArrayBufferView | ArrayBufferLike): void;
  /** the bpf() system call over a caller-built bpf_attr: result (fd or 0) or -errno */
  bpf(cmd: number, attr: ArrayBufferView): number;
  /** 0 or -errno */
  setsockopt(fd: number, level: number, name: number, value: ArrayBufferView): number;
  /** the option's length, or -errno */
  getsockopt(fd: number, level: number, name: number, out: ArrayBufferView): number;
  /** bind with a caller-built address: 0 or -errno */
  bindRaw(fd: number, addr: ArrayBufferView): number;
  /** sendto(fd, NULL, 0, flags): the AF_XDP transmit wake-up; bytes or -errno */
  kick(fd: number, flags: number): number;
  /** poll one fd: revents, 0 on timeout, or -errno */
  poll(fd: number, events: number, timeoutMs: number): number;
  /**
   * Call `callback` on this thread's event loop while `fd` is readable (level-triggered: it must drain
   * the fd; it must not throw). Returns the watch's id. A watch does not keep the process alive.
   */
  watchReadable(fd: number, callback: () => void): number;
  /** End a watch; false for an id not watched (ended already). */
  unwatch(id: number): boolean;
  sigRtMin(): number;
  /** io_uring_setup over a caller-built 120-byte struct io_uring_params: the ring fd, or -errno */
  ioUringSetup(entries: number, params: ArrayBufferView): number;
  /** io_uring_enter(fd, toSubmit, minComplete, flags): SQEs consumed, or -errno */
  ioUringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number;
  /** io_uring_register(fd, opcode, arg, nrArgs) over a caller-built arg: the result, or -errno */
  ioUringRegister(fd: number, opcode: number, arg: ArrayBufferView, nrArgs: number): number;
  /**
   * Write `count` struct iovec (real addresses) at entry `at` of `out` from [buffer index, offset,
   * length] triples, bounds-checked as readv/writev check them: count, or -1 when a triple lies
   * outside its buffer or `out` is too small. For system calls the kernel runs later (io_uring): the
   * caller keeps `out` and the buffers alive until they complete.
   */
  fillIovecs(out: ArrayBuffer, at: number, iov: Float64Array, count: number, buf0: SharedArrayBuffer | ArrayBuffer, buf1?: SharedArrayBuffer | ArrayBuffer): number;
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

export const native: Native = require(join(root, 'build', 'Release', 'tsvmm_native.node'));

export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const EFD_NONBLOCK = 0o4000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 1;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
/** what a write() adds to an eventfd's counter to signal it once (a kick, an interrupt, a wake-up) */
export const ONE = new BigUint64Array([1n]);

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as NativeError).code === 'string' && typeof (e as NativeError).errno === 'number';
}
