// Print every ARP frame seen on an interface, one line each, until killed (L1 has no tcpdump): a packet
// socket (AF_PACKET, ETH_P_ARP) bound to it. A gratuitous ARP (sender IP = target IP: an announcement)
// is printed as "GARP op sender-mac sender-ip", any other as "ARP op sender-mac sender-ip target-ip".
// usage: TSVMM_DIR=/path/to/project node garp-watch.mjs IFNAME
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const dist = pathToFileURL(`${process.env.TSVMM_DIR ?? '/tsvmm'}/dist/`).href;
const { native } = await import(new URL('native.js', dist).href);

const AF_PACKET = 17;
const SOCK_RAW = 3;
const ETH_P_ARP_BE = 0x0608; // htons(0x0806)
const name = process.argv[2];
const ifindex = Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'));
const fd = native.socket(AF_PACKET, SOCK_RAW, ETH_P_ARP_BE);
// struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8]
const sll = new DataView(new ArrayBuffer(20));
sll.setUint16(0, AF_PACKET, true);
sll.setUint16(2, 0x0806, false);
sll.setInt32(4, ifindex, true);
const r = native.bindRaw(fd, new Uint8Array(sll.buffer));
if (r < 0) throw new Error(`bind to ${name}: errno ${-r}`);
process.stdout.write(`WATCHING ${name}\n`);
const frame = new Uint8Array(2048);
const hex = (b) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
const ip = (b) => [...b].join('.');
for (;;) {
  const n = native.read(fd, frame);
  if (n < 14 + 28) continue;
  const a = frame.subarray(14);
  const op = (a[6] << 8) | a[7];
  const sha = hex(a.subarray(8, 14));
  const spa = ip(a.subarray(14, 18));
  const tpa = ip(a.subarray(24, 28));
  process.stdout.write(spa === tpa ? `GARP ${op} ${sha} ${spa}\n` : `ARP ${op} ${sha} ${spa} ${tpa}\n`);
}
