// Real Linux guests (Debian's 6.12 kernel, its own virtio_net driver) under tsvmm on this machine.
//
// kvm_pvm cannot run a stock kernel, so tsvmm runs inside L1: Debian's kernel under QEMU software
// emulation with emulated AMD SVM, where kvm_amd gives a real /dev/kvm. There tsvmm boots L2 (the same
// kernel, as a bzImage) once per scenario: `basic` (1 vCPU, 1 pair), `mq` (2 vCPUs, 2 pairs), `wedge`
// (a guest that never ends, stopped by tsvmm's --timeout), `link` (the host takes the link down and up),
// `ratelimit` (iperf3 both ways through tsvmm's rate limiter, then at half the rate, changed while L2
// runs), `shutdown` (the host presses the ACPI power button: vm.shutdown), `api` (tsvmm run
// --api-socket driven by tsvmm ctl: pause/resume under ping, link, power button), `snapshot` (snapshotted
// midway through a download, restored in a new tsvmm process on another tap), `migrate` and
// `migrate-mq-iommu` (migrated live midway through a download and a ping, to a tsvmm run --incoming on
// another tap; the second with 2 vCPUs, 2 queue pairs and the vIOMMU in strict mode), `triple` (a guest that ends
// in a triple fault on purpose: the harness must say where one happened), `panic` (2 vCPUs, a kernel
// panic on purpose: Linux's reset ends the VM), and `iommu-lazy` / `iommu-strict` (tsvmm --viommu:
// Linux's virtio_iommu found through ACPI VIOT, the net device behind it, iommu.strict=0/1), and `nomsi`
// (Linux booted with pci=nomsi: the virtio functions on INTx, level IOAPIC lines found through the _PRT).
// Linux's virtio_net negotiates packed rings (VIRTIO_F_RING_PACKED) in all of them but iommu-strict,
// where tsvmm runs with packed=off and split rings are checked instead. `basic` and `mq` also have
// tsvmm's virtio-rng (--rng; packed, and split with packed=off), read through Linux's virtio_rng.
// Images: test/nested/build-images.sh; the L1
// side (test/nested/scenarios.sh) and the L2 init print STAGE / L1-CHECK / L2-CHECK lines, each of
// which becomes a test here. On a hardware-KVM host (kvm_intel or kvm_amd, no kvm_pvm) the same
// scenarios run directly, the L1 side in a namespace on the host.
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, haveKvm, isKvmPvm, which } from './helpers/env.js';
import { NetNs } from './helpers/netns.js';
// @ts-expect-error: a plain ES module of the project's scripts, without types
import { spawnQemuLocked } from '../scripts/l1/boot.mjs';

const NESTED = join(ROOT, '.cache', 'nested');
// The vIOMMU scenarios hung once in five full runs (no L2 output at all after tsvmm started, in
// iommu-lazy; not seen again in the next runs, 4 of them iommu-lazy alone): they run by default, each
// bounded by tsvmm's --timeout (scenarios.sh) so that a hang fails only its own checks, with tsvmm's
// stats in the console. TSVMM_NESTED_IOMMU=0 leaves them out. Also seen (2026-12-02), in strict mode
// only: L2 ending in a triple fault with no oops before it, 2 of ~20 runs, and once in CI after L2 soft
// lockups of 21 s. Then an UNMAP's wait for the dataplane threads gave up after 5 s and let the guest
// reuse memory a thread might still write; it no longer does, and no triple fault came in ~70 loaded
// strict runs since (one of them stopped at its time limit mid-traffic, cause not found). Not proven
// to be the cause. A failed scenario runs once more in a fresh L1 (see beforeAll), and the warning and
// any failure text say in which L2 function a triple fault happened (KVM's trace in L1, see
// scenarios.sh), as they say where a time-limit stop's vCPUs were.
// TSVMM_NESTED_ONLY=basic,mq runs only those scenarios (to check a change to one by hand).
const ONLY = process.env.TSVMM_NESTED_ONLY?.split(',');
const ALL_SCENARIOS = ['basic', 'mq', 'rss', 'wedge', 'link', 'ratelimit', 'netctl', 'shutdown', 'api', 'snapshot', 'migrate', 'migrate-mq-iommu', 'triple', 'panic', 'nomsi', ...(process.env.TSVMM_NESTED_IOMMU !== '0' ? ['iommu-lazy', 'iommu-strict'] : [])];
const SCENARIOS = ALL_SCENARIOS.filter((s) => !ONLY || ONLY.includes(s));
const runs = (s: string) => SCENARIOS.includes(s);
// (the whole run, every scenario in one L1: about 12 min on a quiet machine; a kill switch, not a target)
const LIMIT_S = 1500;
/** fresh L1s a failed scenario may run in after the one it failed in */
const RERUNS = 2;

