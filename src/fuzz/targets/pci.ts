// Target "pci": the virtio-pci transport (VirtioPciDevice) under random guest accesses: PCI
// configuration writes (BAR placement, command register, MSI-X control), BAR writes and reads of the
// common configuration, device configuration, notification area, ISR and MSI-X table, in any size and
// alignment, with resets and device activations that succeed or fail. The platform (MMIO bus, KVM's
// ioeventfds and irqfds, the GSI router) is a recording fake that refuses what KVM would refuse; the
// device is a fake that checks what the transport hands it.
//
// Invariants: no exception escapes an access; the device is activated only with FEATURES_OK accepted,
// with features it offered and VERSION_1, with queues it has and sizes within its maximum, and never
// twice without a reset between; kicks reach it only for its queues while it is live; device config
// accesses stay in its config space; the same ioeventfd or irqfd is never assigned twice; closing the
// transport closes every descriptor it made. The coupling to the transport is this file only.
import fc from 'fast-check';
import { VirtioPciDevice, BAR_SIZE, DEVICE_OFF, NOTIFY_OFF, MSIX_TABLE_OFF, ISR_OFF } from '../../vmm/devices/virtio-pci.js';
import { STATUS, VIRTIO_F_VERSION_1, type Activation, type VirtioDevice } from '../../virtio/device.js';
import { Bus } from '../../vmm/bus.js';
import type { PciPlatform } from '../../vmm/devices/virtio-pci.js';
import { check, openFds, openFdsSettled, type FuzzTarget } from '../target.js';

/** A device that checks what the transport does with it. */
class CheckedDevice implements VirtioDevice {
  readonly deviceType = 1;
  active = false;
  activations = 0;
  problem: string | undefined;
  constructor(
    readonly numQueues: number,
    readonly maxQueueSize: number,
    readonly features: bigint,
    readonly configSize: number,
    private readonly exitKicked: number,
    private readonly failActivation: boolean,
  ) {}
  private fail(why: string): void {
    this.problem ??= why;
  }
  readConfig(offset: number, size: number): number {
    if (!(offset >= 0 && offset < this.configSize && [1, 2, 4, 8].includes(size))) this.fail(`config read at ${offset} size ${size} (config space ${this.configSize})`);
    return 0;
  }
  writeConfig(offset: number, size: number): void {
    if (!(offset >= 0 && offset < this.configSize && [1, 2, 4, 8].includes(size))) this.fail(`config write at ${offset} size ${size} (config space ${this.configSize})`);
  }
  kickedByExit(q: number): boolean {
    return q === this.exitKicked;
  }
  kick(q: number): void {
    if (!this.active) this.fail(`kick of queue ${q} while the device is not live`);
    if (!(Number.isInteger(q) && q >= 0 && q < this.numQueues)) this.fail(`kick of queue ${q} of ${this.numQueues}`);
  }
  async activate(a: Activation): Promise<void> {
    if (this.active) this.fail('activated again without a reset');
    this.active = true;
    this.activations++;
    if (a.features & ~this.features) this.fail(`activated with features 0x${a.features.toString(16)} not offered`);
    if (!((a.features >> BigInt(VIRTIO_F_VERSION_1)) & 1n)) this.fail('activated without VERSION_1');
    for (const q of a.queues) {
      if (!(q.index >= 0 && q.index < this.numQueues)) this.fail(`activated with queue ${q.index}`);
      if (q.size > this.maxQueueSize) this.fail(`queue ${q.index} of size ${q.size} (maximum ${this.maxQueueSize})`);
    }
    if (this.failActivation) throw new Error('the fake device refuses this activation');
  }
  async reset(): Promise<void> {
    await Promise.resolve();
    this.active = false;
  }
}

/** MMIO bus, KVM and router as the transport sees them, refusing what KVM refuses. */
class FakePlatform {
  readonly mmio = new Bus('mmio');
  readonly ioeventfds = new Set<string>();
  readonly irqfds = new Set<number>();
  problem: string | undefined;
  private gsi = 24;
  routes = 0;
  constructor(private readonly maxRoutes: number) {
    // another device's range, for placements that overlap it
    this.mmio.register(0xe0000000, 0x10000, { read: () => 0, write: () => {} }, 'other');
  }
  readonly vm = {
    ioeventfd: (o: { fd: number; addr: number; len: number; deassign?: boolean }) => {
      const key = `${o.addr}`;
      if (o.deassign) {
        if (!this.ioeventfds.delete(key)) throw new Error('ENOENT: no such ioeventfd');
      } else {
        if (this.ioeventfds.has(key)) this.problem ??= `ioeventfd at 0x${o.addr.toString(16)} assigned twice`;
        if (o.addr >= 0xd0000000 && o.addr < 0xd0010000) throw new Error('EEXIST: KVM has an ioeventfd there');
        this.ioeventfds.add(key);
      }
    },
    irqfd: (fd: number, _gsi: number, deassign = false) => {
      if (deassign) {
        if (!this.irqfds.delete(fd)) this.problem ??= `irqfd ${fd} deassigned but not assigned`;
      } else {
        if (this.irqfds.has(fd)) this.problem ??= `irqfd ${fd} assigned twice`;
        this.irqfds.add(fd);
      }
    },
  };
  readonly router = {
    addMsi: () => {
      if (this.routes >= this.maxRoutes) throw new Error('GSI routing table full');
      this.routes++;
      return this.gsi++;
    },
    updateMsi: () => {},
  };
}

