// tap backend: one /dev/net/tun queue fd per queue pair (IFF_MULTI_QUEUE), the kernel's vnet header for
// offloads, frames moved between the kernel and guest memory with no copy in between: through an
// io_uring per queue, a batch per system call (uring-queue.ts), or readv/writev, one frame per system
// call (queue.ts), where io_uring is refused or turned off.
//
// The tap header happens to share its layout with virtio's, but this driver only ever builds it from,
// and parses it into, the driver API's neutral metadata.
import { writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { native, O_RDWR, O_NONBLOCK, isNativeError } from '../../native.js';
import { UserError } from '../../errors.js';
import type { DriverQueue, NetDriver, Offloads } from '../api.js';
import * as T from './tun.js';
import { TapQueue } from './queue.js';
import { openUringQueue } from './uring-queue.js';
import { openUring } from './uring.js';

export interface TapInit {
  fd: number;
  /** try io_uring (else readv/writev) */
  uring?: boolean;
  /** Int32 counters (COUNTER below), shared by the driver's queues on every thread */
  counters?: SharedArrayBuffer;
}

/**
 * the driver's counters: queue openings served through io_uring, and through readv/writev instead;
 * frames received through io_uring batches of reads
 */
const COUNTER = { URING_QUEUES: 0, URING_FALLBACKS: 1, URING_RX_FRAMES: 2 } as const;

/**
 * Whether to use io_uring: `uring=on|off` (default on, checked by create() before it opens anything),
 * TSVMM_IO_URING=0 turns it off; a kernel that refuses a ring (ENOSYS, EPERM: kernel.io_uring_disabled)
 * also does. Says so once when off (once the tap is open: a tap that cannot be had is said instead).
 */
function wantUring(ifname: string, option: string | undefined): boolean {
  let why: string | undefined;
  if (option === 'off') why = 'off (uring=off)';
  else if (process.env.TSVMM_IO_URING === '0') why = 'off (TSVMM_IO_URING=0)';
  else {
    const ring = openUring(2);
    if (typeof ring === 'string') why = `refused by the kernel (${ring})`;
    else ring.close();
  }
  if (why === undefined) return true;
  process.stderr.write(`tsvmm: tap ${ifname}: io_uring ${why}; using readv/writev, a system call per frame\n`);
  return false;
}

function openQueueFd(ifname: string, devPath: string): number {
  let fd: number;
  try {
    fd = native.open(devPath, O_RDWR | O_NONBLOCK);
  } catch (e) {
    if (isNativeError(e) && e.code === 'ENOENT') throw new UserError(`--net tap: ${devPath} does not exist: load the tun module`);
    if (isNativeError(e) && (e.code === 'EACCES' || e.code === 'EPERM')) throw new UserError(`--net tap: no permission to open ${devPath}: run as root or with CAP_NET_ADMIN`);
    throw e;
  }
  const ifr = new Uint8Array(T.SIZEOF_IFREQ);
  ifr.set(new TextEncoder().encode(ifname));
  new DataView(ifr.buffer).setUint16(T.IFNAMSIZ, T.IFF_TAP | T.IFF_NO_PI | T.IFF_VNET_HDR | T.IFF_MULTI_QUEUE, true);
  try {
    native.ioctl(fd, T.TUNSETIFF, ifr, 'TUNSETIFF');
    native.ioctl(fd, T.TUNSETVNETHDRSZ, new Int32Array([T.TAP_HDR_LEN]), 'TUNSETVNETHDRSZ');
  } catch (e) {
    native.close(fd);
    if (isNativeError(e) && e.code === 'EPERM') throw new UserError(`--net tap: no permission to create or attach tap ${ifname}: run as root or with CAP_NET_ADMIN`);
    if (isNativeError(e) && e.code === 'EINVAL') throw new UserError(`--net tap: ${ifname} exists but is not a multi-queue tap with a vnet header (delete it, or create it with "ip tuntap add ${ifname} mode tap multi_queue vnet_hdr")`);
    if (isNativeError(e) && e.code === 'EBUSY') throw new UserError(`--net tap: ${ifname} is in use by another process`);
    throw e;
  }
  return fd;
}

/**
 * Does the kernel take UDP segmentation offload on this tap queue (TUN_F_USO4 and TUN_F_USO6, Linux
 * 6.2 on; an older one refuses bits it does not know with EINVAL)? The queue's offloads are off again
 * afterwards, as they were (the guest's choice sets them: setGuestOffloads).
 */
function probeUso(fd: number): boolean {
  let ok = true;
  try {
    native.ioctl(fd, T.TUNSETOFFLOAD, T.TUN_F_CSUM | T.TUN_F_USO4 | T.TUN_F_USO6, 'TUNSETOFFLOAD');
  } catch (e) {
    if (!isNativeError(e) || e.code !== 'EINVAL') throw e;
    ok = false;
  }
  native.ioctl(fd, T.TUNSETOFFLOAD, 0, 'TUNSETOFFLOAD');
  return ok;
}

function ifreq(ifname: string): Uint8Array {
  const ifr = new Uint8Array(T.SIZEOF_IFREQ);
  ifr.set(new TextEncoder().encode(ifname));
  return ifr;
}

/** Interface flags, or undefined when there is no such interface (in this namespace). */
function linkFlags(sock: number, ifname: string): number | undefined {
  const ifr = ifreq(ifname);
  try {
    native.ioctl(sock, T.SIOCGIFFLAGS, ifr, 'SIOCGIFFLAGS');
  } catch (e) {
    if (isNativeError(e) && e.code === 'ENODEV') return undefined;
    throw e;
  }
  return new DataView(ifr.buffer).getUint16(T.IFNAMSIZ, true);
}

function setUp(sock: number, ifname: string, flags: number): void {
  const ifr = ifreq(ifname);
  new DataView(ifr.buffer).setUint16(T.IFNAMSIZ, flags | T.IFF_UP, true);
  native.ioctl(sock, T.SIOCSIFFLAGS, ifr, 'SIOCSIFFLAGS');
}

function getMtu(sock: number, ifname: string): number {
  const ifr = ifreq(ifname);
  native.ioctl(sock, T.SIOCGIFMTU, ifr, 'SIOCGIFMTU');
  return new DataView(ifr.buffer).getInt32(T.IFNAMSIZ, true);
}

/** Raise the tap's MTU to `mtu` (never lowers it: the owner may have reasons); returns the MTU it has. */
function raiseMtu(sock: number, ifname: string, mtu: number): number {
  const now = getMtu(sock, ifname);
  if (now >= mtu) return now;
  const ifr = ifreq(ifname);
  new DataView(ifr.buffer).setInt32(T.IFNAMSIZ, mtu, true);
  try {
    native.ioctl(sock, T.SIOCSIFMTU, ifr, 'SIOCSIFMTU');
  } catch (e) {
    if (isNativeError(e) && e.code === 'EINVAL') throw new UserError(`--net tap: ${ifname} cannot take mtu=${mtu} (the kernel refused it; a tap's largest is 65521)`);
    if (isNativeError(e) && e.code === 'EPERM') throw new UserError(`--net tap: no permission to raise ${ifname}'s MTU to ${mtu}: run as root or with CAP_NET_ADMIN, or set it beforehand`);
    throw e;
  }
  return getMtu(sock, ifname);
}

/** the option keys create() reads (the registry refuses others) */
export const options = ['ifname', 'sndbuf', 'uring', 'dev'];

export function create(options: Record<string, string>): NetDriver {
  const ifname = options.ifname;
  if (!ifname) throw new UserError('--net tap: ifname=NAME is required');
  if (ifname.length >= T.IFNAMSIZ || !/^[A-Za-z0-9_.-]+$/.test(ifname)) throw new UserError(`--net tap: "${ifname}" is not a valid interface name (at most 15 letters, digits, _ . -)`);
  const queues = Number(options.queues ?? '1');
  // sndbuf: what a queue's frames may hold in the kernel before writes would block (QEMU's tap option
  // of the name): the flow control that makes a slow wire push back on the guest instead of a qdisc
  // dropping its frames. The kernel's default is no limit.
  const sndbuf = options.sndbuf === undefined ? undefined : Number(options.sndbuf);
  if (sndbuf !== undefined && !(Number.isInteger(sndbuf) && sndbuf >= 4096 && sndbuf <= 0x7fffffff)) throw new UserError('--net tap: sndbuf must be a byte count from 4096 to 2147483647');
  // mtu: the MTU the device offers (see NetConfig.mtu): the tap is raised to it so the wire carries it
  const wantMtu = options.mtu === undefined ? undefined : Number(options.mtu);
  if (wantMtu !== undefined && !(Number.isInteger(wantMtu) && wantMtu >= 68 && wantMtu <= 65535)) throw new UserError('--net tap: mtu must be a whole number from 68 to 65535');
  if (options.uring !== undefined && options.uring !== 'on' && options.uring !== 'off') throw new UserError('--net tap: uring must be on or off');
  let mtu = 1500;
  const counters = new SharedArrayBuffer(12);
  const fds: number[] = [];
  let uso = false;
  const sock = native.socket(T.AF_INET, T.SOCK_DGRAM, 0);
  try {
    const existed = linkFlags(sock, ifname) !== undefined;
    for (let i = 0; i < queues; i++) fds.push(openQueueFd(ifname, options.dev ?? '/dev/net/tun'));
    uso = probeUso(fds[0]);
    if (sndbuf !== undefined) for (const fd of fds) native.ioctl(fd, T.TUNSETSNDBUF, new Int32Array([sndbuf]), 'TUNSETSNDBUF');
    // a tap we created is ours to bring up (one that existed is left as its owner set it)
    // the wire's MTU is what the device offers by default (a Linux guest cannot go above it)
    mtu = wantMtu === undefined ? getMtu(sock, ifname) : raiseMtu(sock, ifname, wantMtu);
    if (!existed) setUp(sock, ifname, linkFlags(sock, ifname) ?? 0);
  } catch (e) {
    fds.forEach((fd) => native.close(fd));
    throw e;
  } finally {
    native.close(sock);
  }
  const uring = wantUring(ifname, options.uring);
  const all: Offloads = { txCsum: true, txTso4: true, txTso6: true, txTsoEcn: true, rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: true, txUso: uso, rxUso4: uso, rxUso6: uso };
  return {
    name: 'tap',
    caps: { queuePairs: queues, mtu: Math.min(mtu, 65535), offloads: all },
    module: fileURLToPath(import.meta.url),
    queueInit: (pair: number): TapInit => ({ fd: fds[pair], uring, counters }),
    counters() {
      const c = new Int32Array(counters);
      return { uringQueues: Atomics.load(c, COUNTER.URING_QUEUES), uringFallbacks: Atomics.load(c, COUNTER.URING_FALLBACKS), uringRxFrames: Atomics.load(c, COUNTER.URING_RX_FRAMES) };
    },
    setGuestOffloads(o) {
      // what the kernel may hand us for the guest: partial checksums, TSO frames, UDP GSO frames (the
      // kernel does USO for both IP versions or neither: only for a guest that takes both)
      const flags =
        (o.rxCsum ? T.TUN_F_CSUM : 0) |
        (o.rxCsum && o.rxTso4 ? T.TUN_F_TSO4 : 0) |
        (o.rxCsum && o.rxTso6 ? T.TUN_F_TSO6 : 0) |
        (o.rxCsum && o.rxTsoEcn ? T.TUN_F_TSO_ECN : 0) |
        (o.rxCsum && o.rxUso4 && o.rxUso6 ? T.TUN_F_USO4 | T.TUN_F_USO6 : 0);
      for (const fd of fds) native.ioctl(fd, T.TUNSETOFFLOAD, flags, 'TUNSETOFFLOAD');
    },
    close() {
      for (const fd of fds.splice(0)) native.close(fd);
    },
  };
}

export function openQueue(init: unknown): DriverQueue {
  const { fd, uring, counters } = init as TapInit;
  const c = counters && new Int32Array(counters);
  if (uring) {
    const q = openUringQueue(fd);
    if (typeof q !== 'string') {
      if (c) {
        Atomics.add(c, COUNTER.URING_QUEUES, 1);
        q.counted = { words: c, rxFrames: COUNTER.URING_RX_FRAMES };
      }
      return q;
    }
    // (fd 2 directly: a dataplane thread never returns to its event loop, which process.stderr needs)
    writeSync(2, `tsvmm: tap queue fd ${fd}: io_uring unusable (${q}); using readv/writev, a system call per frame\n`);
  }
  if (c) Atomics.add(c, COUNTER.URING_FALLBACKS, 1);
  return new TapQueue(fd);
}
