// Device state without KVM: each device's state saved, through msgpack, restored into a freshly built
// device and saved again gives the same; live rings go on where they stood (split and packed); and
// every kind of bad document — unreadable, foreign, of another version, from another machine, with a
// field missing, extra, of the wrong type or out of range — is refused with one line.
import { describe, it, expect } from 'vitest';
import { encode, decode } from '@msgpack/msgpack';
import { Fields, StateError, type StateValue } from '../src/state/fields.js';
import { Uart8250 } from '../src/vmm/devices/uart8250.js';
import { PciConfigSpace, PciHost, PCI_CMD_MASTER, PCI_CMD_MEM } from '../src/vmm/devices/pci.js';
import { ResetControl } from '../src/vmm/devices/power.js';
import { VirtioPciDevice, NOTIFY_OFF, MSIX_TABLE_OFF, type PciPlatform } from '../src/vmm/devices/virtio-pci.js';
import { Bus } from '../src/vmm/bus.js';
import { STATUS } from '../src/virtio/device.js';
import { VirtioRng } from '../src/virtio-rng/device.js';
import { VirtioNet, parseMac } from '../src/virtio-net/device.js';
import { F, bit } from '../src/virtio-net/features.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { native, ONE } from '../src/native.js';
import { TestMemory, TestDriver } from './helpers/virtq-driver.js';
import { RING_LAYOUTS, type RingDriver } from './helpers/ring-driver.js';
import { encodeState, decodeState, STATE_VERSION, type Fingerprint } from '../src/vmm/state/document.js';
import { SIZEOF } from '../src/vmm/kvm-abi.js';
import { UserError } from '../src/errors.js';
import { VirtioIommu, S, IOMMU_F } from '../src/viommu/device.js';
import { IommuReader, MAP_READ, MAP_WRITE } from '../src/viommu/table.js';
import { EFD_NONBLOCK } from '../src/native.js';
import { capsOnlyDriver } from './helpers/fake-drivers.js';
import { iommuRequests } from './helpers/iommu-requests.js';
import type { NetRateLimits } from '../src/dataplane/rate-limit.js';

const BAR = 0xc0000000;
/** msgpack there and back, as a device's part of a document is read */
const through = (v: StateValue, path = 'dev') => new Fields(decode(encode(v)), path);
const until = async (what: () => boolean) => {
  for (let i = 0; i < 500 && !what(); i++) await new Promise((r) => setTimeout(r, 10));
};

function fakePlatform() {
  const kicks = new Map<number, number>();
  const platform = {
    mmio: new Bus('mmio'),
    vm: { ioeventfd: (o: { fd: number; addr: number; deassign?: boolean }) => (o.deassign ? kicks.delete(o.addr) : kicks.set(o.addr, o.fd)), irqfd: () => {} },
    router: { addMsi: () => 24, updateMsi: () => {} },
  };
  return { platform: platform as unknown as PciPlatform, kick: (q = 0) => native.write(kicks.get(BAR + NOTIFY_OFF + 4 * q)!, ONE) };
}

/** A virtio device on the transport in slot 1 of a host bridge, BAR placed as firmware does. */
function plug<D extends ConstructorParameters<typeof VirtioPciDevice>[0]>(dev: D, classCode: number) {
  const { platform, kick } = fakePlatform();
  const pci = new VirtioPciDevice(dev, platform, classCode);
  pci.config.assignBar(0, BAR);
  pci.config.command = PCI_CMD_MEM | PCI_CMD_MASTER;
  const host = new PciHost(new ResetControl(() => {}));
  host.add(pci, 1);
  return { dev, pci, host, kick, w: (off: number, size: number, v: number) => pci.write(off, size, v), r: (off: number, size: number) => pci.read(off, size) };
}

