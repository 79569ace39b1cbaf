// virtio-net's configuration space and link without KVM, through the virtio-pci transport: the MTU
// offered (VIRTIO_NET_F_MTU) and what the dataplane then receives, mergeable buffers on or off, speed
// and duplex (VIRTIO_NET_F_SPEED_DUPLEX), and the link taken down and up from the host (status, a
// configuration interrupt on the config vector and in the ISR, nothing received while down).
import { describe, it, expect } from 'vitest';
import { DEVICE_OFF, ISR_OFF, MSIX_TABLE_OFF } from '../src/vmm/devices/virtio-pci.js';
import { STATUS } from '../src/virtio/device.js';
import { VirtioNet, parseMac, SPEED_UNKNOWN, type NetDeviceOptions } from '../src/virtio-net/device.js';
import { F, bit, has, netDataplaneFeatures } from '../src/virtio-net/features.js';
import { FRAME_OVERHEAD, MAX_GSO_FRAME } from '../src/virtio-net/net-header.js';
import { RxFilter } from '../src/virtio-net/rx-filter.js';
import { parseNetArg, checkNetConfig } from '../src/vmm/config.js';
import { NO_OFFLOADS, type NetDriver } from '../src/drivers/api.js';
import { native } from '../src/native.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { onPciBar } from './helpers/pci-bar.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { capsOnlyDriver } from './helpers/fake-drivers.js';

const tick = () => new Promise((res) => setImmediate(res));


type GuestOffloads = Parameters<NetDriver['setGuestOffloads']>[0];

function setup(o: Partial<NetDeviceOptions> & { wireMtu?: number; rxOffloads?: boolean; offloadCalls?: GuestOffloads[] } = {}) {
  const mem = new TestMemory(1 << 20);
  const irqfds: number[] = [];
  const vm = { ioeventfd: () => {}, irqfd: (fd: number, _gsi: number, deassign = false) => void (deassign || irqfds.push(fd)) } as unknown as VmFd;
  const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
  const drv = capsOnlyDriver({ mtu: o.wireMtu ?? 1500 });
  if (o.rxOffloads) drv.caps.offloads = { ...NO_OFFLOADS, rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: true };
  drv.setGuestOffloads = (g) => void o.offloadCalls?.push(g);
  const net = new VirtioNet(memory, { driver: drv, mac: parseMac('52:54:00:12:34:56'), queuePairs: 1, ...o });
  const { pci, r, w, offered } = onPciBar(net, vm);
  const cfg = (off: number, size: number) => r(DEVICE_OFF + off, size);
  /** A driver that takes VERSION_1, STATUS and `more`, with MSI-X vector 0 as its config vector, and no queues. */
  const goLive = async (more = 0n) => {
    w(MSIX_TABLE_OFF, 0xfee00000);
    w(MSIX_TABLE_OFF + 8, 0x41);
    w(MSIX_TABLE_OFF + 12, 0);
    let cap = pci.config.read(0x34, 1);
    while (cap && pci.config.read(cap, 1) !== 0x11) cap = pci.config.read(cap + 1, 1);
    pci.config.write(cap + 2, 2, 0x8000 | pci.config.read(cap + 2, 2));
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 1);
    w(0x08, 0);
    w(0x0c, Number((bit(F.STATUS) | more) & 0xffffffffn));
    w(0x08, 1);
    w(0x0c, 1 | Number(more >> 32n)); // VERSION_1
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
    w(0x10, 0, 2); // msix_config = vector 0
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK, 1);
    await tick();
    expect(irqfds.length).toBe(1);
    return irqfds[0];
  };
  return { net, pci, r, w, offered, cfg, goLive };
}

/** interrupts signalled on an eventfd since the last look (0 when none) */
function signalled(fd: number): number {
  const b = new BigUint64Array(1);
  try {
    return native.read(fd, new Uint8Array(b.buffer)) === 8 ? Number(b[0]) : 0;
  } catch {
    return 0; // EAGAIN: nothing
  }
}