const L2_COMMON = ['cpus', 'acpi-madt', 'ioapic', 'acpi-pci-root', 'virtio-net-bound', 'feature-version1', 'feature-event-idx', 'feature-mrg-rxbuf', 'feature-csum-tso', 'feature-ctrl-vq', 'msix-vectors', 'link-up', 'ping-56', 'ping-1400', 'ping-8000', 'file-l1-to-l2'];
const JUMBO_CHECKS = ['feature-mtu', 'mtu-above-offer-refused', 'mtu-set', 'ping-jumbo-unfragmented'];
const RNG_CHECKS = ['virtio-rng-bound', 'rng-ring-layout', 'rng-current-virtio', 'hwrng-64k', 'hwrng-random'];
const ALL_EXPECTED: Array<[string, string]> = [
  ['L1', 'kvm-device'],
  ['L1', 'tap-created'],
  // (basic runs without mergeable receive buffers: mrg-rxbuf=off)
  ...L2_COMMON.map((c): [string, string] => ['L2', `basic/${c === 'feature-mrg-rxbuf' ? 'feature-no-mrg-rxbuf' : c}`]),
  // basic and mq run at MTU 9000 (mtu=9000: tsvmm raises tap0's MTU and offers it), and basic with a
  // speed (speed=25000,duplex=full) that ethtool shows
  ...['basic', 'mq'].flatMap((scn): Array<[string, string]> => [...JUMBO_CHECKS.map((c): [string, string] => ['L2', `${scn}/${c}`]), ['L1', `${scn}/tap-mtu-raised`]]),
  ['L2', 'basic/ethtool-speed'],
  // basic and mq also have tsvmm's virtio-rng (--rng; packed rings in basic, split in mq): Linux's
  // virtio_rng reads /dev/hwrng from it
  ...['basic', 'mq'].flatMap((scn) => RNG_CHECKS.map((c): [string, string] => ['L2', `${scn}/${c}`])),
  ...['feature-ring-packed', 'iperf3-l2-to-l1', 'iperf3-l1-to-l2', 'mac-change', 'new-mac-reaches', 'old-mac-filtered', 'promisc-on-receives-old-mac', 'promisc-off-filters-again'].map((c): [string, string] => ['L2', `basic/${c}`]),
  ['L1', 'basic/no-tsvmm-left'],
  ['L1', 'basic/file-l2-to-l1'],
  ...L2_COMMON.map((c): [string, string] => ['L2', `mq/${c}`]),
  ...['feature-ring-packed', 'ethtool-combined-1', 'ping-one-pair', 'ethtool-combined-2', 'two-pairs-active', 'iperf3-parallel', 'gro-hw-off', 'file-gro-hw-off', 'gro-hw-on'].map((c): [string, string] => ['L2', `mq/${c}`]),
  ['L1', 'mq/no-tsvmm-left'],
  ['L1', 'mq/file-l2-to-l1'],
  // RSS with hash reports over 2 pairs: the table and key through ethtool, flows on the queues it names
  ...[...L2_COMMON.slice(0, 12), 'feature-ring-packed', 'feature-rss-hash-report', 'receive-hashing-on', 'rss-table-shown', 'rss-hkey-accepted', 'rss-hkey-shown', 'rss-equal-2-accepted', 'rss-table-equal-2']
    .concat(['40000:1', '40001:1', '40008:0', '40009:0'].map((fq) => `rss-flow-${fq.replace(':', '-on-queue-')}`))
    .concat(['rss-4-parallel-flows-both-queues', 'rss-weight-1-0-accepted', 'rss-weight-1-0-flow-on-queue-0', 'rss-weight-0-1-accepted', 'rss-weight-0-1-flow-on-queue-1'])
    .map((c): [string, string] => ['L2', `rss/${c}`]),
  ['L1', 'rss/no-tsvmm-left'],
  ['L1', 'wedge/no-tsvmm-left'],
  // the link taken down and up from the host (vm.net[0].setLink): L2's carrier follows, traffic resumes
  ...['link-up', 'carrier-down-seen', 'carrier-up-seen', 'ping-after-link-up'].map((c): [string, string] => ['L2', `link/${c}`]),
  ['L1', 'link/no-tsvmm-left'],
  // iperf3 both ways under tsvmm's rate limiter (--net tap,...,tx-bytes=...,rx-bytes=...)
  ...['link-up', 'iperf3-tx-limited', 'iperf3-rx-limited', 'iperf3-tx-limit-halved'].map((c): [string, string] => ['L2', `ratelimit/${c}`]),
  ['L1', 'ratelimit/no-tsvmm-left'],
  // the control queue's VLAN filter (a VLAN interface on an added id receives, frames of one not added
  // are not delivered), interrupt coalescing (ethtool -C read back, fewer interrupts per frame) and UDP
  // segmentation (a UDP_SEGMENT stream intact, its GSO packets whole on the tap)
  ...['link-up', 'feature-ctrl-vlan', 'feature-notf-coal', 'feature-uso', 'vlan-module', 'vlan-5-added', 'vlan-added-receives', 'vlan-not-added-filtered', 'vlan-added-later-receives', 'coal-set', 'coal-read-back', 'coal-fewer-interrupts-per-frame', 'uso-tx-udp-segmentation-on', 'uso-send', 'uso-transfer-intact', 'uso-frames-whole'].map((c): [string, string] => ['L2', `netctl/${c}`]),
  ...['l1-vlan-5', 'l1-vlan-7', 'tsvmm-counted-vlan-filtered', 'no-tsvmm-left'].map((c): [string, string] => ['L1', `netctl/${c}`]),
  // the host presses the ACPI power button (vm.shutdown): Linux's evged and button driver report
  // KEY_POWER, L2's init powers off, and shutdown() resolves with that power-off
  ...['ged-bound', 'ged-irq', 'power-button-input', 'key-power-seen'].map((c): [string, string] => ['L2', `shutdown/${c}`]),
  ['L1', 'shutdown/powered-off-by-button'],
  ['L1', 'shutdown/no-tsvmm-left'],
  // tsvmm run --api-socket driven by tsvmm ctl: pause/resume under L1's ping, link down/up, the power
  // button (ctl shutdown); the socket is gone when tsvmm has ended
  ...['l2-ready', 'state-running', 'pause', 'state-paused', 'metrics-still-while-paused', 'no-replies-while-paused', 'resume', 'ping-continues-after-resume', 'link-down', 'link-up', 'shutdown-accepted', 'socket-removed', 'no-tsvmm-left'].map((c): [string, string] => ['L1', `api/${c}`]),
  ...['carrier-down-seen', 'carrier-up-seen', 'ping-after-link-up', 'key-power-seen'].map((c): [string, string] => ['L2', `api/${c}`]),
  // snapshotted midway through a download (tsvmm ctl snapshot DIR stop), restored in a new tsvmm on another
  // tap to the same peer (run --restore DIR --net tap,ifname=tap1; L1's address on a bridge over both
  // taps): no second boot, uptime goes on, the guest announces itself (its gratuitous ARP reaches the bridge),
  // the download ends with the right md5
  ...['peer-on-bridge', 'taken', 'first-vm-stopped', 'moved-mid-download', 'memory-file-sparse', 'moved-without-reboot', 'uptime-continues', 'gratuitous-arp-from-guest', 'download-finished-after-restore', 'no-tsvmm-left'].map((c): [string, string] => ['L1', `snapshot/${c}`]),
  ...['link-up', 'feature-guest-announce', 'download-across-restore', 'md5-across-restore', 'ping-after-restore'].map((c): [string, string] => ['L2', `snapshot/${c}`]),
  // migrated live midway through a download and a ping (tsvmm ctl migrate unix:... to a tsvmm run
  // --incoming on tap1): the source exits 3, no second boot, uptime goes on, a gratuitous ARP on tap1,
  // the md5 right, at most 3 pings lost; with 2 pairs and the vIOMMU (strict) too, both pairs still on
  ...['migrate', 'migrate-mq-iommu'].flatMap((scn): Array<[string, string]> => [
    ...['peer-on-bridge', 'migrated', 'source-exit-migrated', 'progress-on-stderr', 'moved-mid-download', 'moved-without-reboot', 'uptime-continues', 'gratuitous-arp-from-guest', 'download-finished-after-migration', 'no-tsvmm-left'].map((c): [string, string] => ['L1', `${scn}/${c}`]),
    ...[...L2_COMMON.slice(0, 12), 'feature-ring-packed', 'feature-guest-announce', 'download-across-migration', 'md5-across-migration', 'ping-during-migration', 'ping-after-migration'].map((c): [string, string] => ['L2', `${scn}/${c}`]),
  ]),
  ...['viommu-probed', 'net-behind-iommu', 'iommu-domain-type', 'feature-access-platform', 'two-pairs-after-migration'].map((c): [string, string] => ['L2', `migrate-mq-iommu/${c}`]),
  // (each tsvmm wrote the guest's memory at the hand-over: the two equal page by page)
  ['L1', 'migrate/memory-equal-at-hand-over'],
  // pci=nomsi: virtio_net and virtio_rng on INTx (IO-APIC level lines, no MSI), the basic traffic checks
  ...[...L2_COMMON.filter((c) => c !== 'msix-vectors'), 'no-pci-msi', 'net-on-intx', 'rng-on-intx', ...RNG_CHECKS, 'feature-ring-packed', 'iperf3-l2-to-l1', 'iperf3-l1-to-l2', 'mac-change', 'new-mac-reaches', 'old-mac-filtered', 'promisc-on-receives-old-mac', 'promisc-off-filters-again', 'intx-interrupts-counted'].map((c): [string, string] => ['L2', `nomsi/${c}`]),
  ['L1', 'nomsi/no-tsvmm-left'],
  ['L1', 'nomsi/file-l2-to-l1'],
  ['L1', 'triple/no-tsvmm-left'],
  ['L1', 'panic/no-tsvmm-left'],
  ...['iommu-lazy', 'iommu-strict'].flatMap((scn): Array<[string, string]> => [
    ...[...L2_COMMON.slice(0, 4), 'viommu-probed', 'net-behind-iommu', 'iommu-domain-type', ...L2_COMMON.slice(4), 'feature-access-platform', scn === 'iommu-strict' ? 'feature-ring-split' : 'feature-ring-packed', 'iperf3-l2-to-l1', 'iperf3-l1-to-l2'].map(
      (c): [string, string] => ['L2', `${scn}/${c}`],
    ),
    ['L1', `${scn}/no-tsvmm-left`],
    ['L1', `${scn}/file-l2-to-l1`],
  ]),
];
/** the checks of the scenarios that run (those not named after a scenario are L1's own) */
const EXPECTED = ALL_EXPECTED.filter(([, name]) => !name.includes('/') || runs(name.split('/')[0]));

