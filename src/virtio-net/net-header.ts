// struct virtio_net_hdr_v1 (12 bytes; VERSION_1 makes num_buffers always present) ↔ driver metadata.
// The guest writes the TX header: every field is checked against what was negotiated and the packet,
// and a packet whose header does not hold up is dropped (virtio 1.x §5.1.6.2.2), not passed on.
import { META, META_NEEDS_CSUM, META_CSUM_VALID, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, GSO_ECN } from '../drivers/api.js';

export const NET_HDR_LEN = 12;
/** with VIRTIO_NET_F_HASH_REPORT: virtio_net_hdr_v1_hash, the header and hash_value, hash_report, padding */
export const NET_HDR_HASH_LEN = 20;
/** the largest frame a GSO packet makes: 64 KiB of IP packet, an Ethernet header and a VLAN tag */
export const MAX_GSO_FRAME = 65535 + 14 + 4;
/** Ethernet header and VLAN tag: what a frame holds beyond its MTU-sized packet */
export const FRAME_OVERHEAD = 14 + 4;
export const HDR_F_NEEDS_CSUM = 1;
export const HDR_F_DATA_VALID = 2;

/** Which TX offloads the negotiated features allow the guest to ask for. */
export interface TxPolicy {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
  /** UDP segmentation (VIRTIO_NET_F_HOST_USO: GSO_UDP_L4, IPv4 or IPv6) */
  uso: boolean;
}

/**
 * Parse a TX header (12 bytes in `h` at `o`) for a packet of `len` bytes (header excluded) into meta
 * at `m`. Returns false when the packet must be dropped.
 */
export function parseTxHeader(h: Uint8Array, o: number, len: number, policy: TxPolicy, meta: Int32Array, m: number): boolean {
  const flags = h[o];
  const gsoRaw = h[o + 1];
  const hdrLen = h[o + 2] | (h[o + 3] << 8);
  const gsoSize = h[o + 4] | (h[o + 5] << 8);
  const csumStart = h[o + 6] | (h[o + 7] << 8);
  const csumOffset = h[o + 8] | (h[o + 9] << 8);
  if (flags & ~HDR_F_NEEDS_CSUM) return false; // DATA_VALID and RSC_INFO are receive-side only
  const needsCsum = (flags & HDR_F_NEEDS_CSUM) !== 0;
  if (needsCsum && (!policy.csum || csumStart + csumOffset + 2 > len)) return false;
  const ecn = (gsoRaw & GSO_ECN) !== 0;
  const gso = gsoRaw & ~GSO_ECN;
  if (gso !== GSO_NONE) {
    const allowed = (gso === GSO_TCPV4 && policy.tso4) || (gso === GSO_TCPV6 && policy.tso6) || (gso === GSO_UDP_L4 && policy.uso);
    // (ECN is TCP's: a UDP GSO packet with it is malformed)
    if (!allowed || (ecn && (!policy.ecn || gso === GSO_UDP_L4)) || !needsCsum || gsoSize === 0) return false;
  } else if (ecn) return false;
  meta[m + META.FLAGS] = needsCsum ? META_NEEDS_CSUM : 0;
  meta[m + META.CSUM_START] = csumStart;
  meta[m + META.CSUM_OFFSET] = csumOffset;
  meta[m + META.GSO_TYPE] = gsoRaw;
  meta[m + META.GSO_SIZE] = gso === GSO_NONE ? 0 : gsoSize;
  meta[m + META.HDR_LEN] = hdrLen;
  return true;
}

/** Write the RX header for a received packet described by meta at `m`. */
export function writeRxHeader(h: Uint8Array, o: number, meta: Int32Array, m: number, numBuffers: number): void {
  const flags = meta[m + META.FLAGS];
  const needsCsum = (flags & META_NEEDS_CSUM) !== 0;
  h[o] = (needsCsum ? HDR_F_NEEDS_CSUM : 0) | (!needsCsum && flags & META_CSUM_VALID ? HDR_F_DATA_VALID : 0);
  const gso = meta[m + META.GSO_TYPE];
  h[o + 1] = gso === GSO_TCPV4 || gso === GSO_TCPV6 || gso === GSO_UDP || gso === GSO_UDP_L4 || (gso & ~GSO_ECN) === GSO_TCPV4 || (gso & ~GSO_ECN) === GSO_TCPV6 ? gso : GSO_NONE;
  put16(h, o + 2, meta[m + META.HDR_LEN]);
  put16(h, o + 4, h[o + 1] === GSO_NONE ? 0 : meta[m + META.GSO_SIZE]);
  put16(h, o + 6, needsCsum ? meta[m + META.CSUM_START] : 0);
  put16(h, o + 8, needsCsum ? meta[m + META.CSUM_OFFSET] : 0);
  put16(h, o + 10, numBuffers);
}

/** Write virtio_net_hdr_v1_hash's hash fields (the 8 bytes after the header at `o`): hash_value, hash_report, padding. */
export function writeHashFields(h: Uint8Array, o: number, hash: number, report: number): void {
  h[o] = hash & 0xff;
  h[o + 1] = (hash >>> 8) & 0xff;
  h[o + 2] = (hash >>> 16) & 0xff;
  h[o + 3] = hash >>> 24;
  put16(h, o + 4, report);
  h[o + 6] = 0;
  h[o + 7] = 0;
}

/** a little-endian 16-bit field at any alignment (a module function: nothing allocated per packet) */
function put16(h: Uint8Array, at: number, v: number): void {
  h[at] = v & 0xff;
  h[at + 1] = (v >> 8) & 0xff;
}
