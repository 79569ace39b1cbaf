// The same test guest image under QEMU (-accel kvm, PVH -kernel): proof that the guest follows the PVH
// ABI and PC hardware conventions rather than tsvmm's quirks.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

function qemu(cmdline: string, smp = 1) {
  const bin = which('qemu-system-x86_64');
  if (!bin) throw new Error('qemu-system-x86_64 not found: install qemu-system-x86 (.ci/run does)');
  // -cpu host minus arch-capabilities: this nested host refuses MSR 0x10a
  const r = spawnSync(
    bin,
    ['-accel', 'kvm', '-machine', 'q35', '-cpu', 'host,-arch-capabilities', '-m', '128', '-smp', String(smp), '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
      '-device', 'isa-debug-exit,iobase=0xf4,iosize=4', '-kernel', TEST_GUEST, '-append', cmdline],
    { encoding: 'latin1', timeout: 120_000 },
  );
  return { output: r.stdout + r.stderr, status: r.status };
}

describe.runIf(haveKvm())('test guest under QEMU', () => {
  it('boots through QEMU\'s PVH loader and reports success (debug-exit status (0 << 1) | 1)', () => {
    const { output, status } = qemu('mode=hello');
    expect(guestResult(output), output).toMatchObject({ mode: 'hello', cpl: 3, ok: true });
    expect(status).toBe(1);
  });
  it('finds QEMU\'s CPUs in its MADT and starts the APs', () => {
    const { output, status } = qemu('mode=smp', 2);
    expect(guestResult(output), output).toMatchObject({ mode: 'smp', cpus: 2, cpus_up: 2, ok: true });
    expect(status).toBe(1);
  });
  it('reports an exception the same way', () => {
    const { output, status } = qemu('mode=fault');
    expect(output).toMatch(/TSVMM-GUEST EXCEPTION 0x06/);
    expect(status).toBe((0x7f << 1) | 1);
  });
});
