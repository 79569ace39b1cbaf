// Real Linux guests (Debian's 6.12 kernel, its own virtio_net driver) under tsvmm on this machine.
//
// kvm_pvm cannot run a stock kernel, so tsvmm runs inside L1: Debian's kernel under QEMU software
// emulation with emulated AMD SVM, where kvm_amd gives a real /dev/kvm. There tsvmm boots L2 (the same
// kernel, as a bzImage) three times: `basic` (1 vCPU, 1 pair), `mq` (2 vCPUs, 2 pairs) and `wedge` (a
// guest that never ends, stopped by tsvmm's --timeout). Images: test/nested/build-images.sh; the L1 and
// L2 init scripts print STAGE / L1-CHECK / L2-CHECK lines, each of which becomes a test here. On a
// hardware-KVM host the same scenarios would run without L1 (not possible here: see the note below).
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, haveKvm, isKvmPvm, which } from './helpers/env.js';

const NESTED = join(ROOT, '.cache', 'nested');
const SCENARIOS = ['basic', 'mq', 'wedge'];
const LIMIT_S = 600;

const L2_COMMON = ['cpus', 'acpi-madt', 'ioapic', 'acpi-pci-root', 'virtio-net-bound', 'feature-version1', 'feature-event-idx', 'feature-mrg-rxbuf', 'feature-csum-tso', 'feature-ctrl-vq', 'msix-vectors', 'link-up', 'ping-56', 'ping-1400', 'ping-8000', 'file-l1-to-l2'];
const EXPECTED: Array<[string, string]> = [
  ['L1', 'kvm-device'],
  ['L1', 'tap-created'],
  ...L2_COMMON.map((c): [string, string] => ['L2', `basic/${c}`]),
  ...['iperf3-l2-to-l1', 'iperf3-l1-to-l2', 'mac-change', 'new-mac-reaches', 'old-mac-filtered', 'promisc-on-receives-old-mac', 'promisc-off-filters-again'].map((c): [string, string] => ['L2', `basic/${c}`]),
  ['L1', 'basic/no-tsvmm-left'],
  ['L1', 'basic/file-l2-to-l1'],
  ...L2_COMMON.map((c): [string, string] => ['L2', `mq/${c}`]),
  ...['ethtool-combined-1', 'ping-one-pair', 'ethtool-combined-2', 'two-pairs-active', 'iperf3-parallel'].map((c): [string, string] => ['L2', `mq/${c}`]),
  ['L1', 'mq/no-tsvmm-left'],
  ['L1', 'mq/file-l2-to-l1'],
  ['L1', 'wedge/no-tsvmm-left'],
];

interface Run {
  console: string;
  seconds: number;
  checks: Map<string, { pass: boolean; detail: string }>;
  exits: Map<string, number>;
  stats: Map<string, { threads: number; pairs: Array<{ rx: { packets: number }; tx: { packets: number } }> }>;
  stages: Array<[string, number]>;
}

let run: Run | undefined;
let setupError: Error | undefined;

function failureContext(r: Run | undefined): string {
  if (!r) return `harness did not run: ${setupError?.message}`;
  const lastStage = r.stages.at(-1);
  return `after ${r.seconds.toFixed(0)} s, last stage ${lastStage ? `${lastStage[0]} at L1 uptime ${lastStage[1]} s` : 'none'}; last console lines:\n${r.console.split('\n').slice(-25).join('\n')}`;
}

