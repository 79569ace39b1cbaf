// Frames and the key of Microsoft's RSS verification suite, for the RSS tests.

/** Microsoft's RSS verification key ("Verifying the RSS Hash Calculation") */
export const MS_KEY = Uint8Array.from(Buffer.from('6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa', 'hex'));

const port = (p: number) => [p >> 8, p & 0xff];

/** An Ethernet frame: `tags` VLAN tags, then IPv4 or IPv6 with TCP or UDP (proto) between src and dst. */
export function ipFrame(o: { v6?: boolean; src: number[]; dst: number[]; sport: number; dport: number; proto?: number; tags?: number; frag?: boolean; payload?: number }): Uint8Array {
  const proto = o.proto ?? 6;
  const l4 = proto === 6 ? 20 : 8;
  const payload = o.payload ?? 0;
  const eth = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef];
  for (let t = 0; t < (o.tags ?? 0); t++) eth.push(0x81, 0x00, 0, 5 + t);
  let ip: number[];
  if (o.v6) {
    const plen = l4 + payload;
    ip = [0x60, 0, 0, 0, plen >> 8, plen & 0xff, proto, 64, ...o.src, ...o.dst];
  } else {
    const tot = 20 + l4 + payload;
    ip = [0x45, 0, tot >> 8, tot & 0xff, 0, 1, o.frag ? 0x20 : 0, 0, 64, proto, 0, 0, ...o.src, ...o.dst];
  }
  const l4h = [...port(o.sport), ...port(o.dport), ...new Array(l4 - 4).fill(0)];
  return Uint8Array.from([...eth, ...port(o.v6 ? 0x86dd : 0x0800), ...ip, ...l4h, ...new Array(payload).fill(0x33)]);
}


const v4 = (a: string) => a.split('.').map(Number);

/** Four TCP/IPv4 flows of Microsoft's vectors: destination, its port, source, its port, and their hash under MS_KEY. */
export const FLOWS: Array<[string, number, string, number, number]> = [
  ['161.142.100.80', 1766, '66.9.149.187', 2794, 0x51ccc178],
  ['65.69.140.83', 4739, '199.92.111.2', 14230, 0xc626b0ea],
  ['12.22.207.184', 38024, '24.19.198.95', 12898, 0x5c2b394a],
  ['209.142.163.6', 2217, '38.27.205.30', 48228, 0xafc7327f],
];

/** An indirection table of 128 entries, entry i naming pair (i >> 4) & 1: the flows' hashes (low bits 120, 106, 74, 127) go to 1, 0, 0, 1. */
export const TABLE = Uint16Array.from({ length: 128 }, (_, i) => (i >> 4) & 1);

/** A frame of flow `f` with `payload` bytes of TCP payload. */
export function flowFrame(f: (typeof FLOWS)[number], payload = 100): Uint8Array {
  return ipFrame({ src: v4(f[2]), dst: v4(f[0]), sport: f[3], dport: f[1], payload });
}