// (the sizes an MMIO exit has)
const size = fc.constantFrom(1, 2, 4, 8);
const barWrite = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.integer({ min: 0, max: 0x3f }), size, fc.oneof(fc.nat(16), fc.constantFrom(1, 3, 7, 11, 15, 0x8f, 0xff), fc.nat())) },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: DEVICE_OFF - 4, max: DEVICE_OFF + 24 }), size, fc.nat()) },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: NOTIFY_OFF - 2, max: NOTIFY_OFF + 24 }), size, fc.nat(8)) },
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: MSIX_TABLE_OFF, max: MSIX_TABLE_OFF + 96 }), size, fc.oneof(fc.constant(0xfee00000), fc.nat(1), fc.nat())) },
  { weight: 1, arbitrary: fc.tuple(fc.constant(ISR_OFF), size, fc.nat()) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 0, max: BAR_SIZE + 16 }), size, fc.nat()) },
);
const opArb = fc.oneof(
  { weight: 8, arbitrary: barWrite.map(([offset, sz, value]) => ({ k: 'w' as const, offset, size: sz, value })) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('r' as const), offset: fc.oneof(fc.integer({ min: 0, max: 0x3f }), fc.integer({ min: 0, max: BAR_SIZE + 16 })), size }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('cfg' as const), offset: fc.oneof(fc.constantFrom(0x04, 0x10, 0x14), fc.integer({ min: 0x40, max: 0x80 }), fc.nat(260)), size: fc.constantFrom(1, 2, 4), value: fc.oneof(fc.constantFrom(0, 2, 6, 0xe0000000, 0xd0000000, 0xc0000000, 0x8000, 0xc000, 0xffffffff), fc.nat()) }) },
  { weight: 1, arbitrary: fc.constant({ k: 'settle' as const }) },
  // a driver's usual start: features, FEATURES_OK, queue 0 enabled, DRIVER_OK
  { weight: 1, arbitrary: fc.constant({ k: 'start' as const }) },
);

export const pciCase = fc.record({
  queues: fc.integer({ min: 1, max: 5 }),
  maxLog: fc.integer({ min: 0, max: 15 }),
  features: fc.bigInt({ min: 0n, max: (1n << 40n) - 1n }),
  configSize: fc.nat(24),
  exitKicked: fc.integer({ min: -1, max: 4 }),
  failActivation: fc.boolean(),
  maxRoutes: fc.nat(8),
  ops: fc.array(opArb, { maxLength: 30 }),
});
export type PciCase = typeof pciCase extends fc.Arbitrary<infer T> ? T : never;

export class PciTarget implements FuzzTarget {
  readonly name = 'pci';
  readonly about = 'PCI configuration and BAR accesses of any size and place, resets, activations that fail';
  readonly weight = 1;
  readonly counts = { cases: 0, accesses: 0, activations: 0 };

  property(): fc.IAsyncPropertyWithHooks<[PciCase]> {
    return fc.asyncProperty(pciCase, (c) => this.run(c));
  }

  async run(c: PciCase): Promise<void> {
    const before = openFds();
    this.counts.cases++;
    const dev = new CheckedDevice(c.queues, 1 << c.maxLog, c.features | (1n << BigInt(VIRTIO_F_VERSION_1)), c.configSize, c.exitKicked, c.failActivation);
    const p = new FakePlatform(c.maxRoutes);
    const pci = new VirtioPciDevice(dev, p as unknown as PciPlatform, 0x020000);
    try {
      for (const op of c.ops) {
        this.counts.accesses++;
        if (op.k === 'w') pci.write(op.offset, op.size, op.value >>> 0);
        else if (op.k === 'r') pci.read(op.offset, op.size);
        else if (op.k === 'cfg') pci.config.write(op.offset, op.size, op.value >>> 0);
        else if (op.k === 'settle') await new Promise((r) => setImmediate(r));
        else {
          pci.write(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
          pci.write(0x08, 4, 1);
          pci.write(0x0c, 4, 1);
          pci.write(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
          pci.write(0x16, 2, 0);
          pci.write(0x1c, 2, 1);
          pci.write(0x14, 1, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK);
        }
        check(!dev.problem, () => dev.problem!);
        check(!p.problem, () => p.problem!);
      }
    } finally {
      await pci.close();
    }
    this.counts.activations += dev.activations;
    const after = await openFdsSettled(before);
    check(after <= before, () => `the transport left ${after - before} descriptors open`);
  }
}
