// Which RSS hash a received frame takes (virtio 1.x §5.1.6.4.3), and the bytes it is computed over:
// Ethernet (up to two VLAN tags), IPv4 or IPv6 (its extension headers walked), TCP or UDP. Frames come
// from the wire: every field is read only after its bytes are known to be inside the frame, and a frame
// that does not parse is unclassified, never an error.

/** VIRTIO_NET_RSS_HASH_TYPE_* (the driver's hash_types, the device's supported_hash_types) */
export const HASH_TYPE = { IPv4: 1 << 0, TCPv4: 1 << 1, UDPv4: 1 << 2, IPv6: 1 << 3, TCPv6: 1 << 4, UDPv6: 1 << 5 } as const;
/** the hash types tsvmm computes (the _EX variants, over IPv6 home and routing addresses, are not) */
export const SUPPORTED_HASH_TYPES = HASH_TYPE.IPv4 | HASH_TYPE.TCPv4 | HASH_TYPE.UDPv4 | HASH_TYPE.IPv6 | HASH_TYPE.TCPv6 | HASH_TYPE.UDPv6;
/** VIRTIO_NET_HASH_REPORT_*: what a hash was computed over (the header's hash_report) */
export const HASH_REPORT = { NONE: 0, IPv4: 1, TCPv4: 2, UDPv4: 3, IPv6: 4, TCPv6: 5, UDPv6: 6 } as const;
/** the input length of each report type (addresses, then ports) */
export const HASH_INPUT_LEN = [0, 8, 12, 12, 32, 36, 36] as const;

const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const TCP_HLEN = 20;
const UDP_HLEN = 8;
/** IPv6 extension headers walked to find TCP or UDP (at most MAX_EXT of them) */
const NH_HOPOPTS = 0;
const NH_ROUTING = 43;
const NH_FRAGMENT = 44;
const NH_DSTOPTS = 60;
const MAX_EXT = 8;
/** The furthest classifyFrame reads into a frame: Ethernet and two tags, IPv6, MAX_EXT extension
 * headers of the largest size (2048 bytes), TCP's header. A frame cut to its first CLASSIFY_REACH bytes
 * classifies as the whole frame does (no check reaches past it). */
export const CLASSIFY_REACH = 14 + 2 * 4 + 40 + MAX_EXT * 2048 + TCP_HLEN;

const be16 = (p: Uint8Array, o: number) => (p[o] << 8) | p[o + 1];

/**
 * Classify the frame p[o..o+len) for the enabled `hashTypes`: the report type (HASH_REPORT; NONE: no
 * hash), with the hash input (source address, destination address, then source and destination
 * port for TCP/UDP) written to `input` (MAX_HASH_INPUT bytes); its length is HASH_INPUT_LEN[type].
 */
export function classifyFrame(p: Uint8Array, o: number, len: number, hashTypes: number, input: Uint8Array): number {
  const end = o + len;
  let at = o + 12;
  if (at + 2 > end) return HASH_REPORT.NONE;
  let type = be16(p, at);
  for (let tags = 0; tags < 2 && (type === ETH_P_8021Q || type === ETH_P_8021AD); tags++) {
    at += 4;
    if (at + 2 > end) return HASH_REPORT.NONE;
    type = be16(p, at);
  }
  at += 2;
  if (type === ETH_P_IP) return classifyIpv4(p, at, end, hashTypes, input);
  if (type === ETH_P_IPV6) return classifyIpv6(p, at, end, hashTypes, input);
  return HASH_REPORT.NONE;
}

function classifyIpv4(p: Uint8Array, at: number, end: number, t: number, input: Uint8Array): number {
  if (at + 20 > end || p[at] >> 4 !== 4) return HASH_REPORT.NONE;
  const ihl = (p[at] & 15) * 4;
  const total = be16(p, at + 2);
  if (ihl < 20 || total < ihl || at + ihl > end) return HASH_REPORT.NONE;
  // the IP packet may be shorter than the frame (padding), never longer than what arrived
  const ipEnd = Math.min(end, at + total);
  // a fragment (more follow, or not the first) has no transport header of its own to hash
  const fragment = (be16(p, at + 6) & 0x3fff) !== 0;
  const proto = p[at + 9];
  const l4 = at + ihl;
  let report: number = HASH_REPORT.NONE;
  if (!fragment && proto === IPPROTO_TCP && t & HASH_TYPE.TCPv4 && l4 + TCP_HLEN <= ipEnd) report = HASH_REPORT.TCPv4;
  else if (!fragment && proto === IPPROTO_UDP && t & HASH_TYPE.UDPv4 && l4 + UDP_HLEN <= ipEnd) report = HASH_REPORT.UDPv4;
  else if (t & HASH_TYPE.IPv4) report = HASH_REPORT.IPv4;
  else return HASH_REPORT.NONE;
  for (let i = 0; i < 8; i++) input[i] = p[at + 12 + i];
  if (report !== HASH_REPORT.IPv4) for (let i = 0; i < 4; i++) input[8 + i] = p[l4 + i];
  return report;
}

function classifyIpv6(p: Uint8Array, at: number, end: number, t: number, input: Uint8Array): number {
  if (at + 40 > end || p[at] >> 4 !== 6) return HASH_REPORT.NONE;
  const ipEnd = Math.min(end, at + 40 + be16(p, at + 4));
  let nh = p[at + 6];
  let l4 = at + 40;
  let fragment = false;
  for (let n = 0; n < MAX_EXT && (nh === NH_HOPOPTS || nh === NH_ROUTING || nh === NH_DSTOPTS || nh === NH_FRAGMENT); n++) {
    if (l4 + 8 > ipEnd) {
      nh = -1;
      break;
    }
    if (nh === NH_FRAGMENT && (be16(p, l4 + 2) & 0xfff9) !== 0) fragment = true;
    const size = nh === NH_FRAGMENT ? 8 : (p[l4 + 1] + 1) * 8;
    nh = p[l4];
    l4 += size;
  }
  let report: number = HASH_REPORT.NONE;
  if (!fragment && nh === IPPROTO_TCP && t & HASH_TYPE.TCPv6 && l4 + TCP_HLEN <= ipEnd) report = HASH_REPORT.TCPv6;
  else if (!fragment && nh === IPPROTO_UDP && t & HASH_TYPE.UDPv6 && l4 + UDP_HLEN <= ipEnd) report = HASH_REPORT.UDPv6;
  else if (t & HASH_TYPE.IPv6) report = HASH_REPORT.IPv6;
  else return HASH_REPORT.NONE;
  for (let i = 0; i < 32; i++) input[i] = p[at + 8 + i];
  if (report !== HASH_REPORT.IPv6) for (let i = 0; i < 4; i++) input[32 + i] = p[l4 + i];
  return report;
}
