// RSS without a thread: the Toeplitz hash against Microsoft's verification suite, the frame classifier,
// the control commands (RSS_CONFIG, HASH_CONFIG) and the configuration space's RSS fields.
import { describe, it, expect } from 'vitest';
import { toeplitzTable, toeplitzHash } from '../src/virtio-net/toeplitz.js';
import { CLASSIFY_REACH, classifyFrame, HASH_REPORT, HASH_TYPE, HASH_INPUT_LEN, SUPPORTED_HASH_TYPES } from '../src/virtio-net/rss-classify.js';
import { parseRssCommand, RssWords, RSS_MODE, RSS_OFF } from '../src/virtio-net/rss-state.js';
import { netControl, type NetControlTarget } from '../src/virtio-net/control.js';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { F, bit } from '../src/virtio-net/features.js';
import { NetConfigSpace } from '../src/virtio-net/config-space.js';
import { MS_KEY, ipFrame } from './helpers/rss-frames.js';

const v4 = (a: string) => a.split('.').map(Number);
function v6(a: string): number[] {
  const [l, r] = a.split('::');
  const g = (s: string | undefined) => (s ? s.split(':').map((x) => parseInt(x, 16)) : []);
  const left = g(l);
  const right = g(r);
  const words = r === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill(0), ...right];
  return words.flatMap((w) => [w >> 8, w & 0xff]);
}

// destination, source, expected hash over the addresses, and over addresses and ports (TCP)
const IPV4_VECTORS: Array<[string, number, string, number, number, number]> = [
  ['161.142.100.80', 1766, '66.9.149.187', 2794, 0x323e8fc2, 0x51ccc178],
  ['65.69.140.83', 4739, '199.92.111.2', 14230, 0xd718262a, 0xc626b0ea],
  ['12.22.207.184', 38024, '24.19.198.95', 12898, 0xd2d0a5de, 0x5c2b394a],
  ['209.142.163.6', 2217, '38.27.205.30', 48228, 0x82989176, 0xafc7327f],
  ['202.188.127.2', 1303, '153.39.163.191', 44251, 0x5d1809c5, 0x10e828a2],
];
const IPV6_VECTORS: Array<[string, number, string, number, number, number]> = [
  ['3ffe:2501:200:3::1', 1766, '3ffe:2501:200:1fff::7', 2794, 0x2cc18cd5, 0x40207d3d],
  ['ff02::1', 4739, '3ffe:501:8::260:97ff:fe40:efab', 14230, 0x0f0c461c, 0xdde51bbf],
  ['fe80::200:f8ff:fe21:67cf', 38024, '3ffe:1900:4545:3:200:f8ff:fe21:67cf', 44251, 0x4b61e985, 0x02d1feef],
];

const table = toeplitzTable(MS_KEY);
const port = (p: number) => [p >> 8, p & 0xff];
const hashOf = (bytes: number[]) => toeplitzHash(table, Uint8Array.from(bytes), bytes.length);

function classify(f: Uint8Array, types = SUPPORTED_HASH_TYPES): { report: number; hash: number } {
  const input = new Uint8Array(36);
  const report = classifyFrame(f, 0, f.length, types, input);
  return { report, hash: report ? toeplitzHash(table, input, HASH_INPUT_LEN[report]) : 0 };
}

describe('Toeplitz hash: Microsoft RSS verification vectors', () => {
  for (const [dst, dport, src, sport, ip, tcp] of IPV4_VECTORS) {
    it(`IPv4 ${src}:${sport} → ${dst}:${dport}`, () => {
      expect(hashOf([...v4(src), ...v4(dst)])).toBe(ip);
      expect(hashOf([...v4(src), ...v4(dst), ...port(sport), ...port(dport)])).toBe(tcp);
    });
  }
  for (const [dst, dport, src, sport, ip, tcp] of IPV6_VECTORS) {
    it(`IPv6 ${src}:${sport} → ${dst}:${dport}`, () => {
      expect(hashOf([...v6(src), ...v6(dst)])).toBe(ip);
      expect(hashOf([...v6(src), ...v6(dst), ...port(sport), ...port(dport)])).toBe(tcp);
    });
  }
});

