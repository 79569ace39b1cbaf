// vm.shutdown(): the ACPI power button (the GED's interrupt and event register) pressed for the test
// guest on real KVM, which powers off when it sees it; and the deadline for a guest that does not.
import { describe, it, expect } from 'vitest';
import { Vm } from '../src/index.js';
import { ACPI_GED_GSI, ACPI_GED_PORT } from '../src/boot/acpi.js';
import { TEST_GUEST, guestResult, haveKvm } from './helpers/env.js';

/** The test guest in mode=button; `onReady` runs once it has routed the GED's interrupt. */
async function buttonGuest(extra: string, onReady: (vm: Vm) => Promise<unknown>) {
  const vm = new Vm({ kernel: TEST_GUEST, cmdline: `mode=button gsi=${ACPI_GED_GSI} port=${ACPI_GED_PORT} ${extra}`, memory: '64M' });
  let out = '';
  let during: Promise<unknown> | undefined;
  vm.serial.on('data', (d: Buffer) => {
    out += d.toString('latin1');
    if (!during && out.includes('BUTTON-READY\n')) during = onReady(vm);
  });
  await vm.start();
  const guard = setTimeout(() => void vm.stop(), 60_000);
  const exit = await vm.exited;
  clearTimeout(guard);
  await new Promise((r) => setImmediate(r));
  return { exit, out, shutdown: await during };
}

describe.runIf(haveKvm())('vm.shutdown() through the ACPI power button', () => {
  it('the guest takes the GED interrupt, reads the power-button event once, and powers off: shutdown resolves with that', async () => {
    const t0 = Date.now();
    const { exit, out, shutdown } = await buttonGuest('', (vm) => vm.shutdown({ deadlineMs: 30_000 }));
    expect(guestResult(out), out).toMatchObject({ mode: 'button', irqs: 1, events: 1, events_after: 0, ok: true });
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0, detail: 'ACPI S5 (soft off)' });
    expect(shutdown).toEqual(exit);
    expect(Date.now() - t0).toBeLessThan(30_000);
  });

  it('a guest that ignores the button is stopped once the deadline passes, and its exit says so', async () => {
    const t0 = Date.now();
    let pressedAt = 0;
    const { exit, out, shutdown } = await buttonGuest('ignore=1', (vm) => {
      pressedAt = Date.now();
      return vm.shutdown({ deadlineMs: 500 });
    });
    expect(out).toContain('BUTTON-READY');
    expect(exit.reason).toBe('stopped');
    expect(exit.detail).toMatch(/^shutdown deadline of 500 ms passed/);
    expect(shutdown).toEqual(exit);
    expect(Date.now() - pressedAt).toBeGreaterThanOrEqual(500);
    expect(Date.now() - t0).toBeLessThan(30_000);
  });

  it('refuses a bad deadline and a VM that is not running; after the end it resolves with the exit', async () => {
    const vm = new Vm({ kernel: TEST_GUEST, cmdline: 'mode=hang', memory: '64M' });
    await expect(vm.shutdown()).rejects.toThrow(/not running/);
    await vm.start();
    for (const deadlineMs of [-1, NaN, Infinity, 2 ** 31]) await expect(vm.shutdown({ deadlineMs })).rejects.toThrow(RangeError);
    expect(vm.running).toBe(true);
    const stopped = await vm.stop();
    await expect(vm.shutdown({ deadlineMs: 0 })).resolves.toEqual(stopped);
  });
});