function parse(consoleText: string, seconds: number): Run {
  const r: Run = { console: consoleText, seconds, checks: new Map(), exits: new Map(), stats: new Map(), stages: [] };
  let scenario = '';
  // the console carries terminal resets (ESC c, ESC [ ... ) and CR CR LF line ends through two ttys
  const clean = consoleText.replace(/\x1b(c|\[[0-9;?]*[A-Za-z])/g, '');
  for (const line of clean.split(/\r*\n/)) {
    let m;
    if ((m = /^STAGE (\S+) ([\d.]+)/.exec(line))) {
      r.stages.push([m[1], Number(m[2])]);
      const s = /^tsvmm-start-(\w+)/.exec(m[1]);
      if (s) scenario = s[1];
    } else if ((m = /^(L[12])-CHECK (\S+) (PASS|FAIL) ?(.*)$/.exec(line))) r.checks.set(`${m[1]} ${m[2]}`, { pass: m[3] === 'PASS', detail: m[4] });
    else if ((m = /^L1-RESULT (\w+) exit=(\d+)/.exec(line))) r.exits.set(m[1], Number(m[2]));
    else if ((m = /^TSVMM-STATS (\{.*\})/.exec(line))) r.stats.set(scenario, JSON.parse(m[1]).net[0]);
  }
  return r;
}

const hardwareKvm = haveKvm() && !isKvmPvm();

describe.runIf(haveKvm() && !!which('qemu-system-x86_64') && isKvmPvm())('stock Linux (L2) under tsvmm inside an L1 with emulated AMD SVM', () => {
  beforeAll(async () => {
    try {
      execFileSync('bash', [join(ROOT, 'test', 'nested', 'build-images.sh')], { stdio: 'pipe', timeout: 600_000 });
    } catch (e) {
      setupError = new Error(`building the nested images failed: ${(e as { stderr?: Buffer }).stderr?.toString().slice(-2000) ?? e}`);
      return;
    }
    const t0 = Date.now();
    const qemu = spawn('qemu-system-x86_64', [
      '-accel', 'tcg,thread=multi', '-machine', 'q35', '-cpu', 'max', '-smp', '2', '-m', '2048',
      '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
      '-kernel', join(NESTED, 'vmlinuz'), '-initrd', join(NESTED, 'l1.cpio.gz'),
      '-append', `console=ttyS0 quiet panic=-1 tsvmm.run=${SCENARIOS.join(',')}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    qemu.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    qemu.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
    const timer = setTimeout(() => qemu.kill('SIGKILL'), LIMIT_S * 1000);
    await new Promise((r) => qemu.on('close', r));
    clearTimeout(timer);
    run = parse(out, (Date.now() - t0) / 1000);
    // stage times, for whoever reads the test output
    process.stdout.write(`nested: ${run.seconds.toFixed(0)} s in all; stages (L1 uptime, s): ${run.stages.map(([n, t]) => `${n}@${t}`).join(' ')}\n`);
  }, (LIMIT_S + 660) * 1000);

  it('L1 reached its end within the time limit', () => {
    expect(run?.stages.some(([n]) => n === 'l1-done'), failureContext(run)).toBe(true);
  });

  it.each(EXPECTED)('%s %s', (level, name) => {
    const c = run?.checks.get(`${level} ${name}`);
    expect(c, `no ${level}-CHECK ${name} line; ${failureContext(run)}`).toBeDefined();
    expect(c!.pass, `${level}-CHECK ${name} failed (${c!.detail}); ${failureContext(run)}`).toBe(true);
  });

  it('L2 powered off through ACPI: tsvmm exited 0 (basic, mq)', () => {
    expect(run?.exits.get('basic'), failureContext(run)).toBe(0);
    expect(run?.exits.get('mq'), failureContext(run)).toBe(0);
  });

  it('a wedged L2 was stopped by tsvmm --timeout (exit 124)', () => {
    expect(run?.console, failureContext(run)).toContain('L2-WEDGE');
    expect(run?.exits.get('wedge'), failureContext(run)).toBe(124);
  });

  it('two queue pairs ran on two dataplane threads with traffic on both (per-queue counters)', () => {
    const s = run?.stats.get('mq');
    expect(s, failureContext(run)).toBeDefined();
    expect(s!.threads).toBe(2);
    for (const p of s!.pairs) {
      expect(p.rx.packets).toBeGreaterThan(0);
      expect(p.tx.packets).toBeGreaterThan(0);
    }
    expect(run!.stats.get('basic')!.threads).toBe(1);
  });
});

describe.runIf(hardwareKvm)('stock Linux under tsvmm directly on hardware KVM', () => {
  // The L2 scenarios need the L1 side (tap address, web and iperf3 servers, the CGI) on the host; the
  // L1 init script is written for busybox in L1. Running it directly in a namespace on a VMX/SVM host is
  // not built yet: this machine (kvm_pvm) cannot exercise it, and an untested path is not shipped.
  it.todo('run test/nested/l1-init.sh scenarios in a namespace on the host');
});