interface Run {
  console: string;
  seconds: number;
  checks: Map<string, { pass: boolean; detail: string }>;
  exits: Map<string, number>;
  /** how tsvmm said each scenario's VM ended ("tsvmm: guest powered off (status 0)") */
  ends: Map<string, string>;
  stats: Map<string, { threads: number; pairs: Array<{ rx: { packets: number }; tx: { packets: number } }> }>;
  iommu: Map<string, { requests: Record<string, number>; faults: number }>;
  /** the virtio-rng device's counters, per scenario that had one */
  rng: Map<string, { packets: number; bytes: number; kicks: number }>;
  stages: Array<[string, number]>;
  /** scenarios whose L2 hung before its init and were run again: tsvmm's line naming the vCPUs' rips */
  hangs: Array<[string, string]>;
  /** scenarios whose L2 oopsed on a stale int3 (the TCG flaw) and were run again: the oops's first lines */
  staleInt3: Array<[string, string]>;
  /** where the vCPUs of an L2 stopped at its time limit were, per scenario: "0x… is function+0x…; …" */
  stoppedAt: Map<string, string>;
  /** scenarios whose L2 ended in a triple fault: KVM's trace of it in L1 (the injected exceptions, then
   * the shutdown exit with its rip), and where the rip is ("0x… is function+0x…") */
  triples: Map<string, { trace: string[]; where: string }>;
}

