// A vCPU's whole state through the state document on real KVM: the test guest stops at an exit, its
// vCPU, VM and device state is saved (msgpack), restored into a freshly built machine holding a copy
// of its memory, and the guest goes on there to its end with the output an uninterrupted run gives.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { BareMachine } from './helpers/bare-machine.js';
import { TEST_GUEST, guestResult, haveKvm } from './helpers/env.js';
import { saveMachine, restoreMachine } from '../src/vmm/state/machine.js';
import { STATE_VERSION } from '../src/vmm/state/document.js';
import { decode } from '@msgpack/msgpack';
import { msiFor } from '../src/vmm/irq-routing.js';

const MEM = 64 * 1024 * 1024;
const boot = () => ({ kernel: readFileSync(TEST_GUEST), cmdline: 'mode=hello' });

describe.runIf(haveKvm())('vCPU state through a state document', () => {
  it('the test guest goes on to its end in a second and a third machine', async () => {
    const ref = new BareMachine(MEM, boot());
    try {
      ref.runUntil(() => false);
    } finally {
      ref.close();
    }
    expect(ref.power).toMatch(/debug-exit port written with 0/);
    expect(guestResult(ref.output)).toMatchObject({ mode: 'hello', ok: true, cpl: 3 });

    // stopped in its banner and in the middle of its result line (the whole output is about 300 bytes)
    const pieces: string[] = [];
    let from = new BareMachine(MEM, boot());
    for (const at of [20, 150]) {
      from.runUntil(() => from.output.length >= at);
      expect(from.power, from.output).toBeUndefined();
      pieces.push(from.output);
      const doc = saveMachine(from.machine);
      const parsed = decode(doc) as { version: number; vcpus: Array<{ msrs: Uint8Array }> };
      expect(parsed.version).toBe(STATE_VERSION);
      const savedRegisters = parsed.vcpus[0].msrs;
      expect(savedRegisters.length).toBeGreaterThan(16 * 10);
      const to = new BareMachine(MEM);
      new Uint8Array(to.mem.buffer).set(new Uint8Array(from.mem.buffer));
      from.close();
      await restoreMachine(to.machine, doc);
      from = to;
    }
    try {
      from.runUntil(() => false);
    } finally {
      from.close();
    }
    expect(from.power).toMatch(/debug-exit port written with 0/);
    expect(pieces.join('') + from.output).toBe(ref.output);
  });

  it('interrupts: one pending in the LAPIC when saved is taken in the restored machine, later ones too, and the TSC goes on', async () => {
    // mode=irq spins (rdtsc-bounded) until each MSI of vector 0x40 arrives and prints "IRQ n"; the
    // test sends the next MSI once the guest said it is ready or printed a line, before it runs again
    const WANT = 5;
    const cmdline = `mode=irq irqs=${WANT}`;
    let before = '';
    let sent = 0;
    const arm = (m: BareMachine) => {
      m.afterExit = () => {
        const lines = (before + m.output).match(/IRQ-READY\n|IRQ \d+\n/g)?.length ?? 0;
        if (lines > sent && sent < WANT) {
          sent++;
          const msi = msiFor(0, 0x40);
          m.vm.signalMsi(msi.addressLo, msi.addressHi, msi.data);
        }
      };
      return m;
    };
    let from = arm(new BareMachine(MEM, { kernel: readFileSync(TEST_GUEST), cmdline }));
    for (const line of ['IRQ 2\n', 'IRQ 4\n']) {
      from.runUntil(() => (before + from.output).includes(line));
      expect(from.power, from.output).toBeUndefined();
      const doc = saveMachine(from.machine);
      before += from.output;
      const to = arm(new BareMachine(MEM));
      new Uint8Array(to.mem.buffer).set(new Uint8Array(from.mem.buffer));
      from.close();
      await restoreMachine(to.machine, doc);
      from = to;
    }
    try {
      from.runUntil(() => false);
    } finally {
      from.close();
    }
    const out = before + from.output;
    expect(out).toMatch(/IRQ-READY\nIRQ 1\nIRQ 2\nIRQ 3\nIRQ 4\nIRQ 5\n/);
    expect(guestResult(out)).toMatchObject({ mode: 'irq', irqs: WANT, ok: true });
    expect(from.power).toMatch(/debug-exit port written with 0/);
  });

  it('a state saved from a machine with other memory is refused before anything is written', async () => {
    const a = new BareMachine(MEM, boot());
    const b = new BareMachine(2 * MEM);
    try {
      a.runUntil(() => a.output.length >= 10);
      const doc = saveMachine(a.machine);
      await expect(restoreMachine(b.machine, doc)).rejects.toThrow(/^state: saved from a VM with 67108864 bytes of memory, this one has 134217728$/);
    } finally {
      a.close();
      b.close();
    }
  });
});
