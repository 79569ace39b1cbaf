// Vm.enableDirtyLog / takeDirtyPages must report every page whose content changed, whoever wrote it:
// the vCPUs (KVM's dirty log) and the network dataplane threads (tsvmm's own log: received frames and
// used-ring entries land in guest memory without a vCPU instruction). Checked against the truth: a
// copy of guest memory before, compared page by page with guest memory after.
import { describe, it, expect } from 'vitest';
import { Vm } from '../src/index.js';
import { TEST_GUEST, haveKvm } from './helpers/env.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.runIf(haveKvm())('dirty-page tracking', () => {
  it('reports every page that changed while the dataplane received frames into the guest', async () => {
    // the built-in null driver generates 1000-byte frames as fast as the guest posts buffers; the
    // guest receives (and checks, and counts as foreign) until stopped
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', cmdline: 'mode=net-rx count=1000000000 idle=60000', net: [{ driver: 'null', options: { size: '1000' } }] });
    let out = '';
    vm.serial.on('data', (d: Buffer) => (out += d.toString()));
    await vm.start();
    const net = vm.netDevices[0].net;
    const rx = () => net.queueStats(0).rx.packets;
    for (let i = 0; i < 500 && rx() < 1000; i++) await sleep(10);
    expect(rx()).toBeGreaterThanOrEqual(1000);

    await vm.enableDirtyLog();
    vm.takeDirtyPages();
    const mem = new Uint8Array(vm.memory.buffer);
    const before = mem.slice();
    const from = rx();
    for (let i = 0; i < 500 && rx() < from + 20000; i++) await sleep(10);
    expect(rx()).toBeGreaterThanOrEqual(from + 20000);
    // freeze the device; the vCPU runs on, so: take, copy, take again — a page the vCPU changes after
    // the first take and before the copy is in the second
    await net.pause();
    const dirty = new Set(vm.takeDirtyPages());
    const after = mem.slice();
    for (const p of vm.takeDirtyPages()) dirty.add(p);
    net.resume();
    await vm.stop();

    const changed = changedPages(vm.memory.table.regions, before, after);
    // the guest's receive buffers alone are dozens of pages
    expect(changed.length).toBeGreaterThan(16);
    expect(changed.filter((p) => !dirty.has(p)), `changed pages the log missed (of ${changed.length})`).toEqual([]);
  });

  it('reports the pages the control queue wrote (its used ring, answered on the main thread)', async () => {
    // the guest sends a control command about every million cycles; its control queue's used ring
    // has a page to itself, written only by the device
    const vm = new Vm({ kernel: TEST_GUEST, memory: '64M', cmdline: 'mode=net-tx count=1 promisc=0 ctrlloop=100000', net: [{ driver: 'null', options: { rx: '0' } }] });
    let out = '';
    vm.serial.on('data', (d: Buffer) => (out += d.toString()));
    await vm.start();
    for (let i = 0; i < 500 && !out.includes('CTRL-LOOP'); i++) await sleep(10);
    expect(out).toContain('CTRL-LOOP');
    await vm.enableDirtyLog();
    vm.takeDirtyPages();
    const mem = new Uint8Array(vm.memory.buffer);
    const before = mem.slice();
    await sleep(300);
    // commands are answered on this thread, so none lands between these synchronous steps; the vCPU's
    // writes between the first take and the copy are in the second
    const dirty = new Set(vm.takeDirtyPages());
    const after = mem.slice();
    for (const p of vm.takeDirtyPages()) dirty.add(p);
    await vm.stop();
    const changed = changedPages(vm.memory.table.regions, before, after);
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.filter((p) => !dirty.has(p)), `changed pages the log missed (of ${changed.length})`).toEqual([]);
  });
});

/** Guest-physical addresses of the pages that differ between two copies of guest memory. */
function changedPages(regions: ReadonlyArray<{ gpa: number; size: number; offset: number }>, before: Uint8Array, after: Uint8Array): number[] {
  const changed: number[] = [];
  for (const r of regions) {
    for (let page = 0; page < r.size; page += 4096) {
      const a = before.subarray(r.offset + page, r.offset + page + 4096);
      const b = after.subarray(r.offset + page, r.offset + page + 4096);
      if (!a.every((x, i) => x === b[i])) changed.push(r.gpa + page);
    }
  }
  return changed;
}