describe('virtio-net MTU', () => {
  it("offers the wire's MTU by default, and mtu=N where it is given", () => {
    const dflt = setup({ wireMtu: 9000 });
    expect(has(dflt.offered(), F.MTU)).toBe(true);
    expect(dflt.cfg(10, 2)).toBe(9000);
    expect(dflt.net.mtu).toBe(9000);
    const set = setup({ wireMtu: 9000, mtu: 4000 });
    expect(set.cfg(10, 2)).toBe(4000);
  });

  it("receives frames of the device's MTU for a guest without GSO, with and without mergeable buffers; GSO frames for one with", () => {
    for (const mrg of [0n, bit(F.MRG_RXBUF)]) {
      const d = netDataplaneFeatures(bit(F.VERSION_1) | bit(F.MTU) | mrg, 9000);
      expect(d.maxRxFrame).toBe(9000 + FRAME_OVERHEAD);
      expect(d.mergeable).toBe(mrg !== 0n);
    }
    expect(netDataplaneFeatures(bit(F.VERSION_1) | bit(F.GUEST_CSUM) | bit(F.GUEST_TSO4), 9000).maxRxFrame).toBe(MAX_GSO_FRAME);
  });

  it('mrg-rxbuf=off leaves MRG_RXBUF out of the offer and nothing else', () => {
    const on = setup().offered();
    const off = setup({ mergeable: false }).offered();
    expect(has(on, F.MRG_RXBUF)).toBe(true);
    expect(off).toBe(on & ~bit(F.MRG_RXBUF));
  });
});

describe('--net device settings', () => {
  it('parses mtu, mrg-rxbuf, speed and duplex, and names a bad value', () => {
    expect(parseNetArg('tap,ifname=t0,mtu=9000,mrg-rxbuf=off,speed=25000,duplex=full')).toEqual({
      driver: 'tap',
      options: { ifname: 't0' },
      mtu: 9000,
      mergeable: false,
      speed: 25000,
      duplex: 'full',
    });
    expect(parseNetArg('tap,mtu=68').mtu).toBe(68);
    expect(parseNetArg('tap,mtu=65535').mtu).toBe(65535);
    for (const bad of ['67', '65536', '9000x', '', '-1']) expect(() => parseNetArg(`tap,mtu=${bad}`)).toThrow(`--net: mtu=${bad} is not a whole number from 68 to 65535`);
    expect(() => parseNetArg('tap,mrg-rxbuf=no')).toThrow('--net: mrg-rxbuf=no is not on or off');
    expect(() => parseNetArg('tap,speed=0')).toThrow(/speed=0 is not a whole number of Mb\/s/);
    expect(() => parseNetArg('tap,speed=2147483648')).toThrow(/speed=2147483648/);
    expect(() => parseNetArg('tap,duplex=both')).toThrow('--net: duplex=both is not full or half');
  });

  it('refuses the same bad values given to the library', () => {
    const n = { driver: 'tap' };
    expect(() => checkNetConfig({ ...n, mtu: 9000.5 })).toThrow(/mtu must be a whole number from 68 to 65535/);
    expect(() => checkNetConfig({ ...n, mtu: 70000 })).toThrow(/mtu must be/);
    expect(() => checkNetConfig({ ...n, speed: -1 })).toThrow(/speed must be/);
    expect(() => checkNetConfig({ ...n, duplex: 'x' as 'full' })).toThrow(/duplex must be full or half/);
    expect(() => checkNetConfig({ ...n, mergeable: 'no' as unknown as boolean })).toThrow(/mergeable must be true or false/);
    expect(() => checkNetConfig({ ...n, mtu: 9000, speed: 100, duplex: 'half', mergeable: false })).not.toThrow();
  });
});

