// The ioctl numbers, struct sizes and kvm_run offsets in src/vmm/kvm-abi.ts against the real uapi header.
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KVM, SIZEOF, RUN, EXIT, CAP, SYNC_X86_REGS, IRQFD_FLAG } from '../src/vmm/kvm-abi.js';

const ioctls = Object.keys(KVM);
const sizes = Object.keys(SIZEOF);
const runFields: Array<[keyof typeof RUN, string]> = [
  ['immediate_exit', 'immediate_exit'],
  ['exit_reason', 'exit_reason'],
  ['io_direction', 'io.direction'],
  ['io_size', 'io.size'],
  ['io_port', 'io.port'],
  ['io_count', 'io.count'],
  ['io_data_offset', 'io.data_offset'],
  ['mmio_phys_addr', 'mmio.phys_addr'],
  ['mmio_data', 'mmio.data'],
  ['mmio_len', 'mmio.len'],
  ['mmio_is_write', 'mmio.is_write'],
  ['system_event_type', 'system_event.type'],
  ['internal_suberror', 'internal.suberror'],
  ['internal_ndata', 'internal.ndata'],
  ['internal_data', 'internal.data'],
  ['fail_entry_reason', 'fail_entry.hardware_entry_failure_reason'],
  ['kvm_valid_regs', 'kvm_valid_regs'],
  ['kvm_dirty_regs', 'kvm_dirty_regs'],
  ['sync_regs', 's.regs'],
];

let real: Record<string, number>;

beforeAll(() => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-abi-'));
  const lines = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <linux/kvm.h>',
    'int main(void) {',
    ...ioctls.map((k) => `printf("ioctl.${k} %lu\\n", (unsigned long)KVM_${k});`),
    ...sizes.map((k) => `printf("size.${k} %zu\\n", sizeof(struct ${k}));`),
    ...runFields.map(([k, f]) => `printf("run.${k} %zu\\n", offsetof(struct kvm_run, ${f}));`),
    ...Object.keys(EXIT).map((k) => `printf("exit.${k} %d\\n", KVM_EXIT_${k});`),
    ...Object.keys(CAP).map((k) => `printf("cap.${k} %d\\n", KVM_CAP_${k});`),
    'printf("sync.X86_REGS %d\\n", KVM_SYNC_X86_REGS);',
    ...Object.keys(IRQFD_FLAG).map((k) => `printf("irqfd.${k} %d\\n", KVM_IRQFD_FLAG_${k});`),
    'return 0; }',
  ];
  writeFileSync(join(dir, 'abi.c'), lines.join('\n'));
  execFileSync('cc', ['-o', join(dir, 'abi'), join(dir, 'abi.c')]);
  const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' });
  rmSync(dir, { recursive: true });
  real = Object.fromEntries(out.trim().split('\n').map((l) => {
    const [k, v] = l.split(' ');
    return [k, Number(v)];
  }));
});

describe('KVM ABI matches <linux/kvm.h>', () => {
  it.each(ioctls)('ioctl KVM_%s', (k) => expect(KVM[k as keyof typeof KVM]).toBe(real[`ioctl.${k}`]));
  it.each(sizes)('sizeof(struct %s)', (k) => expect(SIZEOF[k as keyof typeof SIZEOF]).toBe(real[`size.${k}`]));
  it.each(runFields.map(([k]) => k))('kvm_run offset %s', (k) => expect(RUN[k]).toBe(real[`run.${k}`]));
  it.each(Object.keys(EXIT))('KVM_EXIT_%s', (k) => expect(EXIT[k as keyof typeof EXIT]).toBe(real[`exit.${k}`]));
  it.each(Object.keys(CAP))('KVM_CAP_%s', (k) => expect(CAP[k as keyof typeof CAP]).toBe(real[`cap.${k}`]));
  it.each(Object.keys(IRQFD_FLAG))('KVM_IRQFD_FLAG_%s', (k) => expect(IRQFD_FLAG[k as keyof typeof IRQFD_FLAG]).toBe(real[`irqfd.${k}`]));
  it('KVM_SYNC_X86_REGS', () => expect(SYNC_X86_REGS).toBe(real['sync.X86_REGS']));
});