describe('RSS frame classifier', () => {
  const [dst, dport, src, sport, ipHash, tcpHash] = IPV4_VECTORS[0];
  const [dst6, dport6, src6, sport6, ip6Hash, tcp6Hash] = IPV6_VECTORS[0];
  const f4 = (o: Partial<Parameters<typeof ipFrame>[0]> = {}) => ipFrame({ src: v4(src), dst: v4(dst), sport, dport, ...o });
  const f6 = (o: Partial<Parameters<typeof ipFrame>[0]> = {}) => ipFrame({ v6: true, src: v6(src6), dst: v6(dst6), sport: sport6, dport: dport6, ...o });

  it('hashes TCP/IPv4 over addresses and ports, and over the addresses only when TCPv4 is off', () => {
    expect(classify(f4())).toEqual({ report: HASH_REPORT.TCPv4, hash: tcpHash });
    expect(classify(f4(), HASH_TYPE.IPv4 | HASH_TYPE.UDPv4)).toEqual({ report: HASH_REPORT.IPv4, hash: ipHash });
    expect(classify(f4(), HASH_TYPE.TCPv6 | HASH_TYPE.UDPv4).report).toBe(HASH_REPORT.NONE);
  });
  it('hashes UDP over the same tuple (UDPv4, UDPv6)', () => {
    expect(classify(f4({ proto: 17 }))).toEqual({ report: HASH_REPORT.UDPv4, hash: tcpHash });
    expect(classify(f6({ proto: 17 }))).toEqual({ report: HASH_REPORT.UDPv6, hash: tcp6Hash });
  });
  it('hashes TCP/IPv6 and IPv6 alone', () => {
    expect(classify(f6())).toEqual({ report: HASH_REPORT.TCPv6, hash: tcp6Hash });
    expect(classify(f6(), HASH_TYPE.IPv6)).toEqual({ report: HASH_REPORT.IPv6, hash: ip6Hash });
  });
  it('sees through one or two VLAN tags', () => {
    expect(classify(f4({ tags: 1 }))).toEqual({ report: HASH_REPORT.TCPv4, hash: tcpHash });
    expect(classify(f6({ tags: 2 }))).toEqual({ report: HASH_REPORT.TCPv6, hash: tcp6Hash });
  });
  it('hashes an IPv4 fragment over its addresses only', () => {
    expect(classify(f4({ frag: true }))).toEqual({ report: HASH_REPORT.IPv4, hash: ipHash });
  });
  it('leaves what it cannot parse unclassified, reading nothing past the frame', () => {
    const f = f4();
    // every truncation of a valid frame: never a throw, never a port read from beyond the end
    for (let len = 0; len < f.length; len++) {
      const r = classify(f.slice(0, len));
      expect([HASH_REPORT.NONE, HASH_REPORT.IPv4]).toContain(r.report);
      if (r.report === HASH_REPORT.IPv4) expect(len).toBeGreaterThanOrEqual(14 + 20);
    }
    // ARP, a bad IP version, an IHL under 20, an IPv6 extension chain running off the end
    const arp = f4();
    arp[12] = 0x08;
    arp[13] = 0x06;
    expect(classify(arp).report).toBe(HASH_REPORT.NONE);
    const bad = f4();
    bad[14] = 0x55;
    expect(classify(bad).report).toBe(HASH_REPORT.NONE);
    bad[14] = 0x44;
    expect(classify(bad).report).toBe(HASH_REPORT.NONE);
    const ext = f6();
    ext[14 + 6] = 0; // hop-by-hop options whose length reaches past the packet
    ext[14 + 40 + 1] = 200;
    expect(classify(ext).report).toBe(HASH_REPORT.IPv6);
  });
  it('reads no further than CLASSIFY_REACH: two tags, IPv6, eight 2048-byte extension headers, TCP end exactly there', () => {
    const base = f6({ tags: 2, payload: 64 });
    const ip = 14 + 8;
    const ext = new Uint8Array(8 * 2048);
    for (let i = 0; i < 8; i++) {
      ext[i * 2048] = i < 7 ? 60 : 6; // destination options, the last one followed by TCP
      ext[i * 2048 + 1] = 255; // (255 + 1) * 8 bytes
    }
    const f = new Uint8Array(base.length + ext.length);
    f.set(base.subarray(0, ip + 40));
    f.set(ext, ip + 40);
    f.set(base.subarray(ip + 40), ip + 40 + ext.length);
    f[ip + 6] = 60;
    const plen = (f[ip + 4] << 8) + f[ip + 5] + ext.length;
    f[ip + 4] = plen >> 8;
    f[ip + 5] = plen & 0xff;
    expect(classify(f)).toEqual({ report: HASH_REPORT.TCPv6, hash: tcp6Hash });
    expect(classify(f.slice(0, CLASSIFY_REACH))).toEqual({ report: HASH_REPORT.TCPv6, hash: tcp6Hash });
    expect(classify(f.slice(0, CLASSIFY_REACH - 1)).report).toBe(HASH_REPORT.IPv6);
  });
});

