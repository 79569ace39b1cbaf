// virtio-net pieces without a VM: the TX header rules, the RX header, the RX filter, --net parsing,
// the feature offer.
import { describe, it, expect } from 'vitest';
import { parseTxHeader, writeRxHeader } from '../src/virtio-net/net-header.js';
import { txPolicy } from '../src/virtio-net/features.js';
import { RxFilter, RX_MODE } from '../src/virtio-net/rx-filter.js';
import { META, META_WORDS, META_NEEDS_CSUM, META_CSUM_VALID, GSO_TCPV4, GSO_TCPV6, GSO_ECN } from '../src/drivers/api.js';
import { F, bit, has, netFeatureOffer } from '../src/virtio-net/features.js';
import { NO_OFFLOADS } from '../src/drivers/api.js';
import { GuestMemory } from '../src/vmm/memory.js';
import { VhostUserBackend } from '../src/vhost-user/backend.js';
import { native } from '../src/native.js';
import { parseNetArg } from '../src/vmm/config.js';
import { parseMac, formatMac, VirtioNet } from '../src/virtio-net/device.js';
import { capsOnlyDriver } from './helpers/fake-drivers.js';

function hdr(o: { flags?: number; gso?: number; hdrLen?: number; gsoSize?: number; start?: number; offset?: number }): DataView {
  const h = new Uint8Array(12);
  const v = new DataView(h.buffer);
  h[0] = o.flags ?? 0;
  h[1] = o.gso ?? 0;
  v.setUint16(2, o.hdrLen ?? 0, true);
  v.setUint16(4, o.gsoSize ?? 0, true);
  v.setUint16(6, o.start ?? 0, true);
  v.setUint16(8, o.offset ?? 0, true);
  return v;
}

describe('virtio_net_hdr on transmit', () => {
  const all = txPolicy(bit(F.CSUM) | bit(F.HOST_TSO4) | bit(F.HOST_TSO6) | bit(F.HOST_ECN));
  const none = txPolicy(0n);
  const meta = new Int32Array(META_WORDS);
  it('passes a plain frame and a checksum/TSO request through as metadata', () => {
    expect(parseTxHeader(hdr({}), 0, 1000, none, meta, 0)).toBe(true);
    expect(meta[META.FLAGS]).toBe(0);
    expect(parseTxHeader(hdr({ flags: 1, gso: GSO_TCPV4, hdrLen: 54, gsoSize: 1448, start: 34, offset: 16 }), 0, 65000, all, meta, 0)).toBe(true);
    expect([...meta]).toEqual([META_NEEDS_CSUM, 34, 16, GSO_TCPV4, 1448, 54]);
  });
  it('drops what was not negotiated or does not fit the frame', () => {
    expect(parseTxHeader(hdr({ flags: 1, start: 34, offset: 16 }), 0, 100, none, meta, 0)).toBe(false); // CSUM not negotiated
    expect(parseTxHeader(hdr({ flags: 1, start: 90, offset: 16 }), 0, 100, all, meta, 0)).toBe(false); // checksum past the end
    expect(parseTxHeader(hdr({ flags: 1, gso: GSO_TCPV4, gsoSize: 1448, start: 34, offset: 16 }), 0, 9000, txPolicy(bit(F.CSUM)), meta, 0)).toBe(false);
    expect(parseTxHeader(hdr({ gso: GSO_TCPV4, gsoSize: 1448 }), 0, 9000, all, meta, 0)).toBe(false); // GSO without NEEDS_CSUM
    expect(parseTxHeader(hdr({ flags: 1, gso: GSO_TCPV6, start: 54, offset: 16 }), 0, 9000, all, meta, 0)).toBe(false); // gso_size 0
    expect(parseTxHeader(hdr({ flags: 1, gso: GSO_TCPV4 | GSO_ECN, gsoSize: 1448, start: 34, offset: 16 }), 0, 9000, txPolicy(bit(F.CSUM) | bit(F.HOST_TSO4)), meta, 0)).toBe(false);
    expect(parseTxHeader(hdr({ flags: 2 }), 0, 100, all, meta, 0)).toBe(false); // DATA_VALID is receive-only
    expect(parseTxHeader(hdr({ gso: 3, gsoSize: 100 }), 0, 9000, all, meta, 0)).toBe(false); // UFO never offered
  });
});

