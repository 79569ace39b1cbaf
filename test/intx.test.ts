// INTx without KVM: the line (src/vmm/devices/intx.ts) and the transport's wiring of interrupt sources
// (virtio-pci-irq.ts) with real eventfds and the event loop's fd watches; a recording fake stands in
// for KVM_IRQFD, and the tests play KVM's part: they read the trigger eventfd (an assertion) and write
// the resample eventfd (the guest's EOI).
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { native, ONE } from '../src/native.js';
import { Bus } from '../src/vmm/bus.js';
import { IntxLine } from '../src/vmm/devices/intx.js';
import { VirtioPciDevice, ISR_OFF, ISR_QUEUE, ISR_CONFIG } from '../src/vmm/devices/virtio-pci.js';
import { PCI_CMD_MEM, PCI_CMD_INTX_DISABLE } from '../src/vmm/devices/pci.js';
import type { Activation, VirtioDevice } from '../src/virtio/device.js';
import type { VmFd } from '../src/vmm/kvm.js';
import type { GsiRouter } from '../src/vmm/irq-routing.js';

/** KVM_IRQFD as a record: fd → gsi (and its resample fd) while assigned. */
function fakeKvm() {
  const irqfds = new Map<number, { gsi: number; resampleFd?: number }>();
  const log: string[] = [];
  const vm = {
    ioeventfd: () => {},
    irqfd: (fd: number, gsi: number, deassign = false, resampleFd?: number) => {
      if (deassign) {
        if (!irqfds.delete(fd)) throw new Error(`irqfd ${fd} not assigned`);
        log.push(`unirqfd ${gsi}`);
      } else {
        if (irqfds.has(fd)) throw new Error(`irqfd ${fd} assigned twice`);
        irqfds.set(fd, { gsi, resampleFd });
        log.push(`irqfd ${gsi}${resampleFd !== undefined ? ' resample' : ''}`);
      }
    },
  };
  return { vm, irqfds, log };
}

const counter = new BigUint64Array(1);
/** What KVM took from an eventfd: the count written since the last read (0: none). */
const take = (fd: number) => (native.read(fd, counter) === 8 ? Number(counter[0]) : 0);
/** Readable without reading it (POLLIN). */
const readable = (fd: number) => native.poll(fd, 1, 0) > 0;
const tick = () => new Promise((res) => setImmediate(res));
/** Event-loop turns until `cond` holds (at most 200: the watches run on this loop). */
async function turnsUntil(cond: () => boolean): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (cond()) return true;
    await tick();
  }
  return false;
}
/** Write an eventfd from another thread, as a dataplane thread signals its call fd. */
const writeFromWorker = (fd: number) =>
  new Promise<void>((res, rej) => {
    const t = new Worker(`const { workerData } = require('node:worker_threads'); require(${JSON.stringify(new URL('../build/Release/tsvmm_native.node', import.meta.url).pathname)}).write(workerData, new BigUint64Array([1n]));`, { eval: true, workerData: fd });
    t.once('exit', () => res());
    t.once('error', rej);
  });

