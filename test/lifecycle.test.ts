// The library's lifecycle: start/stop through `import { Vm } from 'tsvmm'`, and nothing left behind.
import { describe, it, expect } from 'vitest';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { Vm } from '../src/index.js';
import { TEST_GUEST, haveKvm, guestResult } from './helpers/env.js';

function fdTargets(): string[] {
  return readdirSync('/proc/self/fd').map((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return '';
    }
  });
}
const kvmFds = () => fdTargets().filter((t) => /kvm|memfd:tsvmm/.test(t));
const threads = () => readdirSync('/proc/self/task').length;
const guestMappings = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /memfd:tsvmm|kvm-vcpu/.test(l));

describe.runIf(haveKvm())('Vm lifecycle', () => {
  it('leaves no vCPU thread, KVM fd, memfd or guest mapping behind after stop()', async () => {
    // warm-up run: lets Node create its lazily started helper threads before we count
    const warm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=hello', memory: '32M' });
    await warm.start();
    await warm.exited;
    const threadsBefore = threads();
    expect(kvmFds()).toEqual([]);

    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=hang', memory: '64M', cpus: 2 });
    let out = '';
    const hanging = new Promise<void>((resolve) =>
      vm.serial.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('hanging')) resolve();
      }),
    );
    await vm.start();
    expect(vm.running).toBe(true);
    expect(kvmFds().length).toBeGreaterThanOrEqual(4); // /dev/kvm, the VM, 2 vCPUs, the memfd
    expect(guestMappings().length).toBeGreaterThan(0);
    expect(threads()).toBeGreaterThanOrEqual(threadsBefore + 2);
    await hanging;

    const exit = await vm.stop();
    expect(exit).toMatchObject({ reason: 'stopped' });
    expect(vm.running).toBe(false);
    expect(kvmFds()).toEqual([]);
    expect(guestMappings()).toEqual([]);
    // worker threads are joined shortly after their exit event
    for (let i = 0; i < 50 && threads() > threadsBefore; i++) await new Promise((r) => setTimeout(r, 20));
    expect(threads()).toBeLessThanOrEqual(threadsBefore);
    // stop() again is harmless and reports the same end
    expect(await vm.stop()).toBe(exit);
  });

  it('exposes the serial console as a stream that ends with the VM', async () => {
    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=hello', memory: '32M' });
    const chunks: Buffer[] = [];
    vm.serial.on('data', (d: Buffer) => chunks.push(d));
    const ended = new Promise((r) => vm.serial.on('end', r));
    await vm.start();
    const exit = await vm.exited;
    await ended;
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0 });
    expect(guestResult(Buffer.concat(chunks).toString())).toMatchObject({ ok: true });
  });

  it('cleans up after a start that fails', async () => {
    const vm = new Vm({ kernel: TEST_GUEST, memory: '32M', cpus: 1000 });
    await expect(vm.start()).rejects.toThrow(/--cpus/);
    expect(kvmFds()).toEqual([]);
    await expect(vm.start()).rejects.toThrow(/once/);
  });
});
