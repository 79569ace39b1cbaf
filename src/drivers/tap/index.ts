// tap backend: one /dev/net/tun queue fd per queue pair (IFF_MULTI_QUEUE), the kernel's vnet header for
// offloads, readv/writev between the kernel and guest memory with no copy in between.
//
// The tap header happens to share its layout with virtio's, but this driver only ever builds it from,
// and parses it into, the driver API's neutral metadata.
import { writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { native, O_RDWR, O_NONBLOCK, isNativeError } from '../../native.js';
import { UserError } from '../../errors.js';
import { META, META_WORDS, META_NEEDS_CSUM, META_CSUM_VALID, type DriverQueue, type NetDriver, type PacketBatch, type Offloads } from '../api.js';
import * as T from './tun.js';

export interface TapInit {
  fd: number;
}

/** segments of a packet one readv/writev takes: the kernel's 1024 (UIO_MAXIOV), less our header */
const MAX_SEGMENTS = 1023;

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
  const fds: number[] = [];
  const sock = native.socket(T.AF_INET, T.SOCK_DGRAM, 0);
  try {
    const existed = linkFlags(sock, ifname) !== undefined;
    for (let i = 0; i < queues; i++) fds.push(openQueueFd(ifname, options.dev ?? '/dev/net/tun'));
    if (sndbuf !== undefined) for (const fd of fds) native.ioctl(fd, T.TUNSETSNDBUF, new Int32Array([sndbuf]), 'TUNSETSNDBUF');
    // a tap we created is ours to bring up (one that existed is left as its owner set it)
    if (!existed) setUp(sock, ifname, linkFlags(sock, ifname) ?? 0);
  } catch (e) {
    fds.forEach((fd) => native.close(fd));
    throw e;
  } finally {
    native.close(sock);
  }
  const all: Offloads = { txCsum: true, txTso4: true, txTso6: true, txTsoEcn: true, rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: true };
  return {
    name: 'tap',
    caps: { queuePairs: queues, mtu: 1500, offloads: all },
    module: fileURLToPath(import.meta.url),
    queueInit: (pair: number): TapInit => ({ fd: fds[pair] }),
    setGuestOffloads(o) {
      // what the kernel may hand us for the guest: partial checksums, TSO frames
      const flags = (o.rxCsum ? T.TUN_F_CSUM : 0) | (o.rxCsum && o.rxTso4 ? T.TUN_F_TSO4 : 0) | (o.rxCsum && o.rxTso6 ? T.TUN_F_TSO6 : 0) | (o.rxCsum && o.rxTsoEcn ? T.TUN_F_TSO_ECN : 0);
      for (const fd of fds) native.ioctl(fd, T.TUNSETOFFLOAD, flags, 'TUNSETOFFLOAD');
    },
    close() {
      for (const fd of fds.splice(0)) native.close(fd);
    },
  };
}

/** Worker side: one tap queue fd. */
class TapQueue implements DriverQueue {
  drops = 0;
  private readonly hdr = new ArrayBuffer(T.TAP_HDR_LEN);
  private readonly hdrView = new DataView(this.hdr);
  private readonly iov = new Float64Array(3 * (MAX_SEGMENTS + 1));

  constructor(readonly pollFd: number) {
    // the first segment of every packet is our header
    this.iov[0] = 1;
    this.iov[1] = 0;
    this.iov[2] = T.TAP_HDR_LEN;
  }

  /** Packet i's segments after our header segment (a plain copy: no per-packet allocation). */
  private segments(b: PacketBatch, i: number): number {
    const from = 3 * b.iovStart[i];
    const to = 3 * b.iovStart[i + 1];
    if (to - from > 3 * MAX_SEGMENTS) return -1;
    const iov = this.iov;
    const src = b.iov;
    for (let k = from, j = 3; k < to; k++, j++) iov[j] = src[k];
    return (to - from) / 3 + 1;
  }

  wouldBlock = false;