/** The driver's start: features (low and high words), then each queue of `queues` on its ring. */
function driverStart(w: (off: number, size: number, v: number) => void, lo: number, hi: number, queues: Array<[number, RingDriver, number]>): void {
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  w(0x08, 4, 0);
  w(0x0c, 4, lo);
  w(0x08, 4, 1);
  w(0x0c, 4, hi);
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  for (const [q, drv, size] of queues) {
    w(0x16, 2, q);
    w(0x18, 2, size);
    w(0x1a, 2, 1);
    w(0x20, 4, drv.cfg.desc);
    w(0x28, 4, drv.cfg.avail);
    w(0x30, 4, drv.cfg.used);
    w(0x1c, 2, 1);
  }
  // an MSI-X vector programmed and unmasked, MSI-X on
  w(MSIX_TABLE_OFF + 16, 4, 0xfee00000);
  w(MSIX_TABLE_OFF + 24, 4, 0x42);
  w(MSIX_TABLE_OFF + 28, 4, 0);
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
}

describe('device state round trips through msgpack', () => {
  it('UART: registers, divisor, the receive FIFO and the interrupt line', () => {
    const levels: boolean[] = [];
    const a = new Uart8250(() => {}, (l) => levels.push(l));
    a.write(3, 1, 0x80); // DLAB
    a.write(0, 1, 0x01);
    a.write(1, 1, 0x00);
    a.write(3, 1, 0x1b);
    a.write(4, 1, 0x0b);
    a.write(7, 1, 0x5a);
    a.write(2, 1, 0x01);
    a.write(1, 1, 0x01); // receive interrupt on
    a.push(new TextEncoder().encode('abc'));
    const saved = a.saveState();
    const b = new Uart8250(() => {}, (l) => levels.push(l));
    b.restoreState(through(saved));
    expect(encode(b.saveState())).toEqual(encode(saved));
    expect(levels.at(-1)).toBe(true);
    expect([b.read(0), b.read(0), b.read(7), b.read(3)]).toEqual([0x61, 0x62, 0x5a, 0x1b]);
  });

  it('PCI host: the address latch, the reset register, each slot’s configuration space (BARs decoded again)', async () => {
    const mk = () => {
      const host = new PciHost(new ResetControl(() => {}));
      const maps: Array<number | undefined> = [];
      const fn = { config: new PciConfigSpace({ vendor: 0x1234, device: 0x11, classCode: 0x020000 }) };
      fn.config.addBar(0, { size: 0x1000, is64: false, onMap: (a) => maps.push(a) });
      host.add(fn, 3);
      return { host, fn, maps };
    };
    const a = mk();
    a.host.write(0, 4, 0x80001810);
    a.host.write(1, 1, 0x02);
    a.fn.config.write(0x10, 4, 0xd0000000);
    a.fn.config.write(0x04, 2, PCI_CMD_MEM);
    a.fn.config.write(0x3c, 1, 11);
    const saved = a.host.saveState();
    const b = mk();
    await b.host.restoreState(through(saved));
    expect(encode(b.host.saveState())).toEqual(encode(saved));
    expect(b.maps).toEqual([0xd0000000]);
    expect(b.host.read(1, 1)).toBe(0x02);
  });

  for (const L of RING_LAYOUTS) {
    it(`virtio-rng on virtio-pci, live on a ${L.name} ring: the restored device serves the next request where the ring stood`, async () => {
      const mem = new TestMemory(4 << 20);
      const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
      const a = plug(new VirtioRng(memory, { packed: L.packed }), 0xff0000);
      const drv = L.driver(mem, 16);
      driverStart(a.w, 1 << 28, L.packed ? 5 : 1, [[0, drv, 16]]);
      const ids = [0, 1, 2].map(() => drv.add([{ addr: mem.alloc(64), len: 64, write: true }]));
      a.kick();
      const used: Array<{ id: number; len: number }> = [];
      await until(() => (used.push(...drv.takeUsed()), used.length >= 3));
      expect(used.map((u) => u.id)).toEqual(ids);
      expect(() => a.host.saveState()).toThrow('virtio device type 4: saveState while its rings are served (quiesce first)');
      await a.host.quiesce();
      const saved = a.host.saveState();
      await a.pci.close();

      const b = plug(new VirtioRng(memory, { packed: L.packed }), 0xff0000);
      await b.host.restoreState(through(saved));
      await b.host.quiesce();
      expect(encode(b.host.saveState())).toEqual(encode(saved));
      await b.host.unquiesce();
      expect(b.r(0x14, 1)).toBe(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
      const id = drv.add([{ addr: mem.alloc(32), len: 32, write: true }]);
      b.kick();
      const more: Array<{ id: number; len: number }> = [];
      await until(() => (more.push(...drv.takeUsed()), more.length >= 1));
      expect(more).toEqual([{ id, len: 32 }]);
      expect(b.r(0x14, 1) & STATUS.NEEDS_RESET).toBe(0);
      await b.pci.close();
    });
  }

  it('virtio-net: MAC, RX filter and MAC tables, pairs, offloads, and the control queue going on where it stood', async () => {
    const mem = new TestMemory(1 << 20);
    const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
    const offloads: unknown[] = [];
    const drvCaps = capsOnlyDriver({ queuePairs: 2, offloads: { rxCsum: true, rxTso4: true }, onGuestOffloads: (g) => void offloads.push(g) });
    const mk = () => plug(new VirtioNet(memory, { driver: drvCaps, mac: parseMac('52:54:00:12:34:56'), queuePairs: 2 }), 0x020000);
    const a = mk();
    const ctrl = new TestDriver(mem, 16);
    const feats = bit(F.CTRL_VQ) | bit(F.CTRL_RX) | bit(F.CTRL_VLAN) | bit(F.CTRL_MAC_ADDR) | bit(F.MAC) | bit(F.STATUS) | bit(F.GUEST_CSUM) | bit(F.CTRL_GUEST_OFFLOADS) | bit(F.MQ);
    driverStart(a.w, Number(feats & 0xffffffffn), 1 | (1 << (F.NOTF_COAL - 32)), [[4, ctrl, 16]]);
    /** one control command: class, command, data; returns the ack */
    const command = async (kick: () => void, cls: number, cmd: number, data: number[]) => {
      const at = mem.alloc(2 + data.length);
      mem.bytes(at, 2 + data.length).set([cls, cmd, ...data]);
      const ack = mem.alloc(1);
      ctrl.add([{ addr: at, len: 2 + data.length }, { addr: ack, len: 1, write: true }]);
      kick();
      const used: unknown[] = [];
      await until(() => (used.push(...ctrl.takeUsed()), used.length >= 1));
      return mem.bytes(ack, 1)[0];
    };
    const kickA = () => a.dev.kick(4);
    expect(await command(kickA, 1, 1, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])).toBe(0); // MAC_ADDR_SET
    expect(await command(kickA, 0, 0, [0])).toBe(0); // promiscuous off
    expect(await command(kickA, 1, 0, [1, 0, 0, 0, 0x52, 0x54, 0, 1, 2, 3, 1, 0, 0, 0, 0x01, 0, 0x5e, 0, 0, 1])).toBe(0); // MAC tables
    expect(await command(kickA, 5, 0, [0, 0, 0, 0, 0, 0, 0, 0])).toBe(0); // receive offloads off
    expect(await command(kickA, 4, 0, [2, 0])).toBe(0); // two pairs
    expect(await command(kickA, 2, 0, [5, 0])).toBe(0); // VLAN 5 added
    expect(await command(kickA, 6, 1, [32, 0, 0, 0, 100, 0, 0, 0])).toBe(0); // RX coalescing: 32 frames, 100 µs
    await a.host.quiesce();
    const saved = a.host.saveState();
    await a.pci.close();

    const b = mk();
    await b.host.restoreState(through(saved));
    await b.host.quiesce();
    expect(encode(b.host.saveState())).toEqual(encode(saved));
    await b.host.unquiesce();
    expect([0, 1, 2, 3, 4, 5].map((i) => b.dev.readConfig(i, 1))).toEqual([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    expect(b.dev.filter.accepts(new Uint8Array([0x52, 0x54, 0, 1, 2, 3]), 0)).toBe(true);
    expect(b.dev.filter.accepts(new Uint8Array([0x52, 0x54, 0, 9, 9, 9]), 0)).toBe(false);
    const tagged = (vid: number) => new Uint8Array([0x52, 0x54, 0, 1, 2, 3, 2, 0, 0, 0, 0, 1, 0x81, 0, 0, vid, 8, 0]);
    expect([b.dev.filter.accepts(tagged(5), 0, 18), b.dev.filter.accepts(tagged(7), 0, 18)]).toEqual([true, false]);
    expect([0, 1, 2, 3].map((q) => b.dev.coalesce.get(q).maxPackets)).toEqual([32, 0, 32, 0]);
    expect(offloads.at(-1)).toEqual({ rxCsum: false, rxTso4: false, rxTso6: false, rxTsoEcn: false, rxUso4: false, rxUso6: false });
    // the control queue goes on at its fourth... sixth chain: the next command is answered
    expect(await command(() => b.dev.kick(4), 0, 0, [1])).toBe(0);
    expect(b.dev.filter.accepts(new Uint8Array([0x52, 0x54, 0, 9, 9, 9]), 0)).toBe(true);
    await b.pci.close();
  });
});

describe('virtio-net rate limits in the state', () => {
  const memory = { buffer: new SharedArrayBuffer(1 << 20), table: new TestMemory(1 << 20).view.table } as unknown as GuestMemory;
  const mk = (rateLimit?: NetRateLimits) => new VirtioNet(memory, { driver: capsOnlyDriver(), mac: parseMac('52:54:00:12:34:56'), queuePairs: 1, rateLimit });

  it("come back as they were in force, setRateLimit's included, over what the restoring device was configured with", () => {
    const a = mk({ tx: { ops: { size: 100, refillTimeMs: 1000 } } });
    a.setRateLimit({ rx: { bandwidth: { size: 5000, oneTimeBurst: 1000, refillTimeMs: 10 } } });
    const b = mk({ rx: { ops: { size: 1, refillTimeMs: 1 } } });
    b.restoreState(through(a.saveState(), 'net'));
    expect(b.rateLimit).toEqual({ rx: { bandwidth: { size: 5000, oneTimeBurst: 1000, refillTimeMs: 10 } }, tx: { ops: { size: 100, oneTimeBurst: 0, refillTimeMs: 1000 } } });
    // no limits at all come back as none
    const c = mk({ tx: { bandwidth: { size: 9, refillTimeMs: 9 } } });
    c.restoreState(through(mk().saveState(), 'net'));
    expect(c.rateLimit).toEqual({ rx: {}, tx: {} });
  });

  it('refuses limits setRateLimit would refuse, and a direction or bucket missing or extra', () => {
    const s = mk({ rx: { ops: { size: 10, refillTimeMs: 100 } } }).saveState() as { [k: string]: StateValue };
    const rl = s.rateLimits as { [k: string]: { [k: string]: StateValue } };
    const bucket = (b: { [k: string]: StateValue }) => ({ ...s, rateLimits: { ...rl, rx: { ...rl.rx, ops: { ...(rl.rx.ops as { [k: string]: StateValue }), ...b } } } });
    const refusal = (v: StateValue) => () => mk().restoreState(through(v, 'net'));
    expect(refusal(bucket({ size: 0 }))).toThrow('net.rateLimits.rx.ops: a bucket of size 0 refilled in 100 ms');
    expect(refusal(bucket({ refillTimeMs: 86_400_001 }))).toThrow('net.rateLimits.rx.ops.refillTimeMs: not an integer in [0, 86400000]');
    expect(refusal(bucket({ size: 1.5 }))).toThrow('net.rateLimits.rx.ops.size: not an integer in [0, 1099511627776]');
    expect(refusal(bucket({ rate: 1 }))).toThrow('net.rateLimits.rx.ops.rate: unexpected field');
    expect(refusal({ ...s, rateLimits: { rx: rl.rx } })).toThrow('net.rateLimits.tx: missing');
    expect(refusal({ ...s, rateLimits: { ...rl, tx: { ops: null } } })).toThrow('net.rateLimits.tx.bandwidth: missing');
    const { rateLimits: _, ...without } = s;
    expect(refusal(without)).toThrow('net.rateLimits: missing');
  });
});

describe('virtio-iommu state', () => {
  const NET = 0x18;
  const FEATURES = (1n << 32n) | (1n << BigInt(IOMMU_F.MAP_UNMAP)) | (1n << BigInt(IOMMU_F.BYPASS_CONFIG));

  for (const thread of [false, true]) {
    it(`the endpoints' domains, the mappings, bypass and both queues' positions (requests ${thread ? 'on its thread' : 'on exits'})`, async () => {
      const mem = new TestMemory(1 << 20, 0);
      const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
      const rq = new TestDriver(mem, 64);
      const eq = new TestDriver(mem, 16);
      const kickFd = thread ? native.eventfd(0, EFD_NONBLOCK) : -1;
      const activate = (dev: VirtioIommu, starts: Array<ReturnType<VirtioIommu['ringState']>> = []) =>
        dev.activate({
          features: FEATURES,
          queues: [{ index: 0, ...rq.cfg, kickFd, callFd: -1, start: starts[0] }, { index: 1, ...eq.cfg, kickFd: -1, callFd: -1, start: starts[1] }],
          needsReset: (r) => {
            throw new Error(r);
          },
          configChanged: () => {},
        });
      /** the requests of a guest driving `dev` (on its exits, or through the request thread's ioeventfd) */
      const requests = (dev: VirtioIommu) => iommuRequests(mem, rq, () => (thread ? native.write(kickFd, ONE) : dev.kick(0)));
      const attach = async (dev: VirtioIommu, domain: number) => (await requests(dev).attach(domain, NET)).status;
      const map = async (dev: VirtioIommu, domain: number, start: number, end: number, phys: number) => (await requests(dev).map(domain, start, end, phys, MAP_READ | MAP_WRITE)).status;

      const a = new VirtioIommu(memory, { endpoints: [NET], thread });
      await activate(a);
      a.writeConfig(36, 1, 1);
      expect(await attach(a, 5)).toBe(S.OK);
      expect(await map(a, 5, 0x10000, 0x1ffff, 0x40000)).toBe(S.OK);
      expect(await map(a, 5, 0x30000, 0x30fff, 0x50000)).toBe(S.OK);
      await a.quiesce();
      const saved = { state: a.saveState(), rings: [a.ringState(0), a.ringState(1)] };
      expect(saved.rings[0]).toMatchObject({ nextAvail: 3, nextUsed: 3 });
      await a.reset();

      const b = new VirtioIommu(memory, { endpoints: [NET], thread });
      b.restoreState(through(saved.state, 'iommu'));
      await activate(b, saved.rings);
      expect(b.readConfig(36, 1)).toBe(1);
      const reader = new IommuReader(b.table.buffer, NET, b.table.newThreadSlot());
      expect(reader.translate(0x30010, 16, MAP_WRITE)).toBe(true);
      expect(reader.hit.gpa).toBe(0x50010);
      // the request queue goes on at its fourth chain
      expect(await map(b, 5, 0x40000, 0x40fff, 0x60000)).toBe(S.OK);
      await b.quiesce();
      expect(b.ringState(0)).toMatchObject({ nextAvail: 4, nextUsed: 4 });
      await b.reset();
      if (thread) native.close(kickFd);
    });
  }

  it('refuses overlapping mappings, other endpoints, an attachment both to a domain and in bypass', () => {
    const mk = () => new VirtioIommu({ buffer: new SharedArrayBuffer(1 << 16), table: new TestMemory(1 << 16).view.table } as unknown as GuestMemory, { endpoints: [NET] });
    const m = new Float64Array([5, 0x1000, 0x1fff, 0x8000, 3, 5, 0x1800, 0x2fff, 0x9000, 3]);
    const table = (t: { [k: string]: StateValue }) => through({ bypass: 0, table: { endpoints: [{ endpoint: NET, domain: 5, bypass: false }], mappings: new Uint8Array(0), ...t } }, 'iommu');
    expect(() => mk().restoreState(table({ mappings: new Uint8Array(m.buffer) }))).toThrow('iommu.table.mappings[1]: overlaps another mapping of domain 5');
    expect(() => mk().restoreState(table({ endpoints: [{ endpoint: 0x20, domain: 5, bypass: false }] }))).toThrow('iommu.table.endpoints: 32 saved, this vIOMMU translates for 24');
    expect(() => mk().restoreState(table({ endpoints: [{ endpoint: NET, domain: 5, bypass: true }] }))).toThrow('iommu.table.endpoints[0]: attached to domain 5 and in bypass');
    expect(() => mk().restoreState(table({ mappings: new Uint8Array(new Float64Array([5, 0x2000, 0x1000, 0, 1]).buffer) }))).toThrow('iommu.table.mappings[0]: IOVA range 8192..4096');
  });
});

describe('device state refused', () => {
  const rngOn = () => plug(new VirtioRng({ buffer: new SharedArrayBuffer(1 << 20), table: new TestMemory(1 << 20).view.table } as unknown as GuestMemory), 0xff0000);
  const savedRng = () => rngOn().host.saveState() as { [k: string]: StateValue };

  it('a PCI slot holding another function, or the functions in other slots', () => {
    const s = savedRng();
    const slots = s.slots as Array<{ [k: string]: StateValue }>;
    const config = (slots[1].config as Uint8Array).slice();
    config[2] ^= 1; // device id
    expect(() => rngOn().host.restoreState(through({ ...s, slots: [slots[0], { ...slots[1], config }] }, 'pci'))).toThrow(/pci.slots\[1\].config: read-only byte 0x2 is 0x45, this device has 0x44/);
    expect(() => rngOn().host.restoreState(through({ ...s, slots: [slots[0], { ...slots[1], slot: 2 }] }, 'pci'))).toThrow('pci.slots: PCI slots 0,2 saved, this machine has 0,1');
  });

  it('transport registers the device cannot have: unoffered features, a missing vector, a queue that is not there, a packed position past the ring', () => {
    const s = savedRng();
    const slots = s.slots as Array<{ [k: string]: StateValue }>;
    const dev = slots[1].device as { [k: string]: StateValue };
    const q0 = (dev.queues as Array<{ [k: string]: StateValue }>)[0];
    const withDev = (d: { [k: string]: StateValue }) => through({ ...s, slots: [slots[0], { ...slots[1], device: d }] }, 'pci');
    const feats = new Uint8Array(8);
    feats[0] = 1; // bit 0: not offered
    feats[4] = 1; // VERSION_1
    expect(() => rngOn().host.restoreState(withDev({ ...dev, status: STATUS.FEATURES_OK, driverFeatures: feats }))).toThrow(/driverFeatures: 0x100000001 accepted, but this device offers/);
    expect(() => rngOn().host.restoreState(withDev({ ...dev, queues: [{ ...q0, msixVector: 7 }] }))).toThrow('pci.slots[1].device.queues[0].msixVector: 7, this device has 2 vectors');
    expect(() => rngOn().host.restoreState(withDev({ ...dev, queues: [] }))).toThrow('pci.slots[1].device.queues: 0 saved, this device has 1');
    feats[0] = 0;
    feats[4] = 5; // VERSION_1, RING_PACKED
    const live = { ...dev, status: STATUS.FEATURES_OK | STATUS.DRIVER_OK, driverFeatures: feats };
    expect(() => rngOn().host.restoreState(withDev({ ...live, queues: [{ ...q0, size: 16, enable: 1, ring: { nextAvail: 16, nextUsed: 0, availWrap: true, usedWrap: true } }] }))).toThrow(
      'pci.slots[1].device.queues[0].ring.nextAvail: not an integer in [0, 15]',
    );
  });

  it('UART fields missing, extra, of the wrong type or out of range', () => {
    const s = new Uart8250(() => {}).saveState() as { [k: string]: StateValue };
    const fresh = () => new Uart8250(() => {});
    const { ier: _, ...noIer } = s;
    expect(() => fresh().restoreState(through(noIer, 'com1'))).toThrow('com1.ier: missing');
    expect(() => fresh().restoreState(through({ ...s, extra: 1 }, 'com1'))).toThrow('com1.extra: unexpected field');
    expect(() => fresh().restoreState(through({ ...s, lcr: 'x' }, 'com1'))).toThrow('com1.lcr: not an integer in [0, 255]');
    expect(() => fresh().restoreState(through({ ...s, ier: 0x10 }, 'com1'))).toThrow('com1.ier: not an integer in [0, 15]');
    expect(() => fresh().restoreState(through({ ...s, rx: new Uint8Array(5000) }, 'com1'))).toThrow(StateError);
    expect(() => fresh().restoreState(through([1, 2], 'com1'))).toThrow('com1: not a map');
  });
});

describe('the state document', () => {
  const here: Fingerprint = { memory: 64 << 20, cpus: 1, devices: ['pio:com1'] };
  const vcpu = {
    mpState: 0,
    regs: new Uint8Array(SIZEOF.kvm_regs),
    sregs: new Uint8Array(SIZEOF.kvm_sregs),
    xsave: new Uint8Array(SIZEOF.kvm_xsave),
    xcrs: new Uint8Array(SIZEOF.kvm_xcrs),
    debugregs: new Uint8Array(SIZEOF.kvm_debugregs),
    lapic: new Uint8Array(SIZEOF.kvm_lapic_state),
    msrs: new Uint8Array(3 * SIZEOF.kvm_msr_entry),
    events: new Uint8Array(SIZEOF.kvm_vcpu_events),
    tscKhz: 2_000_000,
  };
  const vm = { irqchip: [0, 1, 2].map(() => new Uint8Array(SIZEOF.kvm_irqchip)), pit: new Uint8Array(SIZEOF.kvm_pit_state2), clock: new Uint8Array(SIZEOF.kvm_clock_data) };
  const doc = () => encodeState({ fingerprint: here, vcpus: [vcpu], vm, devices: { 'pio:com1': new Uart8250(() => {}).saveState() } });
  /** the document decoded, changed by `edit`, encoded again */
  const edited = (edit: (d: { [k: string]: StateValue }) => void) => {
    const d = decode(doc()) as { [k: string]: StateValue };
    edit(d);
    return encode(d);
  };
  /** decodeState's refusal: a UserError of one line */
  const refusal = (bytes: Uint8Array, fp = here): string => {
    try {
      decodeState(bytes, fp);
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      expect((e as Error).message).not.toContain('\n');
      return (e as Error).message;
    }
    throw new Error('accepted');
  };

  it('decodes what it encoded, the vCPU and VM parts checked, each device left to read its part', () => {
    const s = decodeState(doc(), here);
    expect(s.vcpus[0].tscKhz).toBe(2_000_000);
    expect(s.vcpus[0].xsave!.length).toBe(SIZEOF.kvm_xsave);
    expect(s.vm.irqchip).toHaveLength(3);
    const uart = new Uart8250(() => {});
    uart.restoreState(s.devices.get('pio:com1')!);
    expect(s.devices.get('pio:com1')!.path).toBe('devices.pio:com1');
  });

  it('reads a document from a file (a Node Buffer, whose slices share its memory) as one made in memory', async () => {
    const mem = new TestMemory(1 << 20);
    const memory = { buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory;
    const a = plug(new VirtioRng(memory, {}), 0xff0000);
    const fp: Fingerprint = { ...here, devices: ['pio:pci-host'] };
    const bytes = encodeState({ fingerprint: fp, vcpus: [vcpu], vm, devices: { 'pio:pci-host': a.host.saveState() } });
    // inside a larger memory whose length is no multiple of 4, as a file read may be
    const pad = (bytes.length + 1) % 4 === 0 ? 2 : 1;
    const whole = new ArrayBuffer(bytes.length + pad);
    new Uint8Array(whole).set(bytes, pad);
    const s = decodeState(Buffer.from(whole, pad, bytes.length), fp);
    const b = plug(new VirtioRng(memory, {}), 0xff0000);
    await b.host.restoreState(s.devices.get('pio:pci-host')!);
    expect(encode(b.host.saveState())).toEqual(encode(a.host.saveState()));
    await a.pci.close();
    await b.pci.close();
  });

  it('refuses an unreadable document (not msgpack, cut short)', () => {
    expect(refusal(new Uint8Array([0xc1]))).toMatch(/^state: not a readable state document \(msgpack: /);
    expect(refusal(doc().subarray(0, 100))).toMatch(/^state: not a readable state document/);
    expect(refusal(encode('hello'))).toBe('state: : not a map');
  });

  it('refuses a foreign document and one of another version', () => {
    expect(refusal(edited((d) => (d.format = 'firecracker')))).toBe('state: not a tsvmm state document');
    expect(refusal(edited((d) => (d.version = STATE_VERSION + 1)))).toBe(`state: a document of version ${STATE_VERSION + 1}, this tsvmm reads version ${STATE_VERSION}`);
  });

  it('refuses a document from a machine with other memory, vCPUs or devices', () => {
    expect(refusal(doc(), { ...here, memory: 128 << 20 })).toBe('state: saved from a VM with 67108864 bytes of memory, this one has 134217728');
    expect(refusal(doc(), { ...here, cpus: 2 })).toBe('state: saved from a VM with 1 vCPUs, this one has 2');
    expect(refusal(doc(), { ...here, devices: ['pio:com1', 'pio:pci-host'] })).toBe('state: saved from a VM with devices pio:com1, this one has pio:com1,pio:pci-host');
  });

  it('refuses fields missing, extra, of the wrong type or size', () => {
    expect(refusal(edited((d) => delete d.vm))).toBe('state: vm: missing');
    expect(refusal(edited((d) => (d.extra = 1)))).toBe('state: extra: unexpected field');
    const cpu0 = (d: { [k: string]: StateValue }) => (d.vcpus as Array<{ [k: string]: StateValue }>)[0];
    expect(refusal(edited((d) => (cpu0(d).regs = new Uint8Array(10))))).toBe('state: vcpus[0].regs: 10 bytes, expected 144');
    expect(refusal(edited((d) => (cpu0(d).msrs = new Uint8Array(17))))).toBe('state: vcpus[0].msrs: 17 bytes, expected 0..16384 in multiples of 16');
    expect(refusal(edited((d) => (cpu0(d).mpState = -1)))).toBe('state: vcpus[0].mpState: not an integer in [0, 10]');
    expect(refusal(edited((d) => (cpu0(d).fpu = new Uint8Array(SIZEOF.kvm_fpu))))).toBe('state: vcpus[0]: exactly one of xsave and fpu must be there');
    expect(refusal(edited((d) => ((d.vm as { [k: string]: StateValue }).irqchip = [])))).toBe('state: vm.irqchip: 0 chips, expected 3');
    expect(refusal(edited((d) => ((d.devices as { [k: string]: StateValue })['pio:other'] = {})))).toBe('state: devices.pio:other: unexpected field');
    expect(refusal(edited((d) => (d.vcpus = 'x')))).toBe('state: vcpus: not a list of at most 1024 entries');
  });
});
