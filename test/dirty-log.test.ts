// Vm.enableDirtyLog / takeDirtyPages must report every page whose content changed, whoever wrote it:
// the vCPUs (KVM's dirty log) and the devices (tsvmm's own log: received frames, used-ring entries,
// control-queue acks and virtio-iommu replies land in guest memory without a vCPU instruction).
// Checked against the truth: a copy of guest memory before, compared page by page with one after.
import { describe, it, expect } from 'vitest';
import { Vm } from '../src/index.js';
import { TEST_GUEST, haveKvm } from './helpers/env.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait (up to 30 s: the emulated L1 on a loaded host is that slow) until `count()` reaches `n`. */
async function until(count: () => number, n: number): Promise<void> {
  for (let i = 0; i < 3000 && count() < n; i++) await sleep(10);
  expect(count()).toBeGreaterThanOrEqual(n);
}

/**
 * Turn dirty logging on, copy guest memory, let `work` run, then take the log and copy again. `quiesce`
 * stops the device writes the test is about (the vCPU runs on, so: take, copy, take again — a page the
 * vCPU changes after the first take and before the copy is in the second). Returns the pages that
 * changed and those the log reported.
 */
async function window(vm: Vm, work: () => Promise<void>, quiesce: () => Promise<void>): Promise<{ changed: number[]; dirty: Set<number> }> {
  await vm.enableDirtyLog();
  vm.takeDirtyPages();
  const mem = new Uint8Array(vm.memory.buffer);
  const before = mem.slice();
  await work();
  await quiesce();
  const dirty = new Set(vm.takeDirtyPages());
  const after = mem.slice();
  for (const p of vm.takeDirtyPages()) dirty.add(p);
  const changed: number[] = [];
  for (const r of vm.memory.table.regions) {
    for (let page = 0; page < r.size; page += 4096) {
      const a = before.subarray(r.offset + page, r.offset + page + 4096);
      const b = after.subarray(r.offset + page, r.offset + page + 4096);
      if (!a.every((x, i) => x === b[i])) changed.push(r.gpa + page);
    }
  }
  return { changed, dirty };
}

function expectAllLogged({ changed, dirty }: { changed: number[]; dirty: Set<number> }, atLeast: number): void {
  expect(changed.length).toBeGreaterThanOrEqual(atLeast);
  expect(changed.filter((p) => !dirty.has(p)), `changed pages the log missed (of ${changed.length})`).toEqual([]);
}

describe.runIf(haveKvm())('dirty-page tracking', () => {
  it('reports every page that changed while the dataplane received frames into the guest', async () => {
    // the built-in null driver generates 1000-byte frames as fast as the guest posts buffers; the
    // guest receives (and checks, and counts as foreign) until stopped
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', cmdline: 'mode=net-rx count=1000000000 idle=60000', net: [{ driver: 'null', options: { size: '1000' } }] });
    await vm.start();
    const net = vm.netDevices[0].net;
    const rx = () => net.queueStats(0).rx.packets;
    await until(rx, 1000);
    const r = await window(vm, () => until(rx, rx() + 20000), () => net.pause());
    net.resume();
    await vm.stop();
    // the guest's receive buffers alone are dozens of pages
    expectAllLogged(r, 17);
  });

  it('reports the pages the control queue wrote (its used ring, answered on the main thread)', async () => {
    // the guest sends a control command about every million cycles; its control queue's used ring
    // has a page to itself, written only by the device
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', cmdline: 'mode=net-tx count=1 promisc=0 ctrlloop=100000', net: [{ driver: 'null', options: { rx: '0' } }] });
    let out = '';
    vm.serial.on('data', (d: Buffer) => (out += d.toString()));
    await vm.start();
    await until(() => (out.includes('CTRL-LOOP') ? 1 : 0), 1);
    // commands are answered on this thread, so none lands between the window's synchronous steps; the
    // window lasts until two more were answered (each writes the used ring's page)
    const net = vm.netDevices[0].net;
    const r = await window(vm, () => until(() => net.controlCommands, net.controlCommands + 2), async () => {});
    await vm.stop();
    expectAllLogged(r, 1);
  });

  it('reports the pages the virtio-iommu request thread wrote (replies, its used ring)', async () => {
    // strict mode: the guest maps every receive buffer before posting it and unmaps it once used, so
    // requests flow as long as frames do
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', viommu: true, cmdline: 'mode=net-rx count=1000000000 idle=60000 iommu=strict', net: [{ driver: 'null', options: { size: '200' } }] });
    await vm.start();
    const net = vm.netDevices[0].net;
    const rx = () => net.queueStats(0).rx.packets;
    await until(rx, 200);
    // no frames, no requests: once the last ones are answered, nothing but the vCPU writes
    const r = await window(vm, () => until(rx, rx() + 500), async () => {
      await net.pause();
      await sleep(100);
    });
    net.resume();
    await vm.stop();
    expectAllLogged(r, 17);
  });
});
