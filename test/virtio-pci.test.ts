// The virtio-pci modern transport against a fake platform: capabilities, feature negotiation, the
// status machine and reset, queue registers, MSI-X vectors becoming GSI routes and irqfds.
import { describe, it, expect } from 'vitest';
import { Bus } from '../src/vmm/bus.js';
import { VirtioPciDevice, BAR_SIZE, NOTIFY_OFF, ISR_OFF, ISR_QUEUE, ISR_CONFIG } from '../src/vmm/devices/virtio-pci.js';
import { Worker } from 'node:worker_threads';
import { STATUS, type Activation, type VirtioDevice } from '../src/virtio/device.js';
import { PCI_CMD_MEM } from '../src/vmm/devices/pci.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GsiRouter, MsiMessage } from '../src/vmm/irq-routing.js';

function fakes() {
  const calls: string[] = [];
  const vm = {
    ioeventfd: (o: { addr: number; deassign?: boolean }) => calls.push(`${o.deassign ? 'un' : ''}ioeventfd 0x${o.addr.toString(16)}`),
    irqfd: (_fd: number, gsi: number, deassign = false) => calls.push(`${deassign ? 'un' : ''}irqfd ${gsi}`),
  } as unknown as VmFd;
  let next = 24;
  const router = {
    addMsi: (m: MsiMessage) => (calls.push(`route ${next} ${m.addressLo.toString(16)}/${m.data}`), next++),
    updateMsi: (g: number, m: MsiMessage) => calls.push(`reroute ${g} ${m.addressLo.toString(16)}/${m.data}`),
  } as unknown as GsiRouter;
  const activations: Activation[] = [];
  let resets = 0;
  const device: VirtioDevice = {
    deviceType: 1,
    numQueues: 3,
    maxQueueSize: 256,
    features: (1n << 32n) | (1n << 29n) | 1n,
    configSize: 8,
    readConfig: (off) => 0x10 + off,
    writeConfig: () => {},
    kickedByExit: (q) => q === 2,
    kick: (q) => void calls.push(`kick ${q}`),
    activate: async (a) => void activations.push(a),
    reset: async () => void resets++,
  };
  const mmio = new Bus('mmio');
  const dev = new VirtioPciDevice(device, { mmio, vm, router }, 0x020000);
  dev.config.assignBar(0, 0xc0000000);
  dev.config.command = PCI_CMD_MEM;
  const r = (off: number, size = 4) => Number(mmio.read(0xc0000000 + off, size));
  const w = (off: number, v: number, size = 4) => mmio.write(0xc0000000 + off, size, BigInt(v));
  return { dev, calls, activations, resets: () => resets, r, w, mmio };
}

const tick = () => new Promise((res) => setImmediate(res));