describe('virtio-net speed and duplex', () => {
  it('offers SPEED_DUPLEX: unknown by default, else the speed and duplex given', () => {
    const dflt = setup();
    expect(has(dflt.offered(), F.SPEED_DUPLEX)).toBe(true);
    expect(dflt.cfg(12, 4)).toBe(SPEED_UNKNOWN);
    expect(dflt.cfg(16, 1)).toBe(0xff);
    const set = setup({ speed: 25000, duplex: 'full' });
    expect(set.cfg(12, 4)).toBe(25000);
    expect(set.cfg(16, 1)).toBe(1);
    expect(setup({ speed: 100, duplex: 'half' }).cfg(16, 1)).toBe(0);
  });
});

describe('virtio-net link state from the host', () => {
  it('takes the link down and up: status, generation, the config vector and the ISR bit', async () => {
    const t = setup();
    const efd = await t.goLive();
    expect(t.cfg(6, 2)).toBe(1); // VIRTIO_NET_S_LINK_UP
    signalled(efd);
    const gen = t.r(0x15, 1);
    t.net.setLink(false);
    expect(t.net.linkUp).toBe(false);
    expect(t.cfg(6, 2)).toBe(0);
    expect(t.r(0x15, 1)).toBe((gen + 1) & 0xff);
    expect(signalled(efd)).toBe(1);
    expect(t.r(ISR_OFF, 1)).toBe(2); // configuration change, cleared by the read
    expect(t.r(ISR_OFF, 1)).toBe(0);
    // no change, no interrupt
    t.net.setLink(false);
    expect(signalled(efd)).toBe(0);
    t.net.setLink(true);
    expect(t.cfg(6, 2)).toBe(1);
    expect(signalled(efd)).toBe(1);
  });

  it('keeps the link as the host set it over a device reset, and sets it before a driver without an interrupt', async () => {
    const t = setup();
    t.net.setLink(false);
    expect(t.cfg(6, 2)).toBe(0);
    expect(t.r(ISR_OFF, 1)).toBe(0);
    const efd = await t.goLive();
    expect(t.cfg(6, 2)).toBe(0);
    t.w(0x14, 0, 1); // reset
    await tick();
    expect(t.cfg(6, 2)).toBe(0);
    t.net.setLink(true);
    expect(t.cfg(6, 2)).toBe(1);
    expect(signalled(efd)).toBe(0); // no driver: nothing to tell
  });

  it('accepts no frame while the link is down (the dataplane filter), whatever the mode, and again once up', () => {
    const f = new RxFilter();
    const mac = parseMac('52:54:00:12:34:56');
    f.reset(mac);
    const frame = new Uint8Array(14);
    frame.set(mac);
    const bcast = new Uint8Array(14).fill(0xff);
    expect([f.accepts(frame, 0), f.accepts(bcast, 0)]).toEqual([true, true]);
    f.setLinkDown(true);
    expect([f.accepts(frame, 0), f.accepts(bcast, 0)]).toEqual([false, false]);
    f.reset(mac); // a driver reset keeps it
    expect(f.accepts(frame, 0)).toBe(false);
    f.setLinkDown(false);
    expect([f.accepts(frame, 0), f.accepts(bcast, 0)]).toEqual([true, true]);
  });
});