let run: Run | undefined;
let setupError: Error | undefined;
/** how each L1 QEMU ended ("exit status 0", "killed by SIGKILL"), in order */
const l1Ends: string[] = [];

function failureContext(r: Run | undefined): string {
  if (!r) return `harness did not run: ${setupError?.message}`;
  const lastStage = r.stages.at(-1);
  const lines = r.console.split('\n');
  // a kernel's oops or panic says what happened in its first lines, which the last 25 often miss
  const trouble = troubleReport(lines.slice(0, -25));
  return `after ${r.seconds.toFixed(0)} s (L1's QEMU: ${l1Ends.join(', then ') || 'n/a'}), last stage ${lastStage ? `${lastStage[0]} at L1 uptime ${lastStage[1]} s` : 'none'}; ${tripleReport(r)}${[...r.stoppedAt].map(([scn, where]) => `${scn} stopped at its time limit in ${where}\n`).join('')}${trouble ? `first kernel trouble report:\n${trouble}\n` : ''}last console lines:\n${lines.slice(-25).join('\n')}`;
}

/** Where each L2 that ended in a triple fault was (the `triple` scenario's on purpose excepted); or ''. */
function tripleReport(r: Run): string {
  const report = [...r.triples].filter(([scn]) => scn !== 'triple').map(([scn, t]) => `  ${scn}: at ${t.where || '(rip unknown)'}; KVM's trace in L1:\n${t.trace.map((l) => `    ${l}`).join('\n')}`);
  return report.length ? `L2 ended in a triple fault:\n${report.join('\n')}\n` : '';
}

const KERNEL_TROUBLE = /\] (BUG:|Oops|WARNING:|Kernel panic|general protection|watchdog:|rcu: INFO|INFO: task .* blocked)/;

/** Scenarios whose L2 kernel dies on purpose: what it reports there is no trouble (a failed one shows it in its checks). */
const TROUBLE_ON_PURPOSE = new Set(['panic', 'triple']);

/**
 * The first oops/panic/warning in `lines` and the 30 lines from it, or '' if there is none; the lines
 * between a TROUBLE_ON_PURPOSE scenario's start and end stages are passed over.
 */
function troubleReport(lines: string[]): string {
  let scenario = '';
  const first = lines.findIndex((l) => {
    const stage = /STAGE tsvmm-(start|end)-(\S+)/.exec(l);
    if (stage) scenario = stage[1] === 'start' ? stage[2] : '';
    return !TROUBLE_ON_PURPOSE.has(scenario) && KERNEL_TROUBLE.test(l);
  });
  return first < 0 ? '' : lines.slice(first, first + 30).join('\n');
}

/**
 * The scenarios of `scenarios` that failed in `r`: an exit other than expected (124 for wedge, stopped
 * on purpose; 0 for the others), a stop at the time limit, a triple fault (but in `triple`, which
 * makes one), or an L1/L2 check of theirs that failed or, of those `expected`, never came.
 */
function failedScenarios(r: Pick<Run, 'exits' | 'stoppedAt' | 'checks' | 'triples'>, scenarios: string[], expected: ReadonlyArray<[string, string]> = EXPECTED): string[] {
  return scenarios.filter((scn) =>
    r.exits.get(scn) !== (scn === 'wedge' ? 124 : 0) ||
    (scn !== 'wedge' && r.stoppedAt.has(scn)) ||
    (scn !== 'triple' && r.triples.has(scn)) ||
    [...r.checks].some(([k, c]) => !c.pass && k.slice(3).startsWith(`${scn}/`)) ||
    missingChecks(r, [scn], expected).length > 0);
}

/** The checks of `expected` that belong to one of `scenarios` and never came in `r` ("L2 basic/ping-56"). */
function missingChecks(r: Pick<Run, 'checks'>, scenarios: string[], expected: ReadonlyArray<[string, string]> = EXPECTED): string[] {
  return expected.filter(([level, name]) => scenarios.some((s) => name.startsWith(`${s}/`)) && !r.checks.has(`${level} ${name}`)).map(([level, name]) => `${level} ${name}`);
}

/** L1's kernel panicked: its panic ends with its KASLR offset (L2 boots with nokaslr: "disabled"). */
const L1_PANIC = /Kernel Offset: 0x[0-9a-f]+ from/;

