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
 * at `m`. Returns false when the packet must be dropped. (Read as three little-endian words: one
 * DataView access each, where byte by byte would be ten typed-array accesses.)
 */
export function parseTxHeader(h: DataView, o: number, len: number, policy: TxPolicy, meta: Int32Array, m: number): boolean {
  const w0 = h.getUint32(o, true);
  const w1 = h.getUint32(o + 4, true);
  const flags = w0 & 0xff;
  const gsoRaw = (w0 >>> 8) & 0xff;
  const hdrLen = w0 >>> 16;
  const gsoSize = w1 & 0xffff;
  const csumStart = w1 >>> 16;
  const csumOffset = h.getUint16(o + 8, true);
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

/** Write the RX header for a received packet described by meta at `m` (12 bytes in `h` at `o`). */
export function writeRxHeader(h: DataView, o: number, meta: Int32Array, m: number, numBuffers: number): void {
  const flags = meta[m + META.FLAGS];
  const needsCsum = (flags & META_NEEDS_CSUM) !== 0;
  const hdrFlags = (needsCsum ? HDR_F_NEEDS_CSUM : 0) | (!needsCsum && flags & META_CSUM_VALID ? HDR_F_DATA_VALID : 0);
  const gsoMeta = meta[m + META.GSO_TYPE];
  const gso = gsoMeta === GSO_TCPV4 || gsoMeta === GSO_TCPV6 || gsoMeta === GSO_UDP || gsoMeta === GSO_UDP_L4 || (gsoMeta & ~GSO_ECN) === GSO_TCPV4 || (gsoMeta & ~GSO_ECN) === GSO_TCPV6 ? gsoMeta : GSO_NONE;
  // flags, gso_type, hdr_len | gso_size, csum_start | csum_offset, num_buffers
  h.setUint32(o, (hdrFlags | (gso << 8) | ((meta[m + META.HDR_LEN] & 0xffff) << 16)) >>> 0, true);
  h.setUint32(o + 4, ((gso === GSO_NONE ? 0 : meta[m + META.GSO_SIZE] & 0xffff) | ((needsCsum ? meta[m + META.CSUM_START] & 0xffff : 0) << 16)) >>> 0, true);
  h.setUint32(o + 8, ((needsCsum ? meta[m + META.CSUM_OFFSET] & 0xffff : 0) | ((numBuffers & 0xffff) << 16)) >>> 0, true);
}

/** Write virtio_net_hdr_v1_hash's hash fields (the 8 bytes after the header at `o`): hash_value, hash_report, padding. */
export function writeHashFields(h: DataView, o: number, hash: number, report: number): void {
  h.setUint32(o, hash >>> 0, true);
  h.setUint32(o + 4, report & 0xffff, true);
}
