// The packet-level driver API: what a network backend (tap, AF_XDP, a plugin) implements.
//
// A driver moves packets between guest memory and its wire. It sees buffers (segments of a shared
// buffer), lengths and neutral offload metadata (checksum to complete, segmentation to perform); it
// never sees a descriptor, a ring or a virtio header. The dataplane (src/dataplane/) owns all virtio
// knowledge and calls the driver from its worker thread.
//
// A driver has two halves, because resources are opened with the VMM's privileges on the main thread
// and used on a dataplane thread:
//   - `create(options)` runs on the main thread and returns a NetDriver: capabilities, and for each
//     queue pair a structured-cloneable `queueInit` (file descriptors are plain numbers: same process);
//   - `openQueue(init)` runs in the dataplane worker and returns the DriverQueue the data path calls.
//
// A complete minimal driver: examples/drivers/null-driver.mjs; the guide: docs/DRIVERS.md.

/** Words of offload metadata per packet, in PacketBatch.meta. */
export const META = {
  FLAGS: 0,
  /** where checksumming starts (bytes from the Ethernet header), and where the result goes after that */
  CSUM_START: 1,
  CSUM_OFFSET: 2,
  /** GSO_* below, possibly | GSO_ECN */
  GSO_TYPE: 3,
  /** payload bytes per segment */
  GSO_SIZE: 4,
  /** length of the headers before the payload (a hint; 0 if unknown) */
  HDR_LEN: 5,
} as const;
export const META_WORDS = 6;

/** META.FLAGS: TX: the checksum at CSUM_START/CSUM_OFFSET must be completed; RX: it is incomplete. */
export const META_NEEDS_CSUM = 1;
/** META.FLAGS (RX): the packet's checksums were verified. */
export const META_CSUM_VALID = 2;

export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_UDP = 3;
export const GSO_TCPV6 = 4;
/** UDP segmentation (USO), IPv4 or IPv6: GSO_SIZE bytes of UDP payload per datagram */
export const GSO_UDP_L4 = 5;
export const GSO_ECN = 0x80;

export interface Offloads {
  /** the driver completes partial checksums on transmit */
  txCsum: boolean;
  /** the driver segments TCP/IPv4 and TCP/IPv6 GSO packets on transmit */
  txTso4: boolean;
  txTso6: boolean;
  txTsoEcn: boolean;
  /** the driver may deliver packets with partial checksums / as GSO packets on receive */
  rxCsum: boolean;
  rxTso4: boolean;
  rxTso6: boolean;
  rxTsoEcn: boolean;
  /** the driver segments UDP GSO packets (GSO_UDP_L4) on transmit (optional: absent is false) */
  txUso?: boolean;
  /** the driver may deliver UDP GSO packets over IPv4 / IPv6 on receive */
  rxUso4?: boolean;
  rxUso6?: boolean;
}

export const NO_OFFLOADS: Offloads = { txCsum: false, txTso4: false, txTso6: false, txTsoEcn: false, rxCsum: false, rxTso4: false, rxTso6: false, rxTsoEcn: false };

export interface DriverCapabilities {
  queuePairs: number;
  /** largest L3 packet the wire carries */
  mtu: number;
  offloads: Offloads;
  /** the MAC address of the backend port, if it has one to suggest */
  mac?: string;
}

/**
 * Packets in flight between the dataplane and a driver, in preallocated storage.
 * Packet i's segments are iov triples [buffer, offset, length] from iovStart[i] to iovStart[i + 1];
 * buffer 0 is guest memory, buffer 1 the batch's scratch buffer (headers a driver may build there).
 *
 * Guest memory reaches transmit() and receive() as a non-shared ArrayBuffer over its bytes, the
 * dataplane thread's own: a typed-array copy to or from it (`set`) is a memcpy, where V8 copies
 * into or out of a SharedArrayBuffer byte by byte. It may be larger than any one typed array: make
 * views of the ranges segments cover, or copy with native.copy, which takes the buffer itself.
 */
export interface PacketBatch {
  count: number;
  readonly iov: Float64Array;
  readonly iovStart: Uint32Array;
  /** META_WORDS per packet */
  readonly meta: Int32Array;
  /** TX: bytes in the packet; RX: bytes the driver wrote (set by receive) */
  readonly len: Uint32Array;
}