/** RSS_CONFIG's body as Linux builds it. */
export function rssCommand(o: { types?: number; table: number[]; unclassified?: number; txq?: number; key?: Uint8Array }): Uint8Array {
  const key = o.key ?? MS_KEY;
  const b = new Uint8Array(8 + 2 * o.table.length + 3 + key.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, o.types ?? SUPPORTED_HASH_TYPES, true);
  v.setUint16(4, o.table.length - 1, true);
  v.setUint16(6, o.unclassified ?? 0, true);
  o.table.forEach((q, i) => v.setUint16(8 + 2 * i, q, true));
  v.setUint16(8 + 2 * o.table.length, o.txq ?? 2, true);
  b[10 + 2 * o.table.length] = key.length;
  b.set(key, 11 + 2 * o.table.length);
  return b;
}

describe('RSS control commands', () => {
  function target(features: bigint, pairs = 4) {
    const rss = new RssWords();
    const t: NetControlTarget & { pairsSet: number[] } = {
      negotiated: () => features,
      queuePairs: pairs,
      filter: new RxFilter(),
      setMac: () => {},
      setGuestOffloads: () => {},
      setPairs: (n) => t.pairsSet.push(n),
      setRss: (c) => rss.set(c),
      pairsSet: [],
    };
    return { t, rss };
  }
  const both = bit(F.RSS) | bit(F.HASH_REPORT) | bit(F.MQ) | bit(F.CTRL_VQ);

  it('RSS_CONFIG sets the table, key and hash types, and the pairs it uses', () => {
    const { t, rss } = target(both);
    expect(netControl(t, 4, 1, rssCommand({ table: [0, 1, 2, 1], txq: 2 }))).toBe(0);
    const c = rss.get();
    expect(c.mode).toBe(RSS_MODE.STEER);
    expect(Array.from(c.table)).toEqual([0, 1, 2, 1]);
    expect(Buffer.from(c.key).toString('hex')).toBe(Buffer.from(MS_KEY).toString('hex'));
    // max_tx_vq is 2, but the table names receive queue 2: three pairs
    expect(t.pairsSet).toEqual([3]);
  });
  it('refuses a table not a power of two, too long, naming a queue the device lacks, a bad unclassified queue, key or length', () => {
    const { t, rss } = target(both);
    const cases = [
      rssCommand({ table: [0, 1, 0] }),
      rssCommand({ table: new Array(256).fill(0) }),
      rssCommand({ table: [0, 4] }),
      rssCommand({ table: [0, 1], unclassified: 4 }),
      rssCommand({ table: [0, 1], txq: 0 }),
      rssCommand({ table: [0, 1], txq: 5 }),
      rssCommand({ table: [0, 1], key: new Uint8Array(41) }),
      rssCommand({ table: [0, 1], key: new Uint8Array(0) }),
      rssCommand({ table: [0, 1], types: 1 << 6 }),
      rssCommand({ table: [0, 1] }).subarray(0, 20),
    ];
    for (const data of cases) {
      expect(netControl(t, 4, 0 + 1, rssCommand({ table: [0, 1] }))).toBe(0);
      expect(netControl(t, 4, 1, data)).toBe(1);
      // a refused command leaves RSS off (as QEMU)
      expect(rss.get().mode).toBe(RSS_MODE.OFF);
    }
  });
  it('takes RSS_CONFIG only with VIRTIO_NET_F_RSS and HASH_CONFIG only with HASH_REPORT', () => {
    const { t } = target(bit(F.MQ) | bit(F.HASH_REPORT));
    expect(netControl(t, 4, 1, rssCommand({ table: [0, 1] }))).toBe(1);
    const { t: t2 } = target(bit(F.MQ) | bit(F.RSS));
    const hash = new Uint8Array(13 + 40);
    hash[0] = HASH_TYPE.TCPv4;
    hash[12] = 40;
    expect(netControl(t2, 4, 2, hash)).toBe(1);
    const { t: t3, rss } = target(bit(F.HASH_REPORT));
    expect(netControl(t3, 4, 2, hash)).toBe(0);
    expect(rss.get()).toMatchObject({ mode: RSS_MODE.HASH, hashTypes: HASH_TYPE.TCPv4 });
    expect(t3.pairsSet).toEqual([]);
  });
  it('takes a command with a byte after the key, as Linux 6.12 sends it (its trailer struct padded)', () => {
    const { t, rss } = target(both);
    expect(netControl(t, 4, 1, Uint8Array.from([...rssCommand({ table: new Array(128).fill(0).map((_, i) => i % 2) }), 0]))).toBe(0);
    expect(rss.get()).toMatchObject({ mode: RSS_MODE.STEER, hashTypes: SUPPORTED_HASH_TYPES });
  });
  it('VQ_PAIRS_SET turns RSS off', () => {
    const { t, rss } = target(both);
    expect(netControl(t, 4, 1, rssCommand({ table: [0, 1] }))).toBe(0);
    expect(netControl(t, 4, 0, Uint8Array.from([2, 0]))).toBe(0);
    expect(rss.get().mode).toBe(RSS_MODE.OFF);
  });
  it('parses no hash types and no key as RSS off, with the pairs still set', () => {
    const r = parseRssCommand(rssCommand({ table: [1], types: 0, key: new Uint8Array(0), txq: 2 }), true, 2);
    expect(r).toMatchObject({ config: { mode: RSS_OFF.mode }, pairs: 2 });
  });
});