describe('INTx line (level-triggered irqfd with resample)', () => {
  it('a source sets its ISR bit and asserts; the EOI re-asserts only while ISR is set', async () => {
    const kvm = fakeKvm();
    const isr = new Int32Array(new SharedArrayBuffer(4));
    const line = new IntxLine(kvm.vm, 17, isr);
    const src = native.eventfd(0, 0o4000);
    try {
      line.enable();
      expect(kvm.irqfds.get(line.triggerFd)).toEqual({ gsi: 17, resampleFd: line.resampleFd });
      line.attach(src, ISR_QUEUE);
      await writeFromWorker(src);
      expect(await turnsUntil(() => Atomics.load(isr, 0) !== 0)).toBe(true);
      expect(Atomics.load(isr, 0)).toBe(ISR_QUEUE);
      expect(take(line.triggerFd)).toBe(1); // asserted once
      // the guest's handler reads ISR (read-to-clear), then EOIs: nothing pending, the line stays down
      expect(Atomics.exchange(isr, 0, 0)).toBe(ISR_QUEUE);
      native.write(line.resampleFd, ONE);
      expect(await turnsUntil(() => !readable(line.resampleFd))).toBe(true); // the line took the EOI
      expect(line.reasserted).toBe(0);
      expect(take(line.triggerFd)).toBe(0);
      // a source fires between the ISR read and the EOI: its assertion is lost in the asserted line,
      // and the EOI's resample asserts again because ISR says so
      await writeFromWorker(src);
      expect(await turnsUntil(() => line.raised === 2)).toBe(true);
      take(line.triggerFd); // (KVM: the line was still asserted, nothing delivered)
      native.write(line.resampleFd, ONE);
      expect(await turnsUntil(() => line.reasserted === 1)).toBe(true);
      expect(take(line.triggerFd)).toBe(1);
      expect(Atomics.exchange(isr, 0, 0)).toBe(ISR_QUEUE);
      // disabled: the irqfd goes (KVM deasserts), sources are no longer watched
      line.disable();
      expect(kvm.irqfds.has(line.triggerFd)).toBe(false);
      native.write(src, ONE);
      for (let i = 0; i < 5; i++) await tick();
      expect(Atomics.load(isr, 0)).toBe(0);
      expect(take(src)).toBe(1); // still in the source's eventfd
    } finally {
      line.close();
      native.close(src);
    }
  });

  it('enabling a line whose ISR is already set asserts it at once', () => {
    const kvm = fakeKvm();
    const isr = new Int32Array(new SharedArrayBuffer(4));
    const line = new IntxLine(kvm.vm, 18, isr);
    try {
      line.raise(ISR_CONFIG); // not wired yet: the bit waits
      expect(take(line.triggerFd)).toBe(0);
      line.enable();
      expect(take(line.triggerFd)).toBe(1);
      expect(Atomics.load(isr, 0)).toBe(ISR_CONFIG);
    } finally {
      line.close();
    }
  });
});

function transport(intxGsi: number | undefined) {
  const kvm = fakeKvm();
  let next = 24;
  const router = { addMsi: () => next++, updateMsi: () => {} } as unknown as GsiRouter;
  const activations: Activation[] = [];
  const device: VirtioDevice = {
    deviceType: 1,
    numQueues: 2,
    maxQueueSize: 256,
    features: (1n << 32n) | 1n,
    configSize: 8,
    readConfig: () => 0,
    writeConfig: () => {},
    activate: async (a) => void activations.push(a),
    reset: async () => {},
  };
  const mmio = new Bus('mmio');
  const dev = new VirtioPciDevice(device, { mmio, vm: kvm.vm as unknown as VmFd, router, intxGsi }, 0x020000);
  dev.config.assignBar(0, 0xc0000000);
  dev.config.command = PCI_CMD_MEM;
  const r = (off: number, size = 4) => Number(mmio.read(0xc0000000 + off, size));
  const w = (off: number, v: number, size = 4) => mmio.write(0xc0000000 + off, size, BigInt(v));
  const msixCap = (() => {
    for (let p = dev.config.read(0x34, 1); p; p = dev.config.read(p + 1, 1)) if (dev.config.read(p, 1) === 0x11) return p;
    throw new Error('no MSI-X capability');
  })();
  const setMsix = (on: boolean) => dev.config.write(msixCap + 2, 2, on ? 0x8000 : 0);
  const trigger = () => [...kvm.irqfds].find(([, v]) => v.resampleFd !== undefined)?.[0];
  return { dev, kvm, activations, r, w, setMsix, trigger };
}

/** A driver's start without MSI-X: both queues enabled, features, DRIVER_OK. */
async function startDriver(t: ReturnType<typeof transport>) {
  for (const q of [0, 1]) {
    t.w(0x16, q, 2);
    t.w(0x1c, 1, 2);
  }
  t.w(0x08, 1);
  t.w(0x0c, 1);
  t.w(0x14, 1 | 2 | 8 | 4, 1);
  await tick();
  return t.activations.at(-1)!;
}