describe('virtio-net guest offload control (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)', () => {
  const u64 = (v: bigint) => new Uint8Array(new BigUint64Array([v]).buffer);
  const RX = bit(F.GUEST_CSUM) | bit(F.GUEST_TSO4) | bit(F.GUEST_TSO6);

  it('is offered with receive offloads only', () => {
    expect(has(setup().offered(), F.CTRL_GUEST_OFFLOADS)).toBe(false);
    expect(has(setup({ rxOffloads: true }).offered(), F.CTRL_GUEST_OFFLOADS)).toBe(true);
  });

  it("passes the guest's choice among what it negotiated to the driver, and refuses anything else", async () => {
    const calls: GuestOffloads[] = [];
    const t = setup({ rxOffloads: true, offloadCalls: calls });
    await t.goLive(RX | bit(F.CTRL_VQ) | bit(F.CTRL_GUEST_OFFLOADS));
    expect(calls).toEqual([{ rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: false, rxUso4: false, rxUso6: false }]); // at DRIVER_OK
    // ethtool -K eth0 rx-gro-hw off: checksums stay, segmentation goes
    expect(t.net.control(5, 0, u64(bit(F.GUEST_CSUM)))).toBe(0);
    expect(calls.at(-1)).toEqual({ rxCsum: true, rxTso4: false, rxTso6: false, rxTsoEcn: false, rxUso4: false, rxUso6: false });
    expect(t.net.control(5, 0, u64(RX))).toBe(0);
    expect(calls.at(-1)).toEqual({ rxCsum: true, rxTso4: true, rxTso6: true, rxTsoEcn: false, rxUso4: false, rxUso6: false });
    const n = calls.length;
    // ECN was not negotiated; bit 20 is no offload; a short or long command
    expect(t.net.control(5, 0, u64(RX | bit(F.GUEST_ECN)))).toBe(1);
    expect(t.net.control(5, 0, u64(bit(20)))).toBe(1);
    expect(t.net.control(5, 0, u64(RX).subarray(0, 4))).toBe(1);
    expect(t.net.control(5, 0, new Uint8Array(9))).toBe(1);
    expect(t.net.control(5, 1, u64(0n))).toBe(1); // no such command
    expect(calls.length).toBe(n);
  });

  it('refuses the command from a driver that did not negotiate it', async () => {
    const calls: GuestOffloads[] = [];
    const t = setup({ rxOffloads: true, offloadCalls: calls });
    await t.goLive(RX | bit(F.CTRL_VQ));
    expect(t.net.control(5, 0, u64(0n))).toBe(1);
    expect(calls.length).toBe(1);
  });
});

describe('virtio-net rate limits (library and --net)', () => {
  it('parses rx-/tx-bytes and -frames as SIZE/MS[+BURST] on --net, and refuses what is not', () => {
    expect(parseNetArg('tap,ifname=t0,tx-bytes=64K/10,tx-frames=1000/100+50,rx-bytes=1M/1000').rateLimit).toEqual({
      tx: { bandwidth: { size: 65536, oneTimeBurst: 0, refillTimeMs: 10 }, ops: { size: 1000, oneTimeBurst: 50, refillTimeMs: 100 } },
      rx: { bandwidth: { size: 1048576, oneTimeBurst: 0, refillTimeMs: 1000 } },
    });
    expect(() => parseNetArg('tap,tx-bytes=64K')).toThrow('--net: tx-bytes=64K is not SIZE/MS or SIZE/MS+BURST (e.g. tx-bytes=64K/10)');
    expect(() => parseNetArg('tap,rx-frames=0/10')).toThrow(/rx-frames=0\/10: rx.ops.size: expected an integer from 1/);
    expect(() => parseNetArg('tap,rx-frames=10/0')).toThrow(/refillTimeMs: expected an integer from 1/);
    expect(() => checkNetConfig({ driver: 'tap', rateLimit: { tx: { ops: { size: -1, refillTimeMs: 10 } } } })).toThrow(/--net: rateLimit: tx.ops.size/);
  });

  it('takes limits at start and from setRateLimit (a direction given replaced, one absent kept), and refuses bad ones leaving the limits as they were', () => {
    const { net } = setup({ rateLimit: { rx: { bandwidth: { size: 1000, refillTimeMs: 10 } } } });
    expect(net.rateLimit).toEqual({ rx: { bandwidth: { size: 1000, oneTimeBurst: 0, refillTimeMs: 10 } }, tx: {} });
    net.setRateLimit({ tx: { ops: { size: 5, oneTimeBurst: 2, refillTimeMs: 100 } } });
    expect(net.rateLimit).toEqual({ rx: { bandwidth: { size: 1000, oneTimeBurst: 0, refillTimeMs: 10 } }, tx: { ops: { size: 5, oneTimeBurst: 2, refillTimeMs: 100 } } });
    for (const bad of [{ tx: { ops: { size: 0, refillTimeMs: 1 } } }, { rx: { bandwidth: { size: 1, refillTimeMs: 1, extra: 1 } } }, { up: {} }, null])
      expect(() => net.setRateLimit(bad as never)).toThrow();
    expect(net.rateLimit.tx).toEqual({ ops: { size: 5, oneTimeBurst: 2, refillTimeMs: 100 } });
    net.setRateLimit({ rx: {}, tx: {} });
    expect(net.rateLimit).toEqual({ rx: {}, tx: {} });
  });
});

