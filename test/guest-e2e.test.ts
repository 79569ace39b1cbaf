// The test guest on real KVM through the library: boot, CPL3, memory map, serial in and out, exceptions,
// reset, SMP, and stop() of a guest that never ends.
import { describe, it, expect } from 'vitest';
import { runGuest } from './helpers/vm.js';
import { Vm } from '../src/index.js';
import { native, EFD_NONBLOCK } from '../src/native.js';
import { msiFor } from '../src/vmm/irq-routing.js';
import { TEST_GUEST, TEST_GUEST_BZIMAGE, guestResult, haveKvm } from './helpers/env.js';
import { e820Map } from '../src/boot/e820.js';

const MiB = 1024 * 1024;

describe.runIf(haveKvm())('test guest under tsvmm', () => {
  it('boots through PVH, drops to CPL3, sees our memory map and powers off with status 0', async () => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=hello', memory: '256M' });
    const r = guestResult(output);
    expect(r, output).toBeDefined();
    expect(r).toMatchObject({ mode: 'hello', cpl: 3, ok: true, cmdline: 'mode=hello' });
    expect(r!.memmap).toEqual(e820Map(256 * MiB).map((e) => [e.addr, e.size, e.type]));
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0 });
  });

  it.each([
    ['PVH ELF', TEST_GUEST],
    ['bzImage (64-bit boot protocol)', TEST_GUEST_BZIMAGE],
  ])('loads an initrd next to the %s and hands it over intact', async (_name, kernel) => {
    const initrd = new Uint8Array(3 * MiB + 123);
    for (let i = 0; i < initrd.length; i++) initrd[i] = (i * 7 + (i >> 11)) & 0xff;
    const sum = initrd.reduce((s, b) => (s + b) >>> 0, 0);
    const { output, exit } = await runGuest({ kernel, initrd, cmdline: 'mode=hello extra=words', memory: '128M' });
    const r = guestResult(output);
    expect(r, output).toMatchObject({ mode: 'hello', cpl: 3, ok: true, cmdline: 'mode=hello extra=words', initrd_size: initrd.length, initrd_sum: sum });
    expect(r!.memmap).toEqual(e820Map(128 * MiB).map((e) => [e.addr, e.size, e.type]));
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0 });
  });

  it('splits RAM around the PCI hole: 4 GiB of guest memory is 3 GiB low plus 1 GiB above 4 GiB', async () => {
    const { output } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=hello', memory: '4G' });
    const r = guestResult(output);
    expect(r!.memmap).toEqual(e820Map(4096 * MiB).map((e) => [e.addr, e.size, e.type]));
    expect((r!.memmap as number[][]).at(-1)).toEqual([4096 * MiB, 1024 * MiB, 1]);
  });

  it('boots the bzImage build with two vCPUs', async () => {
    const { output } = await runGuest({ kernel: TEST_GUEST_BZIMAGE, cmdline: 'mode=smp', memory: '64M', cpus: 2 });
    expect(guestResult(output)).toMatchObject({ mode: 'smp', cpus: 2, cpus_up: 2, ok: true });
  });

  it('reads and writes every page of its RAM (memory table and KVM slots agree)', async () => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=memtest', memory: '64M' });
    const r = guestResult(output);
    expect(r).toMatchObject({ mode: 'memtest', ok: true });
    expect(Number(r!.bytes)).toBeGreaterThan((60 * MiB) / 256 * 8 * 0.9);
    expect(exit.status).toBe(0);
  });

  it('takes interrupts from an irqfd through an MSI route and from KVM_SIGNAL_MSI', async () => {
    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=irq irqs=5', memory: '64M' });
    const efd = native.eventfd(0, EFD_NONBLOCK);
    let out = '';
    let gsi = -1;
    const delivered: number[] = [];
    const one = new BigUint64Array([1n]);
    const fire = (n: number) => {
      // interrupts 1-3 through the irqfd (no vCPU exit, no ioctl), 4-5 through KVM_SIGNAL_MSI
      if (n <= 3) native.write(efd, one);
      else delivered.push(vm.vm.signalMsi(msiFor(0, 0x40).addressLo, 0, 0x40));
    };
    vm.serial.on('data', (d: Buffer) => {
      const before = out;
      out += d.toString();
      if (!before.includes('IRQ-READY') && out.includes('IRQ-READY')) {
        gsi = vm.irqRoutes.addMsi(msiFor(0, 0x40));
        vm.vm.irqfd(efd, gsi);
        fire(1);
      }
      for (let n = 1; n < 5; n++) if (!before.includes(`IRQ ${n}\n`) && out.includes(`IRQ ${n}\n`)) fire(n + 1);
    });
    await vm.start();
    const exit = await vm.exited;
    native.close(efd);
    expect(gsi).toBeGreaterThanOrEqual(24);
    expect(out).toMatch(/IRQ 1\nIRQ 2\nIRQ 3\nIRQ 4\nIRQ 5\n/);
    expect(guestResult(out)).toMatchObject({ mode: 'irq', irqs: 5, ok: true });
    expect(delivered).toEqual([1, 1]);
    expect(exit.status).toBe(0);
  });

  it('tracks the pages the guest writes in KVM\'s dirty log', async () => {
    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=dirty', memory: '64M' });
    let out = '';
    let dirty: number[] = [];
    let before: number[] = [];
    vm.serial.on('data', (d: Buffer) => {
      const prev = out;
      out += d.toString();
      if (!prev.includes('DIRTY-READY') && out.includes('DIRTY-READY')) {
        void vm.enableDirtyLog(); // (the vCPUs' log is on when it returns; the devices' once it resolves)
        before = vm.takeDirtyPages();
        vm.sendSerial('g');
      }
      if (!prev.includes('DIRTY-DONE') && out.includes('DIRTY-DONE')) {
        dirty = vm.takeDirtyPages();
        void vm.stop();
      }
    });
    await vm.start();
    await vm.exited;
    const inRange = dirty.filter((a) => a >= 16 * MiB && a < 17 * MiB);
    expect(inRange).toHaveLength(256);
    expect(before.filter((a) => a >= 16 * MiB && a < 17 * MiB)).toEqual([]);
    // nothing the guest did not touch: its image, stacks and the pages it wrote, all below 17 MiB
    expect(dirty.every((a) => a < 17 * MiB)).toBe(true);
  });

  it('receives serial input', async () => {
    let sent = false;
    const { output } = await runGuest(
      { kernel: TEST_GUEST, cmdline: 'mode=echo', memory: '64M' },
      {
        onOutput: (all, vm) => {
          if (!sent && all.includes('READY')) {
            sent = true;
            vm.sendSerial('hello from the host\n');
          }
        },
      },
    );
    expect(guestResult(output)).toMatchObject({ mode: 'echo', line: 'hello from the host', ok: true });
  });

  it('reports a guest exception through its own handler', async () => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=fault', memory: '64M' });
    expect(output).toMatch(/TSVMM-GUEST EXCEPTION 0x06/);
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0x7f });
  });

  it('ends the VM when the guest pulses the i8042 reset line', async () => {
    const { exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=reset', memory: '64M' });
    expect(exit).toMatchObject({ reason: 'reset', detail: 'i8042 reset pulse' });
  });

  it.each([1, 2, 4])('starts %i vCPUs: the guest counts them in the MADT and brings its APs up with INIT-SIPI-SIPI', async (cpus) => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=smp', memory: '64M', cpus });
    expect(guestResult(output), output).toMatchObject({ mode: 'smp', cpus, cpus_up: cpus, ok: true });
    expect(exit.status).toBe(0);
  });

  it('dispatches CPL3 MMIO to a bus device and lets an ioeventfd absorb writes without an exit', async () => {
    const BASE = 0x30000000;
    const seen: string[] = [];
    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=mmio', memory: '64M' });
    vm.mmio.register(BASE, 0x1000, {
      read: (off, size) => (seen.push(`r${off}/${size}`), 0xcafe0000 + off),
      write: (off, size, v) => void seen.push(`w${off}/${size}=${v.toString(16)}`),
    }, 'test-device');
    let out = '';
    let told = false;
    const efd = native.eventfd(0, EFD_NONBLOCK);
    vm.serial.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('MMIO-READY') && !told) {
        vm.vm.ioeventfd({ fd: efd, addr: BASE + 0x100, len: 4 });
        told = true; // a flag, not a mark in `out`: the guest's result line must stay whole
        vm.sendSerial('g');
      }
    });
    await vm.start();
    const exit = await vm.exited;
    const counter = new BigUint64Array(1);
    expect(native.read(efd, counter)).toBe(8);
    native.close(efd);
    expect(exit.status).toBe(0);
    expect(guestResult(out)).toMatchObject({ mode: 'mmio', read: 0xcafe0004, ok: true });
    // the 8-byte store arrives as two 4-byte halves; the ioeventfd writes never reach the device
    expect(seen).toEqual(['w0/4=11111111', 'w0/4=22222222', 'w16/4=55667788', 'w20/4=11223344', 'w32/1=5a', 'r4/4']);
    expect(counter[0]).toBe(16n);
  });

  it('stops a guest that never ends', async () => {
    const { output, exit } = await runGuest(
      { kernel: TEST_GUEST, cmdline: 'mode=hang', memory: '64M', cpus: 2 },
      { onOutput: (all, vm) => all.includes('hanging') && void vm.stop() },
    );
    expect(output).toContain('hanging');
    expect(exit).toMatchObject({ reason: 'stopped' });
  });
});