describe('virtio-pci INTx', () => {
  it('has interrupt pin INTA and the line register holding its GSI; none without a line', () => {
    const t = transport(19);
    expect(t.dev.config.read(0x3d, 1)).toBe(1);
    expect(t.dev.config.read(0x3c, 1)).toBe(19);
    // out of reset INTx is live: the line's irqfd is in KVM with its resample fd
    expect(t.kvm.irqfds.get(t.trigger()!)?.gsi).toBe(19);
    const none = transport(undefined);
    expect(none.dev.config.read(0x3d, 1)).toBe(0);
    expect(none.kvm.irqfds.size).toBe(0);
    return Promise.all([t.dev.close(), none.dev.close()]);
  });

  it('without MSI-X every queue notification and configuration change sets ISR and raises the line; reading ISR clears it', async () => {
    const t = transport(17);
    try {
      const a = await startDriver(t);
      // queues without an MSI-X vector (as Linux leaves them without MSI-X) still get a call fd
      expect(a.queues.map((q) => q.callFd >= 0)).toEqual([true, true]);
      const trig = t.trigger()!;
      await writeFromWorker(a.queues[1].callFd);
      expect(await turnsUntil(() => Atomics.load(t.dev.isr, 0) !== 0)).toBe(true);
      expect(take(trig)).toBe(1);
      // the status register's Interrupt Status bit follows ISR
      expect(t.dev.config.read(0x06, 2) & 0x08).toBe(0x08);
      expect(t.r(ISR_OFF, 1)).toBe(ISR_QUEUE);
      expect(t.r(ISR_OFF, 1)).toBe(0);
      expect(t.dev.config.read(0x04, 4) & 0x080000).toBe(0);
      t.dev.configChanged();
      expect(await turnsUntil(() => take(trig) === 1)).toBe(true);
      expect(t.r(ISR_OFF, 1)).toBe(ISR_CONFIG);
    } finally {
      await t.dev.close();
    }
  });

  it('rewires the sources when the guest enables MSI-X, disables it again, or disables INTx in the command register', async () => {
    const t = transport(20);
    try {
      const a = await startDriver(t);
      const trig = t.trigger()!;
      // MSI-X: vector 0 for queue 0, vector 1 for queue 1 and for configuration changes, both programmed
      t.w(0x16, 0, 2);
      t.w(0x1a, 0, 2);
      t.w(0x16, 1, 2);
      t.w(0x1a, 1, 2);
      t.w(0x10, 1, 2);
      for (const v of [0, 1]) {
        t.w(0x4000 + 16 * v, 0xfee00000);
        t.w(0x4000 + 16 * v + 8, 0x40 + v);
        t.w(0x4000 + 16 * v + 12, 0);
      }
      // (a vector the function does not have reads back as NO_VECTOR, for the configuration vector too)
      t.w(0x10, 3, 2);
      expect(t.r(0x10, 2)).toBe(0xffff);
      t.w(0x16, 0, 2);
      t.w(0x1a, 3, 2);
      expect(t.r(0x1a, 2)).toBe(0xffff);
      t.w(0x1a, 0, 2);
      t.w(0x10, 1, 2);
      t.kvm.log.length = 0;
      t.setMsix(true);
      // the line leaves KVM; queue 0's call fd is an irqfd on vector 0's route, queue 1's and the
      // configuration's on vector 1's
      expect(t.kvm.irqfds.has(trig)).toBe(false);
      expect(t.kvm.irqfds.get(a.queues[0].callFd)?.gsi).toBe(24);
      expect(t.kvm.irqfds.get(a.queues[1].callFd)?.gsi).toBe(25);
      expect([...t.kvm.irqfds.values()].filter((v) => v.gsi === 25)).toHaveLength(2);
      // a queue notification now is KVM's (the eventfd is an irqfd): no ISR bit, no line
      native.write(a.queues[0].callFd, ONE);
      for (let i = 0; i < 5; i++) await tick();
      expect(Atomics.load(t.dev.isr, 0)).toBe(0);
      take(a.queues[0].callFd); // (KVM would have consumed it)
      // MSI-X off again: back on the line
      t.setMsix(false);
      expect(t.kvm.irqfds.get(trig)?.gsi).toBe(20);
      expect(t.kvm.irqfds.has(a.queues[0].callFd)).toBe(false);
      native.write(a.queues[0].callFd, ONE);
      expect(await turnsUntil(() => Atomics.load(t.dev.isr, 0) === ISR_QUEUE)).toBe(true);
      expect(take(trig)).toBe(1);
      t.r(ISR_OFF, 1);
      // INTx disabled (command bit 10): no line; a notification meanwhile waits and is delivered once enabled
      t.dev.config.write(0x04, 2, PCI_CMD_MEM | PCI_CMD_INTX_DISABLE);
      expect(t.kvm.irqfds.has(trig)).toBe(false);
      native.write(a.queues[1].callFd, ONE);
      for (let i = 0; i < 5; i++) await tick();
      expect(Atomics.load(t.dev.isr, 0)).toBe(0);
      t.dev.config.write(0x04, 2, PCI_CMD_MEM);
      expect(await turnsUntil(() => Atomics.load(t.dev.isr, 0) === ISR_QUEUE)).toBe(true);
      expect(take(trig)).toBe(1);
    } finally {
      await t.dev.close();
    }
  });
});
