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