describe('configuration space RSS fields', () => {
  it('rss_max_key_size 40, rss_max_indirection_table_length 128, supported_hash_types', () => {
    const c = new NetConfigSpace({ mac: new Uint8Array(6), pairs: 2, mtu: 1500, rss: true });
    expect(c.read(17, 1)).toBe(40);
    expect(c.read(18, 2)).toBe(128);
    expect(c.read(20, 4)).toBe(0x3f);
  });
});

describe('RSS state in the saved device state', () => {
  it('round-trips, and refuses a table naming a queue the device lacks, a table not a power of two, unknown hash types', async () => {
    const { saveRss, readRss } = await import('../src/virtio-net/state.js');
    const { Fields } = await import('../src/state/fields.js');
    const c = { mode: RSS_MODE.STEER, hashTypes: SUPPORTED_HASH_TYPES, table: Uint16Array.from([0, 1, 1, 0]), unclassified: 1, key: MS_KEY };
    const back = readRss(new Fields(saveRss(c) as Record<string, unknown>, 'rss'), 2);
    expect({ ...back, table: Array.from(back.table) }).toEqual({ ...c, table: [0, 1, 1, 0] });
    expect(() => readRss(new Fields(saveRss(c) as Record<string, unknown>, 'rss'), 1)).toThrow(/entry 1 names queue 1/);
    expect(() => readRss(new Fields(saveRss({ ...c, table: Uint16Array.from([0, 1, 0]) }) as Record<string, unknown>, 'rss'), 2)).toThrow(/power of two/);
    expect(() => readRss(new Fields(saveRss({ ...c, hashTypes: 1 << 7 }) as Record<string, unknown>, 'rss'), 2)).toThrow(/hash types/);
  });
});

describe('RSS frame classifier on mutated frames', () => {
  it('never reads outside the frame, whatever its headers say (5000 mutations of valid frames, cut at random)', () => {
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
    const bases = [
      ipFrame({ src: [1, 2, 3, 4], dst: [5, 6, 7, 8], sport: 1, dport: 2 }),
      ipFrame({ src: [1, 2, 3, 4], dst: [5, 6, 7, 8], sport: 1, dport: 2, proto: 17, tags: 2 }),
      ipFrame({ v6: true, src: new Array(16).fill(1), dst: new Array(16).fill(2), sport: 1, dport: 2, payload: 40 }),
    ];
    const input = new Uint8Array(36);
    for (let n = 0; n < 5000; n++) {
      const f = bases[rnd(bases.length)].slice();
      for (let k = rnd(6); k > 0; k--) f[rnd(f.length)] = rnd(256);
      // (an IPv6 extension header chain now and then)
      if (rnd(4) === 0 && f[12] === 0x86) f[14 + 6] = [0, 43, 44, 60][rnd(4)];
      const len = rnd(f.length + 1);
      const guarded = new Proxy(f, {
        get(t, k) {
          if (typeof k === 'string' && /^\d+$/.test(k) && Number(k) >= len) throw new Error(`read of byte ${k} of a ${len}-byte frame`);
          return Reflect.get(t, k);
        },
      });
      const r = classifyFrame(guarded, 0, len, SUPPORTED_HASH_TYPES, input);
      expect(r).toBeGreaterThanOrEqual(HASH_REPORT.NONE);
      expect(r).toBeLessThanOrEqual(HASH_REPORT.UDPv6);
    }
  });
});