describe('virtio-pci modern transport', () => {
  it('lists the virtio capabilities and MSI-X in configuration space', () => {
    const { dev } = fakes();
    const caps: Array<[number, number]> = [];
    for (let p = dev.config.read(0x34, 1); p; p = dev.config.read(p + 1, 1)) caps.push([dev.config.read(p, 1), dev.config.read(p + 3, 1)]);
    // vendor-specific caps of type common(1), notify(2), ISR(3), device(4); then MSI-X (0x11)
    expect(caps.slice(0, 4)).toEqual([[9, 1], [9, 2], [9, 3], [9, 4]]);
    expect(caps[4][0]).toBe(0x11);
    expect(dev.config.read(0x00, 4)).toBe(0x10411af4);
  });

  it('maps its BAR and one ioeventfd per queue, except queues kicked by exit', () => {
    const { calls } = fakes();
    expect(calls).toEqual([`ioeventfd 0x${(0xc0000000 + NOTIFY_OFF).toString(16)}`, `ioeventfd 0x${(0xc0000000 + NOTIFY_OFF + 4).toString(16)}`]);
  });

  it('negotiates features: a subset with VERSION_1, else FEATURES_OK is refused', () => {
    const { r, w } = fakes();
    w(0x00, 1);
    expect(r(0x04)).toBe(1); // VERSION_1 is bit 32
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER, 1);
    w(0x08, 0);
    w(0x0c, 1 << 5); // a feature we do not offer
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
    expect(r(0x14, 1) & STATUS.FEATURES_OK).toBe(0);
    w(0x08, 0);
    w(0x0c, 1);
    w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
    expect(r(0x14, 1) & STATUS.FEATURES_OK).toBe(STATUS.FEATURES_OK);
    // without VERSION_1 it is refused too
    const t = fakes();
    t.w(0x08, 0);
    t.w(0x0c, 1);
    t.w(0x14, STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK, 1);
    expect(t.r(0x14, 1) & STATUS.FEATURES_OK).toBe(0);
  });

  it('takes queue registers before DRIVER_OK, activates with them, and freezes them after', async () => {
    const { r, w, activations } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8, 1);
    w(0x16, 0, 2);
    expect(r(0x18, 2)).toBe(256);
    w(0x18, 128, 2);
    w(0x20, 0x10000);
    w(0x24, 0);
    w(0x28, 0x11000);
    w(0x30, 0x12000);
    w(0x1a, 0, 2);
    w(0x1c, 1, 2);
    w(0x1a, 99, 2); // no such vector: reads back as NO_VECTOR
    expect(r(0x1a, 2)).toBe(0xffff);
    w(0x1a, 0, 2);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    expect(activations).toHaveLength(1);
    expect(activations[0].queues).toMatchObject([{ index: 0, size: 128, desc: 0x10000, avail: 0x11000, used: 0x12000 }]);
    expect(activations[0].queues[0].callFd).toBeGreaterThan(0);
    w(0x18, 64, 2); // ignored now
    expect(r(0x18, 2)).toBe(128);
  });

  it('keeps status bits the driver leaves out: DRIVER_OK cleared and set again does not activate a live device twice', async () => {
    const { r, w, activations, resets } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x16, 0, 2);
    w(0x1c, 1, 2);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    expect(activations).toHaveLength(1);
    // (found by the pci fuzz target: only a reset, a write of 0, clears status bits)
    w(0x14, 1 | 2 | 8, 1);
    expect(r(0x14, 1) & 4).toBe(4);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    expect(activations).toHaveLength(1);
    expect(resets()).toBe(0);
  });

  it('holds a queue size the driver writes to the maximum it offers', async () => {
    const { r, w, activations } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8, 1);
    w(0x16, 0, 2);
    w(0x18, 32768, 2);
    expect(r(0x18, 2)).toBe(256);
    w(0x18, 0xffff, 2);
    expect(r(0x18, 2)).toBe(256);
    w(0x1c, 1, 2);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    expect(activations[0].queues[0].size).toBe(256);
  });

  it('resets when 0 is written: a live device reports its old status until its threads stopped', async () => {
    const { r, w, resets } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    w(0x14, 0, 1);
    expect(resets()).toBe(1);
    await tick();
    await tick();
    expect(r(0x14, 1)).toBe(0);
    expect(r(0x0c)).toBe(0); // driver features forgotten
  });

  it('turns an unmasked MSI-X vector into a GSI route and an irqfd, and masking takes it away', () => {
    const { dev, calls, w } = fakes();
    calls.length = 0;
    const table = 0x4000;
    // (a vector is wired for the interrupt sources that use it: queue 0 and the configuration change)
    w(0x16, 0, 2);
    w(0x1a, 0, 2);
    w(0x10, 0, 2);
    w(table, 0xfee00000);
    w(table + 8, 0x45);
    w(table + 12, 0); // unmask vector 0
    expect(calls).toEqual([]); // MSI-X not enabled yet
    const cap = (() => {
      for (let p = dev.config.read(0x34, 1); p; p = dev.config.read(p + 1, 1)) if (dev.config.read(p, 1) === 0x11) return p;
      return 0;
    })();
    dev.config.write(cap + 2, 2, 0x8000 | dev.config.read(cap + 2, 2));
    expect(calls).toEqual(['route 24 fee00000/69', 'irqfd 24', 'irqfd 24']);
    w(table + 12, 1); // mask
    expect(calls.slice(-2)).toEqual(['unirqfd 24', 'unirqfd 24']);
    w(table + 8, 0x46);
    w(table + 12, 0);
    expect(calls.slice(-3)).toEqual(['reroute 24 fee00000/70', 'irqfd 24', 'irqfd 24']);
  });

  it('leaves a BAR the guest places over another device undecoded instead of failing', () => {
    const { dev, mmio } = fakes();
    const other = { read: () => 0, write: () => {} };
    mmio.register(0xd0000000, 0x1000, other, 'other');
    dev.config.write(0x10, 4, 0xd0000000);
    dev.config.write(0x14, 4, 0);
    expect(dev.barConflicts).toBe(1);
    expect(mmio.find(0xd0000000)?.name).toBe('other');
    expect(mmio.find(0xc0000000)).toBeUndefined(); // the old placement is gone too
    dev.config.write(0x10, 4, 0xc8000000); // a free place decodes again
    expect(mmio.find(0xc8000000)?.name).toBe('virtio-pci-1');
  });

  it('delivers notifications of exit-kicked queues to the device, only when live', async () => {
    const { calls, w } = fakes();
    w(NOTIFY_OFF + 8, 2, 2);
    expect(calls.filter((c) => c.startsWith('kick'))).toEqual([]);
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    w(NOTIFY_OFF + 8, 2, 2);
    expect(calls.filter((c) => c.startsWith('kick'))).toEqual(['kick 2']);
  });

  it('sets DEVICE_NEEDS_RESET and bumps the generation when the device gives up on the driver', async () => {
    const { dev, r, w, activations } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    const gen = r(0x15, 1);
    activations[0].needsReset('descriptor chain too long');
    expect(r(0x14, 1) & STATUS.NEEDS_RESET).toBe(STATUS.NEEDS_RESET);
    expect(r(0x15, 1)).toBe((gen + 1) & 0xff);
    expect(r(0x1000, 1)).toBe(2); // ISR: configuration change, cleared by the read
    expect(r(0x1000, 1)).toBe(0);
    expect(dev.brokenReason).toBe('descriptor chain too long');
    expect(BAR_SIZE).toBe(0x8000);
  });
});

