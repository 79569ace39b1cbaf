// The virtio-rng device model on tsvmm's virtio-pci transport, without KVM: a fake platform stands in
// for KVM's ioeventfd and irqfd registration (it hands the test the queue's kick eventfd), a scripted
// guest driver brings the device up through the BAR registers and puts requests on a split ring, and
// the device's dataplane thread fills them.
import { describe, it, expect } from 'vitest';
import { VirtioPciDevice, NOTIFY_OFF, type PciPlatform } from '../src/vmm/devices/virtio-pci.js';
import { PCI_CMD_MASTER, PCI_CMD_MEM } from '../src/vmm/devices/pci.js';
import { Bus } from '../src/vmm/bus.js';
import { STATUS } from '../src/virtio/device.js';
import { VirtioRng, VIRTIO_ID_RNG } from '../src/virtio-rng/device.js';
import type { GuestMemory } from '../src/vmm/memory.js';
import { native, ONE } from '../src/native.js';
import { TestMemory } from './helpers/virtq-driver.js';
import { RING_LAYOUTS, type RingDriver } from './helpers/ring-driver.js';

const BAR = 0xc0000000;

/** KVM's part as the transport sees it: the kick eventfd of each notify address is kept for the test. */
function fakePlatform() {
  const kicks = new Map<number, number>();
  let gsi = 24;
  const platform = {
    mmio: new Bus('mmio'),
    vm: {
      ioeventfd: (o: { fd: number; addr: number; deassign?: boolean }) => {
        if (o.deassign) kicks.delete(o.addr);
        else kicks.set(o.addr, o.fd);
      },
      irqfd: () => {},
    },
    router: { addMsi: () => gsi++, updateMsi: () => {} },
  };
  return { platform: platform as unknown as PciPlatform, kicks };
}

const until = async (what: () => boolean) => {
  for (let i = 0; i < 500 && !what(); i++) await new Promise((r) => setTimeout(r, 10));
};

/**
 * A driver's start (virtio 1.x §3.1.1): features VERSION_1, INDIRECT_DESC and for a packed ring
 * RING_PACKED, queue 0 on `drv`'s ring of `size`.
 */
function start(pci: VirtioPciDevice, drv: RingDriver, size: number, packed: boolean): void {
  const w = (off: number, size: number, v: number) => pci.write(off, size, v);
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  w(0x08, 4, 0);
  w(0x0c, 4, 1 << 28);
  w(0x08, 4, 1);
  w(0x0c, 4, packed ? 1 | (1 << 2) : 1);
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
  w(0x16, 2, 0);
  w(0x18, 2, size);
  w(0x20, 4, drv.cfg.desc);
  w(0x24, 4, 0);
  w(0x28, 4, drv.cfg.avail);
  w(0x2c, 4, 0);
  w(0x30, 4, drv.cfg.used);
  w(0x34, 4, 0);
  w(0x1c, 2, 1);
  w(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
}

function setup(packed = true) {
  const mem = new TestMemory(4 << 20);
  const rng = new VirtioRng({ buffer: mem.buffer, table: mem.view.table } as unknown as GuestMemory, { packed });
  const { platform, kicks } = fakePlatform();
  const pci = new VirtioPciDevice(rng, platform, 0xff0000);
  pci.config.assignBar(0, BAR);
  pci.config.command = PCI_CMD_MEM | PCI_CMD_MASTER;
  const kick = () => native.write(kicks.get(BAR + NOTIFY_OFF)!, ONE);
  return { mem, rng, pci, kick };
}

describe('virtio-rng on virtio-pci', () => {
  it('is an entropy device with one queue, no configuration, and the transport features only', async () => {
    for (const packed of [true, false]) {
      const { rng, pci } = setup(packed);
      expect(pci.config.read(0x02, 2)).toBe(0x1040 + VIRTIO_ID_RNG);
      expect(rng.numQueues).toBe(1);
      expect(rng.configSize).toBe(0);
      pci.write(0x00, 4, 0);
      const lo = pci.read(0x04, 4);
      pci.write(0x00, 4, 1);
      const hi = pci.read(0x04, 4);
      // VERSION_1 (32), EVENT_IDX (29), INDIRECT_DESC (28), RING_PACKED (34) unless packed=off;
      // ACCESS_PLATFORM only behind the vIOMMU
      expect([lo >>> 0, hi]).toEqual([(1 << 28) | (1 << 29), packed ? 5 : 1]);
      await pci.close();
    }
  });

  for (const L of RING_LAYOUTS) {
    it(`fills the guest's requests from its dataplane thread once the driver is ready (${L.name} ring)`, async () => {
      const { mem, rng, pci, kick } = setup();
      const drv = L.driver(mem, 64);
      start(pci, drv, 64, L.packed);
      const bufs = [mem.alloc(4096), mem.alloc(64), mem.alloc(1000)];
      const ids = bufs.map((addr, i) => drv.add([{ addr, len: [4096, 64, 1000][i], write: true }]));
      kick();
      const used: Array<{ id: number; len: number }> = [];
      await until(() => (used.push(...drv.takeUsed()), used.length >= 3));
      expect(used).toEqual(ids.map((id, i) => ({ id, len: [4096, 64, 1000][i] })));
      expect(new Set(mem.bytes(bufs[0], 4096)).size).toBeGreaterThan(200);
      expect(rng.queueStats()).toMatchObject({ packets: 3, bytes: 4096 + 64 + 1000 });
      expect(pci.read(0x14, 1) & STATUS.NEEDS_RESET).toBe(0);
      // a device reset stops the thread; the driver starts again on a new ring and is served again
      pci.write(0x14, 1, 0);
      await until(() => pci.read(0x14, 1) === 0);
      const again = L.driver(mem, 16);
      start(pci, again, 16, L.packed);
      const id = again.add([{ addr: mem.alloc(32), len: 32, write: true }]);
      kick();
      const used2: Array<{ id: number; len: number }> = [];
      await until(() => (used2.push(...again.takeUsed()), used2.length >= 1));
      expect(used2).toEqual([{ id, len: 32 }]);
      await pci.close();
    });

    it(`a device-readable buffer in a request breaks the device (DEVICE_NEEDS_RESET), with the reason (${L.name} ring)`, async () => {
      const { mem, pci, kick } = setup();
      const drv = L.driver(mem, 64);
      start(pci, drv, 64, L.packed);
      drv.add([{ addr: mem.alloc(64), len: 64 }]);
      kick();
      await until(() => (pci.read(0x14, 1) & STATUS.NEEDS_RESET) !== 0);
      expect(pci.read(0x14, 1) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
      expect(pci.brokenReason).toContain('device-readable entropy buffer');
      expect(drv.takeUsed()).toEqual([]);
      await pci.close();
    });
  }
});
