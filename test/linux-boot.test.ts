// A stock Debian kernel under tsvmm (images from `npm run guest:linux`).
//
// Everywhere: the PVH-booted vmlinux prints its banner, an e820 map equal to tsvmm's layout, and finds
// tsvmm's ACPI tables, IOAPIC and vCPUs. With hardware KVM (or nested SVM in the emulated L1) the bzImage
// with the initramfs must also reach /init, see every vCPU and power off through ACPI. On kvm_pvm guest
// CPL0 code is emulated and a stock kernel dies long before user space (KVM cannot emulate cmpxchg16b;
// the bzImage's decompressor dies earlier, on a BMI2 shlx KVM's emulator lacks), so that test is left out
// there and says so in its name.
import { describe, it, expect } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runGuest } from './helpers/vm.js';
import { ROOT, haveKvm, isKvmPvm } from './helpers/env.js';
import { e820Map, E820_RAM } from '../src/boot/e820.js';

const DIR = join(ROOT, '.cache', 'linux');
const VMLINUX = join(DIR, 'vmlinux');
const VMLINUZ = join(DIR, 'vmlinuz');
const INITRD = join(DIR, 'initramfs.cpio.gz');
const MEM = 512 * 1024 * 1024;
const CPUS = 2;

function requireImages(): string {
  for (const f of [VMLINUX, VMLINUZ, INITRD]) if (!existsSync(f)) throw new Error(`${f} missing: run npm run guest:linux`);
  return readFileSync(join(DIR, 'KERNEL_VERSION'), 'utf8').trim();
}

const hex = (n: number) => '0x' + n.toString(16).padStart(16, '0');

describe.runIf(haveKvm())('stock Linux under tsvmm', () => {
  it('PVH vmlinux: banner, e820 map matching tsvmm, ACPI tables, IOAPIC and vCPUs', { timeout: 300_000 }, async () => {
    const kver = requireImages();
    const { output, exit } = await runGuest(
      { kernel: VMLINUX, memory: MEM, cpus: CPUS, cmdline: 'earlyprintk=ttyS0 console=ttyS0 loglevel=8' },
      { timeoutMs: 280_000, onOutput: (all, vm) => /Allowing \d+ present CPUs/.test(all) && void vm.stop() },
    );
    expect(output).toContain(`Linux version ${kver}`);
    const usable = [...output.matchAll(/BIOS-e820: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] usable/g)].map((m) => [m[1], m[2]]);
    const ours = e820Map(MEM).filter((e) => e.type === E820_RAM).map((e) => [hex(e.addr), hex(e.addr + e.size - 1)]);
    expect(usable).toEqual(ours);
    expect(output).toMatch(/ACPI: RSDP 0x00000000000E0000 000024 \(v02 TSVMM \)/);
    expect(output).toMatch(/ACPI: APIC 0x[0-9A-F]+ [0-9A-F]+ \(v06 TSVMM/);
    expect(output).toMatch(new RegExp(`IOAPIC\\[0\\]: apic_id ${CPUS}, version 17, address 0xfec00000, GSI 0-23`));
    expect(output).toMatch(new RegExp(`Allowing ${CPUS} present CPUs`));
    expect(exit.reason).toBe('stopped');
  });

  it.skipIf(isKvmPvm())(`bzImage + initramfs boots to /init with every vCPU and powers off through ACPI${isKvmPvm() ? ' (not on kvm_pvm: its emulator cannot run a stock kernel\'s CPL0 code)' : ''}`, { timeout: 300_000 }, async () => {
    const kver = requireImages();
    const { output, exit } = await runGuest(
      { kernel: VMLINUZ, initrd: INITRD, memory: MEM, cpus: CPUS, cmdline: 'console=ttyS0 tsvmm.poweroff' },
      { timeoutMs: 280_000 },
    );
    // (the message ends with the console's last lines: where a boot that never reached /init stood)
    expect(output.includes(`TSVMM-LINUX-INIT cpus=${CPUS} kernel=${kver}`), `no TSVMM-LINUX-INIT line; exit ${JSON.stringify(exit)}; last console lines:\n${output.split('\n').slice(-30).join('\n')}`).toBe(true);
    expect(exit).toMatchObject({ reason: 'poweroff', status: 0, detail: 'ACPI S5 (soft off)' });
  });
});
