// MAC addresses as text: --net mac=, the library's `mac`, and what tsvmm prints.

export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(s);
  if (!m) throw new Error(`"${s}" is not a MAC address (like 52:54:00:12:34:56)`);
  const mac = new Uint8Array(m.slice(1).map((h) => parseInt(h, 16)));
  if (mac[0] & 1) throw new Error(`${s} is a multicast address`);
  return mac;
}

export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}