describe('virtio-net GUEST_ANNOUNCE', () => {
  const ANNOUNCE_CLASS = 3;
  const ANNOUNCE_ACK = 0;
  const OK = 0;
  const ERR = 1;

  it('is offered (with the control queue it needs)', () => {
    const offered = setup().offered();
    expect([has(offered, F.GUEST_ANNOUNCE), has(offered, F.CTRL_VQ)]).toEqual([true, true]);
  });

  it('announce sets VIRTIO_NET_S_ANNOUNCE with a configuration interrupt; the ack clears it', async () => {
    const t = setup();
    const efd = await t.goLive(bit(F.CTRL_VQ) | bit(F.GUEST_ANNOUNCE));
    signalled(efd);
    expect(t.net.announce()).toBe(true);
    expect(t.cfg(6, 2)).toBe(1 | 2); // LINK_UP | ANNOUNCE
    expect(t.net.announcing).toBe(true);
    expect(signalled(efd)).toBe(1);
    expect(t.r(ISR_OFF, 1)).toBe(2);
    expect(t.net.control(ANNOUNCE_CLASS, ANNOUNCE_ACK, new Uint8Array(1))).toBe(ERR); // the ack carries no data
    expect(t.cfg(6, 2)).toBe(3);
    expect(t.net.control(ANNOUNCE_CLASS, ANNOUNCE_ACK, new Uint8Array(0))).toBe(OK);
    expect(t.cfg(6, 2)).toBe(1);
    expect(t.net.announcing).toBe(false);
    expect(signalled(efd)).toBe(0); // the ack raises nothing
    // the link keeps its own bit
    t.net.setLink(false);
    t.net.announce();
    expect(t.cfg(6, 2)).toBe(2);
  });

  it('does nothing for a driver that did not negotiate it, nor before a driver, and a reset clears it', async () => {
    const fresh = setup();
    expect(fresh.net.announce()).toBe(false);
    expect(fresh.cfg(6, 2)).toBe(1);
    const t = setup();
    const efd = await t.goLive(bit(F.CTRL_VQ));
    signalled(efd);
    expect(t.net.announce()).toBe(false);
    expect(t.cfg(6, 2)).toBe(1);
    expect(signalled(efd)).toBe(0);
    expect(t.net.control(ANNOUNCE_CLASS, ANNOUNCE_ACK, new Uint8Array(0))).toBe(ERR);
    const a = setup();
    await a.goLive(bit(F.CTRL_VQ) | bit(F.GUEST_ANNOUNCE));
    a.net.announce();
    a.w(0x14, 0, 1); // reset
    await tick();
    expect(a.cfg(6, 2)).toBe(1);
  });

  it('a device saved while announcing restores with the bit still set', async () => {
    const t = setup();
    await t.goLive(bit(F.CTRL_VQ) | bit(F.GUEST_ANNOUNCE));
    t.net.announce();
    await t.net.quiesce();
    const saved = t.net.saveState();
    const u = setup();
    const { Fields } = await import('../src/state/fields.js');
    u.net.restoreState(new Fields(saved, 'net'));
    expect(u.cfg(6, 2)).toBe(3);
  });
});