export interface DriverQueue {
  /**
   * readable when packets may be waiting to be received, writable when transmit may take packets again
   * after `wouldBlock` (-1: the driver has no fd to wait on)
   */
  readonly pollFd: number;
  /**
   * Send packets [0, batch.count), in order. Returns how many were consumed (sent, or dropped by the
   * wire — count those in `drops`). When it returns fewer and has set `wouldBlock`, the rest stay in
   * the guest's ring, in order, and are offered again once `pollFd` is writable; without `wouldBlock`
   * the dataplane drops and counts the rest.
   */
  transmit(batch: PacketBatch, guestMemory: ArrayBufferLike): number;
  /**
   * Set by transmit: true when it stopped because the wire can take nothing more now (a tap's EAGAIN,
   * a full AF_XDP ring), false otherwise. The dataplane then waits until `pollFd` is writable
   * (EPOLLOUT) — or, for a driver without an fd, a millisecond — before it calls transmit again.
   */
  readonly wouldBlock?: boolean;
  /**
   * Receive into the buffers of packets [0, batch.count), each large enough for one packet of the
   * negotiated size. Fills len[] and meta[]; returns how many packets arrived (0: nothing waiting).
   */
  receive(batch: PacketBatch, guestMemory: ArrayBufferLike): number;
  /**
   * Optional: the length of the frame receive() would deliver next, for a driver that knows it before
   * copying (a generated frame, an AF_XDP descriptor); 0 when nothing is waiting, -1 when unknown. The
   * dataplane then takes only the guest buffers that frame needs instead of room for the largest one.
   */
  nextLength?(): number;
  /**
   * Optional: the lengths of the frames receive() would deliver next, in order, as many as it knows up
   * to `max`, into lengths[0..]; returns how many (0: nothing waiting, -1: unknown). With it the
   * dataplane gives each frame of a batch just the guest buffers it needs (MRG_RXBUF), where with
   * nextLength() only the first; the others get room for the largest frame, and those that need
   * less leave the rest to be filled by moving the next frames down (a copy each).
   */
  nextLengths?(lengths: Uint32Array, max: number): number;
  /** packets the wire refused */
  readonly drops: number;
  /**
   * Optional: descriptors the queue opened itself on the dataplane thread (the tap's io_uring), which
   * close() closes. A thread ended before it could call close() (stuck) has them closed for it.
   */
  readonly ownFds?: readonly number[];
  close(): void;
}

export interface NetDriver {
  readonly name: string;
  /** one line on what the backend runs as (mode, attachment), for the user */
  readonly describe?: string;
  readonly caps: DriverCapabilities;
  /** The module the dataplane worker imports to call openQueue (a file URL or path). */
  readonly module: string;
  /** Per-queue-pair data for openQueue (structured-cloneable). */
  queueInit(pair: number): unknown;
  /** Optional: the driver's own counters (any thread's queues included), for --stats. */
  counters?(): Record<string, number>;
  /** What the guest accepts on receive, after feature negotiation (tap: TUNSETOFFLOAD). */
  setGuestOffloads(o: Pick<Offloads, 'rxCsum' | 'rxTso4' | 'rxTso6' | 'rxTsoEcn' | 'rxUso4' | 'rxUso6'>): void;
  close(): void;
}

export interface DriverModule {
  create(options: Record<string, string>): NetDriver;
  /**
   * Optional: the option keys `create` reads. With it, `--net` refuses any other key with one line (a
   * typo is not silently ignored); the keys the VMM hands every driver (DRIVER_COMMON_OPTIONS) are
   * always allowed.
   */
  readonly options?: readonly string[];
  openQueue(init: unknown): DriverQueue;
}

/** Option keys the VMM passes to every driver: it may use them or not. */
export const DRIVER_COMMON_OPTIONS: readonly string[] = ['queues', 'mtu', 'busy-poll'];

/** Allocate a batch for up to `packets` packets holding `segments` segments in all. */
export function newPacketBatch(packets: number, segments: number): PacketBatch {
  return {
    count: 0,
    iov: new Float64Array(segments * 3),
    iovStart: new Uint32Array(packets + 1),
    meta: new Int32Array(packets * META_WORDS),
    len: new Uint32Array(packets),
  };
}

/** A byte copy between two buffers (the native binding's `copy`): passed in, as this module binds nothing. */
export type CopyBytes = (dst: ArrayBufferLike, dstOffset: number, src: ArrayBufferLike, srcOffset: number, n: number) => void;

/**
 * Copy the first `len` bytes of packet `from` into packet `to`'s segments, for a batch whose packets
 * are filled out of order (a frame moved down into a slot left empty or given up). Segments name
 * buffer 0 (`mem`, guest memory) or 1 (`scratch`); at most `maxSegments` of each packet are used.
 * Returns len, or 0 when packet `to` cannot hold that many bytes.
 */
export function copyPacket(b: PacketBatch, from: number, to: number, len: number, mem: ArrayBufferLike, scratch: ArrayBufferLike, copy: CopyBytes, maxSegments = 0xffffffff): number {
  const iov = b.iov;
  let si = b.iovStart[from];
  const sEnd = Math.min(b.iovStart[from + 1], si + maxSegments);
  let di = b.iovStart[to];
  const dEnd = Math.min(b.iovStart[to + 1], di + maxSegments);
  let sOff = 0;
  let dOff = 0;
  let left = len;
  while (left > 0 && si < sEnd && di < dEnd) {
    const sLen = iov[3 * si + 2];
    const dLen = iov[3 * di + 2];
    const k = Math.min(left, sLen - sOff, dLen - dOff);
    if (k > 0) copy(iov[3 * di] === 0 ? mem : scratch, iov[3 * di + 1] + dOff, iov[3 * si] === 0 ? mem : scratch, iov[3 * si + 1] + sOff, k);
    sOff += k;
    dOff += k;
    left -= k;
    if (sOff >= sLen) {
      si++;
      sOff = 0;
    }
    if (dOff >= dLen) {
      di++;
      dOff = 0;
    }
  }
  return left === 0 ? len : 0;
}