  transmit(b: PacketBatch, mem: SharedArrayBuffer): number {
    const h = this.hdrView;
    this.wouldBlock = false;
    for (let i = 0; i < b.count; i++) {
      const m = i * META_WORDS;
      const needsCsum = (b.meta[m + META.FLAGS] & META_NEEDS_CSUM) !== 0;
      h.setUint8(0, needsCsum ? T.TAP_HDR_F_NEEDS_CSUM : 0);
      h.setUint8(1, b.meta[m + META.GSO_TYPE]);
      h.setUint16(2, b.meta[m + META.HDR_LEN], true);
      h.setUint16(4, b.meta[m + META.GSO_SIZE], true);
      h.setUint16(6, needsCsum ? b.meta[m + META.CSUM_START] : 0, true);
      h.setUint16(8, needsCsum ? b.meta[m + META.CSUM_OFFSET] : 0, true);
      h.setUint16(10, 0, true);
      const n = this.segments(b, i);
      if (n < 0) {
        this.drops++;
        continue;
      }
      const r = native.writev(this.pollFd, this.iov, n, mem, this.hdr);
      if (r === -11) {
        // EAGAIN: the frames written before still hold the queue's send buffer (they wait in a qdisc or
        // a bridge port's queue); the tap's fd becomes writable once they are gone
        this.wouldBlock = true;
        return i;
      }
      if (r < 0) this.refused(-r); // the kernel refused this packet (bad offload metadata, link down)
    }
    return b.count;
  }

  private reported = false;

  private refused(errno: number): void {
    this.drops++;
    if (this.reported) return;
    // once per queue: a refused packet is data-path information the operator can act on
    this.reported = true;
    const why = errno === 5 ? 'EIO: is the tap interface up?' : errno === 22 ? 'EINVAL: the kernel rejected the packet or its offload header' : `errno ${errno}`;
    // (fd 2 directly: a dataplane thread never returns to its event loop, which a worker's process.stderr
    // needs for every write after its first)
    writeSync(2, `tsvmm: tap queue fd ${this.pollFd}: a packet was refused (${why}); counting drops\n`);
  }

  /** bytes the segments receiveSegments() copied can hold */
  private room = 0;

  /**
   * Packet i's first MAX_SEGMENTS segments after our header segment (more cannot go to one readv);
   * sets `room`. Returns the segment count, header included.
   */
  private receiveSegments(b: PacketBatch, i: number): number {
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

  receive(b: PacketBatch, mem: SharedArrayBuffer): number {
    const h = this.hdrView;
    for (let i = 0; i < b.count; i++) {
      const n = this.receiveSegments(b, i);
      const r = native.readv(this.pollFd, this.iov, n, mem, this.hdr);
      if (r < 0) return i;
      const m = i * META_WORDS;
      const flags = h.getUint8(0);
      const len = Math.max(0, r - T.TAP_HDR_LEN);
      // the tap cuts a frame to the segments it is given and returns what it copied: when the packet
      // had more segments than readv took, a frame that filled those may have been cut, and is reported
      // empty (the dataplane drops it, and the buffers stay the guest's)
      const cut = b.iovStart[i + 1] - b.iovStart[i] > MAX_SEGMENTS && len >= this.room;
      b.len[i] = cut ? 0 : len;
      b.meta[m + META.FLAGS] = (flags & T.TAP_HDR_F_NEEDS_CSUM ? META_NEEDS_CSUM : 0) | (flags & T.TAP_HDR_F_DATA_VALID ? META_CSUM_VALID : 0);
      b.meta[m + META.GSO_TYPE] = h.getUint8(1);
      b.meta[m + META.HDR_LEN] = h.getUint16(2, true);
      b.meta[m + META.GSO_SIZE] = h.getUint16(4, true);
      b.meta[m + META.CSUM_START] = h.getUint16(6, true);
      b.meta[m + META.CSUM_OFFSET] = h.getUint16(8, true);
    }
    return b.count;
  }

  close(): void {
    // the fd belongs to the NetDriver on the main thread, which closes it
  }
}

export function openQueue(init: unknown): DriverQueue {
  return new TapQueue((init as TapInit).fd);
}