describe('virtio-pci ISR status', () => {
  it('returns and clears what is pending on each read: a configuration change, a queue interrupt set by another thread, both', async () => {
    const { dev, r, w } = fakes();
    w(0x08, 1);
    w(0x0c, 1);
    w(0x14, 1 | 2 | 8 | 4, 1);
    await tick();
    expect(r(ISR_OFF, 1)).toBe(0);
    dev.configChanged();
    expect(r(ISR_OFF, 1)).toBe(ISR_CONFIG);
    expect(r(ISR_OFF, 1)).toBe(0);
    // a dataplane thread raising a queue's legacy interrupt sets bit 0 in the shared word before it
    // signals the line; the vCPU's read sees it once
    const setQueueBit = (isr: Int32Array) =>
      new Promise<void>((res, rej) => {
        const t = new Worker('const { workerData } = require("node:worker_threads"); Atomics.or(workerData, 0, 1);', { eval: true, workerData: isr });
        t.once('exit', () => res());
        t.once('error', rej);
      });
    await setQueueBit(dev.isr);
    expect(r(ISR_OFF, 1)).toBe(ISR_QUEUE);
    expect(r(ISR_OFF, 1)).toBe(0);
    await setQueueBit(dev.isr);
    dev.configChanged();
    expect(r(ISR_OFF, 1)).toBe(ISR_QUEUE | ISR_CONFIG);
    expect(r(ISR_OFF, 1)).toBe(0);
    // a reset forgets what the old driver did not read
    dev.configChanged();
    w(0x14, 0, 1);
    await tick();
    expect(r(ISR_OFF, 1)).toBe(0);
  });
});
