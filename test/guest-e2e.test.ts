// The test guest on real KVM through the library: boot, CPL3, memory map, serial in and out, exceptions,
// reset, SMP, and stop() of a guest that never ends.
import { describe, it, expect } from 'vitest';
import { runGuest } from './helpers/vm.js';
import { TEST_GUEST, guestResult, haveKvm } from './helpers/env.js';
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

  it('reads and writes every page of its RAM (memory table and KVM slots agree)', async () => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=memtest', memory: '64M' });
    const r = guestResult(output);
    expect(r).toMatchObject({ mode: 'memtest', ok: true });
    expect(Number(r!.bytes)).toBeGreaterThan((60 * MiB) / 256 * 8 * 0.9);
    expect(exit.status).toBe(0);
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

  it('runs with two vCPUs (the APs wait for SIPI, the BSP runs the guest)', async () => {
    const { output, exit } = await runGuest({ kernel: TEST_GUEST, cmdline: 'mode=hello', memory: '64M', cpus: 2 });
    expect(guestResult(output)).toMatchObject({ ok: true });
    expect(exit.status).toBe(0);
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
