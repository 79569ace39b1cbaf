// vhost-user wire format (QEMU docs/interop/vhost-user.rst): a 12-byte header (request, flags, size)
// and a payload; file descriptors travel beside it as SCM_RIGHTS.

export const REQ = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
} as const;

/** the requests that carry descriptors; any other arriving with some is malformed */
export const TAKES_FDS: ReadonlySet<number> = new Set([
  REQ.SET_MEM_TABLE,
  REQ.SET_LOG_BASE,
  REQ.SET_LOG_FD,
  REQ.SET_VRING_KICK,
  REQ.SET_VRING_CALL,
  REQ.SET_VRING_ERR,
  REQ.SET_BACKEND_REQ_FD,
]);

/** backend → frontend requests, on the channel SET_BACKEND_REQ_FD gave */
export const BACKEND_REQ = { IOTLB_MSG: 1 } as const;

/** struct vhost_iotlb_msg (<linux/vhost_types.h>): type and permission values */
export const IOTLB = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
export const IOTLB_MSG_SIZE = 32;

export interface IotlbMsg {
  iova: number;
  size: number;
  /** the range's last byte, exact (iova and size are doubles: an invalidation of "everything" can
   * reach 2^64 - 1, beyond what a double holds exactly); not sent */
  last?: bigint;
  uaddr: number;
  /** VHOST_ACCESS_RO 1 (device reads), WO 2, RW 3 */
  perm: number;
  type: number;
}

export function parseIotlb(p: DataView): IotlbMsg | undefined {
  if (p.byteLength < 26) return undefined;
  const iova = p.getBigUint64(0, true);
  const size = p.getBigUint64(8, true);
  return { iova: Number(iova), size: Number(size), last: iova + size - 1n, uaddr: u64(p, 16), perm: p.getUint8(24), type: p.getUint8(25) };
}

/** A backend request carrying an IOTLB message (a MISS), with NEED_REPLY unset. */
export function encodeIotlbRequest(m: IotlbMsg): Uint8Array {
  const out = new Uint8Array(HDR_SIZE + IOTLB_MSG_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(0, BACKEND_REQ.IOTLB_MSG, true);
  v.setUint32(4, FLAG_VERSION, true);
  v.setUint32(8, IOTLB_MSG_SIZE, true);
  v.setBigUint64(HDR_SIZE, BigInt(m.iova), true);
  v.setBigUint64(HDR_SIZE + 8, BigInt(m.size), true);
  v.setBigUint64(HDR_SIZE + 16, BigInt(m.uaddr), true);
  v.setUint8(HDR_SIZE + 24, m.perm);
  v.setUint8(HDR_SIZE + 25, m.type);
  return out;
}

export const HDR_SIZE = 12;
export const FLAG_VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const MAX_PAYLOAD = 4096;
export const MAX_REGIONS = 8;
export const REGION_SIZE = 32;
/** SET_VRING_KICK/CALL/ERR payload: index in the low byte, this bit when no fd accompanies it */
export const VRING_NOFD = 0x100;
export const VRING_INDEX_MASK = 0xff;

export const F_PROTOCOL_FEATURES = 30;
export const PROTOCOL_F = { MQ: 0, LOG_SHMFD: 1, RARP: 2, REPLY_ACK: 3, MTU: 4, BACKEND_REQ: 5 } as const;

export interface Message {
  request: number;
  flags: number;
  payload: DataView;
  fds: number[];
}

export interface MemoryRegionDesc {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset: number;
}

const u64 = (v: DataView, o: number) => Number(v.getBigUint64(o, true));

/** Parse a header+payload buffer; undefined when the bytes are not one whole message. */
export function parseMessage(b: Uint8Array, fds: number[]): Message | undefined {
  if (b.length < HDR_SIZE) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const size = v.getUint32(8, true);
  if (size > MAX_PAYLOAD || b.length !== HDR_SIZE + size) return undefined;
  return { request: v.getUint32(0, true), flags: v.getUint32(4, true), payload: new DataView(b.buffer, b.byteOffset + HDR_SIZE, size), fds };
}

export function encodeReply(request: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HDR_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, FLAG_VERSION | FLAG_REPLY, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, HDR_SIZE);
  return out;
}

export function u64Payload(value: bigint): Uint8Array {
  const p = new Uint8Array(8);
  new DataView(p.buffer).setBigUint64(0, value, true);
  return p;
}

/** vhost_vring_state: index, num */
export function vringState(index: number, num: number): Uint8Array {
  const p = new Uint8Array(8);
  const v = new DataView(p.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return p;
}

export function parseMemTable(p: DataView): MemoryRegionDesc[] | undefined {
  if (p.byteLength < 8) return undefined;
  const n = p.getUint32(0, true);
  if (n < 1 || n > MAX_REGIONS || p.byteLength < 8 + n * REGION_SIZE) return undefined;
  const out: MemoryRegionDesc[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * REGION_SIZE;
    out.push({ gpa: u64(p, o), size: u64(p, o + 8), uaddr: u64(p, o + 16), mmapOffset: u64(p, o + 24) });
  }
  return out;
}

/** vhost_vring_addr: index, flags, desc/used/avail/log user addresses */
export function parseVringAddr(p: DataView): { index: number; flags: number; desc: number; used: number; avail: number; log: number } | undefined {
  if (p.byteLength < 40) return undefined;
  return { index: p.getUint32(0, true), flags: p.getUint32(4, true), desc: u64(p, 8), used: u64(p, 16), avail: u64(p, 24), log: u64(p, 32) };
}