function parse(consoleText: string, seconds: number): Run {
  const r: Run = { console: consoleText, seconds, checks: new Map(), exits: new Map(), ends: new Map(), stats: new Map(), iommu: new Map(), rng: new Map(), stages: [], hangs: [], staleInt3: [], stoppedAt: new Map(), triples: new Map() };
  const triple = (scn: string) => r.triples.get(scn) ?? r.triples.set(scn, { trace: [], where: '' }).get(scn)!;
  let scenario = '';
  // the console carries terminal resets (ESC c, ESC [ ... ) and CR CR LF line ends through two ttys
  const clean = consoleText.replace(/\x1b(c|\[[0-9;?]*[A-Za-z])/g, '');
  for (const line of clean.split(/\r*\n/)) {
    let m;
    if ((m = /^STAGE (\S+) ([\d.]+)/.exec(line))) {
      r.stages.push([m[1], Number(m[2])]);
      const s = /^tsvmm-start-([\w-]+)/.exec(m[1]);
      if (s) scenario = s[1];
    } else if ((m = /^(L[12])-CHECK (\S+) (PASS|FAIL) ?(.*)$/.exec(line))) r.checks.set(`${m[1]} ${m[2]}`, { pass: m[3] === 'PASS', detail: m[4] });
    else if ((m = /^L1-RESULT ([\w-]+) exit=(\d+) ?(.*)$/.exec(line))) {
      r.exits.set(m[1], Number(m[2]));
      r.ends.set(m[1], m[3]);
    }
    else if ((m = /^L1-HANG ([\w-]+) (.*)$/.exec(line))) r.hangs.push([m[1], m[2]]);
    else if ((m = /^L1-L2-INT3 ([\w-]+) (.*)$/.exec(line))) r.staleInt3.push([m[1], m[2]]);
    else if ((m = /^L1-STOPPED-AT ([\w-]+) ?(.*)$/.exec(line))) r.stoppedAt.set(m[1], m[2]);
    else if ((m = /^L1-KVM-TRACE ([\w-]+) (.*)$/.exec(line))) triple(m[1]).trace.push(m[2].trim());
    else if ((m = /^L1-TRIPLE ([\w-]+) ?(.*)$/.exec(line))) triple(m[1]).where = m[2];
    else if ((m = /^TSVMM-STATS (\{.*\})/.exec(line))) {
      const st = JSON.parse(m[1]);
      r.stats.set(scenario, st.net[0]);
      if (st.iommu) r.iommu.set(scenario, st.iommu);
      if (st.rng) r.rng.set(scenario, st.rng);
    }
  }
  return r;
}

const hardwareKvm = haveKvm() && !isKvmPvm();

function buildImages(): Error | undefined {
  try {
    execFileSync('bash', [join(ROOT, 'test', 'nested', 'build-images.sh')], { stdio: 'pipe', timeout: 600_000 });
    return undefined;
  } catch (e) {
    return new Error(`building the nested images failed: ${(e as { stderr?: Buffer }).stderr?.toString().slice(-2000) ?? e}`);
  }
}

/**
 * The longest a working L1 stays silent: every scenario's tsvmm has a time limit of at most 300 s and
 * says when it stops one, so a console quiet for longer (soft-lockup reports aside) is an L1 that no
 * longer runs.
 */
const SILENCE_S = Number(process.env.TSVMM_NESTED_SILENCE_S ?? 420);

/** a kernel reporting a CPU it cannot get to run: a soft lockup, an RCU stall */
const STALL_REPORT = /soft lockup|rcu: /;

/**
 * Collect a process's console until it ends (or the limit, counted once `started`, kills it; or it is
 * silent for SILENCE_S: killed, `silent` set).
 */
async function collect(p: ChildProcess, started: Promise<unknown> = Promise.resolve()): Promise<{ out: string; seconds: number; silent: boolean; ended: string }> {
  let out = '';
  let last = Date.now();
  // (a kernel's soft-lockup and RCU-stall reports, which repeat every half minute or so for as long as
  // a CPU is stuck, and the lines that follow each within seconds, are not signs of a working L1: a
  // wedged L1, one CPU stuck in KVM_RUN and the other unresponsive, prints nothing else)
  let lockupAt = 0;
  const take = (d: Buffer) => {
    const text = d.toString('latin1');
    out += text;
    const now = Date.now();
    if (STALL_REPORT.test(text)) lockupAt = now;
    else if (now - lockupAt > 5000) last = now;
  };
  p.stdout!.on('data', take);
  p.stderr!.on('data', take);
  await started;
  const t0 = Date.now();
  last = t0;
  let silent = false;
  const timer = setTimeout(() => p.kill('SIGKILL'), LIMIT_S * 1000);
  const watch = setInterval(() => {
    if (Date.now() - last < SILENCE_S * 1000) return;
    silent = true;
    p.kill('SIGKILL');
  }, 1000);
  const ended = await new Promise<string>((r) => p.on('close', (code, signal) => r(signal ? `killed by ${signal}` : `exit status ${code}`)));
  clearTimeout(timer);
  clearInterval(watch);
  return { out, seconds: (Date.now() - t0) / 1000, silent, ended };
}

function report(r: Run): void {
  // the whole console, for what the failure texts leave out
  const saved = join(NESTED, 'last-console.log');
  writeFileSync(saved, r.console);
  process.stdout.write(`nested: ${r.seconds.toFixed(0)} s in all (console: ${saved}); stages (uptime, s): ${r.stages.map(([n, t]) => `${n}@${t}`).join(' ')}\n`);
  // a hang before L2's init, run again by scenarios.sh: said loudly, with where L2 was
  for (const [scn, line] of r.hangs) process.stdout.write(`nested: WARNING: ${scn} hung before L2's init and was run again; ${line} (${r.stoppedAt.get(scn) ?? 'where: unknown'})\n`);
  for (const [scn, oops] of r.staleInt3) process.stdout.write(`nested: WARNING: ${scn}'s L2 oopsed on the int3 of a finished code patch (QEMU's TCG) and was run again: ${oops}\n`);
  const triples = tripleReport(r);
  if (triples) process.stdout.write(`nested: ${triples}`);
}

/** The same tests for both ways of running the scenarios. */
function scenarioTests(get: () => Run | undefined): void {
  it('the L1 side reached its end within the time limit', () => {
    expect(get()?.stages.some(([n]) => n === 'l1-done'), failureContext(get())).toBe(true);
  });

  it.each(EXPECTED)('%s %s', (level, name) => {
    const r = get();
    const c = r?.checks.get(`${level} ${name}`);
    expect(c, `no ${level}-CHECK ${name} line; ${failureContext(r)}`).toBeDefined();
    expect(c!.pass, `${level}-CHECK ${name} failed (${c!.detail}); ${failureContext(r)}`).toBe(true);
  });

  it('L2 powered off through ACPI: tsvmm exited 0 (basic, mq, rss, link, ratelimit, netctl, shutdown, api, snapshot and migrate (the tsvmm it moved to), nomsi, and the vIOMMU scenarios when run)', () => {
    for (const scn of ['basic', 'mq', 'rss', 'link', 'ratelimit', 'netctl', 'shutdown', 'api', 'snapshot', 'migrate', 'migrate-mq-iommu', 'nomsi', 'iommu-lazy', 'iommu-strict'].filter(runs)) {
      expect(get()?.exits.get(scn), `${scn}: ${failureContext(get())}`).toBe(0);
      expect(get()?.ends.get(scn), `${scn}: ${failureContext(get())}`).toMatch(/^tsvmm: guest powered off/);
    }
  });

  it.runIf(runs('ratelimit'))('the rate limiter held frames back both ways and dropped none (its counters in --stats)', () => {
    const pair = get()?.stats.get('ratelimit')?.pairs[0] as unknown as { rx: Record<string, number>; tx: Record<string, number> } | undefined;
    expect(pair, failureContext(get())).toBeDefined();
    expect(pair!.tx.rateLimited).toBeGreaterThan(0);
    expect(pair!.rx.rateLimited).toBeGreaterThan(0);
    expect(pair!.tx.drops).toBe(0);
  });

  // (virtio-iommu's UNMAP is the page-table update: both modes unmap what completed; lazy mode defers
  // only the flush that waits for it)
  it.each(['iommu-lazy', 'iommu-strict'].filter(runs))('behind the vIOMMU (%s), Linux mapped and unmapped per use, with no fault', (scn) => {
    const st = get()?.iommu.get(scn);
    expect(st, failureContext(get())).toBeDefined();
    expect(st!.faults).toBe(0);
    expect(st!.requests['1']).toBeGreaterThanOrEqual(1); // ATTACH
    expect(st!.requests['3']).toBeGreaterThan(1000); // MAP: the DMA API maps every buffer
    expect(st!.requests['4']).toBeGreaterThan(1000); // UNMAP
  });

  it.runIf(runs('migrate-mq-iommu'))('migrated with 2 pairs behind the vIOMMU: the destination ran both pairs on two threads, Linux mapped through it there, no fault', () => {
    // (the destination's stats come last on the console: it is shown once it has ended)
    const s = get()?.stats.get('migrate-mq-iommu');
    const iommu = get()?.iommu.get('migrate-mq-iommu');
    expect(s && iommu, failureContext(get())).toBeTruthy();
    expect(s!.threads).toBe(2);
    expect(iommu!.faults).toBe(0);
    expect(iommu!.requests['3']).toBeGreaterThan(100); // MAP, per buffer in strict mode
  });

  it.each(['basic', 'mq'].filter(runs))('the virtio-rng device served /dev/hwrng from its dataplane thread (%s: its counters)', (scn) => {
    const s = get()?.rng.get(scn);
    expect(s, failureContext(get())).toBeDefined();
    // two 64 KiB reads, and what Linux's hwrng core takes for itself
    expect(s!.bytes).toBeGreaterThanOrEqual(2 * 65536);
    expect(s!.kicks).toBeGreaterThan(0);
  });

  it.runIf(runs('wedge'))('a wedged L2 was stopped by tsvmm --timeout (exit 124)', () => {
    expect(get()?.console, failureContext(get())).toContain('L2-WEDGE');
    expect(get()?.exits.get('wedge'), failureContext(get())).toBe(124);
  });

  it.runIf(runs('triple'))('an L2 ending in a triple fault is reported with the function it was in', () => {
    // (Linux booted with reboot=t restarts by loading an empty IDT and raising int3)
    const r = get();
    expect(r?.ends.get('triple'), failureContext(r)).toMatch(/^tsvmm: guest reset \(vcpu0: triple fault/);
    // (directly on an AMD host, no: KVM resets the vCPU before it reports the shutdown, and the harness
    // does not trace the host's KVM; in L1 it does)
    if (hardwareKvm && readFileSync('/proc/cpuinfo', 'utf8').includes('AuthenticAMD')) return;
    expect(r?.triples.get('triple')?.where, failureContext(r)).toMatch(/^0x[0-9a-f]{16} is \w*machine_emergency_restart\+0x[0-9a-f]+$/);
  });

  it.runIf(runs('panic'))('an L2 kernel panic with two vCPUs ends the VM: Linux resets its default way and tsvmm says so', () => {
    const r = get();
    expect(r?.console, failureContext(r)).toContain('L2-PANIC');
    expect(r?.console, failureContext(r)).toContain('Kernel panic - not syncing: sysrq triggered crash');
    expect(r?.ends.get('panic'), failureContext(r)).toMatch(/^tsvmm: guest reset \(reset control register \(0xcf9\)\)/);
    expect(r?.exits.get('panic'), failureContext(r)).toBe(0);
  });

  it.runIf(runs('rss'))('RSS: both RX queues delivered, on two dataplane threads (tsvmm\'s per-queue counters)', () => {
    const s = get()?.stats.get('rss') as unknown as { threads: number; pairs: Array<{ rx: { packets: number; dropsByCause: Record<string, number> } }> } | undefined;
    expect(s, failureContext(get())).toBeDefined();
    expect(s!.threads).toBe(2);
    // (frames a full hand-over ring dropped count as RX drops of cause wire: shown, not failed on)
    for (const p of s!.pairs) expect(p.rx.packets, `rx drops by cause ${JSON.stringify(p.rx.dropsByCause)}`).toBeGreaterThan(100);
  });

  it.runIf(runs('mq') && runs('basic'))('two queue pairs ran on two dataplane threads with traffic on both (per-queue counters)', () => {
    const s = get()?.stats.get('mq');
    expect(s, failureContext(get())).toBeDefined();
    expect(s!.threads).toBe(2);
    for (const p of s!.pairs) {
      expect(p.rx.packets).toBeGreaterThan(0);
      expect(p.tx.packets).toBeGreaterThan(0);
    }
    expect(get()!.stats.get('basic')!.threads).toBe(1);
  });
}

/** Boot L1 (QEMU software emulation, emulated AMD SVM) running `scenarios`; its console when it ends. */
// (under the host-wide L1 lock: the L1 of the KVM test files, test/in-l1.test.ts, may be running)
function bootL1(scenarios: string[]): Promise<{ out: string; seconds: number; silent: boolean; ended: string }> {
  const { proc, started } = spawnQemuLocked([
    '-accel', 'tcg,thread=multi', '-machine', 'q35', '-cpu', 'max', '-smp', '2', '-m', '2048',
    '-nographic', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', join(NESTED, 'vmlinuz'), '-initrd', join(NESTED, 'l1.cpio.gz'),
    // (maxcpus=1: the second CPU comes online once L1 has pinned KVM's static keys, see l1-init.sh;
    // loglevel=5 rather than quiet: a soft lockup's backtrace is printed at the default level, 4;
    // tsc=reliable: L1 stays on the TSC when host pauses make it skew from the HPET, scripts/l1/boot.mjs)
    '-append', `console=ttyS0 loglevel=5 tsc=reliable panic=-1 maxcpus=1 tsvmm.run=${scenarios.join(',')}`,
  ]);
  return collect(proc, started);
}

// (any host without hardware KVM: kvm_pvm, or none at all — the L1 brings its own, emulated)
describe.runIf(!hardwareKvm && !!which('qemu-system-x86_64'))('stock Linux (L2) under tsvmm inside an L1 with emulated AMD SVM', () => {
  beforeAll(async () => {
    setupError = buildImages();
    if (setupError) return;
    let { out, seconds, silent, ended } = await bootL1(SCENARIOS);
    l1Ends.push(ended);
    run = parse(out, seconds);
    // L1's own kernel panicked in CI and in loaded runs here: "Oops: int3" at static-branch sites, a
    // CPU running the int3 of a finished code patch under QEMU 7.2's multi-threaded TCG (tsvmm, a
    // process in L1, cannot panic L1's kernel). L1 now holds one idle VM so that tsvmm's VMs flip no
    // static keys (test/nested/pin-kvm-keys.mjs). Should L1 still panic, it is said loudly, with the
    // panic, and the scenarios it did not finish run once more in a fresh L1; a second panic fails them.
    // An L1 gone silent (no console line for SILENCE_S, while every tsvmm in it has a shorter time limit
    // that it reports) has stopped running, and is taken the same way; so is a QEMU that ended before
    // L1's end without a word (CI, 2026-12-03: after 55 s, mid-scenario, no panic on the console; with
    // -no-reboot an L1 that resets, a triple fault of its own included, ends QEMU that way).
    const early = !run.stages.some(([n]) => n === 'l1-done') && seconds < LIMIT_S - 5;
    const died = L1_PANIC.test(out) ? "L1's kernel panicked" : silent ? `L1 went silent for ${SILENCE_S} s` : early ? `L1's QEMU ended early (${ended})` : '';
    if (died && !run.stages.some(([n]) => n === 'l1-done')) {
      const left = SCENARIOS.filter((s) => !run!.exits.has(s));
      process.stdout.write(`nested: WARNING: ${died} (${run.stages.at(-1)?.join(' at uptime ')} s); booting a fresh L1 for ${left.join(',')}. What it said last:\n${troubleReport(out.split('\n')) || out.split('\n').slice(-15).join('\n')}\n`);
      const again = await bootL1(left);
      l1Ends.push(again.ended);
      out += `\n${again.out}`;
      seconds += again.seconds;
      run = parse(out, seconds);
    }
    // A scenario that failed, in an L1 that ran to its end or in one that died before the fresh L1 above
    // finished the rest, runs again in a fresh L1, said loudly with what failed, up to RERUNS times; its
    // last result stands. Emulated L1s stall (a soft lockup of tsvmm's process in L1's kernel, which a
    // user-space process cannot cause, then an L2 that passes no frame), and guests in L1 fail now and
    // then whatever VMM runs them (test/l1/run-tests.ts), L2 among them: a triple fault on the first
    // instruction after L1's KVM resumes it from a HLT or WRMSR exit, in a fresh L1 as well.
    // (each rerun's kernel report comes from what the L1s since the last warning printed)
    let unreported = out;
    for (let rerun = 1; rerun <= RERUNS; rerun++) {
      const failed = run.stages.some(([n]) => n === 'l1-done') ? failedScenarios(run, SCENARIOS) : [];
      if (!failed.length) break;
      const trouble = troubleReport(unreported.split('\n'));
      const stops = [...run.stoppedAt].filter(([s]) => failed.includes(s)).map(([s, w]) => `${s} stopped at its time limit in ${w}. `).join('');
      const missing = missingChecks(run, failed).map((k) => `${k} (never came)`);
      const checks = [...[...run.checks].filter(([, c]) => !c.pass).map(([k]) => k), ...missing].join(', ') || 'none';
      process.stdout.write(`nested: WARNING: ${failed.join(',')} failed; booting a fresh L1 to run ${failed.length === 1 ? 'it' : 'them'} again (rerun ${rerun} of at most ${RERUNS}; the last result stands). ${stops}Failed checks: ${checks}. ${tripleReport(run)}${trouble ? `A kernel's report:\n${trouble}` : ''}\n`);
      const again = await bootL1(failed);
      l1Ends.push(again.ended);
      unreported = again.out;
      out += `\n${again.out}`;
      seconds += again.seconds;
      run = parse(out, seconds);
    }
    report(run);
  }, ((2 + RERUNS) * LIMIT_S + 660) * 1000);

  scenarioTests(() => run);
});

// (declared only where it can run: elsewhere its twin above runs the same checks, and one line says so)
if (!hardwareKvm) {
  process.stdout.write('nested: the hardware-KVM variant of these scenarios (L1 side in a namespace on the host) needs kvm_intel or kvm_amd; on this host its twin runs them inside the emulated L1\n');
}
if (hardwareKvm) describe('stock Linux (L2) under tsvmm directly on hardware KVM', () => {
  // Written for VMX/SVM hosts and not run on this machine (kvm_pvm): the L1 side of the scenarios runs
  // in a namespace on the host, with busybox's applets for its web server and tools.
  let direct: Run | undefined;
  beforeAll(async () => {
    setupError = buildImages();
    if (setupError) return;
    const ns = new NetNs('l2direct');
    const work = mkdtempSync(join(tmpdir(), 'tsvmm-l2direct-'));
    try {
      const data = join(work, 'data');
      mkdirSync(join(data, 'cgi-bin'), { recursive: true });
      copyFileSync(join(NESTED, 'blob'), join(data, 'blob'));
      copyFileSync(join(ROOT, 'test', 'nested', 'pingas.cgi'), join(data, 'cgi-bin', 'pingas'));
      const bb = join(work, 'bb');
      mkdirSync(bb);
      execFileSync('busybox', ['--install', '-s', bb]);
      const kvm = haveKvm() ? 'PASS' : 'FAIL';
      const p = ns.spawn(['env', `PATH=${bb}:${process.env.PATH}`, `RUNS=${SCENARIOS.join(' ')}`, `TSVMM_DIR=${ROOT}`, `MKTAP=${join(ROOT, 'test', 'nested', 'mktap.mjs')}`,
        `L2_KERNEL=${join(ROOT, '.cache', 'linux', 'vmlinuz')}`, `L2_INITRD=${join(NESTED, 'l2.cpio.gz')}`, `DATA_DIR=${data}`, `WORK=${work}`,
        'busybox', 'sh', '-c', `echo "L1-CHECK kvm-device ${kvm}"; sh ${join(ROOT, 'test', 'nested', 'scenarios.sh')}; echo "STAGE l1-done 0"`]);
      const { out, seconds } = await collect(p);
      direct = parse(out, seconds);
      report(direct);
    } finally {
      ns.delete();
      rmSync(work, { recursive: true, force: true });
    }
  }, (LIMIT_S + 660) * 1000);

  scenarioTests(() => direct);
});

describe('nested harness: what it reruns', () => {
  const checks = (...ks: Array<[string, boolean]>) => new Map(ks.map(([k, pass]) => [k, { pass, detail: '' }]));
  const exits = new Map([['basic', 0], ['rss', 124], ['wedge', 124], ['link', 0], ['mq', 0]]);
  const none = new Map<string, { trace: string[]; where: string }>();
  it('a scenario stopped at its time limit, one with a failed check, one that did not end, not wedge stopped on purpose', () => {
    const r = { exits, stoppedAt: new Map([['rss', 'native_halt'], ['wedge', '0x52bc47']]), checks: checks(['L2 basic/ping-56', true], ['L2 link/carrier-down', false], ['L1 kvm-device', true]), triples: none };
    expect(failedScenarios(r, ['basic', 'rss', 'wedge', 'link', 'mq', 'nomsi'], [])).toEqual(['rss', 'link', 'nomsi']);
  });
  it('a scenario whose expected checks did not all come, one that ended in a triple fault (but triple, which is made to)', () => {
    const r = {
      exits: new Map([['basic', 0], ['mq', 0], ['migrate', 0], ['triple', 0]]),
      stoppedAt: new Map(),
      checks: checks(['L2 basic/ping-56', true], ['L2 migrate/ping', true]),
      triples: new Map([['mq', { trace: [], where: '' }], ['triple', { trace: [], where: '' }]]),
    };
    const expected: Array<[string, string]> = [['L2', 'basic/ping-56'], ['L2', 'basic/iperf3-l2-to-l1'], ['L2', 'migrate/ping'], ['L1', 'kvm-device']];
    expect(failedScenarios(r, ['basic', 'mq', 'migrate', 'triple'], expected)).toEqual(['basic', 'mq']);
  });
  it("a kernel's report to show: the first outside the scenarios that die on purpose", () => {
    const lines = [
      'STAGE tsvmm-start-panic 300.1',
      '[    8.05] Kernel panic - not syncing: sysrq triggered crash',
      'STAGE tsvmm-end-panic 320.4',
      'STAGE tsvmm-start-mq 321.0',
      '[  400.10] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:1862]',
      '[  400.11] RIP: 0010:kvm_vcpu_block',
    ];
    expect(troubleReport(lines)).toBe(lines.slice(4).join('\n'));
    expect(troubleReport(lines.slice(0, 4))).toBe('');
    // (outside any scenario's stages: L1's own kernel)
    expect(troubleReport(lines.slice(1))).toBe(lines.slice(1).join('\n'));
  });
  it('none when every scenario ended as it should', () => {
    const r = { exits: new Map([['basic', 0], ['wedge', 124]]), stoppedAt: new Map([['wedge', '0x52bc47']]), checks: checks(['L2 basic/ping-56', true], ['L1 basic/no-tsvmm-left', true]), triples: none };
    expect(failedScenarios(r, ['basic', 'wedge'], [['L2', 'basic/ping-56'], ['L1', 'basic/no-tsvmm-left']])).toEqual([]);
  });
});