describe('virtio_net_hdr on receive', () => {
  it('describes partial checksums, verified ones, GSO frames and the buffer count', () => {
    const h = new Uint8Array(12);
    const m = new Int32Array([META_NEEDS_CSUM, 34, 16, GSO_TCPV4, 1448, 66]);
    writeRxHeader(new DataView(h.buffer), 0, m, 0, 3);
    expect([...h]).toEqual([1, 1, 66, 0, 0xa8, 5, 34, 0, 16, 0, 3, 0]);
    writeRxHeader(new DataView(h.buffer), 0, new Int32Array([META_CSUM_VALID, 0, 0, 0, 0, 0]), 0, 1);
    expect([...h]).toEqual([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  });
});

describe('RX filter', () => {
  const mac = parseMac('52:54:00:12:34:56');
  const f = new RxFilter();
  // the first 6 bytes of a frame: its destination (multicast ones included, which parseMac refuses)
  const frame = (dst: string) => Uint8Array.from(dst.split(':').map((x) => parseInt(x, 16)));
  it('starts promiscuous, then follows the control queue', () => {
    f.reset(mac);
    expect(f.accepts(frame('02:99:99:99:99:99'), 0)).toBe(true);
    f.setMode(RX_MODE.PROMISC, false);
    expect(f.accepts(frame('02:99:99:99:99:99'), 0)).toBe(false);
    expect(f.accepts(frame('52:54:00:12:34:56'), 0)).toBe(true);
    expect(f.accepts(frame('ff:ff:ff:ff:ff:ff'), 0)).toBe(true);
    f.setMode(RX_MODE.NOBCAST, true);
    expect(f.accepts(frame('ff:ff:ff:ff:ff:ff'), 0)).toBe(false);
    expect(f.accepts(frame('01:00:5e:00:00:01'), 0)).toBe(false);
    f.setTables([frame('02:aa:aa:aa:aa:aa')], [frame('01:00:5e:00:00:01')]);
    expect(f.accepts(frame('01:00:5e:00:00:01'), 0)).toBe(true);
    expect(f.accepts(frame('02:aa:aa:aa:aa:aa'), 0)).toBe(true);
    f.setMode(RX_MODE.ALLMULTI, true);
    expect(f.accepts(frame('01:00:5e:00:00:09'), 0)).toBe(true);
    f.setMac(parseMac('02:bb:bb:bb:bb:bb'));
    expect(f.accepts(frame('52:54:00:12:34:56'), 0)).toBe(false);
    expect(f.setTables(new Array(65).fill(mac), [])).toBe(false);
  });

  it('takes MAC_TABLE_SET bodies, refuses malformed ones, and accepts a class wholesale past 64 entries', () => {
    const body = (uni: string[], multi: string[], extra = 0) => {
      const le = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];
      return Uint8Array.from([...le(uni.length), ...uni.flatMap((m) => [...frame(m)]), ...le(multi.length), ...multi.flatMap((m) => [...frame(m)]), ...new Array(extra).fill(0)]);
    };
    f.reset(mac);
    f.setMode(RX_MODE.PROMISC, false);
    expect(f.setTablesCommand(body(['02:aa:aa:aa:aa:aa'], ['01:00:5e:00:00:01']))).toBe(true);
    expect(f.accepts(frame('02:aa:aa:aa:aa:aa'), 0)).toBe(true);
    expect(f.accepts(frame('01:00:5e:00:00:01'), 0)).toBe(true);
    expect(f.accepts(frame('02:ab:aa:aa:aa:aa'), 0)).toBe(false);
    const good = body(['02:aa:aa:aa:aa:aa'], []);
    for (const bad of [good.subarray(0, 3), good.subarray(0, good.length - 1), body(['02:aa:aa:aa:aa:aa'], [], 1)]) expect(f.setTablesCommand(bad)).toBe(false);
    expect(f.setTablesCommand(Uint8Array.from([0xff, 0xff, 0xff, 0xff]))).toBe(false); // a count past the body
    expect(f.setTablesCommand(body(new Array(65).fill('02:cc:cc:cc:cc:cc'), []))).toBe(true);
    expect(f.accepts(frame('02:99:99:99:99:99'), 0)).toBe(true); // ALLUNI
  });
});

describe('--net parsing', () => {
  it('splits driver, options and device settings', () => {
    expect(parseNetArg('tap,ifname=tap0,queues=2,mac=52:54:00:00:00:01,threads=1,busy-poll=50')).toEqual({
      driver: 'tap',
      // (busy-poll reaches the driver too: AF_XDP sockets busy-poll their device)
      options: { ifname: 'tap0', queues: '2', 'busy-poll': '50' },
      mac: '52:54:00:00:00:01',
      queues: 2,
      threads: 1,
      busyPollUs: 50,
    });
    // packed=off: split rings only; on is the default; anything else names the value
    expect(parseNetArg('tap,ifname=tap0,packed=off')).toEqual({ driver: 'tap', options: { ifname: 'tap0' }, packed: false });
    expect(parseNetArg('tap,packed=on').packed).toBe(true);
    expect(parseNetArg('tap').packed).toBeUndefined();
    expect(() => parseNetArg('tap,packed=no')).toThrow(/packed=no is not on or off/);
    expect(() => parseNetArg('tap,ifname')).toThrow(/key=value/);
    expect(() => parseNetArg('tap,queues=0')).toThrow(/1..16/);
    expect(formatMac(parseMac('52:54:00:AB:cd:0e'))).toBe('52:54:00:ab:cd:0e');
    expect(() => parseMac('52:54:00:ab:cd')).toThrow(/not a MAC/);
  });
});

describe('the virtio-net feature offer', () => {
  const driver = capsOnlyDriver({ queuePairs: 2, offloads: { txCsum: true, txTso4: true, txTso6: true, txTsoEcn: true, rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: true } });
  /** the bits a net device offers whatever its transport: the offer built from the driver */
  const netBits = netFeatureOffer({ offloads: { ...NO_OFFLOADS, ...driver.caps.offloads } }, 2);

  it('is the same over virtio-pci and vhost-user for the same driver (ECN included)', async () => {
    const mem = new GuestMemory([{ gpa: 0, size: 1 << 20, offset: 0 }]);
    const backend = new VhostUserBackend(driver, { queuePairs: 2 });
    try {
      const dev = new VirtioNet(mem, { driver, mac: parseMac('52:54:00:12:34:56'), queuePairs: 2 });
      for (const f of [dev.features, backend.features]) {
        expect(f & netBits).toBe(netBits);
        expect([has(f, F.GUEST_ECN), has(f, F.HOST_ECN), has(f, F.MQ)]).toEqual([true, true, true]);
      }
    } finally {
      await backend.close();
      native.close(backend.eventFd);
      mem.release();
    }
  });

  it('offers packed rings only where a transport opts in: the virtio-pci device, unless packed=off', () => {
    expect(has(netBits, F.RING_PACKED)).toBe(false);
    expect(has(netFeatureOffer({ offloads: NO_OFFLOADS }, 1, { packed: true }), F.RING_PACKED)).toBe(true);
    const mem = new GuestMemory([{ gpa: 0, size: 1 << 20, offset: 0 }]);
    try {
      const mac = parseMac('52:54:00:12:34:56');
      expect(has(new VirtioNet(mem, { driver, mac, queuePairs: 1 }).features, F.RING_PACKED)).toBe(true);
      expect(has(new VirtioNet(mem, { driver, mac, queuePairs: 1, packed: true }).features, F.RING_PACKED)).toBe(true);
      const split = new VirtioNet(mem, { driver, mac, queuePairs: 1, packed: false }).features;
      expect(has(split, F.RING_PACKED)).toBe(false);
      // nothing else changes
      expect(split | bit(F.RING_PACKED)).toBe(new VirtioNet(mem, { driver, mac, queuePairs: 1 }).features);
    } finally {
      mem.release();
    }
  });

  it('offers only the offloads a driver honours', () => {
    const none = netFeatureOffer({ offloads: NO_OFFLOADS }, 1);
    for (const b of [F.CSUM, F.GUEST_CSUM, F.HOST_TSO4, F.GUEST_TSO4, F.HOST_ECN, F.GUEST_ECN, F.MQ]) expect(has(none, b)).toBe(false);
    // ECN only with segmentation to go with it
    const ecnAlone = netFeatureOffer({ offloads: { ...NO_OFFLOADS, txCsum: true, txTsoEcn: true, rxCsum: true, rxTsoEcn: true } }, 1);
    expect([has(ecnAlone, F.HOST_ECN), has(ecnAlone, F.GUEST_ECN)]).toEqual([false, false]);
  });
});
